"""File helpers: atomic outputs and JSON reading with clear errors."""

import contextlib
import errno
import json
import os
import re
import tempfile

import numpy as np

# Longest part of a user's string that an error message quotes.
MAX_QUOTED = 60


def _umask():
  mask = os.umask(0)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_output(path):
  """Yields a temporary path beside ``path``; moves it onto ``path`` on success.

  The temporary file lives in the same directory (so ``os.replace`` is atomic)
  and is removed when the block raises, leaving any previous ``path`` intact.
  """
  path = os.path.abspath(path)
  directory = os.path.dirname(path)
  os.makedirs(directory, exist_ok=True)
  fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                                  suffix=".tmp")
  os.close(fd)
  os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
  try:
    yield tmp_path
    os.replace(tmp_path, path)
  except BaseException as e:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)
    if is_disk_full(e):
      raise disk_full(path) from None
    raise


def causes(error):
  """``error``, then the errors it was raised from (``__cause__``, else ``__context__``)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def is_disk_full(error):
  """Whether ``error`` (or an error it was raised from, :func:`causes`) is a full disk.

  ``ENOSPC``/``EDQUOT``; a short write (NumPy's ``tofile``/``save`` say
  ``"102400 requested and 57312 written"``); or tensorstore's ``ValueError``
  (orbax saves), whose text carries ``No space left on device
  [os_error_code='28']``.
  """
  for e in causes(error):
    if isinstance(e, OSError) and (e.errno in (errno.ENOSPC, errno.EDQUOT) or (
        e.errno is None and _SHORT_WRITE.fullmatch(str(e)))):
      return True
    if "No space left on device" in str(e) or f"os_error_code='{errno.ENOSPC}'" in str(e):
      return True
  return False


_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")


def disk_full(path):
  """The one-line ``OSError(ENOSPC)`` for a write of ``path`` that found the disk full."""
  path = os.path.abspath(path)
  return OSError(errno.ENOSPC, f"no space left on device writing {path} "
                               f"(folder {os.path.dirname(path)})")


def quoted(text, limit=MAX_QUOTED):
  """A user's string as error messages quote it: ``repr``, cut to ``limit`` characters.

  ``quoted("abc")`` is ``'abc'``; a longer string keeps its first ``limit``
  characters and gives its length: ``'abcd...' (10,000 characters)``.
  """
  text = str(text)
  if len(text) <= limit:
    return repr(text)
  return f"{repr(text[:limit])[:-1]}...{repr(text[:limit])[-1]} ({len(text):,} characters)"


def mkdtemp(directory, prefix):
  """``tempfile.mkdtemp`` in ``directory`` with the mode ``os.mkdir`` would give.

  ``mkdtemp`` makes the directory 0700; a directory that is renamed into
  place as an output (a model directory) gets 0777 less the umask instead.
  """
  path = tempfile.mkdtemp(prefix=prefix, dir=directory)
  os.chmod(path, 0o777 & ~_umask())
  return path


def json_depth(text):
  """How deeply JSON ``text`` nests arrays and objects (outside strings); 0 for a scalar.

  A scan of the brackets, without recursion, so it bounds what ``json.loads``
  (which recurses once per level) is given.
  """
  raw = _JSON_STRING.sub("", text).encode("utf-8", "surrogatepass")
  chars = np.frombuffer(raw, np.uint8)
  at = np.flatnonzero((chars == ord("[")) | (chars == ord("{")) | (chars == ord("]"))
                      | (chars == ord("}")))
  if not at.size:
    return 0
  steps = np.where((chars[at] == ord("[")) | (chars[at] == ord("{")), 1, -1)
  return int(np.cumsum(steps).max())


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)


class JSONLimitError(ValueError):
  """JSON nested deeper than the reader allows, or a number it refuses."""


def _read_int(text):
  # Beyond 300 digits a float is the only reading (inf past float64's range)
  # that NumPy and ``math.isfinite`` accept; finite-number checks then name it.
  return int(text) if len(text) <= 300 else float(text)


def _finite_float(text):
  value = float(text)
  if not np.isfinite(value):
    raise JSONLimitError(f"number {quoted(text, 20)} is beyond the range of a float")
  return value


def _finite_int(text):
  value = _read_int(text)
  if not np.isfinite(float(value)):
    raise JSONLimitError(f"number {quoted(text, 20)} is beyond the range of a float")
  return value


def _no_constant(text):
  raise JSONLimitError(f"{text} is not a number JSON allows")


def loads_json(text, max_depth, finite=False):
  """``json.loads`` of ``text`` nested at most ``max_depth`` deep, without recursion errors.

  Integers too long for a float64 are read as floats (``inf`` beyond its
  range), so number checks see them; with ``finite``, such numbers, ``NaN``
  and ``Infinity`` are refused instead.

  Raises:
    JSONLimitError: nested more than ``max_depth`` deep, or (``finite``) a
      number out of range; one line.
    json.JSONDecodeError: not valid JSON.
  """
  depth = json_depth(text)
  if depth > max_depth:
    raise JSONLimitError(f"nested {depth:,} levels deep, more than the limit of {max_depth}")
  if finite:
    return json.loads(text, parse_float=_finite_float, parse_int=_finite_int,
                      parse_constant=_no_constant)
  return json.loads(text, parse_int=_read_int)


def write_json(path, obj):
  """Writes ``obj`` as one line of JSON to ``path`` atomically."""
  with atomic_output(path) as tmp_path:
    with open(tmp_path, "w", encoding="utf-8") as f:
      json.dump(obj, f)


def read_text(path, what="file"):
  """Reads a UTF-8 text file; raises a one-line ``ValueError`` naming ``what`` and ``path``."""
  if not os.path.isfile(path):
    raise ValueError(f"{what} not found: {path}")
  with open(path, "rb") as f:
    raw = f.read()
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{what} {path} is not valid UTF-8 (byte {e.start})") from None


def read_json(path, what="JSON file"):
  """Reads a UTF-8 JSON file; raises a one-line ``ValueError`` naming ``what`` and ``path``."""
  text = read_text(path, what)
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"{what} {path} is not valid JSON: {e.msg} at line {e.lineno} "
                     f"column {e.colno}") from None


MAX_NAME_BYTES = 200
PLACEHOLDER_NAME = "unnamed"


def _name_bytes(text):
  return len(os.fsencode(text))


def _cut(text, limit):
  """The longest prefix of ``text`` of at most ``limit`` bytes (whole characters)."""
  text = text[:limit]
  while _name_bytes(text) > limit:
    text = text[:-1]
  return text


def _safe_char(ch):
  code = ord(ch)
  if code < 32 or 127 <= code < 160 or ch == "\\":
    return "_"  # NUL, control characters, and Windows' separator
  if 0xD800 <= code <= 0xDFFF and not 0xDC80 <= code <= 0xDCFF:
    return "_"  # a lone surrogate no file system name can hold (0xDC80-0xDCFF are raw bytes)
  return ch


def contained_name(name, used=None, limit=MAX_NAME_BYTES):
  """A file name made from ``name`` that stays inside any folder it is joined to.

  Keeps the last path component only (after the last ``/``), replaces NUL,
  control characters and ``\\`` by ``_``, turns ``""``, ``.`` and ``..`` into
  ``unnamed``, and cuts the name to ``limit`` bytes keeping its extension (so
  that ``atomic_output``'s temporary name beside it fits the file system's
  255). A plain file name of at most ``limit`` bytes comes back unchanged.

  Args:
    name: a stored or user-given name (a string; may be a path).
    used: optional set of names already given out (compared exactly); the
      name is made unique with ``-2``, ``-3``, ... before its extension and
      added to it.
    limit: most bytes of the result.

  Returns:
    The file name: non-empty, no ``/``, not ``.`` or ``..``.
  """
  base = "".join(_safe_char(ch) for ch in str(name).rsplit("/", 1)[-1])
  if base in ("", ".", ".."):
    base = PLACEHOLDER_NAME
  stem, ext = os.path.splitext(base)
  if _name_bytes(ext) > limit // 4:
    stem, ext = base, ""
  for copy in range(1, (len(used) if used is not None else 0) + 2):
    suffix = "" if copy == 1 else f"-{copy}"
    candidate = _cut(stem, limit - _name_bytes(suffix + ext)) + suffix + ext
    if used is None or candidate not in used:
      break
  if used is not None:
    used.add(candidate)
  return candidate


def inside(folder, name):
  """``os.path.join(folder, name)``, or a one-line ``ValueError`` when that leaves ``folder``.

  The check is on the path's text (``..``, absolute paths, NUL), not on where
  symbolic links lead: a link inside ``folder`` is replaced by an atomic write,
  never followed.
  """
  path = os.path.join(folder, name)
  top = os.path.normpath(os.path.abspath(folder))
  full = os.path.normpath(os.path.abspath(path))
  if "\0" in name or full == top or os.path.commonpath([top, full]) != top:
    raise ValueError(f"the name {quoted(name)} leads outside the folder {folder}")
  return path
