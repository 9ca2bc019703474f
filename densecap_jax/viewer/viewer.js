/*
 * DenseCap results browser.
 *
 * Reads the detections from results.js (window.DENSECAP_RESULTS, works when
 * the page is opened from disk) or else results.json (needs a web server),
 * both in the folder given by ?data_dir= (default: the page's own folder);
 * ?labels=1 starts with the captions drawn on the boxes.
 * Boxes are [x, y, w, h], 1-based, in the pixels of the saved image; boxes.js
 * draws them.
 */
'use strict';

(() => {
  const view = {
    counter: document.getElementById('counter'),
    status: document.getElementById('status'),
    image: document.getElementById('image'),
    name: document.getElementById('image-name'),
    inlineButton: document.getElementById('toggle-inline'),
  };

  const state = {
    dataDir: '.',
    results: [],
    index: 0,
    order: [],
    inline: false,
  };

  const boxView = new window.DenseCapBoxes.BoxView({
    overlay: document.getElementById('overlay'),
    captions: document.getElementById('captions'),
    slider: document.getElementById('num-boxes'),
    sliderValue: document.getElementById('num-boxes-value'),
  }, render);

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
    boxView.resetHighlight();
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

  function changeBoxes(delta) {
    boxView.changeCount(delta, state.order.length);
    render();
  }

  function toggleInline() {
    state.inline = !state.inline;
    view.inlineButton.setAttribute('aria-pressed', String(state.inline));
    render();
  }

  // -------------------------------------------------------------- rendering

  function imageSize(entry) {
    if (view.image.naturalWidth > 0) return [view.image.naturalWidth, view.image.naturalHeight];
    const right = Math.max(1, ...entry.boxes.map(([x, , w]) => x - 1 + w));
    const bottom = Math.max(1, ...entry.boxes.map(([, y, , h]) => y - 1 + h));
    return [right, bottom];
  }

  function render() {
    const entry = currentEntry();
    const [width, height] = imageSize(entry);
    const fontSize = state.inline ? Math.max(10, Math.round(Math.max(width, height) / 45)) : 0;
    boxView.draw(entry, {width, height, order: state.order, fontSize});
    document.body.dataset.state = 'ready';
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
      state.inline = new URLSearchParams(window.location.search).get('labels') === '1';
      view.inlineButton.setAttribute('aria-pressed', String(state.inline));
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
