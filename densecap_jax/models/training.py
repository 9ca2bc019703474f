"""The training forward pass of DenseCap and its losses (``DenseCapModel:forward_backward``).

``train_forward(params, batch, rng, config)`` -> ``(total_loss, losses, aux)``:
backbone -> RPN (+ box decay) -> per-image RoI sampling and bilinear pooling
-> fc6 / fc7 -> objectness, box regression, teacher-forced LM -> the five
losses of §4.1, each averaged over the images of the batch.
"""

import functools

import jax
import jax.numpy as jnp

from densecap_jax.models import language_model as lm_lib
from densecap_jax.models import localization as loc_lib
from densecap_jax.models import losses as losses_lib
from densecap_jax.models.densecap import DenseCap
from densecap_jax.models.densecap import build_model
from densecap_jax.models.densecap import pool_regions
from densecap_jax.models.densecap import rpn_boxes


def _image_losses(sample, rpn_sample, logits, final_transforms, lm_scores):
  """The five unweighted losses of one image (§4.1); the RPN's two come from ``rpn_sample``."""
  num_lm = lm_scores.shape[0]
  return {
      "mid_objectness_loss": losses_lib.rpn_objectness_loss(rpn_sample.scores, rpn_sample.is_pos,
                                                            ~rpn_sample.is_pos),
      "mid_box_reg_loss": losses_lib.rpn_box_reg_loss(rpn_sample.transforms, rpn_sample.anchors,
                                                      rpn_sample.target_boxes,
                                                      rpn_sample.is_pos),
      "end_objectness_loss": losses_lib.end_objectness_loss(logits, sample.is_pos),
      "end_box_reg_loss": losses_lib.end_box_reg_loss(sample.boxes, final_transforms,
                                                      sample.target_boxes, sample.is_pos),
      "captioning_loss": losses_lib.captioning_loss(
          lm_scores, lm_lib.lm_targets(sample.target_labels[:num_lm], lm_scores.shape[-1] - 1),
          sample.is_pos[:num_lm]),
  }


def _check_batch(batch, config):
  required = ("image", "image_size", "gt_boxes", "gt_labels", "gt_mask")
  missing = [key for key in required if key not in batch]
  if missing:
    raise ValueError(f"batch is missing {missing}; expected keys {required}")
  if batch["image"].ndim != 4 or batch["image"].shape[-1] != 3:
    raise ValueError(f"batch['image'] must be (B, H, W, 3), got {batch['image'].shape}")
  if batch["gt_labels"].shape[-1] != config.seq_length:
    raise ValueError(f"batch['gt_labels'] must have config.seq_length = {config.seq_length} "
                     f"tokens per caption, got shape {batch['gt_labels'].shape}")


def train_forward(params, batch, rng, config, finetune_cnn=False):
  """Training forward pass and losses (``DenseCapModel:forward_backward``, §3.5, §4, §5).

  Per image: RPN boxes, the RoI minibatch of ``config.sampler_batch_size``
  slots (positives first), bilinear pooling of the predicted boxes, fc6 / fc7
  with dropout, objectness of every RoI, box regression and teacher-forced
  captions of the positives (only the first ``S // 2`` slots can be
  positive). With ``config.rpn_sample_on_anchors`` the RPN's two losses come
  from a second minibatch of the same size matched on the anchors (Faster
  R-CNN's RPN; ``localization.sample_rois``, same key), the recognition
  network's from the first: the RPN's losses are those of
  ``sample_on_anchors``, the others those of the original. With
  ``config.fixed_proposals`` the RoI boxes are constants to the recognition
  network (pooling and final box-regression targets), as Faster R-CNN
  treats its proposals: the RPN learns from its own two losses alone.
  Differentiating ``total_loss`` gives the original's gradients, including
  the box-decay term on the RPN box conv (``losses.box_decay``), which is
  not part of ``total_loss``.

  Args:
    params: the ``'params'`` collection (``init_params``).
    batch: dict with ``image`` ``(B, Hb, Wb, 3)`` float32, ``image_size``
      ``(B, 2)`` int32 true (H, W), ``gt_boxes`` ``(B, R, 4)`` float32 xcycwh,
      ``gt_labels`` ``(B, R, L)`` int32, ``gt_mask`` ``(B, R)`` bool.
    rng: ``jax.random`` key (sampling and dropout).
    config: the model config.
    finetune_cnn: static bool, train conv3_1 ... conv5_3 too (§4.2).

  Returns:
    ``(total_loss, losses, aux)``: the sum of the five weighted losses; a dict
    of the five weighted losses (means over images) plus ``box_decay_loss``
    (reported only); ``aux`` with per-image ``num_pos`` ``(B,)`` and
    ``neg_with_replacement`` ``(B,)``.
  """
  _check_batch(batch, config)
  model = build_model(config)
  sample_rng, dropout_rng = jax.random.split(rng)
  image_sizes = batch["image_size"]
  features = model.apply({"params": params}, batch["image"], image_sizes, finetune_cnn,
                         method=DenseCap.features)
  rpn = rpn_boxes(model, params, features, image_sizes, config, config.box_reg_decay)

  num_images = features.shape[0]

  def sample(rng, on_anchors):
    sample_fn = functools.partial(
        loc_lib.sample_rois, num_samples=config.sampler_batch_size,
        low_thresh=config.sampler_low_thresh, high_thresh=config.sampler_high_thresh,
        remove_outbounds_boxes=config.train_remove_outbounds_boxes, on_anchors=on_anchors)
    return jax.vmap(sample_fn, in_axes=(0, 0, None, 0, 0, 0, 0, 0, 0, 0))(
        jax.random.split(rng, num_images), rpn["boxes"], rpn["anchors"],
        rpn["transforms"], rpn["scores"], rpn["cell_valid"], image_sizes, batch["gt_boxes"],
        batch["gt_labels"], batch["gt_mask"])

  on_anchors = config.get("sample_on_anchors", False)
  samples = sample(sample_rng, on_anchors)
  rpn_samples = samples  # already the anchors' minibatch when on_anchors
  if config.get("rpn_sample_on_anchors", False) and not on_anchors:
    rpn_samples = sample(sample_rng, True)
  if config.get("fixed_proposals", False):
    samples = samples._replace(boxes=jax.lax.stop_gradient(samples.boxes))

  pooled = pool_regions(features, samples.boxes, image_sizes, rpn["feature_sizes"],
                 config.roi_output_size)
  codes, logits, final_transforms = model.apply(
      {"params": params}, pooled, True, rngs={"dropout": dropout_rng},
      method=DenseCap.recognize)
  num_lm = config.sampler_batch_size // 2
  lm_codes = codes[:, :num_lm].reshape(num_images * num_lm, -1)
  lm_labels = samples.target_labels[:, :num_lm].reshape(num_images * num_lm, -1)
  lm_scores = model.apply({"params": params}, lm_codes, lm_labels,
                          method=DenseCap.caption_scores)
  lm_scores = lm_scores.reshape((num_images, num_lm) + lm_scores.shape[1:])

  per_image = jax.vmap(_image_losses)(samples, rpn_samples, logits, final_transforms, lm_scores)
  losses = losses_lib.weighted_losses(jax.tree.map(jnp.mean, per_image), config)
  if model.word_head:
    word_scores = model.apply({"params": params}, lm_codes, method=DenseCap.word_scores)
    per_image_words = jax.vmap(losses_lib.word_presence_loss)(
        word_scores.reshape(num_images, num_lm, -1), samples.target_labels[:, :num_lm],
        samples.is_pos[:, :num_lm])
    losses["word_loss"] = config.word_loss_weight * jnp.mean(per_image_words)
  total_loss = sum(losses.values())
  losses["box_decay_loss"] = rpn["box_decay_loss"]
  aux = {"num_pos": samples.num_pos, "neg_with_replacement": samples.neg_with_replacement}
  return total_loss, losses, aux
