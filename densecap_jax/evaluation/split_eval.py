"""Runs a model over a dataset split and scores it with the dense-captioning mAP.

Shared by the evaluation command and the validation inside training
(reference §7.1, §9.1): every image of the split (or its first
``max_images``) goes through ``models.detection.infer`` in batches of one
shape bucket, spread over every device of every process; its detections and
ground truth go to ``DenseCaptioningEvaluator``, and the result is the
evaluator's dict.
"""

import functools

import jax
import numpy as np
from tqdm import tqdm

from densecap_jax import engine
from densecap_jax import runtime
from densecap_jax.data import device_pixels
from densecap_jax.data import loader as loader_lib
from densecap_jax.data import vocab as vocab_lib
from densecap_jax.evaluation import metric
from densecap_jax.models import detection


def make_predict_fn(config, num_proposals=None):
  """The jitted test-time forward pass of ``config``'s model.

  Returns:
    ``predict(params, images, image_sizes, rpn_nms_thresh, final_nms_thresh)
    -> (boxes, scores, tokens, valid)`` (see ``detection.infer``); the
    thresholds are traced, so it compiles once per batch shape.
  """

  def predict(params, images, image_sizes, rpn_nms_thresh, final_nms_thresh):
    return detection.infer(params, images, image_sizes, config, num_proposals=num_proposals,
                           rpn_nms_thresh=rpn_nms_thresh, final_nms_thresh=final_nms_thresh)

  return jax.jit(predict)


def evaluate_split(params, data, split, predict_fn, *, config, max_images=-1, batch_size=1,
                   num_workers=1, rpn_nms_thresh=None, final_nms_thresh=None, meteor_fn=None,
                   progress=True, return_predictions=False):
  """Dense-captioning mAP of the model on one split of a preprocessed dataset.

  Every device of every process takes part: each process reads its own
  share of each batch (``loader.make_batches`` with the process index), runs
  it split over its local devices, and the detections of all processes are
  gathered; the first process scores them and hands the result to the
  others. Images go to the evaluator in the split's order whatever the batch
  size and device count, so the numbers do not depend on either.

  Args:
    params: model params.
    data: a ``loader.DenseCapH5``.
    split: ``'train' | 'val' | 'test'``.
    predict_fn: from :func:`make_predict_fn`.
    config: the model config (shape buckets, test-time NMS thresholds).
    max_images: evaluate the split's first ``max_images`` images; −1 = all.
    batch_size: images per forward pass over the whole job, rounded up to a
      multiple of the number of devices.
    num_workers: threads assembling the batches (``loader.make_batches``).
    rpn_nms_thresh, final_nms_thresh: test-time NMS thresholds (None: the
      model config's).
    meteor_fn: METEOR scorer for the evaluator (default: the Java METEOR).
    progress: show a progress bar (on the first process); it reads
      ``compiling`` during the first batch of each shape and its rate and
      remaining time leave those batches out.
    return_predictions: also return what the evaluator was given.

  Returns:
    The ``DenseCaptioningEvaluator.evaluate()`` dict, on every process; with
    ``return_predictions``, ``(that dict, predictions)``: per image in the
    split's order, the evaluator's ``add_result`` arguments ``(scores (B,),
    boxes (B, 4) xcycwh, B captions, gt_boxes (M, 4) xcycwh, M captions)``,
    boxes in the resized image's pixels (on every process).
  """
  runtime.use_compilation_cache()
  rpn_nms_thresh = config.rpn_nms_thresh if rpn_nms_thresh is None else rpn_nms_thresh
  final_nms_thresh = config.final_nms_thresh if final_nms_thresh is None else final_nms_thresh
  indices = data.split_indices(split)
  num_images = len(indices) if max_images < 0 else min(max_images, len(indices))
  max_boxes = max(1, int(data.num_boxes[indices[:num_images]].max(initial=0)))
  num_devices = jax.device_count()
  batch_size = -(-max(batch_size, 1) // num_devices) * num_devices
  batches = loader_lib.make_batches(
      data, split, batch_size=batch_size, max_boxes=max_boxes, buckets=config.buckets,
      num_devices=jax.local_device_count(), process_index=jax.process_index(),
      process_count=jax.process_count(), num_epochs=1, max_images=num_images, overflow="error",
      pixels="uint8", num_workers=num_workers)
  run = _pmapped(predict_fn)
  replicated = engine.replicate(params)
  is_chief = jax.process_index() == 0
  per_image = {}
  shapes = set()  # image batch shapes already compiled
  desc = f"eval {split}"
  with batches, tqdm(total=num_images, disable=not (progress and is_chief), unit="img",
                     desc=desc, dynamic_ncols=True) as bar:
    for batch in batches:
      compiling = batch["image"].shape not in shapes
      if compiling:
        shapes.add(batch["image"].shape)
        bar.set_description(f"{desc} (compiling)")
      outputs = run(replicated, batch["image"], batch["image_size"], batch["example_mask"],
                    rpn_nms_thresh, final_nms_thresh)
      local = dict(zip(("boxes", "scores", "tokens", "valid"), jax.device_get(outputs)))
      local.update((k, batch[k]) for k in ("gt_boxes", "gt_labels", "gt_mask", "example_mask",
                                             "image_index"))
      merged = engine.gather_processes({k: v.reshape((-1,) + v.shape[2:])
                                        for k, v in local.items()})
      for k in np.flatnonzero(merged["example_mask"]):
        keep, gt = merged["valid"][k], merged["gt_mask"][k]
        per_image[int(merged["image_index"][k])] = (
            merged["scores"][k][keep], merged["boxes"][k][keep],
            vocab_lib.decode_captions(merged["tokens"][k][keep], data.vocab),
            merged["gt_boxes"][k][gt],
            vocab_lib.decode_captions(merged["gt_labels"][k][gt], data.vocab))
      if compiling:  # the batch's time is mostly compilation: the rate starts after it
        bar.set_description(desc, refresh=False)
        runtime.restart_rate(bar, len(per_image))
      else:
        bar.update(len(per_image) - bar.n)
  results = None
  if is_chief:
    evaluator = metric.DenseCaptioningEvaluator(meteor_fn=meteor_fn)
    for index in sorted(per_image):
      evaluator.add_result(*per_image[index])
    results = evaluator.evaluate()
  results = engine.share_from_chief(results)
  if return_predictions:
    return results, [per_image[index] for index in sorted(per_image)]
  return results


@functools.lru_cache(maxsize=None)
def _pmapped(predict_fn):
  """``predict_fn`` over the local devices: params replicated, batches split on a leading axis.

  It takes the loader's uint8 images and their example mask and converts them
  on the devices first (``device_pixels.model_images``).
  """

  def predict(params, images, image_sizes, example_mask, rpn_nms_thresh, final_nms_thresh):
    return predict_fn(params, device_pixels.model_images(images, image_sizes, example_mask),
                      image_sizes, rpn_nms_thresh, final_nms_thresh)

  return jax.pmap(predict, axis_name=engine.BATCH_AXIS, in_axes=(0, 0, 0, 0, None, None))

