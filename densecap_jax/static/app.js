/*
 * DenseCap web demo.
 *
 * Sends an image (a chosen or dropped file, or webcam frames in live mode) to
 * POST /api/caption and draws the answer over it. Boxes come back as
 * [x, y, w, h], 1-based, in the pixels of the image that was sent; boxes.js
 * draws them in an SVG laid over a canvas showing the same image.
 *
 * Live mode keeps one frame in flight: grab a frame, send it as a JPEG
 * downscaled to the model's image size, draw that frame with its boxes when
 * the answer comes, then grab the next.
 *
 * Dragging a rectangle on the image (an upload, or the last frame once live
 * mode stops) sends that image again to POST /api/caption with the field
 * `boxes` and adds the captioned box (drawn dashed) at the top of the list.
 * Typing a phrase sends the image, the phrase and every box shown to
 * POST /api/score; the boxes are then ranked by the phrase's mean
 * log-likelihood per word, the best MATCHES highlighted and the others dimmed.
 * The status line under the phrase names the words the model does not know
 * and what it scored instead; a phrase of which it knows only function words
 * (the answer's no_known_content_words) highlights nothing and says so.
 *
 * While the server is starting (GET /healthz answers 503 with status
 * "starting") the page says it is warming up, keeps its controls disabled and
 * asks again every second. Once it is ready, a request may still wait while
 * the server compiles (or loads from its cache) the model for that image
 * size: while a request is pending the page asks /healthz twice a second and
 * shows the message of a program requests wait for (programs.waiting).
 */
'use strict';

(() => {
  const MAX_PICTURE_SIDE = 1600;  // canvas resolution cap for large uploads
  const FPS_WINDOW_MS = 2000;
  const JPEG_QUALITY = 0.9;
  const LABEL_FONT_PX = 15;  // caption size on screen, whatever the image's size
  const HEALTH_POLL_MS = 1000;  // how often a starting server is asked again
  const PROGRAM_POLL_MS = 500;  // how often /healthz is asked while a request is pending
  const MIN_DRAG_PX = 4;  // smaller drags (on screen) are clicks, not boxes
  const PHRASE_DELAY_MS = 400;  // typing pause before a phrase is scored
  const MATCHES = 3;  // boxes highlighted for a phrase

  const view = {
    body: document.body,
    model: document.getElementById('model'),
    file: document.getElementById('file'),
    live: document.getElementById('live'),
    phraseForm: document.getElementById('phrase-form'),
    phrase: document.getElementById('phrase'),
    labelsButton: document.getElementById('toggle-labels'),
    fps: document.getElementById('fps'),
    status: document.getElementById('status'),
    programNote: document.getElementById('program-note'),
    dropHint: document.getElementById('drop-hint'),
    frame: document.getElementById('frame'),
    picture: document.getElementById('picture'),
    overlay: document.getElementById('overlay'),
    name: document.getElementById('image-name'),
    camera: document.getElementById('camera'),
  };

  const state = {
    server: null,       // the /healthz answer
    result: null,       // the boxes shown: the last /api/caption answer and drawn boxes
    image: null,        // {blob, name} the image of `result`, to send again with boxes
    matches: null,      // {scores, order, best, title} for the phrase typed
    labels: true,
    live: null,         // {stream, running, frames, times} while live
    drag: null,         // {x, y, clientX, clientY, rect} while a box is being drawn
    uploadId: 0,        // the latest upload; answers to older ones are dropped
    phraseId: 0,        // the latest phrase request; answers to older ones are dropped
    phraseTimer: 0,
  };

  const boxView = new window.DenseCapBoxes.BoxView({
    overlay: view.overlay,
    captions: document.getElementById('captions'),
    slider: document.getElementById('num-boxes'),
    sliderValue: document.getElementById('num-boxes-value'),
  }, render);

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

  // POSTs an image and `fields` (values sent as JSON) to `path`; a named file goes as
  // multipart (its name comes back), a frame as the body with the fields in the query.
  async function post(path, blob, fileName, fields = {}) {
    const values = Object.entries(fields).map(([key, value]) => [key, JSON.stringify(value)]);
    let request;
    let url = path;
    if (fileName) {
      const form = new FormData();
      form.append('image', blob, fileName);
      for (const [key, value] of values) form.append(key, value);
      request = {method: 'POST', body: form};
    } else {
      if (values.length) url += `?${new URLSearchParams(values)}`;
      request = {method: 'POST', body: blob, headers: {'Content-Type': blob.type}};
    }
    let response;
    const stopWatching = watchPrograms();
    try {
      response = await fetch(url, request);
    } catch (error) {
      throw new Error('cannot reach the server');
    } finally {
      stopWatching();
    }
    if (!response.ok) throw new Error(await errorMessage(response));
    return checkResult(await response.json());
  }

  // Until the returned function is called, shows what a request waits for on the server
  // (e.g. "compiling the model for this image size") under the status line.
  function watchPrograms() {
    let watching = true;
    const show = text => {
      view.programNote.textContent = text ? `The server is ${text}\u2026` : '';
      view.programNote.hidden = !text;
    };
    const timer = setInterval(async () => {
      let info = null;
      try {
        info = await (await fetch('/healthz', {cache: 'no-store'})).json();
      } catch (error) {
        return;
      }
      const waiting = info && info.programs && info.programs.waiting;
      if (watching) show(waiting && waiting.length ? waiting[0].message : '');
    }, PROGRAM_POLL_MS);
    return () => {
      watching = false;
      clearInterval(timer);
      show('');
    };
  }

  const caption = (blob, fileName, fields) => post('/api/caption', blob, fileName, fields);

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

  function showModel(info) {
    view.model.textContent = `model ${info.model} (${info.config} config, ` +
        `images resized to ${info.image_size} px)`;
  }

  // The /healthz answer once the server is ready; says "warming up" while it starts.
  async function loadServerInfo() {
    for (;;) {
      const response = await fetch('/healthz', {cache: 'no-store'});
      let info = null;
      try {
        info = await response.clone().json();
      } catch (error) {
        // Not JSON: reported below.
      }
      if (response.ok && info) {
        state.server = info;
        showModel(info);
        return info;
      }
      if (response.status !== 503 || !info || info.status !== 'starting') {
        throw new Error(info && (info.error || info.status) ?
                        `${info.status || 'error'}: ${info.error || ''}` :
                        await errorMessage(response));
      }
      if (typeof info.model === 'string') showModel(info);
      view.body.dataset.state = 'starting';
      const programs = info.programs;
      let work = 'loading the model';
      if (programs && programs.total) {
        work = programs.in_cache === programs.total ?
            `loading ${programs.total} compiled programs from the cache` :
            `compiling the model (${programs.ready} of ${programs.total} programs ready)`;
      }
      setStatus(`Warming up: the server is ${work}\u2026 (this page continues by itself)`);
      await new Promise(resolve => setTimeout(resolve, HEALTH_POLL_MS));
    }
  }

  function setControlsDisabled(disabled) {
    view.file.disabled = disabled;
    view.live.disabled = disabled;
    view.phrase.disabled = disabled;
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

  function render() {
    const result = state.result;
    if (!result) return;
    let fontSize = 0;
    if (state.labels) {
      // The overlay scales its viewBox (image pixels) to the shown size: convert screen pixels.
      const shownWidth = view.overlay.getBoundingClientRect().width;
      fontSize = LABEL_FONT_PX * (shownWidth > 0 ? result.width / shownWidth : 1);
    }
    const matches = state.matches;
    boxView.draw(result, {width: result.width, height: result.height, fontSize,
                          order: matches && matches.order, matches});
    view.overlay.classList.toggle('can-draw', canDraw());
  }

  // Shows a new /api/caption answer for the image `blob` (named `name`, or a frame).
  function showResult(result, blob, name) {
    state.result = Object.assign(result, {given: result.boxes.map(() => false)});
    state.image = {blob, name};
    state.matches = null;
    state.phraseId += 1;
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
    showResult(result, file, file.name || 'image');
    boxView.resetHighlight();
    render();
    view.body.dataset.state = 'ready';
    if (view.phrase.value.trim()) findPhrase();
  }

  // ------------------------------------------------------------ drawn boxes

  function canDraw() {
    return Boolean(state.result && state.image && !state.live);
  }

  // A pointer event's position in the image's pixels (0-based, inside the image).
  function imagePoint(event) {
    const rect = view.overlay.getBoundingClientRect();
    const clamp = (v, max) => Math.min(max, Math.max(0, v));
    return {
      x: clamp((event.clientX - rect.left) / rect.width * state.result.width, state.result.width),
      y: clamp((event.clientY - rect.top) / rect.height * state.result.height,
               state.result.height),
    };
  }

  // The rectangle dragged from `start` to `event` as [x, y, w, h], 1-based, in the image's pixels.
  function dragBox(start, event) {
    const end = imagePoint(event);
    const round = v => Math.round(v * 100) / 100;
    return [round(Math.min(start.x, end.x) + 1), round(Math.min(start.y, end.y) + 1),
            round(Math.abs(end.x - start.x)), round(Math.abs(end.y - start.y))];
  }

  function onDragStart(event) {
    if (event.button !== 0 || !canDraw()) return;
    event.preventDefault();
    view.overlay.setPointerCapture(event.pointerId);
    const rect = document.createElementNS(view.overlay.namespaceURI, 'rect');
    rect.setAttribute('class', 'drag-box');
    view.overlay.append(rect);
    state.drag = {...imagePoint(event), clientX: event.clientX, clientY: event.clientY, rect};
  }

  function onDragMove(event) {
    if (!state.drag) return;
    const [x, y, w, h] = dragBox(state.drag, event);
    for (const [key, value] of Object.entries({x: x - 1, y: y - 1, width: w, height: h})) {
      state.drag.rect.setAttribute(key, value);
    }
  }

  function onDragEnd(event) {
    const drag = state.drag;
    if (!drag) return;
    state.drag = null;
    drag.rect.remove();
    const big = Math.abs(event.clientX - drag.clientX) >= MIN_DRAG_PX &&
        Math.abs(event.clientY - drag.clientY) >= MIN_DRAG_PX;
    if (event.type === 'pointerup' && big) captionBox(dragBox(drag, event));
  }

  // Captions `box` of the image shown and adds it at the top of the list.
  async function captionBox(box) {
    const {result, image} = state;
    setStatus('Captioning your box\u2026');
    let answer;
    try {
      answer = await caption(image.blob, image.name, {boxes: [box]});
    } catch (error) {
      if (state.result === result) setStatus(`Your box: ${error.message}`, true);
      return;
    }
    if (state.result !== result) return;
    for (const field of ['boxes', 'captions', 'scores']) result[field].unshift(answer[field][0]);
    result.given.unshift(true);
    boxView.changeCount(1, result.boxes.length);
    boxView.resetHighlight();
    const logProb = answer.caption_log_probs[0].toFixed(2);
    setStatus(`Your box: \u201c${answer.captions[0]}\u201d (caption log-probability ` +
              `${logProb}${answer.clipped[0] ? ', clipped to the image' : ''})`);
    if (state.matches || view.phrase.value.trim()) {
      findPhrase();
    } else {
      render();
    }
  }

  // ---------------------------------------------------------------- phrases

  // Scores the phrase typed against every box of the image shown; highlights the best.
  async function findPhrase() {
    clearTimeout(state.phraseTimer);
    const id = ++state.phraseId;
    const phrase = view.phrase.value.trim();
    const {result, image} = state;
    if (!phrase || !result || !image || state.live) {
      state.matches = null;
      if (result) render();
      if (phrase && !state.live) setStatus('Choose an image first, then type a phrase.');
      return;
    }
    const limit = state.server.regions.max_boxes;
    let answer;
    try {
      answer = await post('/api/score', image.blob, image.name,
                          {phrases: [phrase], boxes: result.boxes.slice(0, limit)});
    } catch (error) {
      if (id === state.phraseId) {
        state.matches = null;
        render();
        setStatus(`\u201c${phrase}\u201d: ${error.message}`, true);
      }
      return;
    }
    if (id !== state.phraseId || state.result !== result) return;
    // Words the model does not know, and what it scored instead (regions.phrases.notes).
    const quoted = words => words.map(w => `\u201c${w}\u201d`).join(', ');
    const unknown = answer.unknown_words[0];
    const scoredAs = unknown.length ? `the model does not know ${quoted(unknown)}; scored as ` +
        `\u201c${answer.phrases[0]}\u201d` : '';
    if (answer.no_known_content_words[0]) {
      // Only function words ("a", "the", "of", ...) known: their scores rank nothing.
      state.matches = null;
      render();
      setStatus(`\u201c${phrase}\u201d: ${scoredAs ? scoredAs + '. ' : ''}Not ranked: of this ` +
                `phrase the model knows only function words ` +
                `(${quoted(answer.phrases[0].split(' '))}), which do not say what to look for.`,
                true);
      return;
    }
    const scores = answer.mean_log_likelihood.map(row => row[0]);
    const order = [...scores.keys()].sort((a, b) => scores[b] - scores[a]);
    state.matches = {scores, order, best: new Set(order.slice(0, MATCHES)),
                     title: 'the phrase\u2019s mean log-likelihood per word'};
    setStatus(`\u201c${unknown.length ? phrase : answer.phrases[0]}\u201d: ` +
              (scoredAs ? `${scoredAs}. The ` : 'the ') + `${Math.min(MATCHES, scores.length)} ` +
              `best-matching regions are highlighted (mean log-likelihood per word)`);
    render();
  }

  function onPhraseInput() {
    clearTimeout(state.phraseTimer);
    state.phraseTimer = setTimeout(findPhrase, PHRASE_DELAY_MS);
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
      let frame;
      let result;
      try {
        frame = await grabFrame(frameCanvas, sendCanvas);
        result = await caption(frame, null);
      } catch (error) {
        if (live.running) {
          stopLive();
          fail(`Live mode stopped: ${error.message}`);
        }
        return;
      }
      if (!live.running) return;
      showPicture(frameCanvas, frameCanvas.width, frameCanvas.height);
      showResult(result, frame, null);
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
    render();
  }

  // ----------------------------------------------------------------- wiring

  function bindControls() {
    view.file.addEventListener('change', () => {
      captionFile(view.file.files[0]);
      view.file.value = '';
    });
    view.live.addEventListener('click', () => (state.live ? stopLive() : startLive()));
    view.overlay.addEventListener('pointerdown', onDragStart);
    view.overlay.addEventListener('pointermove', onDragMove);
    view.overlay.addEventListener('pointerup', onDragEnd);
    view.overlay.addEventListener('pointercancel', onDragEnd);
    view.phrase.addEventListener('input', onPhraseInput);
    view.phraseForm.addEventListener('submit', event => {
      event.preventDefault();
      findPhrase();
    });
    view.labelsButton.addEventListener('click', () => {
      state.labels = !state.labels;
      view.labelsButton.setAttribute('aria-pressed', String(state.labels));
      render();
    });
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
      if (!state.server) return;  // still warming up
      const file = [...event.dataTransfer.files].find(f => f.type.startsWith('image/'));
      if (file) captionFile(file);
      else fail('Drop an image file.');
    });
  }

  async function main() {
    bindControls();
    setControlsDisabled(true);
    try {
      await loadServerInfo();
    } catch (error) {
      fail(`The server does not answer: ${error.message}`);
      return;
    }
    setControlsDisabled(false);
    setStatus('');
    view.body.dataset.state = 'idle';
  }

  main();
})();
