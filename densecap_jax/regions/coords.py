"""The one coordinate convention of boxes a user gives or gets.

Every entry point that takes boxes from a user or returns boxes for one (the
Python API, the server, ``extract_features``, ``index`` and ``search``) uses
**xywh floats, 1-based (reference §0.1, §0.2), in the pixels of the image as
the user gave it, turned upright by its EXIF orientation**
(``data.images.exif_upright``). ``results.json`` alone keeps the original's
boxes in the resized image's pixels (§10.2; the viewer reads them so).

The model works in the resized image (long side ``image_size``, §1.2). Boxes
go between the two with one factor, the height ratio ``H0 / h`` the
original's webcam daemon uses (§11.1, ``scale_boxes_xywh``), both ways: a box
the model returns, given back, is the same region. The width is truncated
when resizing, so along the long side of a landscape image this factor may
differ from the true one by up to ``1 / h`` (a fraction of a pixel of the
resized image).

A given xywh box becomes the model's xcycwh by the exact inverse of the rule
its outputs are written with (``xc = x + (w - 1) / 2``, §0.2), not the
original's ``x + w / 2`` for external boxes, for the same reason.

Given boxes are taken wherever they lie (``check_boxes``), so that every box
the model returns can be given back: its final boxes are not clipped (as the
original's are not), and a few may lie partly or even wholly outside the
image. Any finite box with positive ``w`` and ``h`` is accepted. A box inside
the image is used unchanged; a box partly outside is clipped to the image
(its corners ``x .. x + w - 1`` to ``[1, W]``, ``y .. y + h - 1`` to
``[1, H]``); a box wholly outside lands, by the same clamping, on the
1-pixel-wide strip along the nearest border (a corner pixel beyond a corner).
Results say which: ``clipped`` (partly or wholly outside) and ``outside``
(wholly outside: its caption and scores describe that border strip, not the
box, so callers may want to leave it out). NaN, infinite or non-positive
sizes are one-line errors naming the box index.
"""

import numpy as np


def scale_xywh(boxes, factor):
  """``scale_boxes_xywh`` (§0.2) in NumPy float32, whatever the box count (no compile per shape)."""
  b = np.asarray(boxes, np.float32)
  f = np.float32(factor)
  one = np.float32(1)
  return np.stack([(b[..., 0] - one) * f + one, (b[..., 1] - one) * f + one, b[..., 2] * f,
                   b[..., 3] * f], axis=-1).astype(np.float32)


def image_scale(original_size, resized_size):
  """Image pixels per resized-image pixel: ``H0 / h`` (sizes are ``(H, W)``)."""
  return float(original_size[0]) / float(resized_size[0])


def to_image(boxes, original_size, resized_size):
  """``(..., 4)`` xywh in the resized image -> float32 xywh in the image as given."""
  return scale_xywh(boxes, image_scale(original_size, resized_size))


def to_resized(boxes, original_size, resized_size):
  """``(..., 4)`` xywh in the image as given -> float32 xywh in the resized image."""
  return scale_xywh(boxes, 1.0 / image_scale(original_size, resized_size))


def xywh_to_model(boxes):
  """``(..., 4)`` xywh -> xcycwh, the inverse of ``ops.boxes.xcycwh_to_xywh``: ``xc = x + (w-1)/2``."""
  b = np.asarray(boxes, np.float32)
  x, y, w, h = (b[..., i] for i in range(4))
  return np.stack([x + (w - 1) / 2, y + (h - 1) / 2, w, h], axis=-1).astype(np.float32)


def check_boxes(boxes, image_size, name="boxes"):
  """Given boxes of one image, checked and clipped to it (see the module docstring).

  Each corner is clamped to the image, ``x .. x + w - 1`` to ``[1, W]`` and
  ``y .. y + h - 1`` to ``[1, H]``: a box partly outside keeps its part
  inside, a box wholly outside becomes the 1-pixel strip along the nearest
  border. Boxes inside are returned unchanged (bit for bit, as float32).

  Args:
    boxes: ``(k, 4)`` xywh numbers (a list of ``[x, y, w, h]`` or an array;
      ``k`` may be 0).
    image_size: ``(H, W)`` of the image the boxes refer to.
    name: what the boxes are called in errors (``"boxes of image 2"``).

  Returns:
    ``(boxes, clipped, outside)``: ``(k, 4)`` float32 xywh (positive ``w``
    and ``h``), ``(k,)`` bool the boxes clipped (partly or wholly outside),
    ``(k,)`` bool those wholly outside (no pixel in ``[1, W] x [1, H]``).

  Raises:
    ValueError: one line naming the box index: not 4 numbers, NaN or
      infinite, ``w`` or ``h`` not positive.
  """
  try:
    array = np.asarray(boxes, np.float64)
  except (TypeError, ValueError):
    raise ValueError(f"{name}: expected a list of [x, y, w, h] numbers") from None
  if array.size == 0:
    return np.zeros((0, 4), np.float32), np.zeros((0,), bool), np.zeros((0,), bool)
  if array.ndim != 2 or array.shape[1] != 4:
    raise ValueError(f"{name}: expected shape (k, 4) of [x, y, w, h], got {array.shape}")
  height, width = (float(v) for v in image_size)
  finite = np.isfinite(array)
  positive = (array[:, 2] > 0) & (array[:, 3] > 0)
  if not (finite.all() and positive.all()):
    i = int(np.flatnonzero(~finite.all(axis=1) | ~positive)[0])
    x, y, w, h = array[i]
    for field, value in zip("xywh", (x, y, w, h)):
      if not np.isfinite(value):
        raise ValueError(f"{name}: box {i}: {field} is {value}")
    raise ValueError(f"{name}: box {i}: w and h must be positive, got w={w:g}, h={h:g}")
  x1 = array[:, 0]
  y1 = array[:, 1]
  x2 = x1 + array[:, 2] - 1
  y2 = y1 + array[:, 3] - 1
  outside = (x1 > width) | (y1 > height) | (x2 < 1) | (y2 < 1)
  clipped = outside | (x1 < 1) | (y1 < 1) | (x2 > width) | (y2 > height)
  x1c, x2c = np.clip(x1, 1, width), np.clip(x2, 1, width)
  y1c, y2c = np.clip(y1, 1, height), np.clip(y2, 1, height)
  out = np.where(clipped[:, None], np.stack([x1c, y1c, x2c - x1c + 1, y2c - y1c + 1], axis=1),
                 array)
  return out.astype(np.float32), clipped, outside
