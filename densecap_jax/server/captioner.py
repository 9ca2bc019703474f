"""The model side of the server: compiled shapes, batches of uploads, boxes in the upload's pixels.

A ``Captioner`` wraps a loaded ``predictor.DenseCapPredictor``. Each batch of
detection requests is split by final-NMS threshold and shape bucket and padded
to one of two batch sizes, 1 or ``max_batch``, so detecting runs at most
``len(buckets) * len(batch_sizes)`` programs (``programs``, a
``server.programs.ProgramSet``). None is compiled up front: a request compiles
(or loads from the compilation cache) the batch-size-1 program of its bucket
on first use, and ``background_warm_up`` compiles the others in one
low-priority thread; a group of requests runs one image at a time until the
``max_batch`` program of its bucket is ready. ``warm_up`` compiles them all
at once instead.

Captioning given boxes (``caption_boxes``) and scoring phrases (``score``) run
one image at a time through the predictor's ``regions.api.RegionModel``. Its
programs have static shapes too -- box counts padded to powers of two (at
least ``regions.api.MIN_BOX_SLOTS``), phrase counts and lengths to the sizes
of ``regions.phrases`` -- so requests with other counts reuse them; they
compile on first use, once per shape.

Boxes follow ``ops.boxes``: xywh, 1-based, in the uploaded image's
pixels (upright), scaled to and from the resized image with the height ratio
the original webcam daemon uses (reference §11.1).
"""

import concurrent.futures
import copy
import dataclasses
import os

import numpy as np

from densecap_jax.configs import buckets as buckets_lib
from densecap_jax.regions import api as regions_api
from densecap_jax.server import programs as programs_lib
from densecap_jax.data import image_stream
from densecap_jax.ops import boxes as boxes_lib


@dataclasses.dataclass(frozen=True)
class CaptionOptions:
  """Per-request settings.

  Attributes:
    final_nms_thresh: IoU threshold of the final NMS, in ``[0, 1]``.
    max_boxes: keep at most this many boxes (``None``: all).
    min_score: keep boxes whose objectness logit is at least this (``None``: all).
  """
  final_nms_thresh: float
  max_boxes: int | None = None
  min_score: float | None = None


@dataclasses.dataclass
class CaptionRequest:
  """One decoded upload on its way to the model."""
  prepared: image_stream.PreparedImage
  options: CaptionOptions


class Captioner:
  """Batches of ``CaptionRequest`` -> JSON-ready results, with a fixed set of compiled shapes.

  Attributes:
    predictor: the ``DenseCapPredictor``; its ``final_nms_thresh`` is the default.
    batch_sizes: the padded batch sizes run, ``(1, max_batch)`` or ``(1,)``.
    programs: the ``programs.ProgramSet`` of every (bucket, batch size).
  """

  def __init__(self, predictor, max_batch, key=None, busy=None):
    """
    Args:
      predictor: a loaded ``predictor.DenseCapPredictor``.
      max_batch: most images per model call.
      key: what the programs depend on apart from their shapes
        (``cli.program_key``), to tell which the compilation cache holds;
        ``None``: every program is said to compile.
      busy: a ``threading.Event`` set while programs compile (``ProgramSet``).
    """
    if max_batch < 1:
      raise ValueError(f"max_batch must be positive, got {max_batch}")
    self.predictor = predictor
    self.batch_sizes = tuple(sorted({1, int(max_batch)}))
    self.programs = programs_lib.ProgramSet(
        [tuple(b) for b in predictor.buckets], self.batch_sizes, predictor.image_size,
        key=key, busy=busy)

  @property
  def max_batch(self):
    return self.batch_sizes[-1]

  def default_options(self):
    return CaptionOptions(final_nms_thresh=float(self.predictor.final_nms_thresh))

  def _runner(self, batch_size, final_nms_thresh):
    """A shallow copy of the predictor: the same compiled model, padding to ``batch_size``.

    The threshold is an argument of the compiled program, so a new value
    compiles nothing.
    """
    runner = copy.copy(self.predictor)
    runner.batch_size = batch_size
    runner.final_nms_thresh = final_nms_thresh
    return runner

  def _compile(self, program):
    """Runs a dummy batch of zeros through ``program`` (a ``programs.Program``)."""
    bucket = tuple(program.bucket)
    dummy = image_stream.PreparedImage(np.zeros(bucket + (3,), np.float32), None, bucket)
    self._runner(program.batch_size, self.predictor.final_nms_thresh).predict_prepared(
        [dummy] * program.batch_size)

  def warm_up(self, max_workers=None):
    """Compiles every (bucket, batch size) program now; returns how many there are.

    Compilations run in up to ``max_workers`` threads (default: one per CPU);
    programs already compiled are skipped.
    """
    jobs = list(self.programs.programs.values())
    with self.programs.working(), concurrent.futures.ThreadPoolExecutor(
        max_workers or os.cpu_count() or 1) as pool:
      list(pool.map(lambda p: self.programs.run(p, lambda: self._compile(p), by="start"), jobs))
    return len(jobs)

  def background_warm_up(self):
    """Compiles the programs no request has compiled yet, in this (low-priority) thread.

    Returns:
      How many programs it compiled (or loaded from the cache).
    """
    return self.programs.background(self._compile)

  def prepare(self, image):
    """A decoded PIL image -> ``image_stream.PreparedImage`` (the test-time resize, §1.2)."""
    return self.predictor.prepare(image)

  def run(self, requests):
    """Captions a batch of ``CaptionRequest`` s; one result dict per request, in order.

    Each result has ``boxes`` (``[x, y, w, h]`` lists, 1-based, in the
    uploaded image's pixels), ``scores`` (objectness logits, descending),
    ``captions``, and the upload's ``width`` and ``height``.
    """
    groups = {}
    for i, request in enumerate(requests):
      bucket = buckets_lib.pick_bucket(*request.prepared.model_input.shape[:2],
                                       self.predictor.buckets)
      groups.setdefault((request.options.final_nms_thresh, tuple(bucket)), []).append(i)
    results = [None] * len(requests)
    for (final_nms_thresh, bucket), members in groups.items():
      # Until the max_batch program is compiled, images run one at a time.
      step = self.max_batch if self.programs[(bucket, self.max_batch)].ready else 1
      for start in range(0, len(members), step):
        chunk = members[start:start + step]
        size = min(s for s in self.batch_sizes if s >= len(chunk))
        runner = self._runner(size, final_nms_thresh)
        outputs = self.programs.run(
            self.programs[(bucket, size)],
            lambda r=runner, c=chunk: r.predict_prepared([requests[i].prepared for i in c]))
        for i, output in zip(chunk, outputs):
          results[i] = to_upload_result(output, requests[i].prepared, requests[i].options)
    return results

  def encode_phrases(self, phrases):
    """A list of strings -> ``regions.phrases.EncodedPhrases``; ValueError naming a bad phrase."""
    return self.predictor.regions.encode_phrases(phrases)

  def check_boxes(self, prepared, boxes):
    """Given boxes of a prepared upload -> ``(boxes, resized_boxes, clipped, outside)``.

    Boxes partly or wholly outside the upload are clipped to it, as
    ``ops.boxes.check_boxes`` says, so the detections of an upload
    (``run``) can all be given back.

    Raises:
      ValueError: one line naming the box index: NaN, infinite, or not a
        positive size (``ops.boxes.check_boxes``).
    """
    checked, clipped, outside = boxes_lib.check_boxes(boxes, prepared.original_size,
                                                       name="boxes")
    return (checked, boxes_lib.to_resized(checked, prepared.original_size, prepared.size),
            clipped, outside)

  def caption_boxes(self, prepared, given):
    """Captions the checked boxes ``given`` (``check_boxes``) of one prepared upload.

    Returns:
      A JSON-ready dict: ``boxes`` (as used, clipped), ``clipped``,
      ``outside`` (wholly outside the upload, see ``check_boxes``),
      ``captions``, ``caption_log_probs`` (each caption's log-probability,
      its words and END), ``scores`` (objectness logits, in the boxes' order)
      and the upload's ``width`` and ``height`` (``RegionModel.caption_prepared``).
    """
    (result,) = self.predictor.regions.caption_prepared([prepared], [given])
    return _json_ready(result)

  def score(self, prepared, encoded, given, options):
    """Log-likelihoods of ``encoded`` phrases given regions of one prepared upload.

    Args:
      prepared: the upload, ``image_stream.PreparedImage``.
      encoded: ``regions.phrases.EncodedPhrases``.
      given: checked boxes (``check_boxes``), or ``None`` to score the model's
        detections (kept as ``options`` says, as ``run`` keeps them).
      options: ``CaptionOptions`` for the detections.

    Returns:
      A JSON-ready dict (``RegionModel.score_prepared``): ``boxes``, ``scores``
      (objectness logits), ``captions``, ``log_likelihood`` and
      ``mean_log_likelihood`` (``[num_boxes][num_phrases]``: the sum over each
      phrase's words and END, and that sum per token), ``phrases`` (the words
      scored), ``unknown_words`` and ``no_known_content_words`` (per phrase),
      the upload's ``width`` and ``height``, and with ``given`` ``clipped``
      and ``outside``.
    """
    (result,) = self.predictor.regions.score_prepared(
        [prepared], encoded, None if given is None else [given],
        max_detections=options.max_boxes, min_score=options.min_score,
        final_nms_thresh=options.final_nms_thresh)
    return _json_ready(result)


def _json_ready(result):
  """Arrays of a result dict as (nested) lists."""
  return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in result.items()}


def to_upload_result(output, prepared, options):
  """One ``predict_prepared`` output -> the JSON-ready result for the uploaded image.

  Boxes with a score below ``options.min_score`` are dropped, then all but the
  first ``options.max_boxes``. Boxes go from the resized image to the upload
  with ``ops.boxes.to_image`` (the height ratio ``H0 / h``, as the webcam
  daemon does, reference §11.1), in NumPy.
  """
  scores = np.asarray(output["scores"], np.float32)
  keep = regions_api.kept_detections(scores, options.min_score, options.max_boxes)
  boxes = np.asarray(output["boxes"], np.float32).reshape(-1, 4)[keep]
  return {
      "boxes": boxes_lib.to_image(boxes, prepared.original_size, prepared.size).tolist(),
      "scores": scores[keep].tolist(),
      "captions": [output["captions"][i] for i in keep],
      **regions_api.size_fields(prepared),
  }
