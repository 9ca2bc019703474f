"""The five DenseCap losses, their weights and normalisation, and box decay (reference §4).

All functions act on one image's fixed-size RoI minibatch: ``S`` slots,
positives first, described by boolean masks (``is_pos``, ``is_neg``); the
counts ``P`` and ``M`` are the mask sums. Losses return unweighted float32
scalars; ``weighted_losses`` applies the released weights.
``word_presence_loss`` is not the original's: an optional bag-of-words head
on the region codes (``word_loss_weight``, 0 in the released recipe) that
makes a network trained from scratch put what the captions name into its codes.

Gradient flow (§4.2) follows from autodiff plus two explicit choices:

* the final box-regression targets are differentiable w.r.t. the RoI boxes
  (``end_box_reg_loss``), as the original's ``BoxRegressionCriterion``;
* box decay (``RegularizeLayer``, §3.8) is a ``jax.custom_vjp`` identity whose
  backward pass adds ``weight * t`` to the incoming gradient; its loss value is
  reported separately (``box_decay_loss``) and is not part of the total.
"""

import jax
import jax.numpy as jnp
import optax

from densecap_jax.ops import boxes as boxes_lib

# Regression rows whose target transform has a component above this in
# absolute value are ignored ("DIRTY DIRTY HACK" of the original, §4.1).
MAX_TRANSFORM = 10.0

LOSS_NAMES = ("mid_objectness_loss", "mid_box_reg_loss", "end_objectness_loss",
              "end_box_reg_loss", "captioning_loss")


def smooth_l1(x):
  """Torch's SmoothL1 of a difference ``x``: ``0.5 x^2`` if ``|x| < 1`` else ``|x| - 0.5``."""
  absx = jnp.abs(x)
  return jnp.where(absx < 1, 0.5 * x * x, absx - 0.5)


def _safe_count(mask):
  return jnp.maximum(jnp.sum(mask, dtype=jnp.float32), 1.0)


def large_transform_rows(targets):
  """``(..., 4)`` targets -> ``(...)`` bool, rows with some ``|t| > 10`` (or NaN) (§4.1 quirk)."""
  return ~jnp.all(jnp.abs(targets) <= MAX_TRANSFORM, axis=-1)


def masked_box_regression(transforms, targets, rows):
  """SmoothL1 of ``transforms - targets`` over ``rows``, mean over ``P * 4``.

  Rows of ``rows`` whose target has a component above ``MAX_TRANSFORM`` have
  both prediction and target set to 0 (zero loss and gradient) but still count
  in the denominator (§4.1, §14 item 4).

  Args:
    transforms: ``(S, 4)`` predicted ``(tx, ty, tw, th)``.
    targets: ``(S, 4)`` target transforms (any value outside ``rows``).
    rows: ``(S,)`` bool, the positive rows.

  Returns:
    float32 scalar.
  """
  used = rows & ~large_transform_rows(targets)
  diff = jnp.where(used[:, None], transforms - targets, 0.0)
  return jnp.sum(smooth_l1(diff)) / (4 * _safe_count(rows))


def rpn_objectness_loss(scores, is_pos, is_neg):
  """Mid objectness: 2-class softmax CE, mean over positives + mean over negatives (§4.1).

  Args:
    scores: ``(S, 2)`` RPN scores (column 0 positive, column 1 negative, §3.1).
    is_pos, is_neg: ``(S,)`` bool.

  Returns:
    float32 scalar ``mean_pos(-log p_pos) + mean_neg(-log p_neg)``.
  """
  log_probs = jax.nn.log_softmax(scores.astype(jnp.float32), axis=-1)
  pos = -jnp.sum(jnp.where(is_pos, log_probs[:, 0], 0.0)) / _safe_count(is_pos)
  neg = -jnp.sum(jnp.where(is_neg, log_probs[:, 1], 0.0)) / _safe_count(is_neg)
  return pos + neg


def rpn_box_reg_loss(transforms, anchors, target_boxes, is_pos):
  """Mid box regression: RPN transforms of the positives vs their anchors' targets (§3.5).

  Args:
    transforms: ``(S, 4)`` RPN transforms of the sampled boxes.
    anchors: ``(S, 4)`` xcycwh anchors of the sampled boxes (no gradient).
    target_boxes: ``(S, 4)`` xcycwh matched ground truth (rows of negatives ignored).
    is_pos: ``(S,)`` bool.

  Returns:
    float32 scalar, SmoothL1 mean over ``P * 4`` with the >10 masking.
  """
  safe_targets = jnp.where(is_pos[:, None], target_boxes, anchors)
  targets = boxes_lib.invert_box_transform(jax.lax.stop_gradient(anchors), safe_targets)
  return masked_box_regression(transforms, jax.lax.stop_gradient(targets), is_pos)


def end_objectness_loss(logits, is_pos, valid=None):
  """Final objectness: binary logistic loss, positives 1 and the rest 0, mean over rows (§4.1).

  ``y = 1: log(1 + e^-x)``, ``y = 0: log(1 + e^-x) + x``, computed stably
  (``LogisticCriterion``).

  Args:
    logits: ``(S,)`` objectness logits.
    is_pos: ``(S,)`` bool labels.
    valid: optional ``(S,)`` bool rows that count (default all).

  Returns:
    float32 scalar.
  """
  logits = logits.astype(jnp.float32)
  per_row = jax.nn.softplus(-logits) + jnp.where(is_pos, 0.0, logits)
  if valid is None:
    return jnp.mean(per_row)
  return jnp.sum(jnp.where(valid, per_row, 0.0)) / _safe_count(valid)


def end_box_reg_loss(roi_boxes, transforms, target_boxes, is_pos):
  """Final box regression (``BoxRegressionCriterion``, §4.1, §4.2).

  Targets are ``invert_box_transform(roi_boxes, target_boxes)`` and stay
  differentiable w.r.t. the RoI boxes, so the boxes receive
  ``-(d target / d box)^T g`` as in the original.

  Args:
    roi_boxes: ``(S, 4)`` xcycwh RoI boxes (the predicted RPN boxes).
    transforms: ``(S, 4)`` box-reg outputs.
    target_boxes: ``(S, 4)`` xcycwh matched ground truth (rows of negatives ignored).
    is_pos: ``(S,)`` bool.

  Returns:
    float32 scalar, SmoothL1 mean over ``P * 4`` with the >10 masking.
  """
  plain_targets = boxes_lib.invert_box_transform(jax.lax.stop_gradient(roi_boxes), target_boxes)
  used = is_pos & ~large_transform_rows(plain_targets)
  # Unused rows aim at the RoI itself so that no log(0) enters the gradient.
  safe_targets = jnp.where(used[:, None], target_boxes, jax.lax.stop_gradient(roi_boxes))
  targets = boxes_lib.invert_box_transform(roi_boxes, safe_targets)
  targets = jnp.where(used[:, None], targets, plain_targets)
  return masked_box_regression(transforms, targets, is_pos)


def captioning_loss(scores, targets, is_pos):
  """Caption cross-entropy summed over non-ignored steps, divided by ``P`` (§4.1).

  Args:
    scores: ``(S, T, V + 1)`` LM scores (class ``j`` is token ``j + 1``).
    targets: ``(S, T)`` int32 tokens ``1..V+1``, 0 = ignored (``lm_targets``).
    is_pos: ``(S,)`` bool rows that count.

  Returns:
    float32 scalar.
  """
  log_probs = jax.nn.log_softmax(scores.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, jnp.maximum(targets - 1, 0)[..., None], axis=-1)[..., 0]
  used = (targets > 0) & is_pos[:, None]
  return -jnp.sum(jnp.where(used, picked, 0.0)) / _safe_count(is_pos)


def word_presence_loss(scores, labels, is_pos):
  """Bag-of-words loss of the region codes: which words the caption holds (no order).

  Per row, the sum over the ``V`` words of the sigmoid cross-entropy between
  the word's score and whether the caption contains it; averaged over the
  rows that count (0 when none does).

  Args:
    scores: ``(S, V)`` logits, column ``j`` for word ``j + 1``.
    labels: ``(S, L)`` int32 caption words ``1..V``, 0-padded.
    is_pos: ``(S,)`` bool rows that count.

  Returns:
    float32 scalar.
  """
  words = jnp.arange(1, scores.shape[-1] + 1)
  present = jnp.any(labels[:, :, None] == words, axis=1).astype(jnp.float32)
  per_row = jnp.sum(optax.sigmoid_binary_cross_entropy(scores.astype(jnp.float32), present),
                    axis=-1)
  return jnp.sum(jnp.where(is_pos, per_row, 0.0)) / _safe_count(is_pos)


def weighted_losses(losses, config):
  """Multiplies each of the five losses by its ``config.<name>_weight`` (§4.1).

  Args:
    losses: dict with the keys ``LOSS_NAMES`` (unweighted scalars).
    config: a model config with ``mid_objectness_weight``, ``mid_box_reg_weight``,
      ``end_objectness_weight``, ``end_box_reg_weight``, ``captioning_weight``.

  Returns:
    dict with the same keys, weighted.
  """
  return {name: losses[name] * config[name.replace("_loss", "_weight")] for name in LOSS_NAMES}


@jax.custom_vjp
def box_decay(transforms, weight, mask):
  """Identity whose gradient gains ``weight * mask * transforms`` (``RegularizeLayer``, §3.8).

  Applied to the whole RPN box-conv output, so every predicted box is pulled
  towards its anchor. The matching loss ``0.5 * weight * sum(mask * t^2)`` is
  reported by ``box_decay_loss`` and is not added to the total (§14 item 6).

  Args:
    transforms: ``(..., 4k)`` raw RPN box-conv output.
    weight: float scalar (``box_reg_decay``, divided by the number of images
      when the total loss is a mean over images).
    mask: float array broadcastable to ``transforms``: 1 on real feature
      cells, 0 on the padding of a shape bucket.

  Returns:
    ``transforms`` unchanged.
  """
  del weight, mask
  return transforms


def _box_decay_fwd(transforms, weight, mask):
  return transforms, (transforms, weight, mask)


def _box_decay_bwd(residuals, grad):
  transforms, weight, mask = residuals
  return grad + weight * mask * transforms, jnp.zeros_like(weight), jnp.zeros_like(mask)


box_decay.defvjp(_box_decay_fwd, _box_decay_bwd)


def box_decay_loss(transforms, weight, mask):
  """The value ``0.5 * weight * sum(mask * t^2)`` reported for box decay (§3.8)."""
  return 0.5 * weight * jnp.sum(mask * jnp.square(transforms))
