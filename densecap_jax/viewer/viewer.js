/*
 * DenseCap results browser.
 *
 * Reads the detections from results.js (window.DENSECAP_RESULTS, works when
 * the page is opened from disk) or else results.json (needs a web server),
 * both in the folder given by ?data_dir= (default: the page's own folder).
 * Boxes are [x, y, w, h], 1-based, in the pixels of the saved image, so a box
 * is drawn at (x - 1, y - 1) in an SVG whose viewBox is the image's size.
 */
'use strict';

(() => {
  // The original viewer's 14 colours, given to the detections by score rank.
  const PALETTE = [
    [173, 35, 35], [42, 75, 215], [87, 87, 87], [29, 105, 20],
    [129, 74, 25], [129, 38, 192], [160, 160, 160], [129, 197, 122],
    [157, 175, 255], [41, 208, 208], [255, 146, 51], [255, 238, 51],
    [233, 222, 187], [255, 205, 243],
  ];
  const INITIAL_BOXES = 10;

  const view = {
    counter: document.getElementById('counter'),
    status: document.getElementById('status'),
    stage: document.getElementById('stage'),
    image: document.getElementById('image'),
    overlay: document.getElementById('overlay'),
    name: document.getElementById('image-name'),
    captions: document.getElementById('captions'),
    slider: document.getElementById('num-boxes'),
    sliderValue: document.getElementById('num-boxes-value'),
    inlineButton: document.getElementById('toggle-inline'),
  };

  const state = {
    dataDir: '.',
    results: [],
    index: 0,
    order: [],
    numBoxes: INITIAL_BOXES,
    inline: false,
    highlight: -1,
  };

  const colorOf = rank => PALETTE[rank % PALETTE.length];
  const cssColor = ([r, g, b]) => `rgb(${r}, ${g}, ${b})`;
  const isLight = ([r, g, b]) => 0.299 * r + 0.587 * g + 0.114 * b > 150;

  // ---------------------------------------------------------------- loading

  function dataDirFromUrl() {
    const dir = new URLSearchParams(window.location.search).get('data_dir') || '.';
    // A local path only: no URL scheme, no leading double slash, no backslash (read as a slash).
    if (/^[a-z][a-z0-9+.-]*:|^\/\/|\\/i.test(dir)) {
      throw new Error(`data_dir must be a relative or local path, got "${dir}"`);
    }
    return dir.replace(/\/+$/, '') || '/';
  }

  function urlOf(fileName) {
    const encoded = fileName.split('/').map(encodeURIComponent).join('/');
    return state.dataDir === '/' ? `/${encoded}` : `${state.dataDir}/${encoded}`;
  }

  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const script = document.createElement('script');
      script.src = src;
      script.onload = resolve;
      script.onerror = () => reject(new Error(`cannot load ${src}`));
      document.head.append(script);
    });
  }

  async function loadResults() {
    try {
      await loadScript(urlOf('results.js'));
    } catch (error) {
      // No results.js: fall back to results.json below.
    }
    if (window.DENSECAP_RESULTS) return window.DENSECAP_RESULTS;
    let response;
    try {
      response = await fetch(urlOf('results.json'), {cache: 'no-store'});
    } catch (error) {
      throw new Error(
          `found neither ${urlOf('results.js')} nor a readable ${urlOf('results.json')}`);
    }
    if (!response.ok) throw new Error(`${urlOf('results.json')}: HTTP ${response.status}`);
    return response.json();
  }

  function checkResults(data) {
    if (!data || !Array.isArray(data.results)) {
      throw new Error('the results have no "results" list');
    }
    data.results.forEach((entry, i) => {
      for (const field of ['boxes', 'captions', 'scores']) {
        if (!Array.isArray(entry[field])) throw new Error(`results[${i}].${field} is not a list`);
      }
      if (typeof entry.img_name !== 'string' || !entry.img_name) {
        throw new Error(`results[${i}].img_name is not a file name`);
      }
      if (entry.boxes.length !== entry.captions.length) {
        throw new Error(
            `results[${i}] has ${entry.boxes.length} boxes but ${entry.captions.length} captions`);
      }
    });
    return data.results;
  }

  // ------------------------------------------------------------- navigation

  function currentEntry() {
    return state.results[state.index];
  }

  // Detection indices by descending score, the order colours and counts follow.
  function scoreOrder(entry) {
    const score = i => (Number.isFinite(entry.scores[i]) ? entry.scores[i] : -Infinity);
    return entry.boxes.map((_, i) => i).sort((a, b) => score(b) - score(a));
  }

  function showImage(index) {
    state.index = Math.max(0, Math.min(state.results.length - 1, index));
    const entry = currentEntry();
    state.order = scoreOrder(entry);
    state.highlight = -1;
    document.body.dataset.state = 'loading';
    view.counter.textContent = `image ${state.index + 1}/${state.results.length}`;
    view.name.textContent = entry.img_name;
    view.image.alt = entry.img_name;
    view.image.src = urlOf(entry.img_name);
  }

  function step(delta) {
    const next = Math.max(0, Math.min(state.results.length - 1, state.index + delta));
    if (next !== state.index) showImage(next);
  }

  function randomImage() {
    const count = state.results.length;
    if (count < 2) return;
    const pick = Math.floor(Math.random() * (count - 1));
    showImage(pick >= state.index ? pick + 1 : pick);
  }

  function shownCount() {
    return Math.min(state.numBoxes, state.order.length);
  }

  function changeBoxes(delta) {
    state.numBoxes = Math.max(0, Math.min(state.order.length, shownCount() + delta));
    render();
  }

  function toggleInline() {
    state.inline = !state.inline;
    view.inlineButton.setAttribute('aria-pressed', String(state.inline));
    render();
  }

  // -------------------------------------------------------------- rendering

  function svgElement(name, attributes) {
    const element = document.createElementNS(view.overlay.namespaceURI, name);
    for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
    return element;
  }

  function imageSize(entry) {
    if (view.image.naturalWidth > 0) return [view.image.naturalWidth, view.image.naturalHeight];
    const right = Math.max(1, ...entry.boxes.map(([x, , w]) => x - 1 + w));
    const bottom = Math.max(1, ...entry.boxes.map(([, y, , h]) => y - 1 + h));
    return [right, bottom];
  }

  function formatScore(score) {
    return Number.isFinite(score) ? score.toFixed(2) : '\u2013';
  }

  function boxElement(entry, index, rank) {
    const [x, y, w, h] = entry.boxes[index];
    const rect = svgElement('rect', {
      class: 'box', 'data-rank': rank,
      x: x - 1, y: y - 1, width: Math.max(0, w), height: Math.max(0, h),
      stroke: cssColor(colorOf(rank)),
    });
    const title = svgElement('title', {});
    title.textContent = `${entry.captions[index]} (${formatScore(entry.scores[index])})`;
    rect.append(title);
    return rect;
  }

  function labelElement(entry, index, rank, fontSize) {
    const [x, y] = entry.boxes[index];
    const color = colorOf(rank);
    const group = svgElement('g', {class: 'label', 'data-rank': rank});
    const background = svgElement('rect', {fill: cssColor(color)});
    const text = svgElement('text', {
      x: Math.max(0, x - 1), y: Math.max(0, y - 1), 'font-size': fontSize,
      'dominant-baseline': 'hanging', fill: isLight(color) ? '#111' : '#fff',
    });
    text.textContent = entry.captions[index];
    group.append(background, text);
    return group;
  }

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

  function captionItem(entry, index, rank) {
    const color = colorOf(rank);
    const item = document.createElement('li');
    item.dataset.rank = rank;
    item.style.setProperty('--box-color', cssColor(color));
    item.classList.toggle('light', isLight(color));
    const caption = document.createElement('span');
    caption.className = 'caption';
    caption.textContent = entry.captions[index];
    const score = document.createElement('span');
    score.className = 'score';
    score.title = 'score (objectness logit)';
    score.textContent = formatScore(entry.scores[index]);
    item.append(caption, score);
    return item;
  }

  function render() {
    const entry = currentEntry();
    const [width, height] = imageSize(entry);
    const total = state.order.length;
    const ranks = [...Array(shownCount()).keys()];
    const area = rank => {
      const [, , w, h] = entry.boxes[state.order[rank]];
      return Math.abs(w * h);
    };

    view.overlay.setAttribute('viewBox', `0 0 ${width} ${height}`);
    view.overlay.replaceChildren();
    view.captions.replaceChildren();
    view.slider.max = total;
    view.slider.value = ranks.length;
    view.sliderValue.value = `${ranks.length}/${total}`;

    // Larger boxes first, so a smaller box on top of one stays under the pointer.
    const boxes = svgElement('g', {class: 'boxes'});
    for (const rank of ranks.slice().sort((a, b) => area(b) - area(a))) {
      boxes.append(boxElement(entry, state.order[rank], rank));
    }
    view.overlay.append(boxes);
    if (state.inline) {
      const fontSize = Math.max(10, Math.round(Math.max(width, height) / 45));
      const labels = svgElement('g', {class: 'labels'});
      for (const rank of ranks.slice().reverse()) {
        labels.append(labelElement(entry, state.order[rank], rank, fontSize));
      }
      view.overlay.append(labels);
      fitLabelBackgrounds(labels);
    }
    for (const rank of ranks) view.captions.append(captionItem(entry, state.order[rank], rank));
    if (!ranks.length) view.captions.append(Object.assign(document.createElement('li'), {
      className: 'empty', textContent: total ? 'no boxes shown' : 'no detections',
    }));

    setHighlight(state.highlight < ranks.length ? state.highlight : -1);
    document.body.dataset.state = 'ready';
  }

  function setHighlight(rank) {
    state.highlight = rank;
    for (const container of [view.overlay, view.captions]) {
      container.classList.toggle('has-highlight', rank >= 0);
      for (const element of container.querySelectorAll('[data-rank]')) {
        element.classList.toggle('highlight', Number(element.dataset.rank) === rank);
      }
    }
    // Lift the highlighted label above the others (labels ignore the pointer).
    const label = view.overlay.querySelector('.label.highlight');
    if (label) label.parentNode.append(label);
  }

  function onHover(event) {
    const target = event.target.closest('[data-rank]');
    setHighlight(target ? Number(target.dataset.rank) : -1);
  }

  function showError(message) {
    view.status.textContent = message;
    view.status.classList.add('error');
    document.body.dataset.state = 'error';
  }

  // ---------------------------------------------------------------- wiring

  const KEYS = {
    a: () => step(-1),
    d: () => step(1),
    w: () => changeBoxes(1),
    s: () => changeBoxes(-1),
    t: toggleInline,
    r: randomImage,
  };

  function bindControls() {
    document.getElementById('prev').addEventListener('click', () => step(-1));
    document.getElementById('next').addEventListener('click', () => step(1));
    document.getElementById('random').addEventListener('click', randomImage);
    view.inlineButton.addEventListener('click', toggleInline);
    view.slider.addEventListener('input', () => {
      state.numBoxes = Number(view.slider.value);
      render();
    });
    for (const container of [view.overlay, view.captions]) {
      container.addEventListener('mouseover', onHover);
      container.addEventListener('mouseleave', () => setHighlight(-1));
    }
    document.addEventListener('keydown', event => {
      if (event.ctrlKey || event.metaKey || event.altKey || !state.results.length) return;
      const action = KEYS[event.key.toLowerCase()];
      if (!action) return;
      event.preventDefault();
      action();
    });
    view.image.addEventListener('load', () => {
      view.status.textContent = '';
      render();
    });
    view.image.addEventListener('error', () => {
      view.status.textContent = `Cannot load image ${urlOf(currentEntry().img_name)}`;
      render();
    });
  }

  async function main() {
    bindControls();
    try {
      state.dataDir = dataDirFromUrl();
      state.results = checkResults(await loadResults());
    } catch (error) {
      showError(`No results to show: ${error.message}. Write them with "python -m ` +
                'densecap_jax.predict --output_vis_dir DIR" and open DIR/view_results.html.');
      return;
    }
    if (!state.results.length) {
      showError('No results to show: the results list is empty.');
      return;
    }
    showImage(0);
  }

  main();
})();
