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
  """Given boxes of one image, checked and clipped to it.

  A box partly outside the image is clipped to ``[1, W] x [1, H]`` (its
  corners ``x .. x + w - 1``); boxes inside are returned unchanged.

  Args:
    boxes: ``(k, 4)`` xywh numbers (a list of ``[x, y, w, h]`` or an array;
      ``k`` may be 0).
    image_size: ``(H, W)`` of the image the boxes refer to.
    name: what the boxes are called in errors (``"boxes of image 2"``).

  Returns:
    ``(boxes, clipped)``: ``(k, 4)`` float32 xywh and ``(k,)`` bool, the clipped ones.

  Raises:
    ValueError: one line naming the box index: not 4 numbers, NaN or
      infinite, ``w`` or ``h`` not positive, or wholly outside the image.
  """
  try:
    array = np.asarray(boxes, np.float64)
  except (TypeError, ValueError):
    raise ValueError(f"{name}: expected a list of [x, y, w, h] numbers") from None
  if array.size == 0:
    return np.zeros((0, 4), np.float32), np.zeros((0,), bool)
  if array.ndim != 2 or array.shape[1] != 4:
    raise ValueError(f"{name}: expected shape (k, 4) of [x, y, w, h], got {array.shape}")
  height, width = (float(v) for v in image_size)
  for i, (x, y, w, h) in enumerate(array):
    for field, value in zip("xywh", (x, y, w, h)):
      if not np.isfinite(value):
        raise ValueError(f"{name}: box {i}: {field} is {value}")
    if w <= 0 or h <= 0:
      raise ValueError(f"{name}: box {i}: w and h must be positive, got w={w:g}, h={h:g}")
    if x > width or y > height or x + w - 1 < 1 or y + h - 1 < 1:
      raise ValueError(f"{name}: box {i} [{x:g}, {y:g}, {w:g}, {h:g}] is wholly outside the "
                       f"image of {width:g}x{height:g} (WxH) pixels")
  x1 = array[:, 0]
  y1 = array[:, 1]
  x2 = x1 + array[:, 2] - 1
  y2 = y1 + array[:, 3] - 1
  clipped = (x1 < 1) | (y1 < 1) | (x2 > width) | (y2 > height)
  x1c, y1c = np.maximum(x1, 1), np.maximum(y1, 1)
  x2c, y2c = np.minimum(x2, width), np.minimum(y2, height)
  out = np.where(clipped[:, None], np.stack([x1c, y1c, x2c - x1c + 1, y2c - y1c + 1], axis=1),
                 array)
  return out.astype(np.float32), clipped
