"""The server's detection programs: which are compiled, which a request waits for, the rest later.

The server does not compile its programs before it answers. A request runs
the program of its image's shape bucket at batch size 1 and compiles it first
(or loads it from JAX's persistent compilation cache) if no one has; one
background thread, at the lowest CPU priority, compiles or loads the others
meanwhile, batch size 1 of every bucket first (the shapes of common photos and
webcams before the rest), then the larger batch size. A request whose program
is being compiled by someone else waits for it rather than compiling it again.

Whether a program "loads" or "compiles" is known before it runs: each program
has its own ``runtime.announce_compiles`` key (the model's key plus its bucket
and batch size), recorded in the cache folder once the program is in the cache.

``ProgramSet.status()`` is what ``/healthz`` shows under ``"programs"``.
"""

import contextlib
import dataclasses
import io
import os
import threading
import time

from densecap_jax import runtime
from densecap_jax.configs import buckets as buckets_lib
from densecap_jax.data import images as images_lib

# Image sizes (height, width) whose buckets compile first: webcams (4:3, 16:9),
# landscape photos (3:2, 4:3), square, portrait photos (3:4, 2:3).
COMMON_SIZES = ((480, 640), (720, 1280), (427, 640), (512, 512), (640, 480), (640, 427))
# What a waiting request is told, by whether its program is in the cache.
MESSAGES = {
    "compiling": "compiling the model for this image size (first use; later images of this "
                 "size are fast)",
    "loading": "loading the compiled model for this image size from the cache",
}


@dataclasses.dataclass(eq=False)
class Program:
  """One detection program: a shape bucket ``(H, W)`` at one batch size.

  Attributes:
    bucket, batch_size: its input shape ``(batch_size, H, W, 3)``.
    in_cache: whether the compilation cache held it at start-up (it loads
      rather than compiles).
    state: ``"pending"``, ``"busy"`` (compiling or loading now) or ``"ready"``.
    by: who made it ready: ``"request"`` or ``"background"`` (``None`` before).
    waiting: requests waiting for it now.
    seconds: how long compiling (or loading) it took.
  """
  bucket: tuple
  batch_size: int
  in_cache: bool = False
  notice: object = None
  state: str = "pending"
  by: str | None = None
  waiting: int = 0
  seconds: float | None = None
  lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

  @property
  def ready(self):
    return self.state == "ready"

  @property
  def action(self):
    return "loading" if self.in_cache else "compiling"


def priority_order(buckets, image_size):
  """``buckets`` with those of ``COMMON_SIZES`` (resized to ``image_size``) first, in that order."""
  first = []
  for h, w in COMMON_SIZES:
    try:
      bucket = tuple(buckets_lib.pick_bucket(*images_lib.torch_scale_size(h, w, image_size),
                                             buckets))
    except ValueError:
      continue
    if bucket not in first:
      first.append(bucket)
  return first + [tuple(b) for b in buckets if tuple(b) not in first]


class ProgramSet:
  """Every ``(bucket, batch size)`` program of a model, with their states and locks.

  Args:
    buckets: the model's shape buckets, ``(H, W)`` tuples.
    batch_sizes: the padded batch sizes, ascending (``(1, max_batch)``).
    image_size: the model's long side, to order the buckets (``priority_order``).
    key: JSON-able value naming what the programs depend on apart from their
      shape (``cli.program_key``); ``None``: never said to be in the cache.
    busy: a ``threading.Event`` kept set while a program compiles or the
      background work runs (a process stopped meanwhile must exit hard).
  """

  def __init__(self, buckets, batch_sizes, image_size, key=None, busy=None):
    order = priority_order(buckets, image_size)
    self.busy = busy or threading.Event()
    self._lock = threading.Lock()
    self._requests_done = threading.Condition(self._lock)
    self._requests_waiting = 0
    self._active = 0  # programs compiling now
    self._workers = 0  # warm-ups running (background or all at once)
    self._background = "idle"
    self.programs = {}
    for size in batch_sizes:
      for bucket in order:
        notice = None
        if key is not None:
          # The notice says whether this program's key is in the cache; its line is not shown.
          notice = runtime.announce_compiles(
              1, key=dict(key, bucket=list(bucket), batch_size=size), file=io.StringIO())
        self.programs[(bucket, size)] = Program(bucket, size, bool(notice and notice.from_cache),
                                                notice)
    self.started = time.perf_counter()

  def __getitem__(self, bucket_and_size):
    return self.programs[bucket_and_size]

  def __len__(self):
    return len(self.programs)

  @property
  def in_cache(self):
    return sum(p.in_cache for p in self.programs.values())

  def pending(self):
    """The programs not ready, in the order the background compiles them."""
    return [p for p in self.programs.values() if not p.ready]

  def run(self, program, fn, by="request"):
    """``fn()``, which runs ``program``; compiles it first under its lock if it is not ready.

    A caller finding the program being compiled by another thread waits for
    it, then runs ``fn`` on the compiled program.
    """
    if program.ready:
      return fn()
    with self._lock:
      program.waiting += by == "request"
      self._requests_waiting += by == "request"
    try:
      with program.lock:
        if program.ready:
          return fn()
        self._set_busy(program, True)
        start = time.perf_counter()
        try:
          result = fn()
        finally:
          self._set_busy(program, False)
        with self._lock:
          program.seconds = time.perf_counter() - start
          program.state, program.by = "ready", by
        if program.notice is not None:
          program.notice.done()  # records its key: the cache holds it now
        return result
    finally:
      with self._lock:
        program.waiting -= by == "request"
        self._requests_waiting -= by == "request"
        self._requests_done.notify_all()

  def _set_busy(self, program, busy):
    with self._lock:
      program.state = "busy" if busy else "pending"
      self._active += 1 if busy else -1
      self._update_busy()

  def _update_busy(self):
    if self._active or self._workers:
      self.busy.set()
    else:
      self.busy.clear()

  def background(self, compile_one, nice=19):
    """Compiles every pending program in turn in this thread, at CPU niceness ``nice``.

    Before each program it waits until no request waits for one, so that a
    request's compilation has the CPUs to itself (XLA compiles in threads of
    its own, which the niceness does not reach).

    Args:
      compile_one: ``Program -> None``, runs a dummy batch through it.
      nice: the thread's niceness (Linux: per thread; elsewhere ignored).

    Returns:
      How many programs this thread compiled or loaded.
    """
    with self._lock:
      self._background = "running"
    lower_thread_priority(nice)
    done = 0
    try:
      with self.working():
        for program in self.pending():
          with self._lock:
            self._requests_done.wait_for(lambda: not self._requests_waiting)
          if not program.ready:
            self.run(program, lambda p=program: compile_one(p), by="background")
            done += 1
    finally:
      with self._lock:
        self._background = "done"
    return done

  @contextlib.contextmanager
  def working(self):
    """Keeps ``busy`` set for the block (a warm-up that compiles program after program)."""
    with self._lock:
      self._workers += 1
      self._update_busy()
    try:
      yield
    finally:
      with self._lock:
        self._workers -= 1
        self._update_busy()

  def summary(self):
    """One line for the log: how many programs compiled and loaded, and how long it took."""
    compiled = sum(1 for p in self.programs.values() if p.ready and not p.in_cache)
    loaded = sum(1 for p in self.programs.values() if p.ready and p.in_cache)
    parts = ([f"{compiled} compiled"] if compiled else []) + (
        [f"{loaded} loaded from the cache"] if loaded else [])
    first = sum(1 for p in self.programs.values() if p.by == "request")
    return (f"{len(self)} programs ({', '.join(parts)}; {first} of them by a request) in "
            f"{time.perf_counter() - self.started:.1f} s")

  def status(self):
    """JSON-ready progress: totals, the background's state and the requests waiting."""
    with self._lock:
      programs = list(self.programs.values())
      waiting = [{"bucket": list(p.bucket), "batch_size": p.batch_size, "action": p.action,
                  "requests": p.waiting, "message": MESSAGES[p.action]}
                 for p in programs if p.waiting and not p.ready]
      return {
          "total": len(programs),
          "ready": sum(p.ready for p in programs),
          "in_cache": sum(p.in_cache for p in programs),
          "background": self._background,
          "busy": [{"bucket": list(p.bucket), "batch_size": p.batch_size, "action": p.action}
                   for p in programs if p.state == "busy"],
          "waiting": waiting,
      }


def lower_thread_priority(nice):
  """Sets the calling thread's niceness to ``nice`` where the OS allows (Linux); else nothing."""
  try:
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
  except (AttributeError, OSError):
    pass
