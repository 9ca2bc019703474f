"""METEOR 1.5 through one persistent Java process (reference §9.3).

The jar and its English paraphrase table are the ones ``pycocoevalcap`` ships
(``pycocoevalcap/meteor/meteor-1.5.jar`` and ``.../data/paraphrase-en.gz``).
The process runs the original bridge's command line,
``java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm``, in the jar's
directory, and speaks a line protocol on stdin/stdout (UTF-8):

* ``SCORE ||| ref1 ||| ... ||| refn ||| hyp`` -> one line of statistics;
* ``EVAL ||| stats1 ||| ... ||| statsk`` -> ``k`` lines, the score of each
  statistics line on its own, then one line with their aggregate.

The score of a pair is the score of its statistics alone, which is what the
original bridge reads back from ``EVAL ||| stats`` for each record. Many pairs
are pipelined: a feeder thread writes all ``SCORE`` lines (then all ``EVAL``
lines) while the replies are read, so the round trip is paid once per batch
instead of once per pair.

Text that would break the protocol is sanitised: line breaks become spaces in
candidates and references; in the candidate, ``|||`` is removed and then one
pass replaces double spaces by single ones (the bridge's rule); in references
``|||`` is removed.

Example::

  with Meteor() as meteor:
    meteor.score(['a red car'], [['a red car', 'red vehicle']])  # [1.0]
"""

import importlib.util
import pathlib
import re
import shutil
import subprocess
import tempfile
import threading
import weakref
from typing import Sequence

JAR_NAME = "meteor-1.5.jar"
PARAPHRASE_TABLE = pathlib.Path("data") / "paraphrase-en.gz"
_LINE_BREAKS = re.compile(r"[\r\n]")


class MeteorError(RuntimeError):
  """METEOR cannot run (no Java, no jar) or its process broke the protocol."""


def default_jar_path() -> pathlib.Path:
  """Path of ``meteor-1.5.jar`` inside the installed ``pycocoevalcap``."""
  spec = importlib.util.find_spec("pycocoevalcap")
  if spec is None or not spec.submodule_search_locations:
    raise MeteorError("METEOR needs the pycocoevalcap package (pip install pycocoevalcap)")
  return pathlib.Path(list(spec.submodule_search_locations)[0]) / "meteor" / JAR_NAME


def sanitize_candidate(text: str) -> str:
  """Candidate as sent: line breaks -> spaces, ``|||`` removed, then ``'  '`` -> ``' '`` once."""
  return _LINE_BREAKS.sub(" ", text).replace("|||", "").replace("  ", " ")


def sanitize_reference(text: str) -> str:
  """A reference as sent: line breaks -> spaces, ``|||`` removed."""
  return _LINE_BREAKS.sub(" ", text).replace("|||", "")


def score_request(candidate: str, references: Sequence[str]) -> str:
  """The ``SCORE`` line for one pair (an empty reference list sends one empty reference)."""
  refs = " ||| ".join(sanitize_reference(r) for r in references)
  return " ||| ".join(("SCORE", refs, sanitize_candidate(candidate)))


def _check_pairs(candidates, references):
  if len(candidates) != len(references):
    raise ValueError(
        f"got {len(candidates)} candidates but {len(references)} reference lists")
  for i, (cand, refs) in enumerate(zip(candidates, references)):
    if not isinstance(cand, str):
      raise ValueError(f"candidates[{i}] must be a str, got {type(cand).__name__}")
    if isinstance(refs, str) or not all(isinstance(r, str) for r in refs):
      raise ValueError(f"references[{i}] must be a list of str, got {refs!r}")


def _shutdown(process, stderr_file, timeout):
  """Closes stdin so METEOR exits, waits ``timeout`` seconds, then kills it."""
  if process.poll() is None:
    try:
      process.stdin.close()
    except OSError:
      pass
    try:
      process.wait(timeout)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()
  for stream in (process.stdin, process.stdout, stderr_file):
    try:
      stream.close()
    except OSError:
      pass


def check_available(jar_path=None):
  """Checks that METEOR can start: a working ``java``, the jar and its paraphrase table.

  Cheap (one ``java -version``); run it before work whose results METEOR
  will score, so that a missing Java is reported before, not after.

  Returns:
    ``(java, jar)``: the ``java`` executable and the jar's path.

  Raises:
    MeteorError: with a one-line message naming what is missing.
  """
  java = shutil.which("java")
  if java is None:
    raise MeteorError("METEOR needs Java, but no 'java' executable is on PATH "
                      "(install a JRE, e.g. apt-get install default-jre)")
  try:
    subprocess.run([java, "-version"], stdin=subprocess.DEVNULL, capture_output=True, check=True,
                   timeout=60)
  except (OSError, subprocess.SubprocessError) as e:
    raise MeteorError(f"METEOR needs Java, but {java} -version failed: {e}") from None
  jar = pathlib.Path(jar_path) if jar_path is not None else default_jar_path()
  if not jar.is_file():
    raise MeteorError(f"METEOR jar not found: {jar}")
  if not (jar.parent / PARAPHRASE_TABLE).is_file():
    raise MeteorError(f"METEOR paraphrase table not found: {jar.parent / PARAPHRASE_TABLE}")
  return java, jar


class Meteor:
  """One METEOR 1.5 Java process that scores (candidate, references) pairs.

  Use as a context manager, or call :meth:`close`; the process is also shut
  down when the object is garbage collected and at interpreter exit. Calling
  the object is the same as :meth:`score`, so an instance can be given to
  ``DenseCaptioningEvaluator(meteor_fn=...)``. Thread-safe (one request at a
  time).

  Args:
    jar_path: ``meteor-1.5.jar``; its directory must hold
      ``data/paraphrase-en.gz``. Default: the jar shipped by ``pycocoevalcap``.
    max_memory: the JVM heap limit (``-Xmx``); the original uses ``2G``.
    batch_size: statistics lines per ``EVAL`` request (attribute
      ``batch_size``, may be changed between calls).
    shutdown_timeout: seconds to wait for the process to exit after stdin is
      closed before it is killed.

  Raises:
    MeteorError: Java is not on ``PATH``, or the jar or its paraphrase table
      is missing.
  """

  def __init__(self, jar_path=None, *, max_memory: str = "2G", batch_size: int = 1000,
               shutdown_timeout: float = 10.0):
    java, jar = check_available(jar_path)
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    self.batch_size = batch_size
    self._lock = threading.Lock()
    self._stderr = tempfile.TemporaryFile()
    command = [java, "-jar", f"-Xmx{max_memory}", str(jar.resolve()),
               "-", "-", "-stdio", "-l", "en", "-norm"]
    self._process = subprocess.Popen(command, cwd=jar.parent, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr)
    self._finalizer = weakref.finalize(self, _shutdown, self._process, self._stderr,
                                       shutdown_timeout)

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()

  def close(self):
    """Shuts the Java process down (idempotent)."""
    self._finalizer()

  @property
  def closed(self) -> bool:
    return not self._finalizer.alive

  def __call__(self, candidates, references):
    return self.score(candidates, references)

  def score(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """METEOR of each candidate against its list of references.

    Args:
      candidates: ``P`` strings.
      references: ``P`` lists of strings (an empty list scores against one
        empty reference, as the original bridge does: 0.0).

    Returns:
      ``P`` floats in [0, 1]; identical strings score exactly 1.0.
    """
    _check_pairs(candidates, references)
    if not candidates:
      return []
    with self._lock:
      if self.closed:
        raise MeteorError("this Meteor instance is closed")
      try:
        stats = self._exchange([score_request(c, r) for c, r in zip(candidates, references)],
                               [1] * len(candidates))
        scores = []
        evals, counts = self._eval_requests([s[0] for s in stats])
        for lines in self._exchange(evals, counts):
          scores.extend(float(line) for line in lines[:-1])
        return scores
      except (MeteorError, ValueError) as error:
        self._process.kill()  # Unblocks the feeder thread before stdin is closed.
        message = f"METEOR failed: {error}; stderr: {self._stderr_tail()}"
        self.close()
        raise MeteorError(message) from None

  def _eval_requests(self, stats):
    """``EVAL`` lines of at most ``batch_size`` statistics and their reply line counts."""
    requests, counts = [], []
    for start in range(0, len(stats), self.batch_size):
      chunk = stats[start:start + self.batch_size]
      requests.append(" ||| ".join(["EVAL"] + chunk))
      counts.append(len(chunk) + 1)
    return requests, counts

  def _exchange(self, requests, reply_counts):
    """Writes ``requests`` from a feeder thread; returns each request's reply lines."""
    payload = "".join(r + "\n" for r in requests).encode("utf-8")
    stdin = self._process.stdin

    def feed():
      try:
        stdin.write(payload)
        stdin.flush()
      except OSError:
        pass  # The process died; the reader below reports it.

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    replies = []
    for count in reply_counts:
      lines = [self._read_line() for _ in range(count)]
      replies.append(lines)
    feeder.join()
    return replies

  def _read_line(self) -> str:
    line = self._process.stdout.readline()
    if not line:
      raise MeteorError("the METEOR process ended unexpectedly")
    text = line.decode("utf-8").strip()
    if text.startswith("Error"):
      raise MeteorError(f"METEOR replied {text!r}")
    return text

  def _stderr_tail(self, limit: int = 500) -> str:
    try:
      self._stderr.seek(0)
      text = self._stderr.read().decode("utf-8", "replace").strip()
    except (OSError, ValueError):
      return "(unavailable)"
    return repr(text[-limit:]) if text else "(empty)"
