"""File helpers: atomic outputs and JSON reading with clear errors."""

import contextlib
import json
import os
import tempfile


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
  except BaseException:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)
    raise


def mkdtemp(directory, prefix):
  """``tempfile.mkdtemp`` in ``directory`` with the mode ``os.mkdir`` would give.

  ``mkdtemp`` makes the directory 0700; a directory that is renamed into
  place as an output (a model directory) gets 0777 less the umask instead.
  """
  path = tempfile.mkdtemp(prefix=prefix, dir=directory)
  os.chmod(path, 0o777 & ~_umask())
  return path


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
