"""Training-time box sampler with static shapes (``BoxSampler``, reference §3.5).

Chooses which predicted RPN boxes become positive and negative RoIs for one
image. ``sampler_masks`` applies the released labelling rules; ``sample_boxes``
draws a fixed-size minibatch from those masks and lays it out so the model can
gather ``num_samples`` RoIs (positives first) without data-dependent shapes.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from densecap_jax.ops.boxes import box_iou, xcycwh_to_x1y1x2y2


class SamplerMasks(NamedTuple):
  """Per-input-box labels before sampling (``N`` input boxes).

  Attributes:
    pos: ``(N,)`` bool, positive boxes.
    neg: ``(N,)`` bool, negative boxes (never overlaps ``pos``).
    best_target: ``(N,)`` int32, the valid target of largest IoU per input box
      (first on ties; 0 when there is no valid target).
    no_negatives: bool scalar, true when the rules gave no negative and ``neg``
      fell back to "every box that is not positive" (and is a real box, see
      ``sampler_masks``'s ``valid``).
  """
  pos: jax.Array
  neg: jax.Array
  best_target: jax.Array
  no_negatives: jax.Array


class BoxSamples(NamedTuple):
  """A fixed-size minibatch of RoIs, positives first.

  Slot ``s`` of the ``S = num_samples`` RoIs is input box ``roi_idx[s]``.
  Slots ``[0, num_pos)`` are the sampled positives, slots ``[num_pos, S)`` the
  ``S - num_pos`` sampled negatives, each group in random draw order — the
  original's ``[positives; negatives]`` concatenation (§3.5 item 5).

  Attributes:
    roi_idx: ``(S,)`` int32, 0-based input-box index of each slot.
    is_pos: ``(S,)`` bool, ``slot < num_pos``.
    pos_target_idx: ``(S,)`` int32, for positive slots the input box's own best
      target (0-based); 0 in negative slots.
    num_pos: int32 scalar, ``min(floor(S * positive_fraction), #pos)``.
    neg_with_replacement: bool scalar, true when there were fewer negatives
      than negative slots and they were drawn with replacement.
    no_negatives: bool scalar, see ``SamplerMasks.no_negatives``.
  """
  roi_idx: jax.Array
  is_pos: jax.Array
  pos_target_idx: jax.Array
  num_pos: jax.Array
  neg_with_replacement: jax.Array
  no_negatives: jax.Array


def out_of_bounds(boxes, bounds):
  """``(N,)`` bool: xcycwh boxes with a ``(w-1)/2`` corner outside ``bounds``.

  ``bounds = (x_min, y_min, x_max, y_max)``; a box is out when ``x1 < x_min``,
  ``y1 < y_min``, ``x2 > x_max`` or ``y2 > y_max``.
  """
  x_min, y_min, x_max, y_max = bounds
  corners = xcycwh_to_x1y1x2y2(boxes)
  return ((corners[..., 0] < x_min) | (corners[..., 1] < y_min)
          | (corners[..., 2] > x_max) | (corners[..., 3] > y_max))


@functools.partial(jax.jit, static_argnames=("clean_iou",))
def sampler_masks(input_boxes, target_boxes, target_mask=None, low_thresh=0.3,
                  high_thresh=0.7, bounds=None, clean_iou=False, valid=None):
  """Positive / negative labels of the input boxes (§3.5 item 3).

  Rules, in order: IoU of every input with every valid target; ``pos =
  max_iou > high_thresh``, ``neg = max_iou < low_thresh`` (both strict);
  out-of-bounds inputs leave both sets; the input of largest IoU for each valid
  target (first on ties) is forced positive and leaves ``neg`` (even if out of
  bounds or below threshold); if ``neg`` is then empty it becomes ``~pos``.
  With no valid target there is no positive and every in-bounds box is
  negative.

  ``valid`` marks the rows that are real boxes: the boxes of a shape bucket's
  padding cells (beyond the true feature size of a zero-padded image) are not
  boxes of the image, so they are never positive, never forced positive and
  never negative, the fallback included. The original has no padding, so
  with every row valid (or ``valid=None``) the rules are exactly the above.

  Args:
    input_boxes: ``(N, 4)`` float xcycwh, the predicted RPN boxes.
    target_boxes: ``(M, 4)`` float xcycwh ground truth, padded.
    target_mask: optional ``(M,)`` bool, true for real targets (default all).
    low_thresh, high_thresh: float scalars.
    bounds: optional ``(x_min, y_min, x_max, y_max)``, scalars (may be traced).
    clean_iou: static bool; ``False`` (default) uses the released ``BoxIoU`` quirk
      (``box_iou``, §14 item 1); ``True`` uses ``box_iou(..., clean=True)``.
    valid: optional ``(N,)`` bool, true for real input boxes (default all).

  Returns:
    ``SamplerMasks``; ``best_target`` is 0 for rows that are not ``valid``.
  """
  num_inputs, num_targets = input_boxes.shape[0], target_boxes.shape[0]
  if target_mask is None:
    target_mask = jnp.ones((num_targets,), bool)
  target_mask = jnp.asarray(target_mask, bool)
  iou_fn = functools.partial(box_iou, clean=clean_iou)  # BoxIoU quirk by default, §3.4.
  iou = jnp.where(target_mask[None, :], iou_fn(input_boxes, target_boxes), -jnp.inf)
  if valid is not None:
    valid = jnp.asarray(valid, bool)
    iou = jnp.where(valid[:, None], iou, -jnp.inf)  # never the best input of a target
  max_iou = jnp.max(iou, axis=1)
  best_target = jnp.argmax(iou, axis=1).astype(jnp.int32)
  best_input = jnp.argmax(iou, axis=0)
  pos = max_iou > high_thresh
  neg = max_iou < low_thresh
  if bounds is not None:
    inside = ~out_of_bounds(input_boxes, bounds)
    pos &= inside
    neg &= inside
  forced_rows = jnp.where(target_mask, best_input, num_inputs)
  forced = jnp.zeros((num_inputs,), bool).at[forced_rows].set(True, mode="drop")
  if valid is not None:
    neg &= valid  # pos is already false there (max_iou = -inf)
    forced &= valid  # argmax picks an invalid row only when no row is valid
  pos |= forced
  neg &= ~forced
  no_negatives = ~jnp.any(neg)
  fallback = ~pos if valid is None else ~pos & valid
  neg = jnp.where(no_negatives, fallback, neg)
  return SamplerMasks(pos, neg, best_target, no_negatives)


def _draw_without_replacement(rng, mask, k):
  """``(k,)`` int32 whose first ``min(k, #mask)`` entries are distinct true indices of ``mask``, in random order."""
  keys = jnp.where(mask, jax.random.uniform(rng, mask.shape), -1.0)
  _, idx = jax.lax.top_k(keys, k)
  return idx.astype(jnp.int32)


def _draw_with_replacement(rng, mask, k):
  """``(k,)`` int32: true indices of ``mask`` drawn uniformly with replacement."""
  count = jnp.sum(mask, dtype=jnp.int32)
  members = jnp.nonzero(mask, size=mask.shape[0], fill_value=0)[0].astype(jnp.int32)
  return members[jax.random.randint(rng, (k,), 0, count)]


def _pad_to(x, size):
  """Zero-pads a 1-D array at the end to ``size`` entries."""
  return jnp.pad(x, (0, size - x.shape[0]))


@functools.partial(jax.jit, static_argnames=("num_samples", "positive_fraction", "clean_iou"))
def sample_boxes(rng, input_boxes, target_boxes, num_samples=256, low_thresh=0.3,
                 high_thresh=0.7, target_mask=None, bounds=None, positive_fraction=0.5,
                 clean_iou=False, valid=None):
  """Samples ``num_samples`` RoIs from the input boxes (``BoxSampler``, §3.5).

  Labels come from ``sampler_masks``. Then ``num_pos = min(floor(num_samples *
  positive_fraction), #pos)`` positives are drawn uniformly without
  replacement and ``num_samples - num_pos`` negatives uniformly without
  replacement, or with replacement when there are fewer negatives than that.
  Each positive is paired with its own best target. When every (valid) input
  box is positive there is no negative to draw; the negative slots then hold
  input 0 (the original fails in that case).

  Args:
    rng: a ``jax.random`` key.
    input_boxes: ``(N, 4)`` float xcycwh, the predicted RPN boxes.
    target_boxes: ``(M, 4)`` float xcycwh ground truth, padded.
    num_samples: static int ``S``, RoIs per image (the original's
      ``batch_size``, 256).
    low_thresh, high_thresh: float scalars (0.3 and 0.7 in training).
    target_mask: optional ``(M,)`` bool, true for real targets (default all).
    bounds: optional ``(x_min, y_min, x_max, y_max)``; out-of-bounds inputs
      are neither positive nor negative unless forced positive (training uses
      ``(1, 1, W, H)``).
    positive_fraction: static float, the largest share of positive slots.
    clean_iou: static bool, see ``sampler_masks``.
    valid: optional ``(N,)`` bool, the real input boxes (not a shape bucket's
      padding); the others are never drawn, see ``sampler_masks``.

  Returns:
    ``BoxSamples`` with the layout described there.
  """
  input_boxes = jnp.asarray(input_boxes, jnp.float32)
  target_boxes = jnp.asarray(target_boxes, jnp.float32)
  masks = sampler_masks(input_boxes, target_boxes, target_mask, low_thresh, high_thresh,
                        bounds, clean_iou, valid)
  num_inputs = input_boxes.shape[0]
  max_pos = int(num_samples * positive_fraction)
  num_pos = jnp.minimum(max_pos, jnp.sum(masks.pos, dtype=jnp.int32))
  num_neg = num_samples - num_pos
  neg_with_replacement = jnp.sum(masks.neg, dtype=jnp.int32) < num_neg

  pos_key, neg_key, replace_key = jax.random.split(rng, 3)
  pos_draw = _pad_to(_draw_without_replacement(pos_key, masks.pos, min(max_pos, num_inputs)),
                     num_samples)
  neg_draw = jnp.where(
      neg_with_replacement,
      _draw_with_replacement(replace_key, masks.neg, num_samples),
      _pad_to(_draw_without_replacement(neg_key, masks.neg, min(num_samples, num_inputs)),
              num_samples))

  slots = jnp.arange(num_samples, dtype=jnp.int32)
  is_pos = slots < num_pos
  roi_idx = jnp.where(is_pos, pos_draw, neg_draw[jnp.maximum(slots - num_pos, 0)])
  pos_target_idx = jnp.where(is_pos, masks.best_target[roi_idx], 0)
  return BoxSamples(roi_idx, is_pos, pos_target_idx, num_pos, neg_with_replacement,
                    masks.no_negatives)
