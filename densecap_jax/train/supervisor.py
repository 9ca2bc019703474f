"""A process of a multi-process job runs as a child of a thin supervisor.

When process 0, which hosts JAX's coordination service, dies, the runtime of
every other process ends that process from C++ (a ``Terminating process
because the JAX distributed service detected fatal errors`` line, a ``Check
failure`` stack, SIGABRT, exit status 134) before Python can run. So in a job
of several processes the training command starts itself again as a child
(the same command line, with ``DENSECAP_JAX_TRAIN_CHILD=1`` in its
environment) and :func:`supervise` stands between it and the terminal:

* the child's stdout is the supervisor's own (inherited, unbuffered), and so
  is the stream of the child's ``sys.stderr`` (a copy of the supervisor's
  stderr, passed as the file descriptor ``DENSECAP_JAX_TRAIN_STDERR_FD``;
  :func:`use_parent_stderr`): what Python writes (progress bar, messages,
  errors) comes in order, as in a process without a supervisor;
* the child's file descriptor 2, where JAX's C++ runtime writes its logs,
  is a pipe to the supervisor, which passes it through as it comes,
  except the runtime's fatal report: from its
  ``F.... Terminating process because the JAX distributed service ...`` line
  on, nothing more is shown, and the runtime's warning and error lines
  (``W....``, ``E....``, with the lines that follow them) are held back for
  2 s and shown only if no fatal report comes in that time;
* SIGTERM and SIGINT to the supervisor go to the child (which is in its own
  process group, so a Ctrl-C reaches it once); the child is killed when the
  supervisor dies (Linux ``PR_SET_PDEATHSIG``, else a thread that watches the
  parent).

When the child is aborted after the fatal report, the supervisor prints one
line, ``error: process 0 of 2 (the coordinator) is gone; the last checkpoint
is step S; restart the job`` (S: the newest step folder in the checkpoint
directory), and exits with status 1. Otherwise it exits with the child's
status (128 + N for a child ended by signal N).
"""

import ctypes
import io
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time

from densecap_jax.train import distributed

CHILD_ENV = "DENSECAP_JAX_TRAIN_CHILD"
STDERR_FD_ENV = "DENSECAP_JAX_TRAIN_STDERR_FD"
_PR_SET_PDEATHSIG = 1

# absl log lines: "F1206 18:16:18.870897    3755 client.h:80] message".
_FATAL = re.compile(rb"F\d{4} [\d:.]+ +\d+ \S+\] Terminating process because the JAX "
                    rb"distributed service detected fatal errors")
_RUNTIME_LOG = re.compile(rb"[WE]\d{4} [\d:.]+ +\d+ \S+\] ")
_LOG_START = re.compile(rb"[WEF]\d{0,4}( |$)")


def is_child():
  """True in the process that :func:`supervise` started."""
  return os.environ.get(CHILD_ENV) == "1"


def child_command():
  """The command line that started this process (interpreter options included)."""
  orig = getattr(sys, "orig_argv", None)
  if orig:
    return [sys.executable, *orig[1:]]
  return [sys.executable, "-m", "densecap_jax.train", *sys.argv[1:]]


def use_parent_stderr():
  """In the child: ``sys.stderr`` writes to the supervisor's stderr (fd 2 stays the pipe)."""
  fd = os.environ.get(STDERR_FD_ENV)
  if not fd or not fd.isdigit():
    return
  encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
  stream = open(int(fd), "wb", buffering=0)  # pylint: disable=consider-using-with
  sys.stderr = io.TextIOWrapper(stream, encoding=encoding, errors="backslashreplace",
                                write_through=True)


def watch_parent():
  """In the child: ends it when the supervisor is gone (where ``PR_SET_PDEATHSIG`` is missing)."""
  parent = os.getppid()

  def run():
    while True:
      time.sleep(0.5)
      if os.getppid() != parent:
        os._exit(1)  # pylint: disable=protected-access

  threading.Thread(target=run, name="watch-parent", daemon=True).start()


def _child_setup(parent):
  """Runs in the child between fork and exec."""
  os.setpgid(0, 0)
  try:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
  except (AttributeError, OSError):
    pass  # not Linux: watch_parent() in the child
  if os.getppid() != parent:  # the supervisor died before prctl
    os._exit(1)  # pylint: disable=protected-access


class StderrFilter:
  """Passes a child's stderr bytes through, without the runtime's fatal report.

  ``feed(data, now)`` with what the child wrote, ``tick(now)`` now and then,
  ``close()`` at its end. A runtime warning or error line (absl ``W....`` /
  ``E....``) holds back what follows it for ``hold_s`` seconds: a fatal report
  within that time drops it all (the runtime's complaints about the lost
  coordinator come just before it), else it is shown. ``fatal``: the report
  was seen; ``report``: its first line (bytes).
  """

  def __init__(self, out, hold_s=2.0):
    self.out = out
    self.hold_s = hold_s
    self.fatal = False
    self.report = b""
    self._pending = b""
    self._held = []
    self._held_since = None

  def feed(self, data, now):
    if self.fatal:
      return
    self._pending += data
    while not self.fatal:
      end = self._pending.find(b"\n")
      if end < 0:
        break
      line, self._pending = self._pending[:end + 1], self._pending[end + 1:]
      self._line(line, now)
    if self.fatal:
      self._pending = b""
    elif (self._pending and self._held_since is None
          and not _LOG_START.match(self._pending[:6])):
      self._write(self._pending)  # a progress bar's unfinished line
      self._pending = b""
    self.tick(now)

  def _line(self, line, now):
    if _FATAL.match(line):
      self.fatal, self.report, self._held, self._held_since = True, line, [], None
    elif self._held_since is not None:
      self._held.append(line)
    elif _RUNTIME_LOG.match(line):
      self._held, self._held_since = [line], now
    else:
      self._write(line)

  def tick(self, now):
    """Shows what was held back for ``hold_s`` seconds with no fatal report after it."""
    if self._held_since is not None and now - self._held_since >= self.hold_s:
      held, self._held, self._held_since = b"".join(self._held), [], None
      self._write(held)

  def _write(self, data):
    self.out.write(data)
    self.out.flush()

  def close(self):
    if not self.fatal:
      self._write(b"".join(self._held) + self._pending)
    self._pending, self._held, self._held_since = b"", [], None


def gone_message(report, *, process_id, num_processes, checkpoint_dir):
  """The one line for a child the runtime aborted (``report``: its fatal log line)."""
  step = distributed.last_checkpoint_step(checkpoint_dir)
  where = f"the last checkpoint is step {step}" if step is not None else (
      "no checkpoint was written")
  total = f" of {num_processes}" if num_processes else ""
  if process_id != 0 and b"coordination service" in report:
    what = f"process 0{total} (the coordinator) is gone"
  else:
    status = report.decode(errors="replace").partition("absl::Status: ")[2].strip()
    who = "this process" if process_id is None else f"process {process_id}{total}"
    what = f"the JAX distributed runtime ended {who}: {status[:200]}"
  return f"error: {what}; {where}; restart the job"


def supervise(*, process_id, num_processes, checkpoint_dir, command=None):
  """Runs ``command`` (default: this one) as a child; returns the exit status to end with."""
  env = dict(os.environ, **{CHILD_ENV: "1", "PYTHONUNBUFFERED": "1"})
  parent = os.getpid()
  sys.stderr.flush()
  python_stderr = os.dup(2)
  env[STDERR_FD_ENV] = str(python_stderr)
  try:
    child = subprocess.Popen(command or child_command(), env=env, stderr=subprocess.PIPE,
                             pass_fds=(python_stderr,), preexec_fn=lambda: _child_setup(parent))
  finally:
    os.close(python_stderr)

  def forward(signum, frame):
    del frame
    if child.poll() is None:
      child.send_signal(signum)

  previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
  out = StderrFilter(sys.stderr.buffer)
  fd = child.stderr.fileno()
  try:
    while True:
      if not select.select([fd], [], [], 0.5)[0]:
        out.tick(time.monotonic())
        continue
      data = os.read(fd, 65536)
      if not data:
        break
      out.feed(data, time.monotonic())
    code = child.wait()
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  child.stderr.close()
  out.close()
  if out.fatal and code in (-signal.SIGABRT, 128 + signal.SIGABRT):
    sys.stdout.flush()
    print("\n" + gone_message(out.report, process_id=process_id, num_processes=num_processes,
                              checkpoint_dir=checkpoint_dir), file=sys.stderr, flush=True)
    return 1
  return 128 - code if code < 0 else code
