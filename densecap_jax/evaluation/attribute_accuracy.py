"""Do the captions of detected objects name the object's attributes right (colour, shape, ...)?

A measure for worlds whose captions name attributes from small word lists
(the synthetic scenes of ``data.synthetic_world``: colours, shapes, textures,
sizes), generic over those lists. Per image, ground-truth boxes go
``-> x1y1x2y2`` and are merged as the dense-captioning evaluator merges them
(``metric.merge_ground_truth``, IoU >= 0.7: a group is one region whose
references are all its members' captions), unless ``merge_thresh`` is None.
Then, for each region:

* the words of an attribute that its references name (a caption names a word
  when the word is one of its whitespace-separated, lower-cased tokens: "stars"
  does not name "star") are collected over all its references, each read
  as the value it stands for (an attribute's words may include synonyms:
  "dots" for "dotted"); the attribute has a *true word* when they name
  exactly one value and no reference names a word of it twice;
* the region is **eligible** when every ``required`` attribute (by default
  all of them) has a true word: e.g. one colour and one shape, a single
  object; a pair "a red square above a blue circle" or "a red square above a
  red square", or a group "three yellow stars", is not;
* an eligible region is **matched** by the highest-scoring detection whose
  IoU with it (inclusive pixels, ``ops.boxes.box_iou_x1y1x2y2_np`` in
  float64) is >= ``iou_threshold`` (first in input order on tied scores). A
  detection may match several regions;
* for each attribute with a true word (always so for a required attribute), the
  matched detection's
  caption *names the attribute* when it names any word of its list, and
  *names it right* when the true word is the only word of the list it names.

Shares of an empty set of regions are reported as 0.
"""

import re
from typing import Mapping, Sequence

import numpy as np

from densecap_jax.evaluation import metric
from densecap_jax.ops import boxes as boxes_lib

IOU_THRESHOLD = 0.5
_TO_CORNERS = {
    "xcycwh": boxes_lib.xcycwh_to_x1y1x2y2_np,
    "xywh": boxes_lib.xywh_to_x1y1x2y2_np,
    "x1y1x2y2": lambda boxes, dtype: np.asarray(boxes, dtype),
}
_TOKEN = re.compile(r"[^\s.,;:!?\"]+")


def caption_tokens(caption: str) -> set:
  """The lower-cased whitespace-separated tokens of ``caption``, without surrounding punctuation."""
  return set(_TOKEN.findall(caption.lower()))


def named_values(caption: str, words: Mapping[str, str]) -> set:
  """The values (``words[token]``) of the words of ``words`` that ``caption`` names."""
  return {words[t] for t in caption_tokens(caption) if t in words}


def true_word(references: Sequence[str], words: Mapping[str, str]) -> str | None:
  """The one value of ``words`` (``{word: value}``) the references name; else None.

  None also when a reference names two words of ``words``.
  """
  found = set()
  for reference in references:
    named = [words[t] for t in _TOKEN.findall(reference.lower()) if t in words]
    if len(named) > 1:
      return None
    found.update(named)
  return found.pop() if len(found) == 1 else None


def joint_name(required: Sequence[str]) -> str:
  """The key of the all-right share: the required attributes' names joined by ``_``."""
  return "_".join(required)


def _check_words(attribute_words):
  if not attribute_words:
    raise ValueError("attribute_words is empty: expected at least one attribute and its words")
  checked = {}
  for name, words in attribute_words.items():
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9]+", name):
      raise ValueError(f"attribute name {name!r} is not accepted: expected letters and digits")
    pairs = (list(words.items()) if isinstance(words, Mapping)
             else None if isinstance(words, str) else [(w, w) for w in words])
    if not pairs or not all(isinstance(w, str) and caption_tokens(w) == {w.lower()}
                            and isinstance(v, str) and v for w, v in pairs):
      raise ValueError(f"attribute {name!r}: expected a non-empty list of single words "
                       f"or a {{word: value}} mapping, got {words!r}")
    checked[name] = {w.lower(): v.lower() for w, v in pairs}
  names = list(checked)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      shared = checked[a].keys() & checked[b].keys()
      if shared:
        raise ValueError(f"attributes {a!r} and {b!r} share the words {sorted(shared)}")
  return checked


class AttributeAccuracy:
  """Accumulates images (:meth:`add_result`) and scores them (:meth:`evaluate`).

  Args:
    attribute_words: ``{name: words}``, e.g. ``{"colour": ("red", ...),
      "shape": ("circle", ...)}``, where ``words`` may also be a mapping
      ``{word: value}`` that names synonyms (``{"dotted": "dotted", "dots":
      "dotted", ...}``); names are letters and digits, no word is in two
      attributes.
    required: the attributes an eligible region names exactly once, and whose
      all-right share is reported (default: all, in ``attribute_words``' order).
    iou_threshold: a detection matches a region at IoU >= this.
    merge_thresh: ground truth merged at this IoU (the evaluator's 0.7), or
      None to score every given box as its own region.
  """

  def __init__(self, attribute_words: Mapping[str, Sequence[str]], *,
               required: Sequence[str] | None = None, iou_threshold: float = IOU_THRESHOLD,
               merge_thresh: float | None = metric.MERGE_THRESHOLD):
    self.words = _check_words(attribute_words)
    self.required = tuple(self.words) if not required else tuple(required)
    unknown = [r for r in self.required if r not in self.words]
    if unknown:
      raise ValueError(f"required attributes {unknown} are not among {list(self.words)}")
    if not 0 < iou_threshold <= 1:
      raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    self.iou_threshold = iou_threshold
    self.merge_thresh = merge_thresh
    self.eligible = 0
    self.matched = 0
    self.all_right = 0
    self.known = dict.fromkeys(self.words, 0)  # matched regions with a true word
    self.named = dict.fromkeys(self.words, 0)  # ... whose caption names the attribute
    self.right = dict.fromkeys(self.words, 0)  # ... and names it right

  def add_result(self, scores, boxes, captions, gt_boxes, gt_captions, *, box_format="xcycwh"):
    """Adds one image (the evaluator's ``add_result`` arguments).

    Args:
      scores: ``(B,)`` detection scores (higher is better).
      boxes: ``(B, 4)`` detections in ``box_format``.
      captions: ``B`` strings.
      gt_boxes: ``(M, 4)`` ground-truth boxes in ``box_format``.
      gt_captions: ``M`` strings, one per box.
      box_format: ``'xcycwh'`` (the model's and the evaluator's), ``'xywh'``
        or ``'x1y1x2y2'`` (``ops.boxes``).
    """
    if box_format not in _TO_CORNERS:
      raise ValueError(f"box_format {box_format!r} is not one of {', '.join(_TO_CORNERS)}")
    scores = np.asarray(scores, np.float64).reshape(-1)
    boxes = _TO_CORNERS[box_format](np.asarray(boxes, np.float64).reshape(-1, 4), np.float64)
    gt_boxes = _TO_CORNERS[box_format](np.asarray(gt_boxes, np.float64).reshape(-1, 4),
                                       np.float64)
    if len(boxes) != len(scores) or len(captions) != len(scores):
      raise ValueError(f"{len(scores)} scores, {len(boxes)} boxes and {len(captions)} captions: "
                       f"expected one of each per detection")
    if len(gt_captions) != len(gt_boxes):
      raise ValueError(f"{len(gt_boxes)} ground-truth boxes and {len(gt_captions)} captions: "
                       f"expected one caption per box")
    if self.merge_thresh is None:
      regions, references = gt_boxes, [[c] for c in gt_captions]
    else:
      regions, references = metric.merge_ground_truth(gt_boxes, list(gt_captions),
                                                      self.merge_thresh)
    order = np.argsort(-scores, kind="stable")
    overlaps = boxes_lib.box_iou_x1y1x2y2_np(boxes[order], np.asarray(regions, np.float64),
                                             np.float64)  # (B, G) in score order
    for g, refs in enumerate(references):
      truth = {name: true_word(refs, words) for name, words in self.words.items()}
      if any(truth[name] is None for name in self.required):
        continue
      self.eligible += 1
      hits = np.flatnonzero(overlaps[:, g] >= self.iou_threshold)
      if not hits.size:
        continue
      self.matched += 1
      caption = captions[order[hits[0]]]
      all_right = True
      for name, words in self.words.items():
        if truth[name] is None:
          continue
        self.known[name] += 1
        named = named_values(caption, words)
        self.named[name] += bool(named)
        right = named == {truth[name]}
        self.right[name] += right
        all_right &= right or name not in self.required
      self.all_right += all_right

  def evaluate(self) -> dict:
    """The shares (fractions in [0, 1]) and counts of the images added.

    Returns:
      ``eligible`` and ``matched``: region counts; ``matched_share``:
      matched / eligible; ``<joint_name(required)>`` (e.g. ``colour_shape``):
      the share of matched regions whose caption names every required
      attribute right; per attribute ``<name>``: the share of the matched
      regions with a true word whose caption names it right,
      ``<name>_regions``: how many such regions, ``<name>_named``: the share
      of them whose caption names the attribute, ``<name>_right_of_named``:
      the share of those that name it right.
    """
    results = {"eligible": self.eligible, "matched": self.matched,
               "matched_share": _share(self.matched, self.eligible),
               joint_name(self.required): _share(self.all_right, self.matched)}
    for name in self.words:
      results[name] = _share(self.right[name], self.known[name])
      results[f"{name}_regions"] = self.known[name]
      results[f"{name}_named"] = _share(self.named[name], self.known[name])
      results[f"{name}_right_of_named"] = _share(self.right[name], self.named[name])
    return results


def _share(count, total):
  return count / total if total else 0.0
