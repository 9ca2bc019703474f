"""The DenseCap web demo: one process with the model in memory, a page and a JSON API.

  python -m densecap_jax.serve                       # the bundled model, http://127.0.0.1:8000/
  python -m densecap_jax.serve --checkpoint MODEL_DIR --host 0.0.0.0 --port 5000 \\
      --certfile server.crt --keyfile server.key     # HTTPS (browsers allow webcams only
                                                     # on https:// or localhost pages)

The page at ``/`` captions an uploaded image or the browser's webcam, live;
a rectangle dragged on the image is captioned, and a phrase typed highlights
the regions it describes best. ``POST /api/caption`` takes an image (multipart
field ``image``, or the raw body with ``Content-Type: image/...``) and answers
boxes (xywh, 1-based, in the uploaded image's pixels), scores and captions;
with ``boxes`` (a JSON list of ``[x, y, w, h]``) it captions those instead.
``POST /api/score`` takes an image and ``phrases`` (a JSON list of strings),
optionally ``boxes``, and answers each phrase's log-likelihood given each
region. ``GET /healthz`` reports the model and its shape buckets (see
``densecap_jax.server.app``).

The original's demo (reference §11) hands images from a Flask server to a
separate Lua daemon through files; here the model is loaded once and requests
that arrive together are captioned in one batch. The server is ready (a
``ready: URL`` line, ``/healthz`` 200) as soon as the parameters are loaded;
the detection programs (one per shape bucket and batch size) are compiled
then, as ``--warm_up`` says:

* ``background`` (the default): a request compiles the program of its image
  size first, waiting for it (the page says "compiling the model for this
  image size"); one low-priority thread compiles the others meanwhile, and a
  ``warmed up:`` line says when all are done.
* ``first_use``: only the programs requests need, when they need them.
* ``start``: all of them before the server is ready; until then ``/healthz``
  and the API answer 503 (``"status": "starting"``) and the page says it is
  warming up.

The programs for given boxes and phrases compile on first use. Compiled
programs are kept between runs in the compilation cache (see
``densecap_jax.runtime``; ``--no_compilation_cache`` turns it off): a later
start loads them instead of compiling, and says so ("loading N compiled
programs from the cache"). ``/healthz`` shows, under ``"programs"``, how many
are ready, which are compiling or loading, and which requests wait for one.
SIGTERM or Ctrl-C stops the server with exit status 0 and one ``shutdown:``
line.
"""

import argparse
import os
import signal
import socket
import ssl
import sys
import threading
import time

# The ready line's time counts from here: the package's imports below are included.
_STARTED = time.perf_counter()

# pylint: disable=wrong-import-position
from densecap_jax import predictor as predictor_lib
from densecap_jax import runtime
from densecap_jax.commands import flags as cli
from densecap_jax.server import app as app_lib
from densecap_jax.server import captioner as captioner_lib
from densecap_jax.server import request_parsing
# pylint: enable=wrong-import-position


WARM_UP_CHOICES = ("background", "first_use", "start")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      prog=runtime.prog_name("densecap_jax.serve"),
      description="Web demo and JSON API for dense captioning.")
  server = parser.add_argument_group("server")
  server.add_argument("--host", default="127.0.0.1",
                      help="address to listen on (0.0.0.0: every interface)")
  server.add_argument("--port", type=int, default=8000, help="port; 0 = any free port")
  server.add_argument("--certfile", default="", help="TLS certificate (PEM) to serve HTTPS")
  server.add_argument("--keyfile", default="", help="TLS private key (PEM) of --certfile")
  server.add_argument("--max_upload_bytes", type=int, default=16 * 1024 * 1024,
                      help="largest request body accepted (413 beyond)")
  server.add_argument("--max_pixels", type=int, default=40_000_000,
                      help="largest image (width x height) accepted, checked before decoding")
  server.add_argument("--max_batch", type=int, default=4,
                      help="most images captioned in one model call")
  server.add_argument("--batch_wait_ms", type=float, default=5.0,
                      help="how long a batch waits for more requests after its first")
  server.add_argument("--access_log", action="store_true", help="log every request")
  server.add_argument("--warm_up", choices=WARM_UP_CHOICES, default="background",
                      help="when the detection programs compile: 'background' (each request "
                           "compiles the one it needs first, one low-priority thread the "
                           "rest), 'first_use' (only when a request needs one) or 'start' (all "
                           "before the server is ready)")
  cli.add_model_flags(parser, final_nms_help="default of the request field final_nms_thresh")
  return parser.parse_args(argv)


def check_args(args):
  """Raises ValueError with a one-line reason for unusable flags."""
  if bool(args.certfile) != bool(args.keyfile):
    raise ValueError("give both --certfile and --keyfile, or neither")
  for flag, path in (("--certfile", args.certfile), ("--keyfile", args.keyfile)):
    if path and not os.path.isfile(path):
      raise ValueError(f"{flag} not found: {path}")
  for flag, value in (("--max_upload_bytes", args.max_upload_bytes),
                      ("--max_pixels", args.max_pixels), ("--max_batch", args.max_batch)):
    if value < 1:
      raise ValueError(f"{flag} must be positive, got {value}")
  if args.batch_wait_ms < 0:
    raise ValueError(f"--batch_wait_ms must be non-negative, got {args.batch_wait_ms}")
  cli.check_model_flags(args)
  if not 0 <= args.port <= 65535:
    raise ValueError(f"--port must be in [0, 65535], got {args.port}")
  if args.certfile:
    try:
      ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(args.certfile, args.keyfile)
    except (ssl.SSLError, OSError) as e:
      raise ValueError(f"cannot use --certfile {args.certfile} with --keyfile {args.keyfile}: "
                       f"{e}") from None


def bind(host, port):
  """A bound TCP socket (not yet listening) for ``host:port``; raises ValueError if taken."""
  family = socket.AF_INET6 if ":" in host else socket.AF_INET
  sock = socket.socket(family, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    sock.bind((host, port))
  except OSError as e:
    sock.close()
    raise ValueError(f"cannot listen on {host}:{port}: {e.strerror}") from None
  return sock


class Stopped(BaseException):
  """Raised in the main thread by SIGTERM / SIGINT outside the running server."""

  def __init__(self, signum):
    super().__init__(signum)
    self.name = signal.Signals(signum).name


def _raise_stopped(signum, frame):
  del frame
  raise Stopped(signum)


def main(argv=None):
  args = parse_args(argv)
  try:
    check_args(args)
    sock = bind(args.host, args.port)
  except ValueError as e:
    sys.exit(f"error: {e}")
  # While the server runs, uvicorn handles both signals (a graceful stop) and
  # raises them again afterwards, which lands here as well.
  previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
  busy = threading.Event()
  try:
    status = serve(args, sock, busy)
  except Stopped as stop:
    print(f"shutdown: {stop.name} received, server stopped", flush=True)
    status = 0
  finally:
    sock.close()
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  if busy.is_set():
    # Stopped while programs compile: the compilations cannot be interrupted,
    # and exiting normally would wait for them.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # pylint: disable=protected-access
  if status:
    sys.exit(status)


def serve(args, sock, busy=None):
  """Loads the model, listens on the bound ``sock``; compiles as ``--warm_up`` says; serves.

  Args:
    args: the parsed flags.
    sock: a bound TCP socket.
    busy: a ``threading.Event``, set while programs compile.

  Returns:
    The exit status: 0 when stopped, 1 when compiling the model failed.
  """
  import uvicorn  # pylint: disable=g-import-not-at-top

  predictor = cli.load_model_from_flags(args, announce=False)
  checkpoint = args.checkpoint or predictor_lib.bundled_model_path()
  captioner = captioner_lib.Captioner(predictor, args.max_batch,
                                      key=cli.program_key(predictor), busy=busy)
  programs = captioner.programs
  print(plan_line(programs, len(predictor.buckets), captioner.batch_sizes, args.warm_up,
                  cache=runtime.setup_from_args(args)), flush=True)

  scheme = "https" if args.certfile else "http"
  host = f"[{args.host}]" if ":" in args.host else args.host
  url = f"{scheme}://{host}:{sock.getsockname()[1]}/"
  model_name = os.path.basename(os.path.normpath(checkpoint))
  server = None
  failed = []

  def on_ready():
    seconds = time.perf_counter() - _STARTED
    if args.warm_up == "start":
      done = "loaded" if programs.in_cache == len(programs) else "compiled"
      state = f"{len(programs)} programs {done}"
    else:
      later = "in the background" if args.warm_up == "background" else "on first use"
      verb = ("load" if programs.in_cache == len(programs) else "compile" if not programs.in_cache
              else "load or compile")
      state = f"{len(programs) - len(programs.pending())} of {len(programs)} programs ready, " \
              f"the others {verb} {later}"
    print(f"ready: {url} (model {model_name}, {state}; {seconds:.1f} s)", flush=True)

  def background():
    captioner.background_warm_up()
    print(f"warmed up: {programs.summary()}", flush=True)

  def on_failure(error):
    print(f"error: compiling the model failed: {type(error).__name__}: {error}",
          file=sys.stderr, flush=True)
    failed.append(error)
    server.should_exit = True

  app = app_lib.create_app(captioner, model_name=model_name,
                           max_upload_bytes=args.max_upload_bytes, max_pixels=args.max_pixels,
                           batch_wait_ms=args.batch_wait_ms, on_ready=on_ready,
                           warm_up=captioner.warm_up if args.warm_up == "start" else None,
                           background=background if args.warm_up == "background" else None,
                           on_failure=on_failure)
  sock.listen(128)
  config = uvicorn.Config(app, ssl_certfile=args.certfile or None,
                          ssl_keyfile=args.keyfile or None, access_log=args.access_log,
                          log_level="info" if args.access_log or args.verbose else "warning",
                          h11_max_incomplete_event_size=request_parsing.MAX_REQUEST_HEAD_BYTES,
                          timeout_graceful_shutdown=5)
  server = uvicorn.Server(config)
  print(f"listening: {url}" + (" (warming up; /healthz answers 503 until ready)"
                               if args.warm_up == "start" else ""), flush=True)
  server.run(sockets=[sock])
  return 1 if failed else 0


def plan_line(programs, num_buckets, batch_sizes, warm_up, cache):
  """The line saying which detection programs load from the cache, which compile, and when."""
  total, cached = len(programs), programs.in_cache
  detail = (f"{num_buckets} shape bucket{'s' if num_buckets > 1 else ''} x batch "
            f"size{'s' if len(batch_sizes) > 1 else ''} {', '.join(map(str, batch_sizes))}")
  when = {"background": "in the background, each request's own first",
          "first_use": "on first use", "start": "before the server is ready"}[warm_up]
  if cached == total:
    return f"loading {total} compiled programs from the cache {when} ({detail})"
  state = "first run only" if cache else "compilation cache off"
  if not cached:
    return f"compiling {total} programs {when} ({detail}; {state})"
  return (f"loading {cached} compiled program{'s' if cached > 1 else ''} from the cache and "
          f"compiling {total - cached} {when} ({detail})")


if __name__ == "__main__":
  main()
