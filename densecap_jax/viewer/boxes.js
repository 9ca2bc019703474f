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
  const BLACK = [0, 0, 0];
  const WHITE = [255, 255, 255];
  const ELLIPSIS = '\u2026';
  const WRAP_FRACTION = 0.4;  // labels may be as wide as their box or this part of the picture
  const LABEL_PAD = 0.2;  // space around a label's text, in font sizes
  const STROKE_PX = 3;  // a box's outline on screen (boxes.css .box stroke-width)

  const colorOf = rank => PALETTE[rank % PALETTE.length];
  const cssColor = ([r, g, b]) => `rgb(${r}, ${g}, ${b})`;

  // WCAG 2 relative luminance in [0, 1] of an sRGB [r, g, b] in 0..255.
  function relativeLuminance(color) {
    const [r, g, b] = color.map(value => {
      const c = value / 255;
      return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  }

  // Black or white, whichever has the larger WCAG contrast ratio with `color`
  // (the rule of densecap_jax.vis.label_colors).
  function textColorOn(color) {
    return (relativeLuminance(color) + 0.05) ** 2 > 1.05 * 0.05 ? BLACK : WHITE;
  }

  const isLight = color => textColorOn(color) === BLACK;

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
     * `fontSize` (in image pixels) also writes each caption on a label by its
     * box, placed by layoutLabels.
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
        overlay.append(labels);
        // The outlines keep their width on screen: STROKE_PX / 2 of it lies outside a box.
        const shown = overlay.getBoundingClientRect().width;
        const margin = 0.5 * STROKE_PX * (shown > 0 ? width / shown : 1);
        const places = this.layoutLabels(labels, ranks.map(rank => indexOf(rank)), detections,
                                         {width, height, fontSize, margin});
        // The top-ranked label last, on top.
        for (const rank of ranks.slice().reverse()) {
          if (places[rank]) {
            labels.append(this.labelElement(detections, indexOf(rank), rank, places[rank]));
          }
        }
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

    /*
     * Where each caption of `indices` (detection indices by rank) goes over a
     * picture of `width` x `height`, as densecap_jax.vis.layout_labels places
     * them: a list by rank of {left, top, width, height, lines, fontSize,
     * ascent, lineHeight, pad} (null for a blank caption), in picture pixels.
     * The caption is wrapped between words to the box's visible width or
     * WRAP_FRACTION of the picture's, whichever is larger (a word too long for
     * a line alone is cut with an ellipsis), and its label goes to the first
     * of these places, moved into the picture, that overlaps no label of a
     * higher rank, or else to the one overlapping them least: on the box's
     * outline above it when there is room, inside its top-left corner, under
     * it when there is room, inside its bottom-left corner. `margin` is the
     * part of an outline outside its box. Text is measured in `labels` (an
     * SVG group in the document).
     */
    layoutLabels(labels, indices, detections, {width, height, fontSize, margin}) {
      const probe = this.svgElement('g', {class: 'label'});
      const text = this.svgElement('text', {x: 0, y: 0, 'font-size': fontSize});
      probe.append(text);
      labels.append(probe);
      const widths = new Map();
      const measure = line => {
        if (!widths.has(line)) {
          text.textContent = line;
          widths.set(line, text.getComputedTextLength());
        }
        return widths.get(line);
      };
      text.textContent = 'Ag';
      const metrics = text.getBBox();  // the font's ascent + descent around baseline y = 0
      const ascent = -metrics.y;
      const lineHeight = metrics.height;
      const pad = LABEL_PAD * fontSize;
      const placed = [];
      const places = indices.map(index => {
        const [x, y, w, h] = detections.boxes[index];
        const left = x - 1 - margin;
        const top = y - 1 - margin;
        const right = x - 1 + Math.max(0, w) + margin;
        const bottom = y - 1 + Math.max(0, h) + margin;
        const visible = Math.min(right, width) - Math.max(left, 0);
        const wrap = Math.min(width - 2 * pad, Math.max(visible - 2 * pad, WRAP_FRACTION * width));
        const lines = wrapCaption(String(detections.captions[index]), measure, wrap);
        if (!lines.length) return null;
        const labelWidth = Math.min(width, Math.max(...lines.map(measure)) + 2 * pad);
        const labelHeight = lines.length * lineHeight + 2 * pad;
        const tops = [];
        if (top - labelHeight >= 0) tops.push(top - labelHeight);
        tops.push(top);
        if (bottom + labelHeight <= height) tops.push(bottom);
        tops.push(bottom - labelHeight);
        const candidates = tops.map(t => ({
          left: Math.max(0, Math.min(left, width - labelWidth)),
          top: Math.max(0, Math.min(t, height - labelHeight)),
          width: labelWidth, height: labelHeight,
        }));
        const overlaps = candidates.map(
            c => placed.reduce((sum, other) => sum + overlapArea(c, other), 0));
        const best = candidates[overlaps.indexOf(Math.min(...overlaps))];
        placed.push(best);
        return {...best, lines, fontSize, ascent, lineHeight, pad};
      });
      probe.remove();
      return places;
    }

    // A caption on an opaque band of the box colour, in black or white text, at `place`.
    labelElement(detections, index, rank, place) {
      const color = colorOf(rank);
      const group = this.svgElement('g', {
        class: classNames('label', detections, index, this.matches), 'data-rank': rank,
      });
      const background = this.svgElement('rect', {
        x: place.left, y: place.top, width: place.width, height: place.height,
        fill: cssColor(color),
      });
      const text = this.svgElement('text', {
        'font-size': place.fontSize, fill: cssColor(textColorOn(color)),
      });
      place.lines.forEach((line, k) => {
        const span = this.svgElement('tspan', {
          x: place.left + place.pad,
          y: place.top + place.pad + k * place.lineHeight + place.ascent,
        });
        span.textContent = line;
        text.append(span);
      });
      group.append(background, text);
      return group;
    }
  }

  /*
   * Lines of `caption` no wider than `maxWidth` by `measure(line)`, broken only
   * between words, as densecap_jax.vis.wrap_caption: each line holds as many
   * whole words as fit; a word that does not fit on a line alone gets a line
   * of its own, cut to its longest beginning that fits with an ellipsis.
   */
  function wrapCaption(caption, measure, maxWidth) {
    const lines = [];
    let line = '';
    for (const word of caption.split(/\s+/).filter(Boolean)) {
      const joined = line ? `${line} ${word}` : word;
      if (measure(joined) <= maxWidth) {
        line = joined;
        continue;
      }
      if (line) lines.push(line);
      line = word;
      if (measure(word) > maxWidth) {
        let cut = word.length - 1;
        while (cut > 0 && measure(word.slice(0, cut) + ELLIPSIS) > maxWidth) cut -= 1;
        lines.push(word.slice(0, cut) + ELLIPSIS);
        line = '';
      }
    }
    if (line) lines.push(line);
    return lines;
  }

  // Overlapping area of two {left, top, width, height} rectangles.
  function overlapArea(a, b) {
    const w = Math.min(a.left + a.width, b.left + b.width) - Math.max(a.left, b.left);
    const h = Math.min(a.top + a.height, b.top + b.height) - Math.max(a.top, b.top);
    return Math.max(0, w) * Math.max(0, h);
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
