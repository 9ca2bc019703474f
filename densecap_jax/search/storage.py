"""An index folder's files: the writers' lock and the checks of a shard against the manifest.

Only one run may write an index at a time: :func:`writer_lock` holds an
exclusive ``fcntl.flock`` on ``<index>/.lock`` (which holds the writer's
PID) for the whole run. Readers take no lock: the manifest is replaced
atomically, so they see the old or the new one, never a half-written one.

Each shard's entry in the manifest records its files (``files``:
``{file name: {"bytes": size, "crc32": crc}}``, see :func:`file_records`).
:func:`check_shard` compares a shard's folder with its entry: the files are
there, of the recorded sizes (and checksums), the tables and arrays agree in
their counts of images and regions with the manifest, and every ``.npy`` has
a NumPy header (never unpickled) of the expected dtype and row shape and as
many bytes as it says. An entry without ``files`` (an index written before
they were recorded) is checked in everything else.
"""

import contextlib
import errno
import fcntl
import json
import os
import zlib

import numpy as np

LOCK = ".lock"
TABLES = ("images.json", "captions.json")
_CHUNK = 1 << 22


class Damaged(ValueError):
  """A shard that does not match its manifest entry; ``str`` is one line naming the file."""


class Busy(ValueError):
  """Another run holds the index's writer lock."""


def _holder(path):
  try:
    with open(path, encoding="utf-8") as f:
      return f.read().strip() or "?"
  except OSError:
    return "?"


@contextlib.contextmanager
def writer_lock(folder, wait=False):
  """Holds the exclusive writer lock of the index ``folder`` (created if missing).

  Args:
    folder: the index folder.
    wait: wait for another writer to finish instead of failing at once.

  Raises:
    Busy: one line naming the PID of the run that holds it (``wait`` false).
  """
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, LOCK)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError as e:
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise
      raise Busy(f"index {folder} is in use by PID {_holder(path)} (another index run); "
                 f"wait for it (--wait) or stop it") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the lock


def check_not_locked(folder):
  """Raises :class:`Busy` when another run holds the writer lock of ``folder`` (not taken)."""
  if os.path.isfile(os.path.join(folder, LOCK)):
    try:
      with writer_lock(folder):
        pass
    except OSError:
      pass  # not writable here: the run itself reports that when it writes


def crc32(path):
  """The CRC-32 of a file's bytes, read in chunks."""
  crc = 0
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      crc = zlib.crc32(chunk, crc)
  return crc


def file_records(folder, names):
  """``{name: {"bytes": size, "crc32": crc}}`` of the files ``names`` in ``folder``."""
  return {name: {"bytes": os.path.getsize(os.path.join(folder, name)),
                 "crc32": crc32(os.path.join(folder, name))} for name in names}


def npy_header(path):
  """``(shape, dtype, data offset)`` of a ``.npy`` file, read without unpickling anything.

  Raises:
    ValueError: one line: not a NumPy array file, or an object array.
  """
  try:
    with open(path, "rb") as f:
      version = np.lib.format.read_magic(f)
      read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
              else np.lib.format.read_array_header_2_0)
      shape, fortran, dtype = read(f)
      offset = f.tell()
  except (ValueError, SyntaxError, OSError, EOFError):
    raise ValueError("is not a NumPy array file (its header cannot be read)") from None
  if dtype.hasobject or fortran:
    raise ValueError("is not a plain NumPy array file")
  return shape, dtype, offset


def check_shard(folder, entry, row_shapes, dtypes, *, verify_data=True):
  """Raises :class:`Damaged` unless the shard ``folder`` matches its manifest ``entry``.

  Args:
    folder: the shard's folder.
    entry: its manifest entry (``name``, ``images``, ``regions``, maybe ``files``).
    row_shapes, dtypes: ``{array name: row shape / numpy dtype}`` expected.
    verify_data: also compare the recorded checksums of the ``.npy`` files
      (reads them whole); the tables' checksums are always compared.
  """
  name = entry["name"]

  def damaged(file, why):
    return Damaged(f"shard {name}: {file} {why}")

  if not os.path.isdir(folder):
    raise damaged("(its folder)", "is missing")
  recorded = entry.get("files") or {}
  wanted = list(TABLES) + [f"{a}.npy" for a in row_shapes]
  for file in wanted:
    path = os.path.join(folder, file)
    if not os.path.isfile(path):
      raise damaged(file, "is missing")
  images, regions = entry["images"], entry["regions"]
  tables = {}
  for file in TABLES:
    try:
      with open(os.path.join(folder, file), encoding="utf-8") as f:
        tables[file] = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
      raise damaged(file, f"is not valid JSON ({str(e)[:60]})") from None
  columns = tables["images.json"]
  starts = columns.get("region_start") if isinstance(columns, dict) else None
  if (not isinstance(starts, list) or len(starts) != images + 1 or not starts
      or starts[-1] != regions or any(len(columns.get(k, ())) != images
                                      for k in ("names", "file_sizes", "mtimes_ns"))):
    raise damaged("images.json", f"does not hold the {images} images and {regions} regions "
                                 f"the manifest records")
  captions = tables["captions.json"]
  if not isinstance(captions, list) or len(captions) != regions:
    got = len(captions) if isinstance(captions, list) else "no"
    raise damaged("captions.json", f"has {got} captions, the manifest records {regions}")
  for array, row_shape in row_shapes.items():
    file = f"{array}.npy"
    path = os.path.join(folder, file)
    try:
      shape, dtype, offset = npy_header(path)
    except ValueError as e:
      raise damaged(file, str(e)) from None
    if tuple(shape[1:]) != tuple(row_shape) or dtype != np.dtype(dtypes[array]):
      raise damaged(file, f"holds {dtype} rows of shape {tuple(shape[1:])}, not "
                          f"{np.dtype(dtypes[array])} of shape {tuple(row_shape)}")
    if shape[:1] != (regions,):
      raise damaged(file, f"has {shape[0] if shape else 0} rows, the manifest records {regions}")
    size = os.path.getsize(path)
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    if size != expected:
      raise damaged(file, f"has {size} bytes, its header says {expected}")
  for file in wanted:
    if file in recorded:
      path = os.path.join(folder, file)
      size = os.path.getsize(path)
      if size != recorded[file]["bytes"]:
        raise damaged(file, f"has {size} bytes, the manifest records {recorded[file]['bytes']}")
      if (verify_data or file in TABLES) and crc32(path) != recorded[file]["crc32"]:
        raise damaged(file, "does not match its checksum in the manifest")
