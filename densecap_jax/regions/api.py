"""Captions of given boxes and log-likelihoods of phrases given regions, for a loaded model.

  model = densecap_jax.load_model()
  (r,) = model.caption_regions(["photo.jpg"], [[[10, 20, 100, 80]]])
  r["captions"], r["caption_log_probs"], r["scores"]
  (s,) = model.score_phrases(["photo.jpg"], ["a red car", "a dog"])
  s["log_likelihood"]          # (num_boxes, 2): sum over the words and END
  s["mean_log_likelihood"]     # the same, per token

``DenseCapPredictor.caption_regions``, ``score_phrases`` and ``score_codes``
call the :class:`RegionModel` here. Boxes follow ``ops.boxes``: xywh,
1-based, in the pixels of the image as given (``coords="resized"``: of the
resized image the model sees). Images go through the same preprocessing and
shape buckets as ``predict``; the boxes of a batch are padded to a power of
two (at least ``MIN_BOX_SLOTS``) and phrases as ``regions.phrases`` says, so
calls with other box and phrase counts reuse the compiled programs.

What a region's caption is: the greedy caption of the fc7 code of the box as
given (``models.given_boxes.region_captions``). The detection path captions the
code of each detection's *proposal* (before box regression), so captioning
the proposals reproduces its captions; its final boxes are somewhat moved.
"""

import os

import jax
import numpy as np
from PIL import Image

from densecap_jax.data import vocab as vocab_lib
from densecap_jax.models import densecap
from densecap_jax.models import detection
from densecap_jax.models import given_boxes
from densecap_jax.ops import boxes as boxes_lib
from densecap_jax.regions import phrases as phrases_lib

COORDS = ("image", "resized")
MIN_BOX_SLOTS = 16
# Region x phrase pairs scored in one LM call at most (rows are cut into chunks).
MAX_PAIRS = 8192


def check_coords(coords):
  if coords not in COORDS:
    raise ValueError(f"coords must be one of {', '.join(COORDS)}, got {coords!r}")


def is_single_image(images):
  """Whether ``images`` is one image (a path, a PIL image, a 2-D or 3-D array), not a list."""
  return (isinstance(images, (str, os.PathLike, Image.Image))
          or (isinstance(images, np.ndarray) and images.ndim in (2, 3)))


def image_list(images):
  """One image as a list of one, else ``images`` itself (an iterable, not read here).

  Raises:
    TypeError: ``images`` is neither an image nor an iterable of them.
  """
  if is_single_image(images):
    return [images]
  if isinstance(images, (bytes, bytearray)) or not hasattr(images, "__iter__"):
    raise TypeError(f"expected images (paths, PIL images or uint8 NumPy arrays), or a list of "
                    f"them, got {type(images).__name__}")
  return images


def boxes_per_image(images, boxes):
  """``(images, boxes)`` as two lists, one entry per image (``boxes`` may be ``None``).

  ``boxes`` of one image (not a list of images) is that image's list of boxes.
  """
  single = is_single_image(images)
  images = list(image_list(images))
  if boxes is None:
    return images, None
  if isinstance(boxes, (str, bytes)) or not hasattr(boxes, "__iter__"):
    raise ValueError(f"boxes must be a list of [x, y, w, h] per image, got "
                     f"{type(boxes).__name__}")
  boxes = [boxes] if single else list(boxes)
  if len(boxes) != len(images):
    raise ValueError(f"got {len(images)} images and boxes for {len(boxes)}; give one list of "
                     f"boxes per image")
  return images, boxes


def detection_limit(max_detections):
  """``max_detections`` as the commands take it: ``None`` or -1 -> ``None`` (all), else itself.

  Raises:
    ValueError: not an integer, or negative other than -1.
  """
  if max_detections is None:
    return None
  if isinstance(max_detections, bool) or not isinstance(max_detections, (int, np.integer)):
    raise ValueError(f"max_detections must be an integer (-1 or None for all), got "
                     f"{type(max_detections).__name__}")
  if max_detections < -1:
    raise ValueError(f"max_detections must be non-negative, or -1 (or None) for all, got "
                     f"{max_detections}")
  return None if max_detections == -1 else int(max_detections)


def kept_detections(scores, min_score=None, max_detections=None):
  """Indices of the detections kept: a score of at least ``min_score``, then the first
  ``max_detections`` (``None`` or -1: no bound, ``detection_limit``)."""
  keep = np.arange(len(scores))
  if min_score is not None:
    keep = keep[np.asarray(scores) >= min_score]
  return keep[:detection_limit(max_detections)]


def size_fields(prepared):
  """``width`` and ``height`` of the image as given (upright), for results."""
  height, width = prepared.original_size
  return {"width": int(width), "height": int(height)}


def caption_log_prob(tokens, log_probs, end_token):
  """``(..., L)`` tokens and their log-probabilities -> ``(...)`` the caption's log-probability.

  The sum over the tokens up to and including the first END (all ``L`` when
  there is none): the probability of the caption ``decode_captions`` shows.
  """
  tokens = np.asarray(tokens)
  ended_before = np.cumsum(tokens == end_token, axis=-1) - (tokens == end_token)
  return np.sum(np.where(ended_before == 0, log_probs, 0.0), axis=-1).astype(np.float32)


class RegionModel:
  """The region and phrase programs of a model on devices.

  Attributes:
    runner: the ``engine.Runner``: params, config, test-time settings,
      devices and shape buckets.
    vocab: the vocabulary list.
  """

  def __init__(self, runner, vocab):
    self.runner = runner
    self.vocab = vocab
    config = runner.config

    def regions(params, images, image_sizes, boxes, box_valid):
      return given_boxes.region_captions(params, images, image_sizes, boxes, box_valid, config)

    def detect(params, images, image_sizes, rpn_nms_thresh, final_nms_thresh, groups):
      det = detection.detect_with_codes(
          params, images, image_sizes, config, runner.num_proposals,
          num_proposals=runner.num_proposals, rpn_nms_thresh=rpn_nms_thresh,
          final_nms_thresh=final_nms_thresh)
      model = densecap.build_model(config)
      det["tokens"] = detection.caption_kept(model, params, det["codes"], det["valid"], groups)
      return det

    def codes(params, images, image_sizes, boxes, box_valid):
      codes, logits = given_boxes.region_codes(params, images, image_sizes, boxes, box_valid,
                                               config)
      return {"codes": codes, "logits": logits}

    def phrases(params, codes, labels):
      return given_boxes.phrase_log_likelihood(params, codes, labels, config)

    self._regions = runner.jit(regions)
    self._codes = runner.jit(codes)
    self._detect = runner.jit(detect, grouped=True)
    self._phrases = runner.jit(phrases)

  @property
  def end_token(self):
    return int(self.runner.config.vocab_size) + 1

  def given_boxes(self, prepared, boxes, coords="image", names=None):
    """Checked given boxes of prepared images, in both coordinate systems.

    Args:
      prepared: ``image_stream.PreparedImage`` s.
      boxes: per image, ``(k_i, 4)`` xywh in ``coords``.
      coords: ``"image"`` or ``"resized"``.
      names: per image, what errors call its boxes (default ``"boxes of image i"``).

    Returns:
      Per image ``(image_boxes, resized_boxes, clipped, outside)``: ``(k, 4)``
      float32 xywh each (clipped to the image), and ``(k,)`` bool the boxes
      clipped and those wholly outside the image (``boxes_lib.check_boxes``).

    Raises:
      ValueError: a bad box (NaN, infinite, not a positive size), naming the
        image and box index (``boxes_lib.check_boxes``).
    """
    out = []
    for i, (p, b) in enumerate(zip(prepared, boxes)):
      bounds = p.original_size if coords == "image" else p.size
      name = names[i] if names is not None else f"boxes of image {i}"
      checked, clipped, outside = boxes_lib.check_boxes(b, bounds, name=name)
      if coords == "image":
        out.append((checked, boxes_lib.to_resized(checked, p.original_size, p.size), clipped,
                    outside))
      else:
        out.append((boxes_lib.to_image(checked, p.original_size, p.size), checked, clipped,
                    outside))
    return out

  def region_rows(self, prepared, resized_boxes, captions=True, displays=False):
    """Codes, logits, tokens and token log-probabilities of given boxes of prepared images.

    Args:
      prepared: ``image_stream.PreparedImage`` s.
      resized_boxes: per image, ``(k_i, 4)`` float32 xywh in the resized image.
      captions: also caption the boxes (``False``: codes and logits only).
      displays: fill ``display`` of images resized on the devices
        (``engine.Runner.batches``).

    Returns:
      Per image a dict of ``codes`` ``(k, fc_dim)``, ``scores`` ``(k,)``
      objectness logits, and with ``captions`` ``tokens`` ``(k, L)`` and
      ``log_probs`` ``(k, L)``.
    """
    run = self._regions if captions else self._codes
    rows = [None] * len(prepared)
    for chunk, images, sizes in self.runner.batches(prepared, displays):
      counts = [len(resized_boxes[i]) for i in chunk]
      slots = phrases_lib.static_size(max(counts), floor=MIN_BOX_SLOTS)
      batch_boxes = np.zeros((len(images), slots, 4), np.float32)
      batch_valid = np.zeros((len(images), slots), bool)
      for k, i in enumerate(chunk):
        batch_boxes[k, :counts[k]] = boxes_lib.xywh_to_model(resized_boxes[i])
        batch_valid[k, :counts[k]] = True
      out = jax.device_get(run(images, sizes, *self.runner.put_batch(batch_boxes, batch_valid)))
      for k, i in enumerate(chunk):
        rows[i] = {"scores" if key == "logits" else key: value[k, :counts[k]]
                   for key, value in out.items()}
    return rows

  def caption_prepared(self, prepared, given, *, coords="image", with_codes=False,
                       displays=False):
    """``DenseCapPredictor.caption_regions``' results for prepared images and checked boxes.

    Args:
      prepared: ``image_stream.PreparedImage`` s.
      given: per image, ``given_boxes``' ``(image_boxes, resized_boxes, clipped, outside)``.
      coords: the coordinates of the boxes returned.
      with_codes: also return the fc7 codes.
      displays: fill ``display`` of images resized on the devices.
    """
    rows = self.region_rows(prepared, [g[1] for g in given], displays=displays)
    results = []
    for p, (image_boxes, resized, clipped, outside), row in zip(prepared, given, rows):
      result = {
          "boxes": image_boxes if coords == "image" else resized,
          "clipped": clipped,
          "outside": outside,
          "captions": vocab_lib.decode_captions(row["tokens"], self.vocab),
          "caption_log_probs": caption_log_prob(row["tokens"], row["log_probs"],
                                                self.end_token),
          "scores": row["scores"],
          **size_fields(p),
      }
      if with_codes:
        result["codes"] = row["codes"]
      results.append(result)
    return results

  def detections(self, prepared, max_detections=None, final_nms_thresh=None):
    """The model's detections with their codes and captions, per prepared image.

    Args:
      prepared: ``image_stream.PreparedImage`` s.
      max_detections: keep at most this many per image (``None`` or -1: all).
      final_nms_thresh: the final NMS threshold (default the runner's; an
        argument of the compiled program, so another value compiles nothing).

    Returns:
      Per image a dict of ``boxes`` ``(n, 4)`` float32 xywh (resized image),
      ``scores``, ``captions``, ``codes`` ``(n, fc_dim)`` (of the
      detections' proposals, as the captions).
    """
    limit = detection_limit(max_detections)
    rows = [None] * len(prepared)
    for chunk, images, sizes in self.runner.batches(prepared):
      out = jax.device_get(self._detect(
          images, sizes, self.runner.rpn_nms_thresh,
          self.runner.final_nms_thresh if final_nms_thresh is None else final_nms_thresh))
      boxes = np.asarray(boxes_lib.xcycwh_to_xywh(out["boxes"]))  # whole batch: one shape
      for k, i in enumerate(chunk):
        keep = np.flatnonzero(out["valid"][k])[:limit]
        rows[i] = {"boxes": boxes[k][keep], "scores": out["scores"][k][keep],
                   "captions": vocab_lib.decode_captions(out["tokens"][k][keep],
                                                         self.vocab),
                   "codes": out["codes"][k][keep]}
    return rows

  def encode_phrases(self, phrases):
    """``regions.phrases.encode_phrases`` with the model's vocabulary and ``seq_length``."""
    return phrases_lib.encode_phrases(phrases, self.vocab,
                                      int(self.runner.config.seq_length))

  def score_codes(self, codes, phrases):
    """Log-likelihood of each phrase given each region code.

    Args:
      codes: ``(n, fc_dim)`` float32 region codes (``caption_regions(...,
        with_codes=True)``, ``extract_features``, an index).
      phrases: a list of strings, or an ``EncodedPhrases``.

    Returns:
      A dict: ``log_likelihood`` ``(n, P)`` float32, the sum over each
      phrase's words and END; ``mean_log_likelihood`` ``(n, P)`` float32,
      that sum per token; and per phrase (``EncodedPhrases.fields``)
      ``phrases`` (the words scored, joined), ``unknown_words`` (the words
      outside the vocabulary: ``<UNK>`` when the vocabulary has it, else left
      out) and ``no_known_content_words`` (``True`` when the words scored are
      all function words, e.g. "a man riding a horse" scored as "a a": its
      column ranks nothing).

    Raises:
      ValueError: codes not ``(n, fc_dim)``, or a phrase as ``encode_phrases`` refuses it.
    """
    encoded = phrases if isinstance(phrases, phrases_lib.EncodedPhrases) else (
        self.encode_phrases(phrases))
    codes = np.asarray(codes, np.float32)
    if codes.ndim != 2 or codes.shape[1] != int(self.runner.config.fc_dim):
      raise ValueError(f"codes must be (n, {self.runner.config.fc_dim}), got {codes.shape}")
    num_phrases = encoded.labels.shape[0]
    rows = phrases_lib.static_size(min(max(len(codes), 1), max(MAX_PAIRS // num_phrases, 1)),
                                   floor=MIN_BOX_SLOTS)
    sums = np.zeros((len(codes), encoded.count), np.float32)
    labels = jax.device_put(encoded.labels)
    for start in range(0, len(codes), rows):
      chunk = codes[start:start + rows]
      padded = np.zeros((rows, codes.shape[1]), np.float32)
      padded[:len(chunk)] = chunk
      ll = np.asarray(self._phrases(padded, labels))
      sums[start:start + len(chunk)] = ll[:len(chunk), :encoded.count].sum(axis=-1)
    return {"log_likelihood": sums,
            "mean_log_likelihood": (sums / encoded.lengths[None, :]).astype(np.float32),
            **encoded.fields()}

  def score_prepared(self, prepared, encoded, given=None, *, coords="image", max_detections=None,
                     min_score=None, final_nms_thresh=None):
    """``DenseCapPredictor.score_phrases``' results for prepared images.

    Args:
      prepared: ``image_stream.PreparedImage`` s.
      encoded: ``regions.phrases.EncodedPhrases``.
      given: per image, ``given_boxes``' ``(image_boxes, resized_boxes,
        clipped, outside)``, or ``None`` to score the model's detections.
      coords: the coordinates of the boxes returned.
      max_detections, min_score, final_nms_thresh: which detections are
        scored (``given=None``): those with an objectness logit of at least
        ``min_score``, then the first ``max_detections`` (``None`` or -1:
        all), of a final NMS at
        ``final_nms_thresh`` (default the runner's).
    """
    if given is None:
      rows = self.detections(prepared, final_nms_thresh=final_nms_thresh)
      for row in rows:
        keep = kept_detections(row["scores"], min_score, max_detections)
        row.update(boxes=row["boxes"][keep], scores=row["scores"][keep],
                   captions=[row["captions"][i] for i in keep], codes=row["codes"][keep])
      placed = [(boxes_lib.to_image(r["boxes"], p.original_size, p.size), r["boxes"], None,
                 None) for r, p in zip(rows, prepared)]
    else:
      rows = self.region_rows(prepared, [g[1] for g in given])
      for row in rows:
        row["captions"] = vocab_lib.decode_captions(row["tokens"], self.vocab)
      placed = given
    results = []
    for p, row, (image_boxes, resized, clipped, outside) in zip(prepared, rows, placed):
      results.append({
          "boxes": image_boxes if coords == "image" else resized,
          "scores": row["scores"],
          "captions": row["captions"],
          **self.score_codes(row["codes"], encoded),
          **({} if clipped is None else {"clipped": clipped, "outside": outside}),
          **size_fields(p),
      })
    return results
