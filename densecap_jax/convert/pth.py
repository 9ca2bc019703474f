"""PyTorch ``.pth`` state dicts read without PyTorch, through a restricted unpickler.

Two layouts of ``torch.save``:

* zip (PyTorch >= 1.6): ``<archive>/data.pkl`` is a pickle of the state
  dict whose tensors are ``torch._utils._rebuild_tensor_v2(storage, offset,
  size, stride, requires_grad, backward_hooks)`` calls; each storage is a
  persistent id ``('storage', torch.FloatStorage, key, location, numel)``
  whose bytes are the entry ``<archive>/data/<key>`` (``<archive>/byteorder``
  gives their byte order, little-endian when absent).
* legacy (older files, e.g. torchvision's ``vgg16-397923af.pth``): five
  pickles in a row (magic number, protocol 1001, system info, the state
  dict, the storage keys), then for each key an int64 element count and the
  raw elements. Persistent ids carry a sixth item, a view of another
  storage ``(key, offset, size)`` or None; tensors may use the older
  ``torch._utils._rebuild_tensor(storage, offset, size, stride)``.

Unpickling can call any importable function, so a ``.pth`` from an
untrusted source could run code. The unpickler here resolves only
``collections.OrderedDict``, ``torch._utils._rebuild_tensor(_v2)`` (mapped to
a local function that records the view) and ``torch.<Type>Storage`` (local
markers holding a dtype); any other global — ``os.system``, ``builtins.eval``
… — stops the load with a ValueError before anything is called. Nothing of
``torch`` is imported.
"""

import collections
import dataclasses
import io
import os
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
  """Stands for ``torch.<name>`` in a pickle; never callable."""
  name: str

  @property
  def dtype(self):
    return np.dtype(_STORAGE_DTYPES[self.name])


@dataclasses.dataclass(eq=False)
class _Storage:
  """A storage named by a persistent id; ``data`` is filled once its bytes are read."""
  dtype: np.dtype
  key: str
  numel: int
  data: np.ndarray = None
  view_of: tuple = None  # (root storage, offset, size) for legacy storage views


@dataclasses.dataclass(eq=False)
class _TensorView:
  """A tensor of the pickle, resolved to an array once its storage is read."""
  storage: _Storage
  offset: int
  shape: tuple
  strides: tuple


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  """Stand-in for ``torch._utils._rebuild_tensor(_v2)``: records the view."""
  del unused
  if not isinstance(storage, _Storage):
    raise pickle.UnpicklingError("a tensor whose storage is not a torch storage")
  return _TensorView(storage, int(storage_offset), tuple(int(n) for n in size),
                     tuple(int(s) for s in stride))


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only ordered dicts, torch's tensor rebuild functions and storage types."""

  def __init__(self, file, storages):
    super().__init__(file)
    self.storages = storages

  def find_class(self, module, name):
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
      return _rebuild_tensor
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise pickle.UnpicklingError(
        f"refusing to load the global {module}.{name}: only tensors, storages and ordered "
        f"dicts are allowed in a weights file")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
    storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
    if key not in self.storages:
      self.storages[key] = _Storage(storage_type.dtype, key, numel)
    storage = self.storages[key]
    view = pid[5] if len(pid) == 6 else None
    if view is None:
      return storage
    view_key, offset, size = view
    return _Storage(storage.dtype, str(view_key), int(size), view_of=(storage, int(offset),
                                                                      int(size)))


def _unpickle(file, storages, name):
  try:
    return _RestrictedUnpickler(file, storages).load()
  except pickle.UnpicklingError as e:
    raise ValueError(f"{name}: {e}") from None
  except (EOFError, struct.error):
    raise ValueError(f"{name}: truncated pickle data") from None
  except Exception as e:  # a malformed pickle can fail in many ways; none may escape unnamed
    raise ValueError(f"{name}: not a PyTorch weights file ({type(e).__name__}: {e})") from None


def _set_data(storage, raw, byteorder, name):
  dtype = storage.dtype.newbyteorder("<" if byteorder == "little" else ">")
  needed = storage.numel * dtype.itemsize
  if len(raw) < needed:
    raise ValueError(f"{name}: storage {storage.key} needs {needed} bytes, the file holds "
                     f"{len(raw)} (truncated)")
  storage.data = np.frombuffer(raw, dtype, count=storage.numel).astype(
      storage.dtype.newbyteorder("="))


def _array(view, name):
  """The NumPy array of a tensor view (a copy), bounds-checked against its storage."""
  storage = view.storage
  data = storage.data
  if storage.view_of is not None:
    root, offset, size = storage.view_of
    data = root.data[offset:offset + size]
  if data is None:
    raise ValueError(f"{name}: storage {storage.key} has no data")
  shape, strides = view.shape, view.strides
  if min(shape, default=1) < 0 or min(strides, default=0) < 0 or view.offset < 0:
    raise ValueError(f"{name}: tensor with negative size, stride or offset")
  if min(shape, default=1) == 0:
    return np.zeros(shape, data.dtype)
  last = view.offset + sum((n - 1) * s for n, s in zip(shape, strides))
  if last >= data.size:
    raise ValueError(f"{name}: tensor of size {shape} reaches element {last} of a storage of "
                     f"{data.size}")
  return np.lib.stride_tricks.as_strided(
      data[view.offset:], shape=shape, strides=[s * data.itemsize for s in strides]).copy()


def _state_dict(obj, name):
  """The unpickled object as ``{name: array}``; tensors only."""
  if not isinstance(obj, dict):
    raise ValueError(f"{name}: expected a state dict (name -> tensor), got {type(obj).__name__}")
  result = collections.OrderedDict()
  for key, value in obj.items():
    if not isinstance(key, str) or not isinstance(value, _TensorView):
      raise ValueError(f"{name}: expected a state dict (name -> tensor), entry {key!r} is a "
                       f"{type(value).__name__}")
    result[key] = _array(value, name)
  return result


def _load_zip(data, name):
  try:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
      pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
      if len(pickles) != 1:
        raise ValueError(f"{name}: expected one data.pkl in the zip archive, found "
                         f"{len(pickles)}")
      prefix = pickles[0][:-len("data.pkl")]
      names = set(archive.namelist())
      byteorder = "little"
      if prefix + "byteorder" in names:
        byteorder = archive.read(prefix + "byteorder").decode("ascii").strip()
      storages = {}
      obj = _unpickle(io.BytesIO(archive.read(pickles[0])), storages, name)
      for key, storage in storages.items():
        entry = f"{prefix}data/{key}"
        if entry not in names:
          raise ValueError(f"{name}: storage {key} is missing ({entry})")
        _set_data(storage, archive.read(entry), byteorder, name)
  except (zipfile.BadZipFile, EOFError, OSError) as e:
    raise ValueError(f"{name}: broken zip archive (truncated?): {e}") from None
  return _state_dict(obj, name)


def _load_legacy(data, name):
  stream = io.BytesIO(data)
  storages = {}
  if _unpickle(stream, storages, name) != LEGACY_MAGIC:
    raise ValueError(f"{name}: not a PyTorch file (bad magic number)")
  protocol = _unpickle(stream, storages, name)
  if protocol != LEGACY_PROTOCOL:
    raise ValueError(f"{name}: unsupported legacy protocol {protocol!r}")
  info = _unpickle(stream, storages, name)
  byteorder = "little" if not isinstance(info, dict) or info.get("little_endian", True) else "big"
  obj = _unpickle(stream, storages, name)
  keys = _unpickle(stream, storages, name)
  if not isinstance(keys, list):
    raise ValueError(f"{name}: malformed legacy file (no storage key list)")
  for key in keys:
    storage = storages.get(str(key))
    if storage is None:
      raise ValueError(f"{name}: unknown storage key {key!r}")
    header = stream.read(8)
    if len(header) < 8:
      raise ValueError(f"{name}: truncated before storage {key}")
    count = struct.unpack("<q" if byteorder == "little" else ">q", header)[0]
    if count != storage.numel:
      raise ValueError(f"{name}: storage {key} has {count} elements, its tensors expect "
                       f"{storage.numel}")
    _set_data(storage, stream.read(count * storage.dtype.itemsize), byteorder, name)
  return _state_dict(obj, name)


def loads(data, name="<bytes>"):
  """The state dict in a ``torch.save`` file's bytes: ``OrderedDict`` name -> NumPy array.

  Raises:
    ValueError: a global outside the allowed set (a file that would run
      code), a truncated file, or contents other than name -> tensor.
  """
  if data[:4] == b"PK\x03\x04":
    return _load_zip(data, name)
  if data[:1] == b"\x80":
    return _load_legacy(data, name)
  raise ValueError(f"{name}: neither a zip archive nor a pickle; not a PyTorch .pth file")


def load(path):
  """The state dict of the ``.pth`` file at ``path`` (see :func:`loads`)."""
  with open(path, "rb") as f:
    data = f.read()
  return loads(data, os.fspath(path))
