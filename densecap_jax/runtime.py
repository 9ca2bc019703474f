"""Process start-up shared by every command: the compilation cache, quiet logs, compile notices.

Every command (predict, extract_features, serve, training, evaluation)
calls :func:`setup` once, before its first JAX computation; the library's
entry points that compile (``load_model``, ``DenseCapPredictor``,
``train.trainer.train``, ``evaluation.split_eval.evaluate_split``) call
:func:`use_compilation_cache`, which turns on the same cache without touching
logging, unless the process chose already:

* JAX's persistent compilation cache is on by default, in
  ``$XDG_CACHE_HOME/densecap_jax/jax`` (else ``~/.cache/densecap_jax/jax``),
  so a second start loads its compiled programs instead of compiling them.
  The environment variable ``DENSECAP_JAX_CACHE_DIR`` names another folder,
  or turns the cache off when set to ``""`` or ``off``; without it a
  ``JAX_COMPILATION_CACHE_DIR`` the user set is respected. A folder that
  cannot be created or written is reported once (one line on stderr) and the
  command runs without the cache.
* Log noise is hidden unless ``verbose``: INFO lines of JAX (e.g. "Unable to
  initialize backend 'tpu'"), orbax and absl (orbax's per-load and per-save
  lines), and absl / orbax warnings. JAX warnings are kept.

API:

``add_runtime_flags(parser)``
    argparse: adds a "runtime" group with ``--verbose`` and
    ``--no_compilation_cache`` (alias ``--nocompilation_cache``), stored as
    ``args.verbose`` and ``args.compilation_cache``.
``setup_from_args(args)``
    :func:`setup` with those two values (missing attributes: the defaults).
``define_absl_flags()`` / ``setup_from_absl()``
    the same for absl drivers: boolean flags ``--verbose`` and
    ``--compilation_cache`` (``--nocompilation_cache`` turns it off), defined
    once in ``absl.flags.FLAGS``; call ``setup_from_absl()`` in ``main``.
``setup(*, verbose=False, compilation_cache=True) -> str | None``
    applies the settings; idempotent; returns the cache folder in use, or
    ``None`` when the cache is off or unusable.
``use_compilation_cache(enabled=True) -> str | None``
    for library entry points: the persistent cache of :func:`cache_dir` on,
    unless :func:`setup` (or an earlier call) already chose, or the user set
    JAX's own ``jax_compilation_cache_dir``; ``enabled=False`` leaves it off.
    Returns the folder in use (``None``: off).
``prog_name(module) -> str``
    the command's name as the user typed it (``densecap-predict``, ``python
    -m densecap_jax.predict``), for argparse's ``prog``.
``cache_dir() -> str | None``
    the folder the environment selects (``None``: off), without creating it.
``compiling(count, *, key=None, detail="", upto=False, file=None)``
    context manager around the first compilations. On entry it prints, once
    per process and key, ``compiling N programs (first run only)`` — or
    ``loading N compiled programs from the cache`` when a run with the same
    ``key`` already compiled them into this cache, or ``(compilation cache
    off)``. ``key`` is any JSON-able value naming what the programs depend
    on (config, shapes, batch sizes; not parameter values); the JAX version,
    back end and device count are added. On a normal exit the key is recorded
    in the cache folder (``densecap_jax-programs.json``). The
    object it yields has ``seconds``, ``cache_hits`` and ``cache_misses``
    (persistent-cache look-ups inside the block) once the block is left.
``announce_compiles(count, ...) -> Compiling``
    the same notice for code that compiles lazily: call ``.done()`` (or let
    ``record_at_exit=True`` do it at exit, if anything was compiled) instead
    of leaving a ``with`` block.

Example (argparse)::

  parser = argparse.ArgumentParser()
  runtime.add_runtime_flags(parser)
  args = parser.parse_args()
  runtime.setup_from_args(args)
  with runtime.compiling(len(buckets), key=("serve", model_dir, buckets)) as c:
    warm_up()
  print(f"ready ({c.seconds:.1f} s)")

Example (absl)::

  runtime.define_absl_flags()          # at import, next to the other flags
  def main(argv):
    runtime.setup_from_absl()
    with runtime.compiling(1, key=("train", config_json), detail="the training step"):
      state = first_step(state)
"""

import atexit
import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
import threading
import time

CACHE_ENV = "DENSECAP_JAX_CACHE_DIR"
OFF_VALUES = ("", "off")
# Programs that compile faster than this are not written to the cache (tiny
# eager ops); every model program takes longer.
MIN_COMPILE_TIME_SECS = 0.1
MANIFEST_NAME = "densecap_jax-programs.json"
# Loggers quieted unless verbose: name -> level.
QUIET_LEVELS = {"absl": logging.ERROR, "orbax": logging.ERROR, "jax": logging.WARNING}
NOISE_PREFIXES = ("Unable to initialize backend",)

_lock = threading.RLock()
_state = {"cache": None, "configured": False, "warned": set(), "announced": set(),
          "listening": False, "hits": 0, "requests": 0, "filter": None}


def cache_dir():
  """The compilation cache folder the environment selects; ``None`` when turned off."""
  if CACHE_ENV in os.environ:
    value = os.environ[CACHE_ENV].strip()
    return None if value.lower() in OFF_VALUES else os.path.expanduser(value)
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.path.expanduser(os.environ["JAX_COMPILATION_CACHE_DIR"])
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "densecap_jax", "jax")


def prog_name(module):
  """The command's name as the user typed it, for ``--help`` usage lines and errors.

  ``densecap-predict`` when run as that console script, ``python -m
  densecap_jax.predict`` when run with ``-m`` (a package's ``__main__`` named
  by its package), the script's path as typed (``eval/evaluate.py``), and
  ``python -m MODULE`` otherwise (e.g. when ``main(argv)`` is called from
  Python).

  Args:
    module: the command's module, e.g. ``"densecap_jax.predict"``.
  """
  main = sys.modules.get("__main__")
  spec = getattr(main, "__spec__", None)
  argv0 = sys.argv[0] if sys.argv else ""
  if spec is not None and spec.name:  # python -m NAME
    name = spec.name.removesuffix(".__main__")
    if name.startswith(("densecap_jax", "tools")):
      return f"python -m {name}"
  elif argv0:
    base = os.path.basename(argv0)
    if base.startswith("densecap-"):  # a console script
      return base
    if argv0.endswith(".py") and base != "__main__.py":  # a script of the checkout, as typed
      return argv0
  return f"python -m {module}"


def add_runtime_flags(parser):
  """Adds ``--verbose`` and ``--no_compilation_cache`` to an argparse parser; returns the group."""
  group = parser.add_argument_group("runtime")
  group.add_argument("--verbose", action="store_true",
                     help="show the INFO and warning lines of JAX, orbax and absl")
  group.add_argument("--no_compilation_cache", "--nocompilation_cache", dest="compilation_cache",
                     action="store_false",
                     help=f"do not keep compiled programs between runs (default: kept in "
                          f"~/.cache/densecap_jax/jax; {CACHE_ENV}=DIR or off)")
  return group


def setup_from_args(args):
  """:func:`setup` with ``args.verbose`` and ``args.compilation_cache`` (see ``add_runtime_flags``)."""
  return setup(verbose=getattr(args, "verbose", False),
               compilation_cache=getattr(args, "compilation_cache", True))


def define_absl_flags():
  """Defines the absl flags ``--verbose`` and ``--[no]compilation_cache`` unless defined."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if "verbose" not in flags.FLAGS:
    flags.DEFINE_bool("verbose", False, "show the INFO and warning lines of JAX, orbax and absl")
  if "compilation_cache" not in flags.FLAGS:
    flags.DEFINE_bool("compilation_cache", True,
                      f"keep compiled programs between runs in ~/.cache/densecap_jax/jax "
                      f"({CACHE_ENV}=DIR or off); --nocompilation_cache: do not")


def setup_from_absl():
  """:func:`setup` with the flags of :func:`define_absl_flags` (call after flags are parsed)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  values = flags.FLAGS
  return setup(verbose="verbose" in values and values.verbose,
               compilation_cache="compilation_cache" not in values or values.compilation_cache)


def setup(*, verbose=False, compilation_cache=True):
  """Turns on the compilation cache and sets log levels; safe to call more than once.

  Call it before the first JAX computation: JAX reads the cache settings at
  its first compilation.

  Args:
    verbose: keep every INFO and warning line of JAX, orbax and absl.
    compilation_cache: use the persistent compilation cache of
      :func:`cache_dir`.

  Returns:
    The cache folder in use, or ``None``.
  """
  with _lock:
    _set_logging(verbose)
    folder = cache_dir() if compilation_cache else None
    if folder:
      folder = _usable(folder)
    _set_cache(folder)
    _state["configured"] = True
    return folder


def use_compilation_cache(enabled=True):
  """The persistent compilation cache for library use: on by default, once per process.

  The library's entry points that compile call it (``load_model(...,
  compilation_cache=False)`` passes ``enabled=False``), so a Python program
  loads the programs an earlier process compiled, as the commands do. It
  changes nothing when the process chose already: after :func:`setup` or an
  earlier call, or when the user set JAX's ``jax_compilation_cache_dir``
  (then that folder is used). Unlike :func:`setup` it leaves logging alone.
  ``DENSECAP_JAX_CACHE_DIR=off`` turns the cache off here too.

  Args:
    enabled: ``False``: leave the cache off (JAX's default) in this process
      unless something else turns it on.

  Returns:
    The cache folder in use, or ``None``.
  """
  with _lock:
    if _state["configured"]:
      return _state["cache"]
    import jax  # pylint: disable=g-import-not-at-top
    if jax.config.jax_compilation_cache_dir:  # the user's own choice
      _state["cache"] = jax.config.jax_compilation_cache_dir
      _listen(jax)
    elif enabled:
      folder = cache_dir()
      _set_cache(_usable(folder) if folder else None)
    else:
      return None  # undecided: a later call may still turn it on
    _state["configured"] = True
    return _state["cache"]


def _usable(folder):
  """``folder`` (absolute) if it can be created and written; else ``None``, warning once."""
  folder = os.path.abspath(folder)
  try:
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
      pass
    return folder
  except OSError as e:
    if folder not in _state["warned"]:
      _state["warned"].add(folder)
      reason = e.strerror or str(e)
      print(f"warning: cannot use the compilation cache folder {folder} ({reason}); "
            f"compiling without it (set {CACHE_ENV} to another folder, or to off)",
            file=sys.stderr, flush=True)
    return None


def _set_cache(folder):
  import jax  # pylint: disable=g-import-not-at-top
  _state["cache"] = folder
  if folder:
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
      jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_SECS)
    if "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES" not in os.environ:
      jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_enable_compilation_cache", True)
  elif jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_enable_compilation_cache", False)
  if jax.config.jax_compilation_cache_dir != folder:
    jax.config.update("jax_compilation_cache_dir", folder)
  _listen(jax)


def _listen(jax):
  """Counts persistent-cache look-ups and hits (JAX monitoring events) from now on."""
  if _state["listening"]:
    return
  _state["listening"] = True

  def on_event(event, **kwargs):
    del kwargs
    if event == "/jax/compilation_cache/cache_hits":
      with _lock:
        _state["hits"] += 1
    elif event == "/jax/compilation_cache/compile_requests_use_cache":
      with _lock:
        _state["requests"] += 1

  jax.monitoring.register_event_listener(on_event)


class _NoiseFilter(logging.Filter):
  """Drops known noise records (e.g. the TPU back end that is not there)."""

  def filter(self, record):
    return not record.getMessage().startswith(NOISE_PREFIXES)


def _set_logging(verbose):
  if verbose:
    if not logging.getLogger().handlers:
      logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    levels = {name: logging.INFO for name in QUIET_LEVELS}
  else:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # XLA's C++ INFO lines
    levels = QUIET_LEVELS
  for name, level in levels.items():
    logging.getLogger(name).setLevel(level)
  if "absl.logging" in sys.modules or verbose:
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    absl_logging.set_verbosity(absl_logging.converter.standard_to_absl(levels["absl"]))
  bridge = logging.getLogger("jax._src.xla_bridge")
  if not verbose and _state["filter"] is None:
    _state["filter"] = _NoiseFilter()
    bridge.addFilter(_state["filter"])
  elif verbose and _state["filter"] is not None:
    bridge.removeFilter(_state["filter"])
    _state["filter"] = None


# ------------------------------------------------------------- compile notices


def _key_id(key):
  import jax  # pylint: disable=g-import-not-at-top
  text = json.dumps([jax.__version__, jax.default_backend(), jax.device_count(), key],
                    sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:24]


def _manifest_path():
  return os.path.join(_state["cache"], MANIFEST_NAME) if _state["cache"] else None


def _read_manifest():
  path = _manifest_path()
  try:
    with open(path, encoding="utf-8") as f:
      entries = json.load(f)
    return entries if isinstance(entries, dict) else {}
  except (OSError, TypeError, ValueError):
    return {}


def _umask():
  """The process umask, read without changing it (os.umask would, for every thread)."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  return 0o022


class Compiling:
  """A compile notice in progress; see :func:`announce_compiles` and :func:`compiling`.

  Attributes:
    count: the programs announced.
    from_cache: whether the notice said they load from the cache.
    message: the line printed (``None`` if already printed in this process).
    seconds, cache_hits, cache_misses: filled in by :meth:`done`.
  """

  def __init__(self, count, key, message, from_cache):
    self.count = count
    self.from_cache = from_cache
    self.message = message
    self.seconds = None
    self.cache_hits = self.cache_misses = 0
    self._key_id = key
    self._start = time.perf_counter()
    self._hits0, self._requests0 = _state["hits"], _state["requests"]

  def _update(self):
    self.seconds = time.perf_counter() - self._start
    self.cache_hits = _state["hits"] - self._hits0
    self.cache_misses = _state["requests"] - self._requests0 - self.cache_hits

  def done(self):
    """Stops the clock and records the key in the cache folder (the programs are in it now)."""
    self._update()
    path = _manifest_path()
    if not path or not self._key_id:
      return self
    with _lock:
      entries = _read_manifest()
      entries[self._key_id] = {"programs": self.count, "time": int(time.time())}
      try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".manifest-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
          json.dump(entries, f)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
      except OSError:
        pass
    return self

  def _done_if_compiled(self):
    self._update()
    if self.cache_hits or self.cache_misses:
      self.done()


def announce_compiles(count, *, key=None, detail="", upto=False, file=None,
                      record_at_exit=False):
  """Prints the compile notice for ``count`` programs once; returns a :class:`Compiling`.

  Args:
    count: how many programs are about to be compiled.
    key: JSON-able value naming what is compiled (model, shapes, settings); a
      later run with the same key in the same cache says "loading ... from
      the cache". ``None``: always "compiling".
    detail: a short phrase in the parentheses, e.g. ``"one per shape bucket"``.
    upto: the count is a maximum ("up to N programs"), for lazy compilation.
    file: where to print (default ``sys.stderr``).
    record_at_exit: record the key at interpreter exit if anything was
      compiled or loaded meanwhile (for code that compiles lazily).
  """
  with _lock:
    key_id = _key_id(key) if key is not None else None
    from_cache = bool(key_id and _state["cache"] and key_id in _read_manifest())
    count_text = f"{'up to ' if upto else ''}{count}"
    programs = "program" if count == 1 else "programs"
    if from_cache:
      message = f"loading {count_text} compiled {programs} from the cache"
      message += f" ({detail})" if detail else ""
    else:
      state = "first run only" if _state["cache"] else "compilation cache off"
      message = f"compiling {count_text} {programs} ({detail + '; ' if detail else ''}{state})"
    token = key_id or message
    if token in _state["announced"]:
      message = None
    else:
      _state["announced"].add(token)
      print(message, file=file or sys.stderr, flush=True)
    notice = Compiling(count, key_id, message, from_cache)
  if record_at_exit:
    atexit.register(notice._done_if_compiled)  # pylint: disable=protected-access
  return notice


@contextlib.contextmanager
def compiling(count, *, key=None, detail="", upto=False, file=None):
  """``with compiling(n, key=...) as c:`` around the first compilations (see the module doc)."""
  notice = announce_compiles(count, key=key, detail=detail, upto=upto, file=file)
  try:
    yield notice
  except BaseException:
    notice._update()  # pylint: disable=protected-access
    raise
  notice.done()


def restart_rate(bar, n):
  """Puts the tqdm ``bar`` at ``n`` done and restarts its clock and rate from there.

  For after a step that compiled a program (or any pause that is not the
  work being timed): counted in, its minutes would make the remaining-time
  estimate hours long. The elapsed time shown restarts too.
  """
  bar.reset()
  bar.initial = bar.n = bar.last_print_n = n
  bar.refresh()


def count(n, word, plural=None):
  """``n`` and the noun in the right number: ``count(1, "image")`` is "1 image",
  ``count(2, "box", "boxes")`` "2 boxes" (default plural: ``word + "s"``)."""
  return f"{n} {word if n == 1 else plural or word + 's'}"
