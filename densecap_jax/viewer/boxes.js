/*
 * DenseCap boxes and captions over an image, shared by the results browser
 * (view_results.html) and the web demo page (densecap_jax/static/index.html).
 *
 * Detections are {boxes: [[x, y, w, h], ...], captions: [...], scores: [...]}
 * with boxes 1-based in the pixels of the image they belong to, so a box is
 * drawn at (x - 1, y - 1) in an SVG whose viewBox is that image's size.
 * Detections are shown by rank: `order[rank]` is the index of the detection
 * with that rank, and the rank picks its colour. An optional `given` list of
 * booleans marks boxes a user drew (class "given").
 *
 * A plain script (no module) so that a page opened from disk can load it; it
 * defines window.DenseCapBoxes.
 */
'use strict';

window.DenseCapBoxes = (() => {
  // The original viewer's 14 colours, given to the detections by rank.
  const PALETTE = [
    [173, 35, 35], [42, 75, 215], [87, 87, 87], [29, 105, 20],
    [129, 74, 25], [129, 38, 192], [160, 160, 160], [129, 197, 122],
    [157, 175, 255], [41, 208, 208], [255, 146, 51], [255, 238, 51],
    [233, 222, 187], [255, 205, 243],
  ];
  const INITIAL_BOXES = 10;

  const colorOf = rank => PALETTE[rank % PALETTE.length];
  const cssColor = ([r, g, b]) => `rgb(${r}, ${g}, ${b})`;
  const isLight = ([r, g, b]) => 0.299 * r + 0.587 * g + 0.114 * b > 150;

  function formatScore(score) {
    return Number.isFinite(score) ? score.toFixed(2) : '\u2013';
  }

  /*
   * Draws one image's detections: an outlined box per detection in `overlay`
   * (an <svg> laid over the image), optional captions on the boxes, and a
   * caption list in `captions` (an <ol>). A range input `slider` with its
   * <output> `sliderValue` picks how many of the top-ranked detections are
   * shown; hovering a box or a list item highlights both and dims the rest.
   */
  class BoxView {
    // `elements`: {overlay, captions, slider, sliderValue}; `onSlide` redraws
    // after the slider changed the count.
    constructor(elements, onSlide) {
      this.elements = elements;
      this.numBoxes = INITIAL_BOXES;
      this.highlight = -1;
      this.matches = null;
      elements.slider.addEventListener('input', () => {
        this.numBoxes = Number(elements.slider.value);
        onSlide();
      });
      for (const container of [elements.overlay, elements.captions]) {
        container.addEventListener('mouseover', event => this.onHover(event));
        container.addEventListener('mouseleave', () => this.setHighlight(-1));
      }
    }

    // How many of `total` detections are shown.
    shownCount(total) {
      return Math.min(this.numBoxes, total);
    }

    // Shows `delta` more (or fewer) of `total` detections from the next draw on.
    changeCount(delta, total) {
      this.numBoxes = Math.max(0, Math.min(total, this.shownCount(total) + delta));
    }

    // Forgets the highlighted detection; the next draw highlights none.
    resetHighlight() {
      this.highlight = -1;
    }

    /*
     * Draws `detections` over an image of `width` x `height` pixels. `order`
     * lists detection indices by rank (default: the given order). A positive
     * `fontSize` (in image pixels) also writes each caption on its box.
     * `matches` ({scores, best, title}: a score per detection index, a Set of
     * indices, what the scores are) shows those scores in the list instead of
     * the objectness and marks the `best` detections (class "match") in
     * containers of class "has-matches".
     */
    draw(detections, {width, height, order = null, fontSize = 0, matches = null}) {
      const {overlay, captions, slider, sliderValue} = this.elements;
      this.matches = matches;
      const total = detections.boxes.length;
      const indexOf = order ? rank => order[rank] : rank => rank;
      const ranks = [...Array(this.shownCount(total)).keys()];
      const area = rank => {
        const [, , w, h] = detections.boxes[indexOf(rank)];
        return Math.abs(w * h);
      };

      overlay.setAttribute('viewBox', `0 0 ${width} ${height}`);
      overlay.replaceChildren();
      captions.replaceChildren();
      slider.max = total;
      slider.value = ranks.length;
      sliderValue.value = `${ranks.length}/${total}`;

      // Larger boxes first, so a smaller box on top of one stays under the pointer.
      const boxes = this.svgElement('g', {class: 'boxes'});
      for (const rank of ranks.slice().sort((a, b) => area(b) - area(a))) {
        boxes.append(this.boxElement(detections, indexOf(rank), rank));
      }
      overlay.append(boxes);
      if (fontSize > 0) {
        const labels = this.svgElement('g', {class: 'labels'});
        for (const rank of ranks.slice().reverse()) {
          labels.append(this.labelElement(detections, indexOf(rank), rank, fontSize));
        }
        overlay.append(labels);
        fitLabelBackgrounds(labels);
      }
      for (const rank of ranks) {
        captions.append(captionItem(detections, indexOf(rank), rank, matches));
      }
      for (const container of [overlay, captions]) {
        container.classList.toggle('has-matches', Boolean(matches));
      }
      if (!ranks.length) captions.append(Object.assign(document.createElement('li'), {
        className: 'empty', textContent: total ? 'no boxes shown' : 'no detections',
      }));
      this.setHighlight(this.highlight < ranks.length ? this.highlight : -1);
    }

    // Highlights the box and list item of `rank` (-1: none) and dims the others.
    setHighlight(rank) {
      const {overlay, captions} = this.elements;
      this.highlight = rank;
      for (const container of [overlay, captions]) {
        container.classList.toggle('has-highlight', rank >= 0);
        for (const element of container.querySelectorAll('[data-rank]')) {
          element.classList.toggle('highlight', Number(element.dataset.rank) === rank);
        }
      }
      // Lift the highlighted label above the others (labels ignore the pointer).
      const label = overlay.querySelector('.label.highlight');
      if (label) label.parentNode.append(label);
    }

    onHover(event) {
      const target = event.target.closest('[data-rank]');
      this.setHighlight(target ? Number(target.dataset.rank) : -1);
    }

    svgElement(name, attributes) {
      const element = document.createElementNS(this.elements.overlay.namespaceURI, name);
      for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
      return element;
    }

    boxElement(detections, index, rank) {
      const [x, y, w, h] = detections.boxes[index];
      const rect = this.svgElement('rect', {
        class: classNames('box', detections, index, this.matches), 'data-rank': rank,
        x: x - 1, y: y - 1, width: Math.max(0, w), height: Math.max(0, h),
        stroke: cssColor(colorOf(rank)),
      });
      const title = this.svgElement('title', {});
      title.textContent =
          `${detections.captions[index]} (${formatScore(detections.scores[index])})`;
      rect.append(title);
      return rect;
    }

    // A caption at the box's top-left on a band of the box colour.
    labelElement(detections, index, rank, fontSize) {
      const [x, y] = detections.boxes[index];
      const color = colorOf(rank);
      const group = this.svgElement('g', {
        class: classNames('label', detections, index, this.matches), 'data-rank': rank,
      });
      const background = this.svgElement('rect', {fill: cssColor(color)});
      const text = this.svgElement('text', {
        x: Math.max(0, x - 1), y: Math.max(0, y - 1), 'font-size': fontSize,
        'dominant-baseline': 'hanging', fill: isLight(color) ? '#111' : '#fff',
      });
      text.textContent = detections.captions[index];
      group.append(background, text);
      return group;
    }
  }

  // Sizes each label's band to its text, with a margin of 0.15 of the font size.
  function fitLabelBackgrounds(labels) {
    for (const group of labels.children) {
      const [background, text] = group.children;
      const box = text.getBBox();
      const pad = 0.15 * Number(text.getAttribute('font-size'));
      background.setAttribute('x', box.x - pad);
      background.setAttribute('y', box.y - pad);
      background.setAttribute('width', box.width + 2 * pad);
      background.setAttribute('height', box.height + 2 * pad);
    }
  }

  // `base` plus "given" for a drawn box and "match" for one of the best matches.
  function classNames(base, detections, index, matches) {
    const names = [base];
    if (detections.given && detections.given[index]) names.push('given');
    if (matches && matches.best.has(index)) names.push('match');
    return names.join(' ');
  }

  function captionItem(detections, index, rank, matches) {
    const color = colorOf(rank);
    const item = document.createElement('li');
    item.className = classNames('', detections, index, matches).trim();
    item.dataset.rank = rank;
    item.style.setProperty('--box-color', cssColor(color));
    item.classList.toggle('light', isLight(color));
    const caption = document.createElement('span');
    caption.className = 'caption';
    caption.textContent = detections.captions[index];
    const score = document.createElement('span');
    score.className = 'score';
    score.title = matches ? matches.title : 'score (objectness logit)';
    score.textContent = formatScore(matches ? matches.scores[index] : detections.scores[index]);
    item.append(caption, score);
    return item;
  }

  return {BoxView};
})();
