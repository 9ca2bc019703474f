"""Torch7 binary serialisation (``torch.save`` / ``torch.load``, ``.t7``) without Torch.

The format of torch7's ``File.lua`` in binary mode (little-endian, 4-byte
int, 8-byte long, 8-byte double). Every value starts with an int type tag:

==== ====================================================================
 0   nil
 1   number: a double
 2   string: int length, then the bytes
 3   table: int reference index; if new, int entry count and that many
     key, value pairs
 4   torch object: int reference index; if new, a version string
     ``"V <n>"`` (missing in very old files, where this string is the class
     name), the class name and the object's payload (below)
 5   boolean: an int, 1 for true
 6   function: int length, bytecode, upvalue table (no reference index)
 7/8 recursive function: int reference index; if new, as 6
==== ====================================================================

A reference index seen before means "the same object again": modules listed
in two tables, tensors that share one storage, cycles. Payloads of torch
objects: a storage (``torch.FloatStorage``, ``torch.CudaStorage`` …) is a
long element count and the raw elements; a tensor is ``nDimension`` (int),
its sizes and strides (longs), a 1-based storage offset (long) and its
storage object; every other class (``nn.*``, ``cudnn.*``, densecap's modules,
nngraph's graphs) is the table of its fields.

Python values read by :func:`load`:

* nil -> ``None``; booleans -> ``bool``; numbers -> ``int`` when integral,
  else ``float``; strings -> ``str`` (``bytes`` when not UTF-8);
* tables -> ``dict`` (a Lua sequence is a dict with keys ``1..n``, see
  :func:`sequence`); keys that Python cannot hash (tables used as keys, as
  nngraph does) are wrapped in :class:`Ref`;
* storages -> read-only 1-D NumPy arrays; tensors -> read-only NumPy views
  of their storage (tensors sharing a storage share memory);
* other torch objects -> :class:`TorchObject`; functions -> :class:`LuaFunction`
  (bytecode kept as bytes, never run).

:func:`save` writes the same format from those Python values, plus
:class:`Tensor` and :class:`Storage` for tensors with an explicit storage,
offset and strides (shared storages) and for a given storage class
(``torch.CudaStorage``).
"""

import dataclasses
import io
import os
import re
import struct
from typing import Any

import numpy as np

TYPE_NIL = 0
TYPE_NUMBER = 1
TYPE_STRING = 2
TYPE_TABLE = 3
TYPE_TORCH = 4
TYPE_BOOLEAN = 5
TYPE_FUNCTION = 6
TYPE_RECUR_FUNCTION = 8
LEGACY_TYPE_RECUR_FUNCTION = 7

_ELEMENT_TYPES = {
    "Byte": np.uint8, "Char": np.int8, "Short": np.int16, "Int": np.int32,
    "Long": np.int64, "Float": np.float32, "Double": np.float64, "Half": np.float16,
}
_TENSOR_CLASS = re.compile(r"^torch\.(Cuda)?(Byte|Char|Short|Int|Long|Float|Double|Half)?"
                           r"(Tensor|Storage)$")
_MAX_DEPTH = 200


@dataclasses.dataclass(eq=False)
class TorchObject:
  """An instance of a Torch class other than tensors and storages.

  Attributes:
    class_name: e.g. ``'nn.SpatialConvolution'``, ``'DenseCapModel'``.
    fields: the object's fields, a dict (the table Torch serialises).
    version: the class version of the ``"V <n>"`` string (0 when absent).
  """
  class_name: str
  fields: Any
  version: int = 1

  def __getitem__(self, name):
    return self.fields[name]

  def get(self, name, default=None):
    """``fields.get(name, default)`` when the fields are a table, else ``default``."""
    return self.fields.get(name, default) if isinstance(self.fields, dict) else default


@dataclasses.dataclass(frozen=True, eq=False)
class Ref:
  """A table key that Python cannot hash (a table or an array), compared by identity."""
  value: Any


@dataclasses.dataclass(eq=False)
class LuaFunction:
  """A serialised Lua function: its bytecode and upvalue table (never executed)."""
  bytecode: bytes
  upvalues: Any


@dataclasses.dataclass(eq=False)
class Storage:
  """A storage to write with an explicit class (e.g. ``'torch.CudaStorage'``); ``data`` 1-D."""
  data: np.ndarray
  class_name: str


@dataclasses.dataclass(eq=False)
class Tensor:
  """A tensor to write as a view of ``storage``: element ``offset``, ``shape`` and ``strides``.

  ``storage`` is a 1-D array (or a :class:`Storage`); several tensors given
  the same storage object are written with one shared storage, as Torch does
  after ``getParameters()``. An empty Torch tensor is ``Tensor(None, 0, (), ())``.
  """
  storage: Any
  offset: int
  shape: tuple
  strides: tuple
  class_name: str = "torch.FloatTensor"


def element_type(class_name):
  """``(dtype, kind)`` of a tensor or storage class name, kind ``'Tensor'`` or ``'Storage'``.

  ``torch.CudaTensor`` / ``torch.CudaStorage`` hold float32. Returns ``None``
  for any other class name.
  """
  match = _TENSOR_CLASS.match(class_name)
  if not match:
    return None
  cuda, element, kind = match.groups()
  if element is None:
    if not cuda:
      return None
    element = "Float"
  return np.dtype(_ELEMENT_TYPES[element]).newbyteorder("<"), kind


def sequence(table, what="table"):
  """Values of a Lua sequence (a dict with keys ``1..n``) as a list.

  Raises:
    ValueError: ``table`` is not a dict with exactly the keys ``1..n``.
  """
  if not isinstance(table, dict) or set(table) != set(range(1, len(table) + 1)):
    raise ValueError(f"{what} is not a Lua list (expected keys 1..n)")
  return [table[i] for i in range(1, len(table) + 1)]


class _Reader:
  """Reads one value tree from a binary buffer, keeping the reference table."""

  def __init__(self, data, name):
    self.data = memoryview(data)
    self.name = name
    self.pos = 0
    self.objects = {}
    self.depth = 0

  def fail(self, message, at=None):
    at = self.pos if at is None else at
    raise ValueError(f"{self.name}: {message} (at byte {at})")

  def take(self, size, what):
    if size < 0:
      self.fail(f"negative length {size} for {what}")
    end = self.pos + size
    if end > len(self.data):
      self.fail(f"truncated: {what} needs {size} bytes, the file ends at byte {len(self.data)}")
    chunk = self.data[self.pos:end]
    self.pos = end
    return chunk

  def int(self, what="int"):
    return struct.unpack("<i", self.take(4, what))[0]

  def longs(self, count, what="long"):
    if count < 0:
      self.fail(f"negative count {count} for {what}")
    return list(struct.unpack(f"<{count}q", self.take(8 * count, what)))

  def raw_string(self, what):
    return bytes(self.take(self.int(f"{what} length"), what))

  def value(self):
    start = self.pos
    tag = self.int("type tag")
    if tag == TYPE_NIL:
      return None
    if tag == TYPE_NUMBER:
      number = struct.unpack("<d", self.take(8, "number"))[0]
      return int(number) if number.is_integer() else number
    if tag == TYPE_BOOLEAN:
      return self.int("boolean") == 1
    if tag == TYPE_STRING:
      text = self.raw_string("string")
      try:
        return text.decode("utf-8")
      except UnicodeDecodeError:
        return text
    if tag == TYPE_FUNCTION:
      return self.function()
    if tag in (TYPE_TABLE, TYPE_TORCH, TYPE_RECUR_FUNCTION, LEGACY_TYPE_RECUR_FUNCTION):
      index = self.int("reference index")
      if index in self.objects:
        return self.objects[index]
      self.depth += 1
      if self.depth > _MAX_DEPTH:
        self.fail(f"objects nested more than {_MAX_DEPTH} deep")
      if tag == TYPE_TABLE:
        result = self.table(index)
      elif tag == TYPE_TORCH:
        result = self.torch_object(index)
      else:
        result = self.function(index)
      self.depth -= 1
      return result
    self.fail(f"unknown type tag {tag}: not a Torch7 binary file, or a corrupt one", at=start)

  def function(self, index=None):
    result = LuaFunction(self.raw_string("function bytecode"), None)
    if index is not None:
      self.objects[index] = result
    result.upvalues = self.value()
    return result

  def table(self, index):
    result = {}
    self.objects[index] = result
    count = self.int("table size")
    if count < 0:
      self.fail(f"negative table size {count}")
    for _ in range(count):
      key = self.value()
      try:
        hash(key)
      except TypeError:
        key = Ref(key)
      result[key] = self.value()
    return result

  def torch_object(self, index):
    version_string = self.raw_string("class version")
    if version_string.startswith(b"V "):
      try:
        version = int(version_string[2:])
      except ValueError:
        self.fail(f"bad class version {version_string!r}")
      class_name = self.raw_string("class name")
    else:
      version, class_name = 0, version_string
    class_name = class_name.decode("ascii", "replace")
    kind = element_type(class_name)
    if kind is None:
      result = TorchObject(class_name, None, version)
      self.objects[index] = result
      result.fields = self.value()
      return result
    dtype, what = kind
    result = self.storage(dtype, class_name) if what == "Storage" else self.tensor(
        dtype, class_name)
    self.objects[index] = result
    return result

  def storage(self, dtype, class_name):
    count = self.longs(1, f"{class_name} size")[0]
    if count < 0 or count * dtype.itemsize > len(self.data) - self.pos:
      self.fail(f"truncated: {class_name} of {count} elements needs {count * dtype.itemsize} "
                f"bytes, the file ends at byte {len(self.data)}")
    data = np.frombuffer(self.take(count * dtype.itemsize, class_name), dtype)
    return data.astype(dtype.newbyteorder("="), copy=False)

  def tensor(self, dtype, class_name):
    start = self.pos
    ndim = self.int(f"{class_name} dimension count")
    if ndim < 0 or ndim > 64:
      self.fail(f"{class_name} with {ndim} dimensions", at=start)
    shape = self.longs(ndim, f"{class_name} sizes")
    strides = self.longs(ndim, f"{class_name} strides")
    offset = self.longs(1, f"{class_name} storage offset")[0] - 1
    storage = self.value()
    if ndim == 0 or storage is None:
      return np.zeros((0,), dtype.newbyteorder("="))
    if not isinstance(storage, np.ndarray) or storage.dtype != dtype.newbyteorder("="):
      self.fail(f"{class_name} whose storage is not a {dtype} storage", at=start)
    if min(shape) < 0 or min(strides) < 0 or offset < 0:
      self.fail(f"{class_name} with negative size, stride or offset", at=start)
    if min(shape) == 0:
      return np.zeros(shape, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(shape, strides))
    if last >= storage.size:
      self.fail(f"{class_name} of size {tuple(shape)} (offset {offset}, strides "
                f"{tuple(strides)}) reaches element {last} of a storage of {storage.size}",
                at=start)
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=shape, strides=[s * storage.itemsize for s in strides],
        writeable=False)
    return view


def loads(data, name="<bytes>"):
  """Reads the value tree of a Torch7 binary serialisation held in ``data`` (bytes).

  Raises:
    ValueError: one line naming ``name``, the problem and the byte offset
      (truncated data, unknown type tags, tensors outside their storage).
  """
  reader = _Reader(data, name)
  try:
    result = reader.value()
  except RecursionError:
    raise ValueError(f"{name}: objects nested too deep to read") from None
  if reader.pos != len(reader.data):
    reader.fail(f"{len(reader.data) - reader.pos} unread bytes after the first value")
  return result


def load(path):
  """Reads the value tree of the ``.t7`` file at ``path`` (see the module doc for the types)."""
  with open(path, "rb") as f:
    data = f.read()
  return loads(data, os.fspath(path))


class _Writer:
  """Writes one value tree, giving every table, object and storage one reference index."""

  def __init__(self, out):
    self.out = out
    self.indices = {}
    self.wrappers = {}
    self.alive = []

  def int(self, value):
    self.out.write(struct.pack("<i", value))

  def longs(self, values):
    self.out.write(struct.pack(f"<{len(values)}q", *values))

  def string(self, text):
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    self.int(len(data))
    self.out.write(data)

  def reference(self, tag, obj):
    """Writes the tag and index; returns True if ``obj`` was written before."""
    self.int(tag)
    key = id(obj)
    if key in self.indices:
      self.int(self.indices[key])
      return True
    self.indices[key] = len(self.indices) + 1
    self.alive.append(obj)
    self.int(self.indices[key])
    return False

  def value(self, obj):
    if obj is None:
      self.int(TYPE_NIL)
    elif isinstance(obj, (bool, np.bool_)):
      self.int(TYPE_BOOLEAN)
      self.int(int(obj))
    elif isinstance(obj, (int, float, np.integer, np.floating)):
      self.int(TYPE_NUMBER)
      self.out.write(struct.pack("<d", float(obj)))
    elif isinstance(obj, (str, bytes)):
      self.int(TYPE_STRING)
      self.string(obj)
    elif isinstance(obj, Ref):
      self.value(obj.value)
    elif isinstance(obj, (dict, list, tuple)):
      self.table(obj)
    elif isinstance(obj, TorchObject):
      if not self.reference(TYPE_TORCH, obj):
        self.class_header(obj.class_name, obj.version)
        self.value(obj.fields)
    elif isinstance(obj, Tensor):
      self.tensor(obj)
    elif isinstance(obj, Storage):
      self.storage(obj)
    elif isinstance(obj, np.ndarray):
      self.array(obj)
    else:
      raise ValueError(f"cannot write a {type(obj).__name__} in the Torch7 format")

  def class_header(self, class_name, version=1):
    self.string(f"V {version}")
    self.string(class_name)

  def table(self, obj):
    if self.reference(TYPE_TABLE, obj):
      return
    items = obj.items() if isinstance(obj, dict) else enumerate(obj, start=1)
    items = list(items)
    self.int(len(items))
    for key, item in items:
      self.value(key)
      self.value(item)

  def storage(self, storage):
    if self.reference(TYPE_TORCH, storage.data):
      return
    kind = element_type(storage.class_name)
    if kind is None or kind[1] != "Storage":
      raise ValueError(f"{storage.class_name} is not a storage class")
    data = np.ascontiguousarray(storage.data.reshape(-1), kind[0])
    self.class_header(storage.class_name)
    self.longs([data.size])
    self.out.write(data.tobytes())

  def tensor(self, tensor):
    if self.reference(TYPE_TORCH, tensor):
      return
    kind = element_type(tensor.class_name)
    if kind is None or kind[1] != "Tensor":
      raise ValueError(f"{tensor.class_name} is not a tensor class")
    self.class_header(tensor.class_name)
    self.int(len(tensor.shape))
    self.longs(list(tensor.shape))
    self.longs(list(tensor.strides))
    self.longs([tensor.offset + 1])
    storage = tensor.storage
    if storage is None:
      self.int(TYPE_NIL)
      return
    if not isinstance(storage, Storage):
      storage = self.storage_for(storage, tensor.class_name[:-len("Tensor")] + "Storage")
    self.storage(storage)

  def storage_for(self, data, class_name):
    """One :class:`Storage` per distinct array, so tensors given the same array share it."""
    key = id(data)
    if key not in self.wrappers:
      self.wrappers[key] = Storage(data, class_name)
      self.alive.append(data)
    return self.wrappers[key]

  def array(self, array):
    """Writes an array as a tensor with its own storage (once per array object)."""
    key = id(array)
    if key not in self.wrappers:
      names = {np.dtype(v): k for k, v in _ELEMENT_TYPES.items()}
      if array.dtype not in names:
        raise ValueError(f"no Torch tensor type for dtype {array.dtype}")
      data = np.ascontiguousarray(array)
      strides = tuple(s // data.itemsize for s in data.strides)
      self.wrappers[key] = Tensor(data.reshape(-1), 0, data.shape, strides,
                                  f"torch.{names[array.dtype]}Tensor")
      self.alive.append(array)
    self.tensor(self.wrappers[key])


def dumps(obj):
  """The Torch7 binary serialisation of ``obj`` (bytes); see :func:`save`."""
  out = io.BytesIO()
  _Writer(out).value(obj)
  return out.getvalue()


def save(path, obj):
  """Writes ``obj`` to ``path`` as ``torch.save`` would (binary mode).

  ``obj`` is built from the types :func:`load` returns, plus :class:`Tensor`
  and :class:`Storage`; a NumPy array becomes a tensor of the matching type
  (``float32`` -> ``torch.FloatTensor``) with its own storage. Lists and
  tuples become Lua sequences (keys ``1..n``). An object reached twice is
  written once and referenced after.
  """
  with open(path, "wb") as f:
    f.write(dumps(obj))
