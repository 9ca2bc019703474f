"""The HTTP application: JSON API, the demo page, and clear errors for bad requests.

Routes:
  ``GET /``                 the demo page (``densecap_jax/static/index.html``).
  ``GET /static/<name>``    its scripts and style sheets, from a fixed list (the box
                            drawing shared with the results browser comes from
                            ``densecap_jax/viewer``).
  ``GET /healthz``          status, model name, device, buckets, limits, batching
                            and region counters, and ``"programs"``: how many
                            detection programs are compiled, which the
                            background is compiling or loading, and which
                            requests wait for (``server.programs``). 200 with
                            ``"status": "ok"`` once the server takes requests,
                            503 with ``"status": "starting"`` (or ``"failed"``
                            and ``"error"``) before.
  ``POST /api/caption``     an image as ``multipart/form-data`` (field ``image``)
                            or as the raw body (``Content-Type: image/...``);
                            optional query or form fields ``final_nms_thresh``,
                            ``max_boxes``, ``min_score``. Answers ``{"boxes":
                            [[x, y, w, h], ...], "scores", "captions", "width",
                            "height", "img_name"}``: boxes 1-based in the
                            uploaded image's pixels (the ``results.json`` fields
                            of reference §10.2 plus the webcam daemon's size
                            fields, §11.1). With the field ``boxes`` (a JSON
                            list of ``[x, y, w, h]`` in the uploaded image's
                            pixels, ``ops.boxes``) it captions those boxes
                            instead of detecting: ``{"boxes"`` (as used: clipped
                            to the image), ``"clipped"``, ``"outside"`` (wholly
                            outside: clipped onto the border strip, see
                            ``ops.boxes``), ``"captions"``,
                            ``"caption_log_probs"``, ``"scores"`` (objectness
                            logits, in the boxes' order), ``"width"``,
                            ``"height"``, ``"img_name"}``. Every box a detection
                            answer holds can be given back.
  ``POST /api/score``       the image as for ``/api/caption``, the field
                            ``phrases`` (a JSON list of strings) and optionally
                            ``boxes`` (as above; else the model's detections,
                            kept as the three options say). Answers ``{"boxes",
                            "scores", "captions", "log_likelihood",
                            "mean_log_likelihood", "phrases", "unknown_words",
                            "no_known_content_words",
                            "width", "height", "img_name"}`` (and ``"clipped"``,
                            ``"outside"`` with ``boxes``): the log-likelihoods are
                            ``[num_boxes][num_phrases]``, summed over each
                            phrase's words and END and per token; ``phrases``
                            are the words scored, ``unknown_words`` per phrase
                            those outside the vocabulary, and
                            ``no_known_content_words`` per phrase whether the
                            words scored are all function words ("a man riding
                            a horse" scored as "a a": nothing to rank by;
                            ``regions.phrases``).

While the server is starting both API routes answer 503 with a one-line JSON
error; once it is ready, a request whose program is not compiled yet waits
while it compiles (``captioner``). Detections go through the micro-batcher
(``batching``); requests with ``boxes`` and ``/api/score`` bypass it: each
runs alone in a worker thread, one at a time, beside the batcher's thread
(their programs compile on first use, see ``captioner``).

Every error is JSON ``{"error": "..."}`` with a 4xx status (5xx only for a
failure of the server itself); a bad box or phrase is a 400 naming its index.
Errors are one line, and quote at most 60 characters of a value sent
(``files.quoted``, with its length). What a request sends is read and
checked by ``request_parsing``: ``boxes`` and ``phrases`` are parsed with
their nesting bounded (``MAX_JSON_DEPTH``) and integers beyond a float's
range read as infinite (refused as a box's value); a query string over
``MAX_QUERY_BYTES`` is a 414 (send long fields in the multipart form); a
request line and headers over ``MAX_REQUEST_HEAD_BYTES`` are refused by the
HTTP server with a plain-text 400. A client's bad input logs nothing.
Page files are read once at start-up from a fixed list; no request path is
ever mapped to the file system.
"""

import contextlib
import importlib.resources
import logging
import os
import threading

import anyio
import jax
from starlette import applications, exceptions, responses, routing

from densecap_jax.server import batching
from densecap_jax.server import captioner as captioner_lib
from densecap_jax.server import request_parsing as parsing

# The page's files: URL path -> (package folder in densecap_jax, file name, media type).
STATIC_FILES = {
    "/": ("static", "index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("static", "app.js", "text/javascript; charset=utf-8"),
    "/static/app.css": ("static", "app.css", "text/css; charset=utf-8"),
    "/static/boxes.js": ("viewer", "boxes.js", "text/javascript; charset=utf-8"),
    "/static/boxes.css": ("viewer", "boxes.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' blob: data:; "
                                "media-src 'self' blob: mediastream:; object-src 'none'; "
                                "base-uri 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

STARTING_MESSAGE = "the server is starting (loading the model); try again in a few seconds"

_log = logging.getLogger(__name__)


class Readiness:
  """Where the server is in its start-up: ``status`` ``"starting"``, ``"ok"`` or ``"failed"``.

  Attributes:
    status: the state; requests are served only in ``"ok"``.
    error: one line saying why, when ``"failed"``.
  """

  def __init__(self, ready=False):
    self.status = "ok" if ready else "starting"
    self.error = None

  @property
  def ready(self):
    return self.status == "ok"


def read_static_files():
  """``{url path: (bytes, media type)}`` for the page, read from the package."""
  package = importlib.resources.files("densecap_jax")
  return {path: ((package / folder / name).read_bytes(), media) for path, (folder, name, media) in
          STATIC_FILES.items()}


def create_app(captioner, *, model_name, max_upload_bytes, max_pixels, batch_wait_ms,
               max_pending=256, on_ready=None, warm_up=None, on_failure=None,
               background=None):
  """The Starlette application serving ``captioner``.

  With ``warm_up`` the application answers at once: ``warm_up()`` runs in a
  background thread when the application starts, and until it has returned
  ``/healthz`` and the API routes answer 503 (``app.state.readiness``).
  ``background()`` runs in another thread once the application is ready,
  while it serves.

  Args:
    captioner: a ``captioner.Captioner``, warmed up unless ``warm_up`` is given.
    model_name: shown by ``/healthz`` and the page.
    max_upload_bytes: largest request body accepted.
    max_pixels: largest image (width x height) accepted.
    batch_wait_ms: how long a batch waits for more requests after its first.
    max_pending: requests waiting for the model at once; more are answered 503.
    on_ready: called with no arguments once the application is ready (started,
      and ``warm_up`` done).
    warm_up: called with no arguments in a thread at start-up (compiles the
      model); ``None``: ``captioner`` is ready.
    on_failure: called with the exception if ``warm_up`` or ``background``
      raises; the server then answers 503 with ``"status": "failed"``.
    background: called with no arguments in a daemon thread once ready
      (compiles the programs no request has needed yet); ``None``: nothing.
  """
  static = read_static_files()
  batcher = batching.MicroBatcher(captioner.run, max_batch=captioner.max_batch,
                                  wait_s=batch_wait_ms / 1000, max_pending=max_pending)
  decode_limiter = anyio.CapacityLimiter(os.cpu_count() or 1)
  region_limiter = anyio.CapacityLimiter(1)  # box and phrase requests: one at a time
  region_counts = {"requests": 0}
  predictor = captioner.predictor
  device = jax.devices()[0]
  readiness = Readiness(ready=warm_up is None)
  programs = getattr(captioner, "programs", None)

  def prepare(data):
    image = parsing.decode_image(data, max_pixels)
    try:
      return captioner.prepare(image)
    except ValueError as e:
      raise parsing.RequestError(400, f"cannot use the image: {e}") from None

  def prepare_with_boxes(data, boxes):
    """``(prepared, Captioner.check_boxes' tuple or None)``, the boxes checked against it."""
    prepared = prepare(data)
    if boxes is None:
      return prepared, None
    try:
      return prepared, captioner.check_boxes(prepared, boxes)
    except ValueError as e:
      raise parsing.RequestError(400, str(e)) from None

  def check_ready():
    if not readiness.ready:
      raise parsing.RequestError(503, STARTING_MESSAGE if readiness.status == "starting"
                                 else f"the model failed to start: {readiness.error}")

  async def run_regions(fn, *args):
    """``fn(*args)`` in the region worker thread: serialised, the event loop stays free."""
    region_counts["requests"] += 1
    return await anyio.to_thread.run_sync(fn, *args, limiter=region_limiter)

  async def caption(request):
    check_ready()
    data, name, fields = await parsing.read_upload(request, max_upload_bytes)
    options, texts = parsing.parse_fields(fields, captioner.default_options(),
                                          (parsing.BOXES_FIELD,))
    if parsing.BOXES_FIELD in texts:
      boxes = parsing.parse_boxes(texts[parsing.BOXES_FIELD])
      prepared, given = await anyio.to_thread.run_sync(prepare_with_boxes, data, boxes,
                                                       limiter=decode_limiter)
      result = await run_regions(captioner.caption_boxes, prepared, given)
    else:
      prepared = await anyio.to_thread.run_sync(prepare, data, limiter=decode_limiter)
      try:
        result = await batcher.submit(captioner_lib.CaptionRequest(prepared, options))
      except batching.QueueFullError as e:
        raise parsing.RequestError(503, f"server busy ({e}); try again") from None
    return responses.JSONResponse(dict(result, img_name=name))

  async def score(request):
    check_ready()
    data, name, fields = await parsing.read_upload(request, max_upload_bytes)
    options, texts = parsing.parse_fields(fields, captioner.default_options(),
                                          (parsing.BOXES_FIELD, parsing.PHRASES_FIELD))
    if parsing.PHRASES_FIELD not in texts:
      raise parsing.RequestError(400, "give the phrases to score: field 'phrases', a JSON "
                                      "list of strings")
    try:
      encoded = captioner.encode_phrases(parsing.parse_phrases(texts[parsing.PHRASES_FIELD]))
    except ValueError as e:
      raise parsing.RequestError(400, str(e)) from None
    boxes = (parsing.parse_boxes(texts[parsing.BOXES_FIELD]) if parsing.BOXES_FIELD in texts
             else None)
    prepared, given = await anyio.to_thread.run_sync(prepare_with_boxes, data, boxes,
                                                     limiter=decode_limiter)
    result = await run_regions(captioner.score, prepared, encoded, given, options)
    return responses.JSONResponse(dict(result, img_name=name))

  async def healthz(request):
    del request
    extra = {"error": readiness.error} if readiness.error else {}
    return responses.JSONResponse({
        "status": readiness.status,
        **extra,
        "model": model_name,
        "config": predictor.config.name,
        "device": f"{device.platform} ({device.device_kind})",
        "image_size": predictor.image_size,
        "buckets": [list(b) for b in predictor.buckets],
        "batch_sizes": list(captioner.batch_sizes),
        "final_nms_thresh": float(predictor.final_nms_thresh),
        "max_upload_bytes": max_upload_bytes,
        "max_pixels": max_pixels,
        "batches": {"requests": batcher.stats.items, "batches": batcher.stats.batches,
                    "largest": batcher.stats.largest_batch},
        "regions": {"requests": region_counts["requests"],
                    "max_boxes": parsing.MAX_GIVEN_BOXES,
                    "max_phrases": parsing.MAX_PHRASES,
                    "max_phrase_words": int(predictor.config.seq_length)},
        **({"programs": programs.status()} if programs is not None else {}),
    }, status_code=200 if readiness.ready else 503,
       headers=None if readiness.ready else {"Retry-After": "1"})

  def page_file(path):
    content, media_type = static[path]

    async def endpoint(request):
      del request
      return responses.Response(content, media_type=media_type,
                                headers={"Cache-Control": "no-cache"})
    return endpoint

  def failed(e):
    readiness.error = f"{type(e).__name__}: {e}".splitlines()[0]
    readiness.status = "failed"
    if on_failure:
      on_failure(e)
    else:
      _log.error("warming up the model failed", exc_info=e)

  def run_background():
    try:
      background()
    except Exception as e:  # pylint: disable=broad-except
      failed(e)

  def now_ready():
    readiness.status = "ok"
    if on_ready:
      on_ready()
    if background is not None:
      threading.Thread(target=run_background, name="background-compile", daemon=True).start()

  def start_up():
    try:
      warm_up()
    except Exception as e:  # pylint: disable=broad-except
      failed(e)
      return
    now_ready()

  @contextlib.asynccontextmanager
  async def lifespan(app):
    del app
    await batcher.start()
    if warm_up is None:
      now_ready()
    else:
      threading.Thread(target=start_up, name="warm-up", daemon=True).start()
    try:
      yield
    finally:
      await batcher.stop()

  routes = [routing.Route("/api/caption", caption, methods=["POST"]),
            routing.Route("/api/score", score, methods=["POST"]),
            routing.Route("/healthz", healthz, methods=["GET"])]
  routes += [routing.Route(path, page_file(path), methods=["GET"]) for path in static]
  app = applications.Starlette(routes=routes, lifespan=lifespan, exception_handlers={
      parsing.RequestError: _request_error, exceptions.HTTPException: _http_error,
      Exception: _server_error})
  app.add_middleware(_SecurityHeaders)
  app.state.readiness = readiness
  return app


async def _request_error(request, error):
  del request
  headers = {"Retry-After": "1"} if error.status == 503 else None
  return responses.JSONResponse({"error": error.message}, status_code=error.status,
                                headers=headers)


async def _http_error(request, error):
  del request
  message = {404: "not found", 405: "method not allowed"}.get(error.status_code, error.detail)
  return responses.JSONResponse({"error": message}, status_code=error.status_code,
                                headers=error.headers)


async def _server_error(request, error):
  _log.error("request %s %s failed", request.method, request.url.path, exc_info=error)
  return responses.JSONResponse({"error": "internal server error"}, status_code=500)


class _SecurityHeaders:
  """ASGI middleware adding ``SECURITY_HEADERS`` to every HTTP response."""

  def __init__(self, app):
    self.app = app

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      await self.app(scope, receive, send)
      return

    async def send_with_headers(message):
      if message["type"] == "http.response.start":
        headers = list(message.get("headers", []))
        headers += [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
        message = dict(message, headers=headers)
      await send(message)

    await self.app(scope, receive, send_with_headers)
