"""Dense-captioning mAP: localisation and captioning scored jointly (reference §9).

The released algorithm (``eval/eval_utils.lua``), host-side NumPy:

1. Per image, boxes go ``xcycwh -> x1y1x2y2`` with the ``(w-1)/2`` rule, in
   float32. Ground-truth boxes overlapping by IoU >= 0.7 are merged greedily
   (:func:`merge_boxes`); a group becomes one box, the float32 mean of its
   members, whose references are all the members' captions (§9.2).
2. Detections are visited in descending score (logit) order; each takes the
   merged box it overlaps most (inclusive IoU, first on ties, none when nothing
   overlaps) and is ``ok`` if that box is still unclaimed, which claims it —
   whatever the IoU (:func:`match_detections`).
3. All records of all images are sorted by score. For IoU thresholds
   ``0.3 .. 0.7`` and METEOR thresholds ``0 .. 0.25`` a record is a true
   positive iff ``ov >= iou_t and ok and meteor > meteor_t`` (strict); the
   localisation-only variant uses ``meteor_t = -1``. AP is the max-interpolated
   precision averaged over recall thresholds (:func:`average_precision`);
   ``map`` averages the 30 captioning APs, ``detmap`` the 5 localisation APs.

METEOR (§9.3) scores each record's candidate caption against the references
of the box it matched. Only records with ``ok`` and ``ov >= 0.3`` are sent to
METEOR: no other record can be a true positive at any threshold, so the result
equals scoring every record, at a fraction of the cost.

Quirks kept by default (``quirks=True``), changed by ``quirks=False``:

* ``used[-1]`` (§9.2): a detection that overlaps no ground truth claims the
  image's *last* merged box when it is free (recorded ``ok`` with ``ov = 0``),
  so a later genuine match of that box is not ``ok``. Clean: such a detection
  is not ``ok`` and claims nothing.
* Recall thresholds (§9.4): 100 values ``0, 0.01, ...`` built by adding 0.01 in
  double precision while ``t <= 1`` (the last is 0.9900000000000007, the 51st
  0.5000000000000002, 1 is never reached). Clean: the 101 values ``k / 100``,
  ``k = 0 .. 100``.

Both variants keep the strict METEOR ``>`` (intended, ``eval/README.md``: with
``>=`` the threshold 0 would accept every caption and repeat the localisation
AP), the claim-whatever-the-IoU rule and the merging. Scores are ranked in
float64 (a model's float32 logits are exact in it; probabilities read from a
file such as 0.99999999 and 0.999999999 stay distinct, where float32 would
round both to 1). Ties in scores keep input order (stable sort); Torch's sort
does not specify an order for ties (§15). An image without ground truth is
allowed (its detections are all false positives); the original fails on it.
"""

from typing import Callable, NamedTuple, Sequence

import numpy as np

from densecap_jax.evaluation.meteor import Meteor
from densecap_jax.ops import boxes as boxes_lib

IOU_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
METEOR_THRESHOLDS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25)
LOCALIZATION_METEOR_THRESHOLD = -1.0
MERGE_THRESHOLD = 0.7

MeteorFn = Callable[[Sequence[str], Sequence[Sequence[str]]], Sequence[float]]


def merge_boxes(boxes: np.ndarray, thresh: float) -> list[np.ndarray]:
  """Greedy groups of boxes overlapping by IoU >= ``thresh`` (``box_utils.merge_boxes``).

  Repeatedly: in the pairwise IoU matrix ``D`` (diagonal 1), count per column
  the entries ``>= thresh``; the column with the largest count (first on ties)
  and every box with ``D[top, j] >= thresh`` form a group; the group's rows and
  columns are zeroed. Stops when no count is positive.

  Args:
    boxes: ``(M, 4)`` x1y1x2y2.
    thresh: IoU threshold, > 0.

  Returns:
    The groups in the order found, each an ascending int array of box indices.
  """
  if not thresh > 0:
    raise ValueError(f"merge threshold must be > 0, got {thresh}")
  overlap = boxes_lib.box_iou_x1y1x2y2_np(boxes, boxes, np.float64)
  np.fill_diagonal(overlap, 1.0)
  groups = []
  while overlap.size:
    good = overlap >= thresh
    counts = good.sum(axis=0)
    top = int(np.argmax(counts))
    if counts[top] == 0:
      break
    group = np.flatnonzero(good[top])
    groups.append(group)
    overlap[group, :] = 0
    overlap[:, group] = 0
  return groups


def merge_ground_truth(boxes: np.ndarray, captions: Sequence[str],
                       thresh: float = MERGE_THRESHOLD):
  """Merged ground truth: one box and a list of references per group (§9.2).

  Args:
    boxes: ``(M, 4)`` x1y1x2y2 float32.
    captions: ``M`` strings.
    thresh: merge IoU threshold.

  Returns:
    ``(merged, references)``: ``(G, 4)`` float32 x1y1x2y2, each the mean of
    its group's boxes (summed in float64, rounded to float32, divided in
    float32 as Torch's ``mean`` on a FloatTensor), and ``G`` lists of the
    group's captions in index order.
  """
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  groups = merge_boxes(boxes, thresh)
  merged = np.zeros((len(groups), 4), np.float32)
  for g, group in enumerate(groups):
    total = boxes[group].astype(np.float64).sum(axis=0).astype(np.float32)
    merged[g] = total / np.float32(len(group))
  return merged, [[captions[i] for i in group] for group in groups]


class Matches(NamedTuple):
  """Per-detection matching of one image, in descending score order (all ``(B,)``)."""
  order: np.ndarray      # int, index of the detection in the input
  gt_index: np.ndarray   # int, best-overlapping merged ground truth, -1 if none
  overlap: np.ndarray    # float64, IoU with it (0 if none)
  ok: np.ndarray         # bool, the detection claimed its ground truth


def match_detections(scores: np.ndarray, boxes: np.ndarray, gt_boxes: np.ndarray, *,
                     quirks: bool = True) -> Matches:
  """Assigns each detection to its best merged ground truth, in score order (§9.2).

  The highest-scoring detection whose best match is a ground-truth box claims
  it (``ok``), whatever the IoU; later ones with the same best match are not
  ``ok``. With ``quirks=True`` a detection overlapping nothing claims the last
  ground-truth box if free (Torch's ``used[-1]``, §9.2 step 4).

  Args:
    scores: ``(B,)`` detection scores (logits).
    boxes: ``(B, 4)`` x1y1x2y2 detections.
    gt_boxes: ``(G, 4)`` x1y1x2y2 merged ground truth.
    quirks: keep the ``used[-1]`` quirk.

  Returns:
    :class:`Matches`.
  """
  order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
  overlaps = boxes_lib.box_iou_x1y1x2y2_np(np.asarray(boxes, np.float32)[order], gt_boxes,
                                            np.float64)
  if overlaps.shape[1]:
    best = np.argmax(overlaps, axis=1)
    overlap = overlaps[np.arange(len(order)), best]
    gt_index = np.where(overlap > 0, best, -1)
  else:
    overlap = np.zeros(len(order))
    gt_index = np.full(len(order), -1)
  overlap = np.where(gt_index >= 0, overlap, 0.0)
  claims = gt_index.copy()
  if quirks and len(gt_boxes):
    claims[claims < 0] = len(gt_boxes) - 1  # used[-1] is the last box (§9.2 step 4).
  claimants = np.flatnonzero(claims >= 0)
  _, first = np.unique(claims[claimants], return_index=True)
  ok = np.zeros(len(order), bool)
  ok[claimants[first]] = True
  return Matches(order, gt_index, overlap, ok)


def recall_thresholds(*, quirks: bool = True) -> np.ndarray:
  """Recall thresholds of the AP (§9.4).

  ``quirks=True``: Lua's ``for t = 0, 1, 0.01``, i.e. ``t += 0.01`` in float64
  while ``t <= 1``: 100 values, the last 0.9900000000000007. ``quirks=False``:
  the 101 values ``k / 100``, ``k = 0 .. 100``.
  """
  if not quirks:
    return np.arange(101) / 100
  values, t = [], 0.0
  while t <= 1:  # Lua's numeric for adds the step to a double (§9.4 quirk).
    values.append(t)
    t += 0.01
  return np.array(values)


def average_precision(is_true_positive: np.ndarray, num_positives: int, *,
                      quirks: bool = True) -> float:
  """Max-interpolated AP of a ranked list (§9.4).

  ``recall = cumsum(tp) / num_positives``, ``precision = cumsum(tp) / rank``;
  AP is the mean over :func:`recall_thresholds` ``t`` of
  ``max(precision[recall >= t])`` (0 where no rank reaches ``t``).

  Args:
    is_true_positive: ``(N,)`` bool, records in descending score order.
    num_positives: number of ground-truth boxes (> 0).
    quirks: use the 100 accumulated thresholds instead of 101 exact ones.

  Returns:
    The AP as a Python float.
  """
  if num_positives <= 0:
    raise ValueError(f"num_positives must be > 0, got {num_positives}")
  tp = np.cumsum(np.asarray(is_true_positive, bool), dtype=np.float64)
  thresholds = recall_thresholds(quirks=quirks)
  if not tp.size:
    return 0.0
  recall = tp / num_positives
  precision = tp / np.arange(1, tp.size + 1)
  best_after = np.maximum.accumulate(precision[::-1])[::-1]
  first = np.searchsorted(recall, thresholds, side="left")
  reached = first < tp.size
  per_threshold = np.where(reached, best_after[np.minimum(first, tp.size - 1)], 0.0)
  return sum(per_threshold.tolist()) / len(thresholds)


def _lua_number(x: float) -> str:
  """Lua's ``tostring`` of a number (``%.14g``): 0.3 -> '0.3', 0.0 -> '0'."""
  return f"{x:.14g}"


def ap_key(iou_threshold: float, meteor_threshold: float) -> str:
  """The original's key, e.g. ``ov0.3_score0.05``; ``ov0.3`` for the localisation AP."""
  if meteor_threshold == LOCALIZATION_METEOR_THRESHOLD:
    return f"ov{_lua_number(iou_threshold)}"
  return f"ov{_lua_number(iou_threshold)}_score{_lua_number(meteor_threshold)}"


def _as_captions(captions, name, count):
  captions = list(captions)
  if len(captions) != count:
    raise ValueError(f"{name}: expected {count} captions (one per box), got {len(captions)}")
  for i, caption in enumerate(captions):
    if not isinstance(caption, str):
      raise ValueError(f"{name}[{i}] must be a str, got {type(caption).__name__}")
  return captions


def _as_boxes(boxes, name):
  boxes = np.asarray(boxes, np.float32)
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise ValueError(f"{name}: expected shape (N, 4) xcycwh, got {boxes.shape}")
  if not np.isfinite(boxes).all():
    raise ValueError(f"{name}: boxes must be finite")
  return boxes


class DenseCaptioningEvaluator:
  """Accumulates per-image results and computes the dense-captioning mAP (§9).

  Args:
    meteor_fn: ``meteor_fn(candidates, references_lists) -> scores``; default:
      a :class:`densecap_jax.evaluation.meteor.Meteor` process started by :meth:`evaluate`.
    quirks: keep the released ``used[-1]`` and accumulated-threshold quirks
      (see the module docstring for what ``False`` changes).
  """

  def __init__(self, meteor_fn: MeteorFn | None = None, quirks: bool = True):
    self._meteor_fn = meteor_fn
    self._quirks = quirks
    self._scores = []        # per image, (B,) float64 logits in descending order
    self._ok = []            # per image, (B,) bool
    self._overlap = []       # per image, (B,) float64
    self._pair_index = []    # per image, (P,) record indices (in the image) to score
    self._candidates = []    # all pairs to score, in order
    self._references = []
    self._meteor = np.zeros(0)  # METEOR of the pairs scored so far
    self._num_positives = 0

  @property
  def num_images(self) -> int:
    return len(self._scores)

  def add_result(self, scores, boxes, captions, gt_boxes, gt_captions):
    """Adds one image's detections and ground truth.

    Args:
      scores: ``(B,)`` detection scores (logits or probabilities; only the
        order matters), ranked in float64: the model's float32 logits exactly,
        a file's probabilities without rounding distinct values near 1 into ties.
      boxes: ``(B, 4)`` xcycwh detections.
      captions: ``B`` predicted captions.
      gt_boxes: ``(M, 4)`` xcycwh ground-truth boxes.
      gt_captions: ``M`` ground-truth captions.
    """
    scores = np.asarray(scores, np.float64)
    boxes = _as_boxes(boxes, "boxes")
    gt_boxes = _as_boxes(gt_boxes, "gt_boxes")
    if scores.shape != (len(boxes),):
      raise ValueError(f"scores: expected shape ({len(boxes)},) (one logit per box), "
                       f"got {scores.shape}")
    if not np.isfinite(scores).all():
      raise ValueError("scores: logits must be finite")
    captions = _as_captions(captions, "captions", len(boxes))
    gt_captions = _as_captions(gt_captions, "gt_captions", len(gt_boxes))

    merged, references = merge_ground_truth(
        boxes_lib.xcycwh_to_x1y1x2y2_np(gt_boxes, np.float32), gt_captions)
    matches = match_detections(scores, boxes_lib.xcycwh_to_x1y1x2y2_np(boxes, np.float32), merged,
                               quirks=self._quirks)
    scorable = np.flatnonzero(matches.ok & (matches.overlap >= min(IOU_THRESHOLDS)))
    self._candidates.extend(captions[matches.order[i]] for i in scorable)
    self._references.extend(references[matches.gt_index[i]] for i in scorable)
    self._scores.append(scores[matches.order])
    self._ok.append(matches.ok)
    self._overlap.append(matches.overlap)
    self._pair_index.append(scorable)
    self._num_positives += len(merged)

  def _meteor_scores(self) -> np.ndarray:
    """METEOR of every pair, scoring only those added since the last call."""
    done = len(self._meteor)
    if done < len(self._candidates):
      candidates, references = self._candidates[done:], self._references[done:]
      if self._meteor_fn is not None:
        new = self._meteor_fn(candidates, references)
      else:
        with Meteor() as meteor:
          new = meteor.score(candidates, references)
      new = np.asarray(new, np.float64)
      if new.shape != (len(candidates),):
        raise ValueError(f"meteor_fn returned shape {new.shape} for {len(candidates)} pairs")
      self._meteor = np.concatenate([self._meteor, new])
    return self._meteor

  def records(self) -> dict:
    """Every record added so far, image by image, each image's in descending score order.

    For per-image reports; :meth:`evaluate` does not use it.

    Returns:
      ``{'image', 'score', 'ok', 'overlap', 'meteor'}``, ``(R,)`` arrays:
      ``image`` the 0-based :meth:`add_result` call (ascending), ``score``
      float64, ``ok`` bool, ``overlap`` float64, ``meteor`` float64, NaN for
      records not sent to METEOR (never true positives).
    """
    meteor_per_pair = self._meteor_scores()
    counts = [len(s) for s in self._scores]
    offsets = np.cumsum([0] + counts)
    meteor = np.full(offsets[-1], np.nan)
    if self._pair_index:
      meteor[np.concatenate([index + offset for index, offset in
                             zip(self._pair_index, offsets)]).astype(int)] = meteor_per_pair
    join = lambda arrays, dtype: np.concatenate(arrays).astype(dtype) if arrays else (
        np.zeros(0, dtype))
    return {"image": np.repeat(np.arange(len(counts)), counts), "score": join(self._scores, float),
            "ok": join(self._ok, bool), "overlap": join(self._overlap, float), "meteor": meteor}

  def evaluate(self) -> dict:
    """The mAP over everything added so far.

    Returns:
      ``{'map', 'detmap', 'ap_breakdown', 'det_breakdown', 'num_images',
      'num_detections', 'num_ground_truth'}``: ``map`` is the mean of the 30
      APs in ``ap_breakdown`` (keys ``ov0.3_score0`` ...), ``detmap`` the mean
      of the 5 in ``det_breakdown`` (keys ``ov0.3`` ...), fractions in [0, 1];
      ``num_ground_truth`` counts merged boxes.
    """
    if self._num_positives == 0:
      raise ValueError("no ground-truth boxes were added; the mAP is undefined")
    meteor_per_pair = self._meteor_scores()
    offsets = np.cumsum([0] + [len(s) for s in self._scores])
    pair_records = np.concatenate(
        [index + offset for index, offset in zip(self._pair_index, offsets)]).astype(int)
    meteor = np.full(offsets[-1], np.nan)  # NaN: never a true positive, not scored.
    meteor[pair_records] = meteor_per_pair
    order = np.argsort(-np.concatenate(self._scores), kind="stable")
    ok = np.concatenate(self._ok)[order]
    overlap = np.concatenate(self._overlap)[order]
    meteor = meteor[order]

    ap_breakdown, det_breakdown = {}, {}
    for iou_t in IOU_THRESHOLDS:
      located = ok & (overlap >= iou_t)
      for meteor_t in (LOCALIZATION_METEOR_THRESHOLD,) + METEOR_THRESHOLDS:
        ap = average_precision(located & (meteor > meteor_t), self._num_positives,
                               quirks=self._quirks)
        table = det_breakdown if meteor_t == LOCALIZATION_METEOR_THRESHOLD else ap_breakdown
        table[ap_key(iou_t, meteor_t)] = ap
    return {
        "map": sum(ap_breakdown.values()) / len(ap_breakdown),
        "detmap": sum(det_breakdown.values()) / len(det_breakdown),
        "ap_breakdown": ap_breakdown,
        "det_breakdown": det_breakdown,
        "num_images": self.num_images,
        "num_detections": int(offsets[-1]),
        "num_ground_truth": self._num_positives,
    }


def format_results(results: dict) -> str:
  """A text table of :meth:`DenseCaptioningEvaluator.evaluate`'s APs, in percent.

  Rows are IoU thresholds; columns the localisation AP then the METEOR
  thresholds; the last line gives ``mAP`` and ``detmAP``.
  """
  header = ["IoU", "det"] + [f"m>{_lua_number(m)}" for m in METEOR_THRESHOLDS]
  lines = ["".join(f"{h:>9}" for h in header)]
  for iou_t in IOU_THRESHOLDS:
    row = [results["det_breakdown"][ap_key(iou_t, LOCALIZATION_METEOR_THRESHOLD)]]
    row += [results["ap_breakdown"][ap_key(iou_t, m)] for m in METEOR_THRESHOLDS]
    lines.append(f"{_lua_number(iou_t):>9}" + "".join(f"{100 * v:9.2f}" for v in row))
  lines.append(f"mAP {100 * results['map']:.2f}   detmAP {100 * results['detmap']:.2f}")
  return "\n".join(lines)
