"""Predictions files of any model: reading, format checks and scoring (reference §9, §10.2).

Formats (``--format auto`` tells them apart by their content):

* ``results``: the original's ``results.json`` (``run_model.lua``, our
  ``predict``): ``{"results": [{"img_name", "boxes", "scores", "captions"}],
  "opt": {...}}``, one entry per image, or a bare list of such entries.
  Positions in messages: ``results[3]`` (the entry), ``results[3].boxes[7]``.
* ``coco``: a list of detections ``{"image_id", "bbox", "caption", "score"}``
  as GRiT, scenic and most newer code write. Positions: ``[12]``.
* ``jsonl``: JSON Lines, one object per line, either a detection (the
  ``coco`` keys) or an image entry (the ``results`` keys), decided by the
  first line. Positions: ``line 5``.

An image is named by ``img_name`` or ``image_id`` in either kind of entry
and matched to the split by :func:`ground_truth.image_key` (``17``, ``'17'``
and ``'images/17.jpg'`` are the same image). Boxes are ``xywh``
(``--box_format x1y1x2y2``: inclusive corners, ``w = x2 - x1 + 1``, §0.2),
1-based, in the resized image's pixels (the ground truth's ``image_size``
frame, ``--boxes_in resized``, the default of image entries) or in the
original image's (``--boxes_in original``, the default of detections), which
are scaled by ``s = image_size / max(H0, W0)`` as the ground truth was:
``x' = (x - 1) s + 1``, ``w' = w s`` (§8.3 step 8). ``results.json`` written
at another ``opt.image_size`` is rescaled to the frame. A box enters the
evaluator as the corners ``x1 = x``, ``x2 = x + w - 1`` (§10.2's rule
inverted), so boxes written by ``predict`` give back the model's own.
Scores are logits or probabilities; only their order matters.

Hard errors (:class:`PredictionsError`, one line): an unreadable file or
unknown layout; JSON nested more than ``MAX_JSON_DEPTH`` (32) levels deep;
malformed entries (a missing or mistyped field, lists of
different lengths, a box that is not 4 finite numbers, a negative width or
height, a repeated image entry; integers beyond a float's range read as
infinite), named by position, the first five listed, quoting at most 60
characters of a value;
no image of the file in the split. Warnings (:attr:`Prepared.warnings`):
split images without predictions (scored as detecting nothing) and file
images outside the split (ignored), with counts and the first ids; empty
captions; scores all equal (the ranking is lost); and the frame check: the
boxes are also read in the other frame and as the other box format, and
when a reading finds clearly more of the ground-truth boxes (a share at
least 1.5 times and 10 points above that of the reading asked for; a box is
found when one of its image's top 100 boxes overlaps it by IoU >= 0.5; up to
500 images are looked at), the warning names what the boxes look like and
the flags that fix it; without such evidence, most boxes reaching beyond
their image by more than 10% of its size is reported.
"""

import dataclasses
import heapq
import json
import math

import numpy as np

from densecap_jax import files
from densecap_jax.evaluation import ground_truth as gt_lib
from densecap_jax.evaluation import metric
from densecap_jax.ops import boxes as boxes_lib

FORMATS = ("auto", "results", "coco", "jsonl")
BOXES_IN = ("auto", "original", "resized")
BOX_FORMATS = ("xywh", "x1y1x2y2")
MAX_LISTED = 5
# Deepest nesting of arrays and objects read (a results.json nests 5 deep).
MAX_JSON_DEPTH = 32
CHECK_IOU = 0.5
CHECK_TOP_BOXES = 100
CHECK_MAX_IMAGES = 500
BEYOND_MARGIN = 0.1


class PredictionsError(ValueError):
  """A predictions file that cannot be scored; the message is one line."""


@dataclasses.dataclass
class ImagePredictions:
  """One image's detections as written in the file.

  Attributes:
    key: :func:`ground_truth.image_key` of its name.
    name: the name as written (``img_name`` or ``image_id``).
    boxes: ``(N, 4)`` float64 in the file's box format and frame.
    scores: ``(N,)`` float64.
    captions: ``N`` strings.
  """
  key: str
  name: object
  boxes: np.ndarray
  scores: np.ndarray
  captions: list


@dataclasses.dataclass
class Predictions:
  """A read predictions file.

  Attributes:
    path: the file.
    format: ``'results' | 'coco' | 'jsonl'``.
    style: ``'image'`` (one entry per image) or ``'detection'`` (one per box).
    images: ``{key: ImagePredictions}`` in file order.
    image_size: ``opt.image_size`` of a ``results.json``, else ``None``.
    box_format: ``'xywh' | 'x1y1x2y2'``, as read.
    warnings: messages found while reading (empty captions).
  """
  path: str
  format: str
  style: str
  images: dict
  image_size: object
  box_format: str
  warnings: list

  @property
  def num_detections(self):
    return sum(len(p.scores) for p in self.images.values())


def _listed(items, limit=MAX_LISTED):
  """``'a', 'b', ... (first 5)`` for messages."""
  shown = ", ".join(repr(i) if not isinstance(i, str) else f"'{i}'" for i in items[:limit])
  return shown + (f", ... (first {limit})" if len(items) > limit else "")


def _is_number(value):
  """An int or float from JSON (not a bool)."""
  return type(value) in (int, float)  # pylint: disable=unidiomatic-typecheck


def _number_array(values, shape_text, where, field):
  """``values`` as float64 if it is a list of numbers (nested as ``shape_text``), else a message."""
  if not isinstance(values, list):
    return None, f"{where}: field '{field}' must be a list ({shape_text}), got {_kind(values)}"
  try:
    array = np.asarray(values)
  except ValueError:
    array = np.asarray(values, dtype=object)  # ragged
  if array.size and array.dtype.kind not in "iuf":
    return None, f"{where}: field '{field}' must hold only numbers ({shape_text})"
  return array.astype(np.float64), None


def _shown(value):
  """A value read from the file, for a message: a string ``files.quoted``, else its
  ``repr`` cut to ``files.MAX_QUOTED`` characters with its length."""
  if isinstance(value, str):
    return files.quoted(value)
  text = repr(value)
  if len(text) <= files.MAX_QUOTED:
    return text
  return f"{text[:files.MAX_QUOTED]}... ({len(text):,} characters)"


def _kind(value):
  return "null" if value is None else type(value).__name__


def _box_problems(boxes, box_format):
  """The unusable boxes of ``(N, 4)`` float64 ``boxes``, each with what is wrong, by index.

  ``ops.boxes.box_faults`` as ``box_format`` reads them, a width or height of
  0 allowed. Returns ``[(index, fragment), ...]``, a fragment such as
  ``"is not 4 finite numbers: [...]"``, for the first ``MAX_LISTED``, and the
  number of unusable boxes.
  """
  faults = boxes_lib.box_faults(boxes, box_format, empty=True)
  reading = "x2 < x1 - 1 or y2 < y1 - 1 read as x1y1x2y2" if box_format == "x1y1x2y2" else (
      "read as xywh")
  listed = [(i, f"is not 4 finite numbers: {boxes[i].tolist()}" if fault != "size" else
             f"has a negative width or height ({reading}): {boxes[i].tolist()}")
            for i, fault in faults[:MAX_LISTED]]
  return listed, len(faults)


class _Reader:
  """Collects entries per image, malformed-entry messages and empty-caption positions."""

  def __init__(self, path, box_format):
    self.path = path
    self.box_format = box_format
    self.images = {}
    self.first_seen = {}
    self._problems = []  # heap of the first MAX_LISTED by position: (-order, message)
    self.num_problems = 0
    self.order = 0  # position of the entry being read, for ordering the messages
    self.empty_captions = []
    self.num_empty = 0
    self._detections = {}  # key -> (name, boxes, scores, captions, orders), lists
    self._keys = {}  # name as written -> image_key(name)

  def problem(self, message, order=None):
    """Records a malformed entry; the first MAX_LISTED by position are kept."""
    self.num_problems += 1
    item = (-(self.order if order is None else order), message)
    if len(self._problems) < MAX_LISTED:
      heapq.heappush(self._problems, item)
    elif item > self._problems[0]:
      heapq.heapreplace(self._problems, item)

  def _key(self, entry, where):
    name = entry.get("img_name", entry.get("image_id"))
    if name is None:
      self.problem(f"{where}: no field 'img_name' or 'image_id'")
      return None, None
    if type(name) not in (int, str):  # pylint: disable=unidiomatic-typecheck
      self.problem(f"{where}: an image id must be an integer or a string, got {_kind(name)}")
      return None, None
    key = self._keys.get(name)
    if key is None:
      try:
        key = gt_lib.image_key(name)
      except ValueError:
        self.problem(f"{where}: an image id must name an image, got {files.quoted(name)}")
        return None, None
      self._keys[name] = key
    return key, name

  def _empty(self, caption, where):
    if not caption.strip():
      self.num_empty += 1
      if len(self.empty_captions) < MAX_LISTED:
        self.empty_captions.append(where)

  def add_image(self, entry, where):
    """One ``results``-style entry: an image name, ``boxes``, ``scores`` and ``captions``."""
    if not isinstance(entry, dict):
      return self.problem(f"{where}: expected an object with 'img_name', 'boxes', 'scores' and "
                          f"'captions', got {_kind(entry)}")
    missing = [f for f in ("boxes", "scores", "captions") if f not in entry]
    if missing:
      hint = " (a detection? use --format coco)" if "bbox" in entry else ""
      return self.problem(f"{where}: no field {_listed(missing)}{hint}")
    key, name = self._key(entry, where)
    if key is None:
      return None
    boxes, message = _number_array(entry["boxes"], "N x 4", where, "boxes")
    if message is None and boxes.size and (boxes.ndim != 2 or boxes.shape[1] != 4):
      message = f"{where}: field 'boxes' must be a list of [x, y, w, h] lists of 4 numbers"
    scores, message2 = _number_array(entry["scores"], "N", where, "scores")
    message = message or message2
    if message is None and scores.ndim > 1:
      message = f"{where}: field 'scores' must be a flat list of numbers"
    captions = entry["captions"]
    if message is None and (not isinstance(captions, list) or
                            not all(isinstance(c, str) for c in captions)):
      message = f"{where}: field 'captions' must be a list of strings"
    if message:
      return self.problem(message)
    boxes = boxes.reshape(-1, 4)
    if not len(boxes) == len(scores) == len(captions):
      return self.problem(f"{where}: {len(boxes)} boxes, {len(scores)} scores and "
                          f"{len(captions)} captions (one of each per detection)")
    listed, _ = _box_problems(boxes, self.box_format)
    if listed:
      return self.problem(f"{where}.boxes[{listed[0][0]}] {listed[0][1]}")
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
      return self.problem(f"{where}.scores[{bad[0]}] is not a finite number: {scores[bad[0]]}")
    if key in self.first_seen:
      return self.problem(f"{where}: image {files.quoted(name)} has a second entry "
                          f"(the first is {self.first_seen[key]})")
    self.first_seen[key] = where
    for i, caption in enumerate(captions):
      self._empty(caption, f"{where}.captions[{i}]")
    self.images[key] = ImagePredictions(key, name, boxes, scores, list(captions))
    return None

  def add_detection(self, entry, where):
    """One ``coco``-style entry: ``image_id`` / ``img_name``, ``bbox``, ``caption``, ``score``."""
    if not isinstance(entry, dict):
      return self.problem(f"{where}: expected an object with 'image_id', 'bbox', 'caption' and "
                          f"'score', got {_kind(entry)}")
    missing = [f for f in ("bbox", "caption", "score") if f not in entry]
    if missing:
      hint = " (an image entry? use --format results)" if "boxes" in entry else ""
      return self.problem(f"{where}: no field {_listed(missing)}{hint}")
    key, name = self._key(entry, where)
    if key is None:
      return None
    bbox, caption, score = entry["bbox"], entry["caption"], entry["score"]
    if not boxes_lib.is_box_numbers(bbox):
      return self.problem(f"{where}: field 'bbox' must be a list of 4 numbers [x, y, w, h], "
                          f"got {_shown(bbox)}")
    if not isinstance(caption, str):
      return self.problem(f"{where}: field 'caption' must be a string, got {_kind(caption)}")
    if not _is_number(score) or not math.isfinite(score):
      return self.problem(f"{where}: field 'score' must be a finite number, got {_shown(score)}")
    self._empty(caption, where)
    if key not in self._detections:
      self._detections[key] = (name, [], [], [], [])
    _, boxes, scores, captions, orders = self._detections[key]
    boxes.append(bbox)
    orders.append(self.order)
    scores.append(float(score))
    captions.append(caption)
    return None

  def finish(self, fmt, style, image_size, where):
    """The :class:`Predictions`; ``where(order)`` names a detection's position."""
    detections = {}
    for key, (name, boxes, scores, captions, orders) in self._detections.items():
      boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
      listed, num_bad = _box_problems(boxes, self.box_format)
      # Every unusable box counts; only an image's first few can be among the first listed.
      for i, fragment in listed:
        self.problem(f"{where(orders[i])}.bbox {fragment}", orders[i])
      self.num_problems += num_bad - len(listed)
      detections[key] = (name, boxes, scores, captions)
    if self.num_problems:
      listed = [message for _, message in sorted(self._problems, reverse=True)]
      more = self.num_problems - len(listed)
      entries = "entry" if self.num_problems == 1 else "entries"
      raise PredictionsError(f"{self.path}: {self.num_problems} malformed {entries}: "
                             f"{'; '.join(listed)}" + (f"; and {more} more" if more else ""))
    for key, (name, boxes, scores, captions) in detections.items():
      self.images[key] = ImagePredictions(key, name, boxes, np.asarray(scores, np.float64),
                                          captions)
    if not self.images:
      raise PredictionsError(f"{self.path} holds no predictions")
    warnings = []
    if self.num_empty:
      total = sum(len(p.captions) for p in self.images.values())
      warnings.append(
          f"{self.num_empty} of {total} detections have an empty caption "
          f"({_listed(self.empty_captions)}); they count for the detection mAP only")
    return Predictions(self.path, fmt, style, self.images, image_size, self.box_format, warnings)


def _parse_json_lines(path, text):
  rows = []
  for n, line in enumerate(text.splitlines(), start=1):
    if not line.strip():
      continue
    try:
      rows.append((n, files.loads_json(line, MAX_JSON_DEPTH)))
    except files.JSONLimitError as e:
      raise PredictionsError(f"{path}: line {n} is {e}") from None
    except json.JSONDecodeError as e:
      raise PredictionsError(f"{path}: line {n} is not valid JSON: {e.msg} at column "
                             f"{e.colno}") from None
  return rows


def read_predictions(path, fmt="auto", box_format="xywh"):
  """Reads and checks a predictions file (formats in the module docstring).

  Args:
    path: the file.
    fmt: one of :data:`FORMATS`.
    box_format: ``'xywh'`` or ``'x1y1x2y2'``, how the file's four numbers are read.

  Returns:
    :class:`Predictions`.

  Raises:
    PredictionsError: unreadable, unknown layout or malformed entries.
  """
  if fmt not in FORMATS:
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
  if box_format not in BOX_FORMATS:
    raise ValueError(f"box format must be one of {BOX_FORMATS}, got {box_format!r}")
  try:
    text = files.read_text(path, "predictions file")
  except ValueError as e:
    raise PredictionsError(str(e)) from None
  reader = _Reader(path, box_format)
  data = None
  if fmt != "jsonl":
    try:
      data = files.loads_json(text, MAX_JSON_DEPTH)
    except files.JSONLimitError as e:
      raise PredictionsError(f"{path} is {e}") from None
    except json.JSONDecodeError as e:
      if fmt != "auto" or len([l for l in text.splitlines() if l.strip()]) < 2:
        raise PredictionsError(f"{path} is not valid JSON: {e.msg} at line {e.lineno} column "
                               f"{e.colno}") from None
      fmt = "jsonl"
  if fmt == "jsonl":
    rows = _parse_json_lines(path, text)
    if not rows:
      raise PredictionsError(f"{path} holds no predictions")
    first = rows[0][1]
    style = "image" if isinstance(first, dict) and "boxes" in first else "detection"
    add = reader.add_image if style == "image" else reader.add_detection
    for n, entry in rows:
      reader.order = n
      add(entry, f"line {n}")
    return reader.finish("jsonl", style, None, lambda n: f"line {n}")

  image_size = None
  if isinstance(data, dict) and isinstance(data.get("results"), list):
    entries, prefix = data["results"], "results"
    opt = data.get("opt")
    if isinstance(opt, dict) and isinstance(opt.get("image_size"), int) and opt["image_size"] > 0:
      image_size = opt["image_size"]
  elif isinstance(data, list):
    entries, prefix = data, ""
  else:
    raise PredictionsError(
        f"{path}: expected the original's results.json ({{\"results\": [...]}}), a list of "
        f"detections or JSON Lines, got {_kind(data)}"
        + (f" with keys {_listed(sorted(data))}" if isinstance(data, dict) else ""))
  if not entries:
    raise PredictionsError(f"{path} holds no predictions")
  if fmt == "auto":
    first = entries[0]
    fmt = "results" if prefix or (isinstance(first, dict) and "boxes" in first) else "coco"
  style = "image" if fmt == "results" else "detection"
  add = reader.add_image if style == "image" else reader.add_detection
  for i, entry in enumerate(entries):
    reader.order = i
    add(entry, f"{prefix}[{i}]")
  return reader.finish(fmt, style, image_size, lambda i: f"{prefix}[{i}]")


@dataclasses.dataclass
class ScoredImage:
  """One image as it goes to the evaluator.

  Attributes:
    gt: its :class:`ground_truth.GroundTruthImage`.
    scores: ``(N,)`` float64.
    boxes: ``(N, 4)`` float32 xcycwh in the ground truth's frame.
    captions: ``N`` strings.
  """
  gt: object
  scores: np.ndarray
  boxes: np.ndarray
  captions: list


@dataclasses.dataclass
class Prepared:
  """Predictions matched to the split, in the split's order, with the checks' findings.

  Attributes:
    images: list of :class:`ScoredImage`, the split's order.
    warnings: one-line messages.
    summary: counts and the settings used (JSON-able).
  """
  images: list
  warnings: list
  summary: dict


def to_frame_xywh(boxes, box_format, factor):
  """File boxes -> float64 xywh in the frame: x1y1x2y2 to xywh (``w = x2 - x1 + 1``), then scaled.

  Args:
    boxes: ``(N, 4)`` as written.
    box_format: ``'xywh' | 'x1y1x2y2'``.
    factor: frame pixels per file pixel; ``x' = (x - 1) factor + 1``, ``w' = w factor``.
  """
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  if box_format == "x1y1x2y2":
    boxes = boxes_lib.x1y1x2y2_to_xywh_np(boxes, np.float64)
  if factor != 1:
    boxes = boxes_lib.scale_boxes_xywh_np(boxes, factor, np.float64)
  return boxes


def _frame_factor(gt, image, boxes_in, predictions_image_size):
  if boxes_in == "original":
    return gt.scale(image)
  return float(gt.image_size) / predictions_image_size


def _describe(box_format, boxes_in, gt):
  frame = f"resized-image pixels (the {gt.image_size}-px frame)" if boxes_in == "resized" else (
      "original-image pixels")
  return f"{box_format} in {frame}"


def _found_fraction(pairs, gt, box_format, boxes_in, predictions_image_size):
  """``(found, beyond)`` for one reading of the boxes.

  ``found``: the fraction of ground-truth boxes that one of their image's top
  boxes overlaps by IoU >= 0.5; ``beyond``: the fraction of those top boxes
  that reach beyond their image by more than ``BEYOND_MARGIN`` of its size.
  """
  found = total = beyond = num_boxes = 0
  for image, pred in pairs:
    order = np.argsort(-pred.scores, kind="stable")[:CHECK_TOP_BOXES]
    xywh = to_frame_xywh(pred.boxes[order], box_format,
                         _frame_factor(gt, image, boxes_in, predictions_image_size))
    xywh = xywh[(xywh[:, 2] > 0) & (xywh[:, 3] > 0)]
    corners = boxes_lib.xywh_to_x1y1x2y2_np(xywh, np.float64)
    gt_corners = boxes_lib.xcycwh_to_x1y1x2y2_np(image.boxes, np.float32)
    total += len(gt_corners)
    if len(corners) and len(gt_corners):
      iou = boxes_lib.box_iou_x1y1x2y2_np(corners, gt_corners, np.float64)
      found += int((iou.max(axis=0) >= CHECK_IOU).sum())
    height, width = image.resized_size
    margin = BEYOND_MARGIN * max(height, width)
    beyond += int(((corners[:, 0] < 1 - margin) | (corners[:, 1] < 1 - margin) |
                   (corners[:, 2] > width + margin) | (corners[:, 3] > height + margin)).sum())
    num_boxes += len(corners)
  return found / max(total, 1), beyond / max(num_boxes, 1)


def _frame_warnings(pairs, gt, box_format, boxes_in, predictions_image_size):
  """The frame and box-format check of the module docstring."""
  if len(pairs) > CHECK_MAX_IMAGES:
    pairs = [pairs[i] for i in np.linspace(0, len(pairs) - 1, CHECK_MAX_IMAGES).astype(int)]
  other_format = {"xywh": "x1y1x2y2", "x1y1x2y2": "xywh"}
  other_frame = {"original": "resized", "resized": "original"}
  given, beyond = _found_fraction(pairs, gt, box_format, boxes_in, predictions_image_size)
  best = None
  for fmt, frame in ((box_format, other_frame[boxes_in]), (other_format[box_format], boxes_in),
                     (other_format[box_format], other_frame[boxes_in])):
    found, _ = _found_fraction(pairs, gt, fmt, frame, predictions_image_size)
    if best is None or found > best[0]:
      best = (found, fmt, frame)
  found, fmt, frame = best
  where = (f"the top {CHECK_TOP_BOXES} boxes of {len(pairs)} images find {{:.0%}} of the "
           f"ground-truth boxes at IoU {CHECK_IOU}")
  if found >= given + 0.1 and found >= 1.5 * given:
    flags = []
    if frame != boxes_in:
      flags.append(f"--boxes_in {frame}")
    if fmt != box_format:
      flags.append(f"--box_format {fmt}")
    outside = (f" ({beyond:.0%} reach beyond their image by more than {BEYOND_MARGIN:.0%} of "
               f"its size)" if beyond >= 0.05 else "")
    return [f"the boxes look like {_describe(fmt, frame, gt)}, but are read as "
            f"{_describe(box_format, boxes_in, gt)}: read as asked, " + where.format(given)
            + f"{outside}, read as {fmt} in "
            f"{'original-image' if frame == 'original' else 'resized-image'} pixels {found:.0%}; "
            f"pass {' '.join(flags)}"]
  if beyond > 0.5:
    return [f"{beyond:.0%} of the boxes reach beyond their image by more than "
            f"{BEYOND_MARGIN:.0%} of its size, read as {_describe(box_format, boxes_in, gt)}; "
            f"if the mAP is low, check --boxes_in and --box_format"]
  return []


def prepare(predictions, gt, *, boxes_in="auto", predictions_image_size=None,
            only_images_in_file=False):
  """Matches a file's images to the split, converts the boxes and runs the checks.

  Args:
    predictions: :class:`Predictions`.
    gt: :class:`ground_truth.GroundTruth`.
    boxes_in: ``'original' | 'resized' | 'auto'`` (image entries: resized;
      detections: original).
    predictions_image_size: the long side of the resized frame the file's
      resized-pixel boxes are in; default ``opt.image_size`` of a
      ``results.json``, else the ground truth's ``image_size``.
    only_images_in_file: score only the split's images that the file has
      (default: all of them; an image without predictions detects nothing).

  Returns:
    :class:`Prepared`.

  Raises:
    PredictionsError: no image of the file is in the split.
  """
  if boxes_in not in BOXES_IN:
    raise ValueError(f"boxes_in must be one of {BOXES_IN}, got {boxes_in!r}")
  if boxes_in == "auto":
    boxes_in = "resized" if predictions.style == "image" else "original"
  if predictions_image_size is None:
    predictions_image_size = predictions.image_size or gt.image_size
  if predictions_image_size < 1:
    raise ValueError(f"predictions_image_size must be positive, got {predictions_image_size}")
  split_keys = [image.key for image in gt.images]
  in_split = set(split_keys)
  outside = [p.name for k, p in predictions.images.items() if k not in in_split]
  missing = [k for k in split_keys if k not in predictions.images]
  split_text = f"the {len(gt.images)} scored images of the {gt.split} split of {gt.source}"
  if len(outside) == len(predictions.images):
    raise PredictionsError(
        f"none of the {len(outside)} images in {predictions.path} is among {split_text} "
        f"(file: {_listed(outside)}; split: {_listed(split_keys)}); check --split and the image "
        f"names")
  warnings = list(predictions.warnings)
  if missing:
    hint = "" if only_images_in_file else (
        "; --only_images_in_file scores just the images the file has")
    action = "are left out" if only_images_in_file else "count as detecting nothing"
    warnings.append(f"{len(missing)} of {len(gt.images)} images of the {gt.split} split have no "
                    f"predictions in the file and {action}: {_listed(missing)}{hint}")
  if outside:
    warnings.append(f"{len(outside)} of {len(predictions.images)} images in the file are not "
                    f"among {split_text} and are ignored: {_listed(outside)}")
  if (boxes_in == "resized" and predictions.image_size and
      predictions.image_size == predictions_image_size != gt.image_size):
    warnings.append(f"the file's boxes are in a {predictions.image_size}-px frame "
                    f"(opt.image_size) and are rescaled to the ground truth's "
                    f"{gt.image_size}-px frame (--predictions_image_size overrides)")
  pairs = [(image, predictions.images[image.key]) for image in gt.images
           if image.key in predictions.images]
  scores = np.concatenate([p.scores for _, p in pairs])
  if len(scores) > 1 and np.all(scores == scores[0]):
    warnings.append(f"all {len(scores)} scores are equal ({scores[0]:g}): the ranking is lost and "
                    f"the AP follows the file's order; write each box's score (logit or "
                    f"probability)")
  warnings += _frame_warnings(pairs, gt, predictions.box_format, boxes_in, predictions_image_size)

  scored = []
  for image in gt.images:
    pred = predictions.images.get(image.key)
    if pred is None:
      if not only_images_in_file:
        scored.append(ScoredImage(image, np.zeros(0), np.zeros((0, 4), np.float32), []))
      continue
    xywh = to_frame_xywh(pred.boxes, predictions.box_format,
                         _frame_factor(gt, image, boxes_in, predictions_image_size))
    xcycwh = boxes_lib.xywh_to_model(xywh, np.float64).astype(np.float32)  # x1 = x, x2 = x + w - 1
    scored.append(ScoredImage(image, pred.scores, xcycwh, pred.captions))
  summary = {
      "predictions": predictions.path, "format": predictions.format,
      "box_format": predictions.box_format, "boxes_in": boxes_in,
      "predictions_image_size": predictions_image_size if boxes_in == "resized" else None,
      "ground_truth": gt.source, "image_size": gt.image_size, "split": gt.split,
      "images_in_split": len(gt.images), "images_in_file": len(predictions.images),
      "images_scored": len(scored), "images_without_predictions": len(missing),
      "images_not_in_split": len(outside),
      "detections_scored": int(sum(len(s.scores) for s in scored)),
  }
  return Prepared(scored, warnings, summary)


class _MemoMeteor:
  """A METEOR function that remembers every pair's score (per-image reports reuse them)."""

  def __init__(self, meteor_fn):
    self._fn = meteor_fn
    self.scores = {}

  def __call__(self, candidates, references):
    keys = [(c, tuple(r)) for c, r in zip(candidates, references)]
    todo = list(dict.fromkeys(k for k in keys if k not in self.scores))
    if todo:
      new = self._fn([c for c, _ in todo], [list(r) for _, r in todo])
      self.scores.update(zip(todo, (float(s) for s in new)))
    return [self.scores[k] for k in keys]


def evaluate(prepared, *, meteor_fn=None, quirks=True, per_image=False):
  """The dense-captioning mAP of prepared predictions (``metric.DenseCaptioningEvaluator``).

  Args:
    prepared: from :func:`prepare`.
    meteor_fn: METEOR scorer (default: the Java METEOR, one process).
    quirks: the original's quirks (``False``: the clean variant).
    per_image: also return a row per image.

  Returns:
    ``(results, rows)``: the evaluator's dict, and with ``per_image`` one dict
    per image in split order (else ``None``): ``image``, ``filename``,
    ``num_detections``, ``num_ground_truth`` (merged boxes), ``map`` and
    ``detmap`` of the image scored on its own (same thresholds and METEOR
    scores), and ``recall`` / ``det_recall``: the fraction of its merged
    ground truth found as true positives, averaged over the 30 captioning
    (5 localisation) thresholds — its share of the split's recall.
  """
  evaluator = metric.DenseCaptioningEvaluator(meteor_fn=meteor_fn, quirks=quirks)
  for image in prepared.images:
    evaluator.add_result(image.scores, image.boxes, image.captions, image.gt.boxes,
                         image.gt.captions)
  results = evaluator.evaluate()
  if not per_image:
    return results, None
  records = evaluator.records()
  starts = np.searchsorted(records["image"], np.arange(len(prepared.images) + 1))
  rows = []
  for i, image in enumerate(prepared.images):
    part = slice(starts[i], starts[i + 1])
    ok, overlap, meteor = records["ok"][part], records["overlap"][part], records["meteor"][part]
    num_gt = len(metric.merge_boxes(boxes_lib.xcycwh_to_x1y1x2y2_np(image.gt.boxes, np.float32),
                                    metric.MERGE_THRESHOLD)) if len(image.gt.boxes) else 0
    aps, recalls = {"map": [], "detmap": []}, {"map": [], "detmap": []}
    for iou_t in metric.IOU_THRESHOLDS:
      located = ok & (overlap >= iou_t)
      for meteor_t in (metric.LOCALIZATION_METEOR_THRESHOLD,) + metric.METEOR_THRESHOLDS:
        tp = located & (meteor > meteor_t)
        table = "detmap" if meteor_t == metric.LOCALIZATION_METEOR_THRESHOLD else "map"
        if num_gt:
          aps[table].append(metric.average_precision(tp, num_gt, quirks=quirks))
          recalls[table].append(tp.sum() / num_gt)
    mean = lambda v: float(sum(v) / len(v)) if v else None  # As evaluate() averages.
    rows.append({"image": image.gt.key, "filename": image.gt.filename,
                 "num_detections": int(part.stop - part.start), "num_ground_truth": num_gt,
                 "map": mean(aps["map"]), "detmap": mean(aps["detmap"]),
                 "recall": mean(recalls["map"]), "det_recall": mean(recalls["detmap"])})
  return results, rows


def format_per_image(rows, limit=10):
  """The ``limit`` images with the lowest own mAP, one line each."""
  ranked = sorted((r for r in rows if r["map"] is not None),
                  key=lambda r: (r["map"], r["detmap"]))[:limit]
  lines = [f"lowest per-image mAP ({len(ranked)} of {len(rows)} images):",
           f"{'image':>12} {'mAP':>7} {'detmAP':>7} {'recall':>7} {'dets':>6} {'gt':>4}"]
  for r in ranked:
    lines.append(f"{r['image']:>12} {100 * r['map']:7.2f} {100 * r['detmap']:7.2f} "
                 f"{100 * r['recall']:7.2f} {r['num_detections']:6d} {r['num_ground_truth']:4d}")
  return "\n".join(lines)
