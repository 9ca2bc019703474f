"""Joining a multi-process job, noticing when a process of it is gone, stopping it as one.

JAX's distributed runtime, left to itself, ends a process from C++ (a
``Check failure stack trace`` and exit status 134) when not every process
joins within its initialization timeout (300 s) or when a peer stops sending
heartbeats (100 s). Here both end in one line on stderr and exit status 1,
within times the command names:

* :func:`join` waits at most ``join_timeout`` seconds for every process of
  the job (``jax.distributed.initialize`` and a first all-reduce over every
  device), printing ``waiting for 1 of 2 processes to join (timeout in N s)``
  after a few seconds of waiting; on time-out:
  ``error: only 1 of 2 processes joined within N s; start every process of the job``.
* :class:`PeerWatch` keeps a heartbeat of each process in the coordinator's
  key-value store (one key per process, rewritten every second) and, when a
  peer's heartbeat has not changed for ``peer_timeout`` seconds, prints
  ``error: process 1 of 2 is gone; the last checkpoint is step S; restart the job``
  and ends the process. JAX's own heartbeat time-out is set ``60 s`` longer, so
  this message comes first. A process that has finished marks itself done
  and is not reported.
* :class:`StopAgreement` turns a SIGTERM/SIGINT to any one process into the
  same stop step on every process (the training loop then saves one
  checkpoint and every process exits with status 0).

When process 0 (which hosts the coordinator) dies, the runtime of every
other process ends it at once from C++ (its error poll fails), before Python
can run. So each process of a multi-process job trains in a child process
under :mod:`densecap_jax.train.supervisor`, which turns that abort into
``error: process 0 of 2 (the coordinator) is gone; the last checkpoint is step S; restart the job``
and exit status 1.
"""

import collections
import os
import signal
import sys
import threading
import time

import jax
import numpy as np

from densecap_jax import files

# How much longer than the command's own limits JAX's runtime waits before it
# ends the process from C++: the one-line errors below come first.
RUNTIME_MARGIN_S = 60
WAITING_MESSAGE_AFTER_S = 3.0
_PREFIX = "densecap/"


def fail(message):
  """Prints ``error: message`` and ends the process at once (status 1).

  ``os._exit``: the runtime's exit handlers would wait at a shutdown barrier
  for processes that are not coming.
  """
  sys.stdout.flush()
  # A new line first: a progress bar on stderr leaves its line unfinished.
  print(f"\nerror: {message}", file=sys.stderr, flush=True)
  os._exit(1)  # pylint: disable=protected-access


def join(*, coordinator_address, num_processes, process_id, join_timeout, peer_timeout,
         connect_devices=None):
  """Joins the job; every process must arrive within ``join_timeout`` seconds.

  Args:
    coordinator_address: ``host:port`` of process 0, or None (detected from
      the cluster environment, as ``num_processes`` and ``process_id``).
    num_processes, process_id: the job's size and this process's index.
    join_timeout: seconds to wait for every process (a positive number).
    peer_timeout: seconds without heartbeat after which a peer is gone; JAX's
      own heartbeat time-out is set to ``peer_timeout + RUNTIME_MARGIN_S``.
    connect_devices: called once joined (e.g. a first all-reduce over every
      device); it counts as part of joining.

  On time-out prints one ``error:`` line and exits with status 1.
  """
  done = threading.Event()
  total = f" of {num_processes}" if num_processes else ""
  others = num_processes - 1 if num_processes else "the other"

  def watch():
    if done.wait(min(WAITING_MESSAGE_AFTER_S, join_timeout)):
      return
    print(f"waiting for {others}{total} processes to join (timeout in {join_timeout:g} s)",
          flush=True)
    if done.wait(max(join_timeout - WAITING_MESSAGE_AFTER_S, 0)):
      return
    if num_processes == 2:
      what = "only 1 of 2 processes joined"
    else:
      what = f"not every process{total} joined"
    fail(f"{what} within {join_timeout:g} s; start every process of the job")

  threading.Thread(target=watch, name="join-timeout", daemon=True).start()
  jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes,
      process_id=process_id,
      initialization_timeout=int(join_timeout + RUNTIME_MARGIN_S),
      heartbeat_timeout_seconds=int(peer_timeout + RUNTIME_MARGIN_S))
  if connect_devices is not None:
    connect_devices()
  done.set()


# What a failed collective between processes says (gloo on CPU, the runtime elsewhere).
COLLECTIVE_FAILURES = ("Gloo", "all-reduce failed", "Connection closed by peer",
                       "Connection reset by peer")


def is_collective_failure(error):
  """Whether ``error`` (or an error it was raised from) is a collective that failed
  because a peer went away: a ``JaxRuntimeError``, or a message of
  :data:`COLLECTIVE_FAILURES` however it was wrapped (a checkpoint save's
  error, say)."""
  return any(isinstance(e, jax.errors.JaxRuntimeError) or any(
      text in str(e) for text in COLLECTIVE_FAILURES) for e in files.causes(error))


def last_checkpoint_step(checkpoint_dir):
  """The newest finished step in ``checkpoint_dir`` (orbax step folders ``N``), or None."""
  try:
    steps = [int(n) for n in os.listdir(checkpoint_dir) if n.isdigit()]
  except OSError:
    return None
  return max(steps, default=None)


class PeerWatch:
  """Heartbeats of every process through the coordinator's key-value store.

  A daemon thread rewrites this process's key every ``interval`` seconds and
  reads all of them in one call to the coordinator; a peer whose value has not changed for ``timeout``
  seconds (and that has not called :meth:`finish`) is gone: one line
  ``error: process P of N is gone; the last checkpoint is step S; restart the job``
  (S read from ``checkpoint_dir``) and exit status 1. The thread holds the
  GIL only for a few key-value calls per ``interval``.
  """

  def __init__(self, timeout, checkpoint_dir, interval=1.0, client=None, process_id=None,
               num_processes=None):
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    self.client = client or distributed.global_state.client
    self.timeout = float(timeout)
    self.interval = min(float(interval), self.timeout / 4)
    self.checkpoint_dir = checkpoint_dir
    self.process_id = jax.process_index() if process_id is None else process_id
    self.num_processes = jax.process_count() if num_processes is None else num_processes
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name="peer-watch", daemon=True)

  def __enter__(self):
    self._beat(0)
    self._thread.start()
    return self

  def __exit__(self, exc_type, *exc):
    self.finish(done=exc_type is None)

  def _key(self, kind, process):
    return f"{_PREFIX}{kind}/{process}"

  def _beat(self, count):
    self.client.key_value_set(self._key("alive", self.process_id), str(count),
                              allow_overwrite=True)

  def _values(self, kind):
    """``{key: value}`` of every process's ``kind`` key (one call to the coordinator)."""
    return dict(self.client.key_value_dir_get(f"{_PREFIX}{kind}/"))

  def gone(self, process):
    step = last_checkpoint_step(self.checkpoint_dir)
    where = f"the last checkpoint is step {step}" if step is not None else (
        "no checkpoint was written")
    fail(f"process {process} of {self.num_processes} is gone; {where}; restart the job")

  def _run(self):
    peers = [p for p in range(self.num_processes) if p != self.process_id]
    seen = {p: (None, time.monotonic()) for p in peers}
    count, unreachable_since = 0, None
    while not self._stop.wait(self.interval):
      count += 1
      now = time.monotonic()
      try:
        self._beat(count)
        alive = self._values("alive")
        unreachable_since = None
      except Exception:  # pylint: disable=broad-except  (the coordinator does not answer)
        unreachable_since = unreachable_since or now
        if now - unreachable_since > self.timeout and not self._stop.is_set():
          self.gone(0)
          return  # (gone() ends the process)
        continue
      for p in peers:
        value = alive.get(self._key("alive", p))
        if value != seen[p][0]:
          seen[p] = (value, now)
        elif now - seen[p][1] > self.timeout and not self._stop.is_set():
          try:
            if self._key("done", p) in self._values("done"):
              continue
          except Exception:  # pylint: disable=broad-except
            continue  # the coordinator does not answer: the next round tells
          self.gone(p)
          return

  def finish(self, done=True):
    """Stops the thread; ``done``: marks this process finished, so peers stop watching it.

    A process that ends with an error is not marked: its peers report it gone.
    """
    if self._stop.is_set():
      return
    self._stop.set()
    if done:
      try:
        self.client.key_value_set(self._key("done", self.process_id), "1",
                                  allow_overwrite=True)
      except Exception:  # pylint: disable=broad-except
        pass
    if self._thread.is_alive():
      self._thread.join(timeout=5)

  def wait_for_verdict(self):
    """Gives the thread ``timeout`` seconds to name a peer that is gone (it then exits)."""
    deadline = time.monotonic() + self.timeout + 2 * self.interval
    while time.monotonic() < deadline and self._thread.is_alive():
      time.sleep(self.interval)


class StopAgreement:
  """The stop decision of a multi-process job, the same on every process.

  A signal reaches one process; each process alone would stop at its own step
  and leave its peers waiting in the next all-reduce. After each step every
  process puts its own request (0, or the signal's number) into an
  all-reduce (max) over every device of the job, and reads the result of the
  one dispatched ``lag`` steps earlier: every process reads the same results
  at the same steps, so all stop after the same step. The host runs at most
  ``lag`` steps ahead of the devices.
  """

  def __init__(self, axis_name, lag=2):
    self.lag = lag
    self._reduce = jax.pmap(lambda x: jax.lax.pmax(x, axis_name), axis_name=axis_name)
    self._pending = collections.deque()

  def after_step(self, local_signal):
    """Takes this process's ``local_signal`` (a name or None) after a step.

    Returns the signal name the job agreed on ``lag`` steps ago, or None.
    """
    number = 0 if local_signal is None else int(signal.Signals[local_signal])
    self._pending.append(self._reduce(np.full((jax.local_device_count(),), number, np.int32)))
    if len(self._pending) <= self.lag:
      return None
    agreed = int(np.asarray(self._pending.popleft().addressable_shards[0].data).ravel()[0])
    return signal.Signals(agreed).name if agreed else None
