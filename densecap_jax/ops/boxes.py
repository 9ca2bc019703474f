"""Box formats, conversions, clipping, IoU, the R-CNN box transform and the box check.

Box formats (reference §0.2), arrays of shape ``(..., 4)`` in 1-based pixel
coordinates (pixel centres at integers):

* ``xcycwh``: centre x, centre y, width, height — the model's internal format.
* ``x1y1x2y2``: corners, *inclusive* pixel convention (width = x2 - x1 + 1).
* ``xywh``: top-left x, top-left y, width, height — files and drawing.

The conversions reproduce the released ``box_utils.lua`` exactly, including
that they are not mutually inverse: ``xcycwh -> x1y1x2y2`` uses ``(w - 1) / 2``
but ``x1y1x2y2 -> xcycwh`` uses ``w = x2 - x1`` (no +1), so a round trip keeps
the centre and shrinks ``w`` and ``h`` by one (reference §0.2, §14 item 2).

Each JAX function computes in float32; its NumPy version, for host code such
as the evaluator, has the same name ending in ``_np`` and computes in the
NumPy ``dtype`` its caller names (the evaluator's float64, or float32).
``is_box_numbers`` and ``box_faults`` are the one check of boxes read from
users and files: each caller words its own errors.

The functions after those work in NumPy on the boxes users give and get.
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

import math
from typing import Literal

import jax.numpy as jnp
import numpy as np

BoxFormat = Literal["xcycwh", "x1y1x2y2", "xywh"]
BOX_FORMATS = ("xcycwh", "x1y1x2y2", "xywh")


def _split(boxes):
  boxes = jnp.asarray(boxes, jnp.float32)
  return boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]


def _stack(a, b, c, d):
  return jnp.stack([a, b, c, d], axis=-1)


def xcycwh_to_x1y1x2y2(boxes):
  """``(..., 4)`` xcycwh -> x1y1x2y2: ``x1 = xc - (w-1)/2, x2 = xc + (w-1)/2``."""
  xc, yc, w, h = _split(boxes)
  return _stack(xc - (w - 1) / 2, yc - (h - 1) / 2, xc + (w - 1) / 2, yc + (h - 1) / 2)


def x1y1x2y2_to_xcycwh(boxes):
  """``(..., 4)`` x1y1x2y2 -> xcycwh: ``xc = (x1+x2)/2, w = x2 - x1`` (no +1, §0.2 quirk)."""
  x1, y1, x2, y2 = _split(boxes)
  return _stack((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)


def xywh_to_x1y1x2y2(boxes):
  """``(..., 4)`` xywh -> x1y1x2y2: ``x2 = x + w - 1``."""
  x, y, w, h = _split(boxes)
  return _stack(x, y, x + w - 1, y + h - 1)


def x1y1x2y2_to_xywh(boxes):
  """``(..., 4)`` x1y1x2y2 -> xywh: ``w = x2 - x1 + 1``."""
  x1, y1, x2, y2 = _split(boxes)
  return _stack(x1, y1, x2 - x1 + 1, y2 - y1 + 1)


def xcycwh_to_xywh(boxes):
  """``(..., 4)`` xcycwh -> xywh through x1y1x2y2: ``x = xc - (w-1)/2``, ``w`` unchanged."""
  return x1y1x2y2_to_xywh(xcycwh_to_x1y1x2y2(boxes))


def xywh_to_xcycwh(boxes):
  """``(..., 4)`` xywh -> xcycwh: ``xc = x + w/2`` (the original's rule for external boxes)."""
  x, y, w, h = _split(boxes)
  return _stack(x + w / 2, y + h / 2, w, h)


def scale_boxes_xywh(boxes, factor):
  """Rescales ``(..., 4)`` xywh boxes between image sizes, 1-based.

  ``x' = (x - 1) * factor + 1``, ``y' = (y - 1) * factor + 1``,
  ``w' = w * factor``, ``h' = h * factor``. ``factor`` is new size / old size.
  """
  x, y, w, h = _split(boxes)
  return _stack((x - 1) * factor + 1, (y - 1) * factor + 1, w * factor, h * factor)


_TO_X1Y1X2Y2 = {
    "xcycwh": xcycwh_to_x1y1x2y2,
    "x1y1x2y2": lambda b: jnp.asarray(b, jnp.float32),
    "xywh": xywh_to_x1y1x2y2,
}
_FROM_X1Y1X2Y2 = {
    "xcycwh": x1y1x2y2_to_xcycwh,
    "x1y1x2y2": lambda b: b,
    "xywh": x1y1x2y2_to_xywh,
}


def _check_format(fmt):
  if fmt not in BOX_FORMATS:
    raise ValueError(f"box format must be one of {BOX_FORMATS}, got {fmt!r}")


def clip_boxes(boxes, bounds, fmt: BoxFormat):
  """Clips boxes to ``bounds = (x_min, y_min, x_max, y_max)`` (inclusive).

  Reproduces ``box_utils.clip_boxes`` (reference §3.4): the boxes go to
  x1y1x2y2, then ``x1 in [x_min, x_max-1]``, ``y1 in [y_min, y_max-1]``,
  ``x2 in [x_min+1, x_max]``, ``y2 in [y_min+1, y_max]``; ``valid`` is
  ``x2 > x1 and y2 > y1`` *after* clamping; then back to ``fmt``.

  Quirks kept (§14 item 2): for ``'xcycwh'`` every box loses one pixel of width
  and height even when nothing is clipped, and a box entirely outside the
  bounds becomes a one-pixel sliver on the border and is still valid; only
  degenerate boxes are invalid. The original's unit test expects ``xc - w/2``
  corners and "outside => invalid"; this follows the released code instead.

  Args:
    boxes: ``(..., 4)`` boxes in ``fmt``.
    bounds: ``(x_min, y_min, x_max, y_max)``, scalars or arrays broadcastable
      to ``boxes.shape[:-1]``.
    fmt: ``'xcycwh' | 'x1y1x2y2' | 'xywh'``.

  Returns:
    ``(clipped, valid)``: ``(..., 4)`` float32 in ``fmt`` and ``(...)`` bool.
  """
  _check_format(fmt)
  x_min, y_min, x_max, y_max = bounds
  x1, y1, x2, y2 = _split(_TO_X1Y1X2Y2[fmt](boxes))
  x1 = jnp.clip(x1, x_min, x_max - 1)
  y1 = jnp.clip(y1, y_min, y_max - 1)
  x2 = jnp.clip(x2, x_min + 1, x_max)
  y2 = jnp.clip(y2, y_min + 1, y_max)
  valid = (x2 > x1) & (y2 > y1)
  return _FROM_X1Y1X2Y2[fmt](_stack(x1, y1, x2, y2)), valid


def _continuous_corners(boxes):
  xc, yc, w, h = _split(boxes)
  return _stack(xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2)


def box_iou(boxes1, boxes2, *, clean=False):
  """Pairwise IoU of xcycwh boxes with the released ``BoxIoU`` semantics.

  Corners use the ``(w-1)/2`` rule, the intersection has no +1 and the areas
  are ``w * h`` (reference §3.4, §14 item 1), so two identical 100x100 boxes
  have IoU 0.961, not 1. Used by the box sampler. ``clean=True`` gives the
  continuous IoU (corners ``xc ± w/2``) that the original's unit test expects.

  Args:
    boxes1: ``(..., N, 4)`` xcycwh.
    boxes2: ``(..., M, 4)`` xcycwh.
    clean: use continuous corners instead of the released ``(w-1)/2`` rule.

  Returns:
    ``(..., N, M)`` float32.
  """
  boxes1 = jnp.asarray(boxes1, jnp.float32)
  boxes2 = jnp.asarray(boxes2, jnp.float32)
  corners = _continuous_corners if clean else xcycwh_to_x1y1x2y2
  b1 = corners(boxes1)[..., :, None, :]
  b2 = corners(boxes2)[..., None, :, :]
  iw = jnp.maximum(jnp.minimum(b1[..., 2], b2[..., 2]) - jnp.maximum(b1[..., 0], b2[..., 0]), 0)
  ih = jnp.maximum(jnp.minimum(b1[..., 3], b2[..., 3]) - jnp.maximum(b1[..., 1], b2[..., 1]), 0)
  inter = iw * ih
  area1 = (boxes1[..., 2] * boxes1[..., 3])[..., :, None]
  area2 = (boxes2[..., 2] * boxes2[..., 3])[..., None, :]
  return inter / (area1 + area2 - inter)


def box_iou_x1y1x2y2(boxes1, boxes2):
  """Pairwise IoU of x1y1x2y2 boxes, inclusive pixel convention.

  ``area = (x2-x1+1)(y2-y1+1)``, ``inter = max(0, min x2 - max x1 + 1) * (same
  for y)`` — the convention of the original's NMS and evaluation (§3.4, §9).

  Args:
    boxes1: ``(..., N, 4)`` x1y1x2y2.
    boxes2: ``(..., M, 4)`` x1y1x2y2.

  Returns:
    ``(..., N, M)`` float32.
  """
  b1 = jnp.asarray(boxes1, jnp.float32)[..., :, None, :]
  b2 = jnp.asarray(boxes2, jnp.float32)[..., None, :, :]
  iw = jnp.maximum(jnp.minimum(b1[..., 2], b2[..., 2]) - jnp.maximum(b1[..., 0], b2[..., 0]) + 1, 0)
  ih = jnp.maximum(jnp.minimum(b1[..., 3], b2[..., 3]) - jnp.maximum(b1[..., 1], b2[..., 1]) + 1, 0)
  inter = iw * ih
  area1 = (b1[..., 2] - b1[..., 0] + 1) * (b1[..., 3] - b1[..., 1] + 1)
  area2 = (b2[..., 2] - b2[..., 0] + 1) * (b2[..., 3] - b2[..., 1] + 1)
  return inter / (area1 + area2 - inter)


def apply_box_transform(boxes, deltas):
  """Applies R-CNN deltas to xcycwh boxes (``ApplyBoxTransform``, §3.3).

  ``x = xa + tx*wa, y = ya + ty*ha, w = wa*exp(tw), h = ha*exp(th)``.
  Differentiable in both arguments.

  Args:
    boxes: ``(..., 4)`` xcycwh (anchors or RoI boxes).
    deltas: ``(..., 4)`` ``(tx, ty, tw, th)``.

  Returns:
    ``(..., 4)`` xcycwh.
  """
  xa, ya, wa, ha = _split(boxes)
  tx, ty, tw, th = _split(deltas)
  return _stack(xa + tx * wa, ya + ty * ha, wa * jnp.exp(tw), ha * jnp.exp(th))


def invert_box_transform(anchors, targets):
  """Deltas that take ``anchors`` to ``targets`` (``InvertBoxTransform``, §3.3).

  ``tx = (xt-xa)/wa, ty = (yt-ya)/ha, tw = log(wt/wa), th = log(ht/ha)``.

  Args:
    anchors: ``(..., 4)`` xcycwh.
    targets: ``(..., 4)`` xcycwh.

  Returns:
    ``(..., 4)`` ``(tx, ty, tw, th)``.
  """
  xa, ya, wa, ha = _split(anchors)
  xt, yt, wt, ht = _split(targets)
  return _stack((xt - xa) / wa, (yt - ya) / ha, jnp.log(wt / wa), jnp.log(ht / ha))


# NumPy versions: the rules above on host arrays (the naming rule in the module docstring).


def _split_np(boxes, dtype):
  b = np.asarray(boxes, dtype)
  return b[..., 0], b[..., 1], b[..., 2], b[..., 3]


def _stack_np(a, b, c, d, dtype):
  return np.stack([a, b, c, d], axis=-1).astype(dtype, copy=False)


def xcycwh_to_x1y1x2y2_np(boxes, dtype):
  """``xcycwh_to_x1y1x2y2`` in NumPy ``dtype``."""
  xc, yc, w, h = _split_np(boxes, dtype)
  return _stack_np(xc - (w - 1) / 2, yc - (h - 1) / 2, xc + (w - 1) / 2, yc + (h - 1) / 2, dtype)


def xywh_to_x1y1x2y2_np(boxes, dtype):
  """``xywh_to_x1y1x2y2`` in NumPy ``dtype``."""
  x, y, w, h = _split_np(boxes, dtype)
  return _stack_np(x, y, x + w - 1, y + h - 1, dtype)


def x1y1x2y2_to_xywh_np(boxes, dtype):
  """``x1y1x2y2_to_xywh`` in NumPy ``dtype``."""
  x1, y1, x2, y2 = _split_np(boxes, dtype)
  return _stack_np(x1, y1, x2 - x1 + 1, y2 - y1 + 1, dtype)


def scale_boxes_xywh_np(boxes, factor, dtype):
  """``scale_boxes_xywh`` in NumPy ``dtype`` (``factor`` rounded to it)."""
  x, y, w, h = _split_np(boxes, dtype)
  f = np.dtype(dtype).type(factor)
  return _stack_np((x - 1) * f + 1, (y - 1) * f + 1, w * f, h * f, dtype)


def box_iou_x1y1x2y2_np(boxes1, boxes2, dtype):
  """``box_iou_x1y1x2y2`` in NumPy ``dtype``: ``(..., N, 4)``, ``(..., M, 4)`` -> ``(..., N, M)``.

  Pairs without a positive intersection width and height have IoU 0, also
  when both boxes are degenerate (the JAX version gives NaN for 0 / 0).
  The evaluator uses it in float64, as the original's Lua loops compute.
  """
  b1 = np.asarray(boxes1, dtype)[..., :, None, :]
  b2 = np.asarray(boxes2, dtype)[..., None, :, :]
  iw = np.minimum(b1[..., 2], b2[..., 2]) - np.maximum(b1[..., 0], b2[..., 0]) + 1
  ih = np.minimum(b1[..., 3], b2[..., 3]) - np.maximum(b1[..., 1], b2[..., 1]) + 1
  overlaps = (iw > 0) & (ih > 0)
  inter = np.where(overlaps, iw * ih, 0)
  area1 = (b1[..., 2] - b1[..., 0] + 1) * (b1[..., 3] - b1[..., 1] + 1)
  area2 = (b2[..., 2] - b2[..., 0] + 1) * (b2[..., 3] - b2[..., 1] + 1)
  union = np.where(overlaps, area1 + area2 - inter, 1)
  return np.where(overlaps, inter / union, 0).astype(dtype, copy=False)


# Checking boxes read from users and files: one rule, each caller its own wording.

BOX_FIELDS = {"xywh": ("x", "y", "w", "h"), "x1y1x2y2": ("x1", "y1", "x2", "y2")}


def is_box_numbers(value):
  """Whether ``value`` is a box as JSON gives it: a list of 4 ints or floats (a bool is no number)."""
  return isinstance(value, list) and len(value) == 4 and all(
      isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)


def json_number(value):
  """A JSON number as a float; an integer too large for a float is +-inf (JSON has no limit)."""
  try:
    return float(value)
  except OverflowError:
    return math.inf if value > 0 else -math.inf


def box_faults(boxes, box_format="xywh", *, empty=False):
  """The unusable boxes among ``boxes`` and what is wrong with each.

  A box is usable when it is 4 finite numbers whose width and height, as
  ``box_format`` reads them (``xywh``: ``w`` and ``h``; ``x1y1x2y2``:
  ``x2 - x1 + 1`` and ``y2 - y1 + 1``, in float64), are positive
  (``empty=True``: not negative).

  Args:
    boxes: a ``(k, 4)`` array, or a list of ``k`` values as read from JSON,
      each of which must pass :func:`is_box_numbers`.
    box_format: ``'xywh' | 'x1y1x2y2'``.
    empty: accept a width or height of 0.

  Returns:
    ``[(index, fault), ...]`` by ascending index, ``fault`` one of
    ``'numbers'`` (not a list of 4 numbers), the name of the box's first
    number that is NaN or infinite (``BOX_FIELDS[box_format]``), or
    ``'size'`` (width or height too small); empty when every box is usable.
  """
  fields = BOX_FIELDS[box_format]
  if isinstance(boxes, np.ndarray):
    numbers, faults = range(len(boxes)), []
    array = np.asarray(boxes, np.float64).reshape(-1, 4)
  else:
    boxes = list(boxes)
    numbers = [i for i, box in enumerate(boxes) if is_box_numbers(box)]
    faults = [(i, "numbers") for i, box in enumerate(boxes) if not is_box_numbers(box)]
    array = np.asarray([[json_number(v) for v in boxes[i]] for i in numbers],
                       np.float64).reshape(-1, 4)
  finite = np.isfinite(array)
  sizes = x1y1x2y2_to_xywh_np(array, np.float64)[:, 2:] if box_format == "x1y1x2y2" else (
      array[:, 2:])
  small = (sizes < 0) if empty else ~(sizes > 0)
  bad = np.flatnonzero(~finite.all(axis=1) | small.any(axis=1))
  for j in bad.tolist():
    row = finite[j]
    faults.append((numbers[j], "size" if row.all() else fields[int(np.argmin(row))]))
  return sorted(faults)


# NumPy: boxes users give and get (the frames and the check in the module docstring).


def scale_xywh(boxes, factor):
  """``scale_boxes_xywh`` (§0.2) in NumPy float32, whatever the box count (no compile per shape)."""
  return scale_boxes_xywh_np(boxes, factor, np.float32)


def image_scale(original_size, resized_size):
  """Image pixels per resized-image pixel: ``H0 / h`` (sizes are ``(H, W)``)."""
  return float(original_size[0]) / float(resized_size[0])


def to_image(boxes, original_size, resized_size):
  """``(..., 4)`` xywh in the resized image -> float32 xywh in the image as given."""
  return scale_xywh(boxes, image_scale(original_size, resized_size))


def to_resized(boxes, original_size, resized_size):
  """``(..., 4)`` xywh in the image as given -> float32 xywh in the resized image."""
  return scale_xywh(boxes, 1.0 / image_scale(original_size, resized_size))


def xywh_to_model(boxes, dtype=np.float32):
  """``(..., 4)`` xywh -> xcycwh in NumPy ``dtype``, the inverse of ``xcycwh_to_xywh``:
  ``xc = x + (w-1)/2``."""
  x, y, w, h = _split_np(boxes, dtype)
  return _stack_np(x + (w - 1) / 2, y + (h - 1) / 2, w, h, dtype)


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
  faults = box_faults(array)
  if faults:
    i, fault = faults[0]
    if fault != "size":
      raise ValueError(f"{name}: box {i}: {fault} is {array[i, 'xywh'.index(fault)]}")
    raise ValueError(f"{name}: box {i}: w and h must be positive, got w={array[i, 2]:g}, "
                     f"h={array[i, 3]:g}")
  x1 = array[:, 0]
  y1 = array[:, 1]
  x2 = x1 + array[:, 2] - 1
  y2 = y1 + array[:, 3] - 1
  outside = (x1 > width) | (y1 > height) | (x2 < 1) | (y2 < 1)
  clipped = outside | (x1 < 1) | (y1 < 1) | (x2 > width) | (y2 > height)
  x1c, x2c = np.clip(x1, 1, width), np.clip(x2, 1, width)
  y1c, y2c = np.clip(y1, 1, height), np.clip(y2, 1, height)
  out = np.where(clipped[:, None], np.stack([x1c, y1c, x2c - x1c + 1, y2c - y1c + 1], axis=1),
                 array).astype(np.float32)
  # Rounded to float32, a clipped w or h can put the far corner a hair past the border:
  # step it down one float32 so that a clipped box, given again, is inside.
  for start, size, limit in ((0, 2, width), (1, 3, height)):
    over = clipped & (out[:, start].astype(np.float64) + out[:, size] - 1 > limit)
    out[over, size] = np.nextafter(out[over, size], np.float32(0))
  return out, clipped, outside
