"""Attribute labels of the objects of a dataset's images, for ``train/region_pretraining.py``.

The file (``objects.json``, as ``synthetic_world.generate_dataset`` writes
it; any dataset can provide one)::

  {"attributes": {"<head>": ["<value>", ...], ...},
   "images": {"<image id>": [{"x": .., "y": .., "width": .., "height": ..,
                              "<head>": "<value>", ...}, ...]}}

names the attribute heads and their values (a value's class is its position
in the list), then, per image, its objects: a box (1-based upper-left corner,
width and height in the original image's pixels, as in Visual Genome's
``region_descriptions.json``) and a value for some or all heads. An image id
is the file name of the image without its extension (``12.jpg`` -> ``"12"``).
"""

import os

import numpy as np

from densecap_jax import files
from densecap_jax.data import visual_genome

BOX_FIELDS = ("x", "y", "width", "height")
MAX_DEPTH = 8


def _fail(path, where, expected, value):
  got = type(value).__name__ if not isinstance(value, (str, int, float)) else repr(value)
  raise ValueError(f"{path}: {where} must be {expected}, got {got[:80]}")


def read_objects(path):
  """The parsed, checked file: ``(heads, images)``.

  Returns:
    ``heads``: ``{name: tuple of values}`` in file order; ``images``: ``{image
    id: [(xywh box tuple, {head: value}), ...]}``.

  Raises:
    ValueError: one line naming the file, the field and what it expected.
  """
  text = files.read_text(path, "region labels file")
  try:
    data = files.loads_json(text, MAX_DEPTH, finite=True)
  except (files.JSONLimitError, ValueError) as e:
    raise ValueError(f"{path}: not a region labels file ({' '.join(str(e).split())})") from None
  if not isinstance(data, dict):
    _fail(path, "the file", 'an object {"attributes": ..., "images": ...}', data)
  for key in ("attributes", "images"):
    if not isinstance(data.get(key), dict):
      _fail(path, f'"{key}"', "an object", data.get(key))
  heads = {}
  for name, values in data["attributes"].items():
    if name in BOX_FIELDS:
      _fail(path, f'attribute name "{name}"', "a name other than x, y, width, height", name)
    if (not isinstance(values, list) or not values
        or not all(isinstance(v, str) for v in values)):
      _fail(path, f'"attributes"."{name}"', "a non-empty list of strings", values)
    if len(set(values)) != len(values):
      _fail(path, f'"attributes"."{name}"', "a list of distinct values", values)
    heads[name] = tuple(values)
  if not heads:
    _fail(path, '"attributes"', "at least one attribute", data["attributes"])
  images = {}
  for image_id, objects in data["images"].items():
    if not isinstance(objects, list):
      _fail(path, f'"images"."{image_id}"', "a list of objects", objects)
    images[image_id] = [_read_object(path, f'"images"."{image_id}"[{k}]', obj, heads)
                        for k, obj in enumerate(objects)]
  return heads, images


def _read_object(path, where, obj, heads):
  if not isinstance(obj, dict):
    _fail(path, where, "an object", obj)
  box = []
  for field in BOX_FIELDS:
    value = obj.get(field)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      _fail(path, f'{where}."{field}"', "a number", value)
    box.append(float(value))
  labels = {}
  for name, value in obj.items():
    if name in BOX_FIELDS:
      continue
    if name not in heads:
      _fail(path, f'{where}."{name}"', f"one of the attributes {', '.join(heads)}", name)
    if value not in heads[name]:
      _fail(path, f'{where}."{name}"', f"one of {', '.join(heads[name])}", value)
    labels[name] = value
  return tuple(box), labels


def load_region_labels(path, data, image_size):
  """The labels of the file ``path`` for the images of ``data``, for ``region_pretraining``.

  Args:
    path: the labels file (module docstring).
    data: ``loader.DenseCapH5``; its images are matched by file name
      (``data.filenames[index]``); an image the file lacks has no regions.
    image_size: the long side the images were preprocessed to.

  Returns:
    ``(heads, region_labels)``: ``{name: number of classes}`` in file order
    and ``region_labels(index) -> (boxes, classes)``: ``(R, 4)`` float32
    xcycwh boxes in the stored image's pixels (``visual_genome.encode_boxes``)
    and ``(R, num_heads)`` int32 classes, -1 where an object has no value for
    that head, the objects in file order.

  Raises:
    ValueError: a malformed file, or a box outside its image; one line.
  """
  heads, images = read_objects(path)
  names = list(heads)
  labels = []
  for index, filename in enumerate(data.filenames):
    image_id = os.path.splitext(os.path.basename(filename))[0]
    objects = images.get(image_id, [])
    height, width = (int(v) for v in data.original_sizes[index])
    boxes = np.asarray([box for box, _ in objects], np.float64).reshape(-1, 4)
    for k, (x, y, w, h) in enumerate(boxes):
      if not (x >= 1 and y >= 1 and w >= 1 and h >= 1 and x + w - 1 <= width
              and y + h - 1 <= height):
        raise ValueError(
            f'{path}: "images"."{image_id}"[{k}] box x={x:g} y={y:g} width={w:g} height={h:g} '
            f"must lie inside its image of {width}x{height} pixels (1-based x, y)")
    classes = np.asarray([[heads[n].index(values[n]) if n in values else -1 for n in names]
                          for _, values in objects], np.int32).reshape(-1, len(names))
    encoded, _ = visual_genome.encode_boxes(boxes, np.tile((height, width), (len(boxes), 1)),
                                            image_size)
    labels.append((encoded.astype(np.float32), classes))

  def region_labels(index):
    return labels[index]

  return {name: len(values) for name, values in heads.items()}, region_labels
