"""Caffe ``.caffemodel`` files (a binary ``caffe.NetParameter``) read without Caffe or protobuf.

A protobuf message is a sequence of fields, each a varint key
``field_number << 3 | wire_type`` followed by a varint (wire type 0), 8 bytes
(1), a varint length and that many bytes (2: strings, sub-messages, packed
repeated numbers) or 4 bytes (5). The fields read here (``caffe.proto``):

* ``NetParameter``: ``layer`` = 100 (``LayerParameter``, current files) or
  ``layers`` = 2 (``V1LayerParameter``, files of 2014–2015 such as
  ``VGG_ILSVRC_16_layers.caffemodel``).
* ``LayerParameter``: ``name`` = 1, ``type`` = 2 (string), ``blobs`` = 7.
* ``V1LayerParameter``: ``name`` = 4, ``type`` = 5 (enum: 4 CONVOLUTION,
  14 INNER_PRODUCT …), ``blobs`` = 6, and ``layer`` = 1 holding a
  ``V0LayerParameter`` (``name`` = 1, ``type`` = 2 string, ``blobs`` = 50) in
  the oldest files.
* ``BlobProto``: ``shape`` = 7 (``BlobShape.dim`` = 1), or the legacy 4-D
  ``num`` = 1, ``channels`` = 2, ``height`` = 3, ``width`` = 4; ``data`` = 5
  (float32, packed or not), ``double_data`` = 8.

Layer types are given as the current strings (``'Convolution'``,
``'InnerProduct'``, …) whatever the file's version.
"""

import dataclasses
import os

import numpy as np

_V1_TYPES = {3: "Concat", 4: "Convolution", 5: "Data", 6: "Dropout", 8: "Flatten",
             14: "InnerProduct", 15: "LRN", 17: "Pooling", 18: "ReLU", 20: "Softmax",
             21: "SoftmaxWithLoss"}
_V0_TYPES = {"conv": "Convolution", "innerproduct": "InnerProduct", "relu": "ReLU",
             "pool": "Pooling", "dropout": "Dropout", "softmax": "Softmax", "data": "Data"}
# First bytes of a NetParameter: keys of its fields 1-8 (wire types 0 or 2) and of field 100.
NET_PARAMETER_FIRST_BYTES = frozenset({0x0A, 0x12, 0x1A, 0x20, 0x22, 0x28, 0x32, 0x38, 0x42,
                                       0xA2})


@dataclasses.dataclass
class Layer:
  """One layer of a net: ``name``, ``type`` (e.g. ``'Convolution'``), ``blobs`` (float32 arrays)."""
  name: str
  type: str
  blobs: list


class _Message:
  """Field iterator over one serialised message held in a memoryview."""

  def __init__(self, data, start, end, name):
    self.data, self.pos, self.end, self.name = data, start, end, name

  def fail(self, message):
    raise ValueError(f"{self.name}: {message} (at byte {self.pos})")

  def varint(self):
    value, shift = 0, 0
    while True:
      if self.pos >= self.end:
        self.fail("truncated: a varint runs past the end of its message")
      byte = self.data[self.pos]
      self.pos += 1
      value |= (byte & 0x7F) << shift
      if not byte & 0x80:
        return value
      shift += 7
      if shift >= 70:
        self.fail("varint longer than 10 bytes")

  def skip(self, size):
    if size < 0 or self.pos + size > self.end:
      self.fail(f"truncated: a field of {size} bytes runs past the end of its message "
                f"(byte {self.end})")
    start = self.pos
    self.pos += size
    return start

  def fields(self):
    """Yields ``(field_number, wire_type, value)``: an int, or ``(start, end)`` for wire 1/2/5."""
    while self.pos < self.end:
      key = self.varint()
      number, wire = key >> 3, key & 7
      if wire == 0:
        yield number, wire, self.varint()
      elif wire == 1:
        start = self.skip(8)
        yield number, wire, (start, start + 8)
      elif wire == 2:
        size = self.varint()
        start = self.skip(size)
        yield number, wire, (start, start + size)
      elif wire == 5:
        start = self.skip(4)
        yield number, wire, (start, start + 4)
      else:
        self.fail(f"unsupported protobuf wire type {wire} (field {number})")

  def sub(self, span):
    return _Message(self.data, span[0], span[1], self.name)

  def text(self, span):
    return bytes(self.data[span[0]:span[1]]).decode("utf-8", "replace")


def _packed_varints(message, span):
  sub = message.sub(span)
  values = []
  while sub.pos < sub.end:
    values.append(sub.varint())
  return values


def _blob(message):
  """A ``BlobProto`` message -> float32 array of its shape."""
  legacy = {}
  shape = None
  chunks = []
  for number, wire, value in message.fields():
    if number in (1, 2, 3, 4) and wire == 0:
      legacy[number] = value
    elif number == 7 and wire == 2:
      shape = []
      for dim_number, dim_wire, dim in message.sub(value).fields():
        if dim_number == 1:
          shape += _packed_varints(message, dim) if dim_wire == 2 else [dim]
    elif number == 5 and wire in (2, 5):
      chunks.append(np.frombuffer(message.data[value[0]:value[1]], "<f4"))
    elif number == 8 and wire in (1, 2):
      chunks.append(np.frombuffer(message.data[value[0]:value[1]], "<f8"))
  data = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0,), np.float32)
  if shape is None:
    shape = [legacy.get(i, 0) for i in (1, 2, 3, 4)] if legacy else [data.size]
  if int(np.prod(shape)) != data.size:
    message.fail(f"blob of shape {tuple(shape)} holds {data.size} values")
  return data.reshape(shape)


def _layer(message, version):
  """``Layer`` of a V2 (``LayerParameter``), V1 or V0 message."""
  name_field, type_field, blob_field = {2: (1, 2, 7), 1: (4, 5, 6), 0: (1, 2, 50)}[version]
  name, kind, blobs, v0 = "", "", [], None
  for number, wire, value in message.fields():
    if number == name_field and wire == 2:
      name = message.text(value)
    elif number == type_field:
      if wire == 0:
        kind = _V1_TYPES.get(value, f"V1 type {value}")
      else:
        text = message.text(value)
        kind = _V0_TYPES.get(text, text) if version == 0 else text
    elif number == blob_field and wire == 2:
      blobs.append(_blob(message.sub(value)))
    elif version == 1 and number == 1 and wire == 2:
      v0 = _layer(message.sub(value), 0)
  if v0 is not None and not name:
    return v0
  return Layer(name, kind, blobs)


def loads(data, name="<bytes>"):
  """The layers of a serialised ``NetParameter``, in file order.

  Raises:
    ValueError: truncated or malformed data, or a message without layers.
  """
  message = _Message(memoryview(data), 0, len(data), name)
  layers = []
  for number, wire, value in message.fields():
    if number == 100 and wire == 2:
      layers.append(_layer(message.sub(value), 2))
    elif number == 2 and wire == 2:
      layers.append(_layer(message.sub(value), 1))
  if not layers:
    raise ValueError(f"{name}: no layers found; not a Caffe NetParameter (.caffemodel)")
  return layers


def load(path):
  """The layers of the ``.caffemodel`` at ``path`` (see :func:`loads`)."""
  with open(path, "rb") as f:
    data = f.read()
  return loads(data, os.fspath(path))
