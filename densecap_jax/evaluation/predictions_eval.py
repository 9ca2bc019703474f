"""Scoring a predictions file read by ``evaluation.predictions`` against a split.

The file's images are matched to the split's, its boxes go into the ground
truth's frame (the frames and box formats of ``evaluation.predictions``) and
the evaluator (``metric``) scores them, on the whole split and per image.

Hard error (:class:`predictions.PredictionsError`): no image of the file in
the split. Warnings (:attr:`Prepared.warnings`, after the file's own):
split images without predictions (scored as detecting nothing) and file
images outside the split (ignored), with counts and the first ids; scores
all equal (the ranking is lost); and the frame check: the
boxes are also read in the other frame and as the other box format, and
when a reading finds clearly more of the ground-truth boxes (a share at
least 1.5 times and 10 points above that of the reading asked for; a box is
found when one of its image's top 100 boxes overlaps it by IoU >= 0.5; up to
500 images are looked at), the warning names what the boxes look like and
the flags that fix it; without such evidence, most boxes reaching beyond
their image by more than 10% of its size is reported.
"""

import dataclasses

import numpy as np

from densecap_jax.evaluation import metric
from densecap_jax.evaluation import predictions as predictions_lib
from densecap_jax.ops import boxes as boxes_lib

BOXES_IN = ("auto", "original", "resized")
CHECK_IOU = 0.5
CHECK_TOP_BOXES = 100
CHECK_MAX_IMAGES = 500
BEYOND_MARGIN = 0.1


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
    predictions.PredictionsError: no image of the file is in the split.
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
  listed = predictions_lib.first_listed
  if len(outside) == len(predictions.images):
    raise predictions_lib.PredictionsError(
        f"none of the {len(outside)} images in {predictions.path} is among {split_text} "
        f"(file: {listed(outside)}; split: {listed(split_keys)}); check --split and the image "
        f"names")
  warnings = list(predictions.warnings)
  if missing:
    hint = "" if only_images_in_file else (
        "; --only_images_in_file scores just the images the file has")
    action = "are left out" if only_images_in_file else "count as detecting nothing"
    warnings.append(f"{len(missing)} of {len(gt.images)} images of the {gt.split} split have no "
                    f"predictions in the file and {action}: {listed(missing)}{hint}")
  if outside:
    warnings.append(f"{len(outside)} of {len(predictions.images)} images in the file are not "
                    f"among {split_text} and are ignored: {listed(outside)}")
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
