"""Runs a model over a dataset split and scores it with the dense-captioning mAP.

Shared by ``eval/evaluate.py`` and the validation inside training (reference
§7.1, §9.1): every image of the split (or its first ``max_images``) goes
through ``models.densecap.infer`` in batches of one shape bucket, its
detections and ground truth go to ``DenseCaptioningEvaluator``, and the
result is the evaluator's dict.
"""

import jax
import numpy as np
from tqdm import tqdm

from densecap_jax.evaluation import metric
from densecap_jax.data import loader as loader_lib
from densecap_jax.data import vocab as vocab_lib
from densecap_jax.models import densecap


def make_predict_fn(config, num_proposals=None):
  """The jitted test-time forward pass of ``config``'s model.

  Returns:
    ``predict(params, images, image_sizes, rpn_nms_thresh, final_nms_thresh)
    -> (boxes, scores, tokens, valid)`` (see ``densecap.infer``); the
    thresholds are traced, so it compiles once per batch shape.
  """

  def predict(params, images, image_sizes, rpn_nms_thresh, final_nms_thresh):
    return densecap.infer(params, images, image_sizes, config, num_proposals=num_proposals,
                          rpn_nms_thresh=rpn_nms_thresh, final_nms_thresh=final_nms_thresh)

  return jax.jit(predict)


def evaluate_split(params, data, split, predict_fn, *, config, max_images=-1, batch_size=1,
                   rpn_nms_thresh=0.7, final_nms_thresh=0.3, meteor_fn=None, progress=True):
  """Dense-captioning mAP of the model on one split of a preprocessed dataset.

  Args:
    params: model params.
    data: a ``loader.DenseCapH5``.
    split: ``'train' | 'val' | 'test'``.
    predict_fn: from :func:`make_predict_fn`.
    config: the model config (shape buckets).
    max_images: evaluate the split's first ``max_images`` images; −1 = all.
    batch_size: images per forward pass.
    rpn_nms_thresh, final_nms_thresh: test-time NMS thresholds.
    meteor_fn: METEOR scorer for the evaluator (default: the Java METEOR).
    progress: show a progress bar.

  Returns:
    The ``DenseCaptioningEvaluator.evaluate()`` dict.
  """
  indices = data.split_indices(split)
  num_images = len(indices) if max_images < 0 else min(max_images, len(indices))
  max_boxes = max(1, int(data.num_boxes[indices[:num_images]].max(initial=0)))
  batches = loader_lib.make_batches(
      data, split, batch_size=batch_size, max_boxes=max_boxes, buckets=config.buckets,
      num_epochs=1, max_images=num_images, overflow="error")
  evaluator = metric.DenseCaptioningEvaluator(meteor_fn=meteor_fn)
  with batches, tqdm(total=num_images, disable=not progress, unit="img", desc=f"eval {split}",
                     dynamic_ncols=True) as bar:
    for batch in batches:
      boxes, scores, tokens, valid = jax.device_get(predict_fn(
          params, batch["image"], batch["image_size"], rpn_nms_thresh, final_nms_thresh))
      for k in np.flatnonzero(batch["example_mask"]):
        keep, gt = valid[k], batch["gt_mask"][k]
        evaluator.add_result(
            scores[k][keep], boxes[k][keep],
            vocab_lib.decode_captions(tokens[k][keep], data.vocab),
            batch["gt_boxes"][k][gt],
            vocab_lib.decode_captions(batch["gt_labels"][k][gt], data.vocab))
        bar.update(1)
  return evaluator.evaluate()
