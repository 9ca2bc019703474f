"""Predictions files of any model: reading and format checks (reference §9, §10.2).

``evaluation.predictions_eval`` scores a file read here against a split.

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
characters of a value. Warnings (:attr:`Predictions.warnings`): empty
captions.
"""

import dataclasses
import heapq
import json
import math

import numpy as np

from densecap_jax import files
from densecap_jax.evaluation import ground_truth as gt_lib
from densecap_jax.ops import boxes as boxes_lib

FORMATS = ("auto", "results", "coco", "jsonl")
BOX_FORMATS = ("xywh", "x1y1x2y2")
MAX_LISTED = 5
# Deepest nesting of arrays and objects read (a results.json nests 5 deep).
MAX_JSON_DEPTH = 32


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


def first_listed(items, limit=MAX_LISTED):
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
      return self.problem(f"{where}: no field {first_listed(missing)}{hint}")
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
      return self.problem(f"{where}: no field {first_listed(missing)}{hint}")
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
          f"({first_listed(self.empty_captions)}); they count for the detection mAP only")
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
        + (f" with keys {first_listed(sorted(data))}" if isinstance(data, dict) else ""))
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

