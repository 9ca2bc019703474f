/*
 * DenseCap web demo.
 *
 * Sends an image (a chosen or dropped file, or webcam frames in live mode) to
 * POST /api/caption and draws the answer over it. Boxes come back as
 * [x, y, w, h], 1-based, in the pixels of the image that was sent, so a box is
 * drawn at (x - 1, y - 1) in an SVG whose viewBox is that image's size, laid
 * over a canvas showing the same image.
 *
 * Live mode keeps one frame in flight: grab a frame, send it as a JPEG
 * downscaled to the model's image size, draw that frame with its boxes when
 * the answer comes, then grab the next.
 */
'use strict';

(() => {
  // The results browser's 14 colours, given to the detections by score rank.
  const PALETTE = [
    [173, 35, 35], [42, 75, 215], [87, 87, 87], [29, 105, 20],
    [129, 74, 25], [129, 38, 192], [160, 160, 160], [129, 197, 122],
    [157, 175, 255], [41, 208, 208], [255, 146, 51], [255, 238, 51],
    [233, 222, 187], [255, 205, 243],
  ];
  const INITIAL_BOXES = 10;
  const MAX_PICTURE_SIDE = 1600;  // canvas resolution cap for large uploads
  const FPS_WINDOW_MS = 2000;
  const JPEG_QUALITY = 0.9;
  const LABEL_FONT_PX = 15;  // caption size on screen, whatever the image's size

  const view = {
    body: document.body,
    model: document.getElementById('model'),
    file: document.getElementById('file'),
    live: document.getElementById('live'),
    slider: document.getElementById('num-boxes'),
    sliderValue: document.getElementById('num-boxes-value'),
    labelsButton: document.getElementById('toggle-labels'),
    fps: document.getElementById('fps'),
    status: document.getElementById('status'),
    dropHint: document.getElementById('drop-hint'),
    frame: document.getElementById('frame'),
    picture: document.getElementById('picture'),
    overlay: document.getElementById('overlay'),
    name: document.getElementById('image-name'),
    captions: document.getElementById('captions'),
    camera: document.getElementById('camera'),
  };

  const state = {
    server: null,       // the /healthz answer
    result: null,       // the last /api/caption answer
    numBoxes: INITIAL_BOXES,
    labels: true,
    highlight: -1,
    live: null,         // {stream, running, frames, times} while live
    uploadId: 0,        // the latest upload; answers to older ones are dropped
  };

  const colorOf = rank => PALETTE[rank % PALETTE.length];
  const cssColor = ([r, g, b]) => `rgb(${r}, ${g}, ${b})`;
  const isLight = ([r, g, b]) => 0.299 * r + 0.587 * g + 0.114 * b > 150;

  // ------------------------------------------------------------------ server

  async function errorMessage(response) {
    try {
      const body = await response.json();
      if (body && typeof body.error === 'string') return body.error;
    } catch (error) {
      // Not JSON: fall back to the status line below.
    }
    return `HTTP ${response.status} ${response.statusText}`;
  }

  // POSTs an image; a named file goes as multipart (its name comes back), a frame as the body.
  async function caption(blob, fileName) {
    let request;
    if (fileName) {
      const form = new FormData();
      form.append('image', blob, fileName);
      request = {method: 'POST', body: form};
    } else {
      request = {method: 'POST', body: blob, headers: {'Content-Type': blob.type}};
    }
    let response;
    try {
      response = await fetch('/api/caption', request);
    } catch (error) {
      throw new Error('cannot reach the server');
    }
    if (!response.ok) throw new Error(await errorMessage(response));
    return checkResult(await response.json());
  }

  function checkResult(result) {
    for (const field of ['boxes', 'scores', 'captions']) {
      if (!Array.isArray(result[field])) throw new Error(`the answer has no "${field}" list`);
    }
    if (result.boxes.length !== result.captions.length) {
      throw new Error(`the answer has ${result.boxes.length} boxes but ` +
                      `${result.captions.length} captions`);
    }
    if (!(result.width > 0 && result.height > 0)) throw new Error('the answer has no image size');
    return result;
  }

  async function loadServerInfo() {
    const response = await fetch('/healthz', {cache: 'no-store'});
    if (!response.ok) throw new Error(await errorMessage(response));
    state.server = await response.json();
    view.model.textContent = `model ${state.server.model} (${state.server.config} config, ` +
        `images resized to ${state.server.image_size} px)`;
  }

  // ----------------------------------------------------------------- status

  function setStatus(message, isError = false) {
    view.status.textContent = message;
    view.status.classList.toggle('error', isError);
  }

  function fail(message) {
    setStatus(message, true);
    view.body.dataset.state = 'error';
  }

  // ------------------------------------------------------------- rendering

  function svgElement(name, attributes) {
    const element = document.createElementNS(view.overlay.namespaceURI, name);
    for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
    return element;
  }

  // Shows `source` (an ImageBitmap, canvas or image) in the picture canvas.
  function showPicture(source, width, height) {
    const scale = Math.min(1, MAX_PICTURE_SIDE / Math.max(width, height));
    const canvasWidth = Math.max(1, Math.round(width * scale));
    const canvasHeight = Math.max(1, Math.round(height * scale));
    if (view.picture.width !== canvasWidth) view.picture.width = canvasWidth;
    if (view.picture.height !== canvasHeight) view.picture.height = canvasHeight;
    view.picture.getContext('2d').drawImage(source, 0, 0, canvasWidth, canvasHeight);
    view.frame.hidden = false;
    view.dropHint.hidden = true;
  }

  function formatScore(score) {
    return Number.isFinite(score) ? score.toFixed(2) : '\u2013';
  }

  function boxElement(result, rank) {
    const [x, y, w, h] = result.boxes[rank];
    const rect = svgElement('rect', {
      class: 'box', 'data-rank': rank,
      x: x - 1, y: y - 1, width: Math.max(0, w), height: Math.max(0, h),
      stroke: cssColor(colorOf(rank)),
    });
    const title = svgElement('title', {});
    title.textContent = `${result.captions[rank]} (${formatScore(result.scores[rank])})`;
    rect.append(title);
    return rect;
  }

  // A caption at the box's top-left on a half-transparent band of the box colour.
  function labelElement(result, rank, fontSize) {
    const [x, y] = result.boxes[rank];
    const color = colorOf(rank);
    const group = svgElement('g', {class: 'label', 'data-rank': rank});
    const background = svgElement('rect', {fill: cssColor(color)});
    const text = svgElement('text', {
      x: Math.max(0, x - 1), y: Math.max(0, y - 1), 'font-size': fontSize,
      'dominant-baseline': 'hanging', fill: isLight(color) ? '#111' : '#fff',
    });
    text.textContent = result.captions[rank];
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

  function captionItem(result, rank) {
    const color = colorOf(rank);
    const item = document.createElement('li');
    item.dataset.rank = rank;
    item.style.setProperty('--box-color', cssColor(color));
    item.classList.toggle('light', isLight(color));
    const text = document.createElement('span');
    text.className = 'caption';
    text.textContent = result.captions[rank];
    const score = document.createElement('span');
    score.className = 'score';
    score.title = 'score (objectness logit)';
    score.textContent = formatScore(result.scores[rank]);
    item.append(text, score);
    return item;
  }

  function shownCount() {
    return state.result ? Math.min(state.numBoxes, state.result.boxes.length) : 0;
  }

  function render() {
    const result = state.result;
    if (!result) return;
    const total = result.boxes.length;
    const ranks = [...Array(shownCount()).keys()];
    const area = rank => Math.abs(result.boxes[rank][2] * result.boxes[rank][3]);

    view.overlay.setAttribute('viewBox', `0 0 ${result.width} ${result.height}`);
    view.overlay.replaceChildren();
    view.captions.replaceChildren();
    view.slider.max = total;
    view.slider.value = ranks.length;
    view.sliderValue.value = `${ranks.length}/${total}`;

    // Larger boxes first, so a smaller box on top of one stays under the pointer.
    const boxes = svgElement('g', {class: 'boxes'});
    for (const rank of ranks.slice().sort((a, b) => area(b) - area(a))) {
      boxes.append(boxElement(result, rank));
    }
    view.overlay.append(boxes);
    if (state.labels) {
      // The overlay scales its viewBox (image pixels) to the shown size: convert screen pixels.
      const shownWidth = view.overlay.getBoundingClientRect().width;
      const fontSize = LABEL_FONT_PX * (shownWidth > 0 ? result.width / shownWidth : 1);
      const labels = svgElement('g', {class: 'labels'});
      for (const rank of ranks.slice().reverse()) labels.append(labelElement(result, rank, fontSize));
      view.overlay.append(labels);
      fitLabelBackgrounds(labels);
    }
    for (const rank of ranks) view.captions.append(captionItem(result, rank));
    if (!ranks.length) view.captions.append(Object.assign(document.createElement('li'), {
      className: 'empty', textContent: total ? 'no boxes shown' : 'no detections',
    }));
    setHighlight(state.highlight < ranks.length ? state.highlight : -1);
  }

  function setHighlight(rank) {
    state.highlight = rank;
    for (const container of [view.overlay, view.captions]) {
      container.classList.toggle('has-highlight', rank >= 0);
      for (const element of container.querySelectorAll('[data-rank]')) {
        element.classList.toggle('highlight', Number(element.dataset.rank) === rank);
      }
    }
    const label = view.overlay.querySelector('.label.highlight');
    if (label) label.parentNode.append(label);
  }

  function onHover(event) {
    const target = event.target.closest('[data-rank]');
    setHighlight(target ? Number(target.dataset.rank) : -1);
  }

  // ---------------------------------------------------------------- uploads

  async function captionFile(file) {
    if (!file) return;
    stopLive();
    const id = ++state.uploadId;
    view.body.dataset.state = 'busy';
    setStatus(`Captioning ${file.name}\u2026`);
    const bitmap = createImageBitmap(file).catch(() => null);
    let result;
    try {
      result = await caption(file, file.name || 'image');
    } catch (error) {
      if (id === state.uploadId) fail(`${file.name}: ${error.message}`);
      return;
    }
    const picture = await bitmap;
    if (id !== state.uploadId) return;
    if (picture) {
      showPicture(picture, result.width, result.height);
      setStatus('');
    } else {
      setStatus(`${file.name}: the browser cannot display this image; its captions are below.`);
    }
    view.name.textContent = `${result.img_name} (${result.width} \u00d7 ${result.height})`;
    state.result = result;
    state.highlight = -1;
    render();
    view.body.dataset.state = 'ready';
  }

  // -------------------------------------------------------------- live mode

  function fpsText(live) {
    const times = live.times;
    const seconds = times.length > 1 ? (times[times.length - 1] - times[0]) / 1000 : 0;
    const fps = seconds > 0 ? (times.length - 1) / seconds : 0;
    return `${fps.toFixed(1)} fps \u00b7 ${live.frames} frames`;
  }

  function countFrame(live) {
    const now = performance.now();
    live.frames += 1;
    live.times.push(now);
    while (live.times.length > 2 && now - live.times[0] > FPS_WINDOW_MS) live.times.shift();
    view.fps.textContent = fpsText(live);
    view.fps.dataset.frames = live.frames;
  }

  // The current camera frame at its own size, and a copy downscaled to the model's size.
  function grabFrame(frameCanvas, sendCanvas) {
    const width = view.camera.videoWidth;
    const height = view.camera.videoHeight;
    frameCanvas.width = width;
    frameCanvas.height = height;
    frameCanvas.getContext('2d').drawImage(view.camera, 0, 0, width, height);
    const scale = Math.min(1, state.server.image_size / Math.max(width, height));
    sendCanvas.width = Math.max(1, Math.round(width * scale));
    sendCanvas.height = Math.max(1, Math.round(height * scale));
    sendCanvas.getContext('2d').drawImage(frameCanvas, 0, 0, sendCanvas.width, sendCanvas.height);
    return new Promise((resolve, reject) => sendCanvas.toBlob(
        blob => (blob ? resolve(blob) : reject(new Error('cannot encode the frame'))),
        'image/jpeg', JPEG_QUALITY));
  }

  async function runLive(live) {
    const frameCanvas = document.createElement('canvas');
    const sendCanvas = document.createElement('canvas');
    while (live.running) {
      let result;
      try {
        result = await caption(await grabFrame(frameCanvas, sendCanvas), null);
      } catch (error) {
        if (live.running) {
          stopLive();
          fail(`Live mode stopped: ${error.message}`);
        }
        return;
      }
      if (!live.running) return;
      showPicture(frameCanvas, frameCanvas.width, frameCanvas.height);
      state.result = result;
      render();
      countFrame(live);
    }
  }

  async function startLive() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      fail('This browser offers no webcam here: open the page over https:// or on localhost.');
      return;
    }
    state.uploadId += 1;
    view.live.setAttribute('aria-pressed', 'true');
    setStatus('Starting the webcam\u2026');
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia(
          {video: {width: {ideal: 640}, height: {ideal: 480}}, audio: false});
    } catch (error) {
      view.live.setAttribute('aria-pressed', 'false');
      fail(`No webcam: ${error.message || error.name}`);
      return;
    }
    const live = {stream, running: true, frames: 0, times: []};
    state.live = live;
    view.camera.srcObject = stream;
    try {
      await view.camera.play();
    } catch (error) {
      stopLive();
      fail(`The webcam does not play: ${error.message}`);
      return;
    }
    setStatus('');
    view.name.textContent = 'webcam';
    view.fps.textContent = fpsText(live);
    view.fps.dataset.frames = 0;
    view.body.dataset.state = 'live';
    runLive(live);
  }

  function stopLive() {
    const live = state.live;
    if (!live) return;
    live.running = false;
    for (const track of live.stream.getTracks()) track.stop();
    view.camera.srcObject = null;
    state.live = null;
    view.live.setAttribute('aria-pressed', 'false');
    if (view.body.dataset.state === 'live') view.body.dataset.state = 'ready';
  }

  // ----------------------------------------------------------------- wiring

  function bindControls() {
    view.file.addEventListener('change', () => {
      captionFile(view.file.files[0]);
      view.file.value = '';
    });
    view.live.addEventListener('click', () => (state.live ? stopLive() : startLive()));
    view.labelsButton.addEventListener('click', () => {
      state.labels = !state.labels;
      view.labelsButton.setAttribute('aria-pressed', String(state.labels));
      render();
    });
    view.slider.addEventListener('input', () => {
      state.numBoxes = Number(view.slider.value);
      render();
    });
    for (const container of [view.overlay, view.captions]) {
      container.addEventListener('mouseover', onHover);
      container.addEventListener('mouseleave', () => setHighlight(-1));
    }
    document.addEventListener('dragover', event => {
      event.preventDefault();
      view.body.classList.add('dragging');
    });
    document.addEventListener('dragleave', event => {
      if (!event.relatedTarget) view.body.classList.remove('dragging');
    });
    document.addEventListener('drop', event => {
      event.preventDefault();
      view.body.classList.remove('dragging');
      const file = [...event.dataTransfer.files].find(f => f.type.startsWith('image/'));
      if (file) captionFile(file);
      else fail('Drop an image file.');
    });
  }

  async function main() {
    bindControls();
    try {
      await loadServerInfo();
    } catch (error) {
      fail(`The server does not answer: ${error.message}`);
      view.live.disabled = true;
      return;
    }
    view.body.dataset.state = 'idle';
  }

  main();
})();
