"""Greedy non-maximum suppression with static shapes (``box_utils.nms``, §3.4).

The original sorts the scores, repeatedly takes the highest-scoring remaining
box and drops every remaining box whose IoU with it is not ``<= threshold``,
until no box remains or ``max_boxes`` have been picked.

Here the boxes are sorted once by score and visited in blocks of ``block_size``
inside a ``lax.while_loop`` that stops as soon as ``max_output_size`` boxes
are picked or the boxes run out. For each block:

1. boxes overlapping an already picked box (IoU > threshold) are dropped;
2. the greedy order inside the block is resolved exactly by iterating
   ``keep[j] = candidate[j] and no kept i < j overlaps j`` to its fixed point
   (after t rounds the first t entries are final, so it ends in at most
   ``block_size`` rounds, usually a few);
3. the kept boxes are appended to the picks in score order.

This gives the same picks as the one-box-at-a-time loop in far fewer
sequential steps (18,360 boxes -> 1,000 picks at threshold 0.7 take a few
milliseconds on one CPU core).
"""

import functools

import jax
import jax.numpy as jnp

from densecap_jax.ops.boxes import box_iou_x1y1x2y2


def _overlaps(boxes1, boxes2, iou_threshold):
  """``(B1, B2)`` bool: IoU is not ``<= iou_threshold`` (NaN IoU counts as overlap)."""
  return ~(box_iou_x1y1x2y2(boxes1, boxes2) <= iou_threshold)


def _resolve_block(candidate, overlaps_earlier):
  """Greedy keep mask inside one block.

  Args:
    candidate: ``(B,)`` bool, boxes still eligible (in score order).
    overlaps_earlier: ``(B, B)`` bool, ``[i, j]`` true when ``i < j`` and box
      ``i`` would suppress box ``j``.

  Returns:
    ``(B,)`` bool, the boxes greedy NMS keeps.
  """
  def changed(state):
    return state[1]

  def step(state):
    keep, _ = state
    new_keep = candidate & ~jnp.any(overlaps_earlier & keep[:, None], axis=0)
    return new_keep, jnp.any(new_keep != keep)

  keep, _ = jax.lax.while_loop(changed, step, (candidate, jnp.array(True)))
  return keep


@functools.partial(jax.jit, static_argnames=("max_output_size", "block_size"))
def nms(boxes, scores, iou_threshold, max_output_size, valid=None, block_size=256):
  """Greedy NMS of x1y1x2y2 boxes, highest score first.

  IoU uses the inclusive pixel convention of ``box_iou_x1y1x2y2``. After each
  pick, the boxes whose IoU with the pick is **> iou_threshold** are
  suppressed (IoU ``<= iou_threshold`` survives). A NaN IoU (zero union, e.g.
  two zero-area boxes) fails ``<=`` and therefore suppresses, as the original's
  ``le`` mask does.

  Ties in score are broken by the lower index first (a stable sort); the
  original's order among equal scores is whatever Torch's sort gives (§15).

  Args:
    boxes: ``(N, 4)`` float x1y1x2y2.
    scores: ``(N,)`` float.
    iou_threshold: float scalar (may be traced).
    max_output_size: static int, the most boxes to pick.
    valid: optional ``(N,)`` bool; boxes with ``False`` are never picked and
      never suppress anything.
    block_size: static int, how many sorted boxes are resolved per step
      (speed only; the result does not depend on it).

  Returns:
    ``(indices, num_valid)``: ``indices`` ``(max_output_size,)`` int32 0-based
    indices into ``boxes`` in pick order (decreasing score), padded with -1;
    ``num_valid`` int32 scalar, the number of picks.
  """
  boxes = jnp.asarray(boxes, jnp.float32)
  scores = jnp.asarray(scores, jnp.float32)
  n = boxes.shape[0]
  picks = jnp.full((max_output_size,), -1, jnp.int32)
  if n == 0 or max_output_size == 0:
    return picks, jnp.int32(0)

  block = min(block_size, n)
  num_blocks = -(-n // block)
  pad = num_blocks * block - n
  order = jnp.argsort(-scores, stable=True).astype(jnp.int32)
  alive = jnp.ones((n,), bool) if valid is None else jnp.asarray(valid, bool)[order]
  sorted_boxes = jnp.pad(boxes[order], ((0, pad), (0, 0)))
  alive = jnp.pad(alive, (0, pad))
  order = jnp.pad(order, (0, pad), constant_values=-1)
  earlier = jnp.arange(block)[:, None] < jnp.arange(block)[None, :]
  slots = jnp.arange(max_output_size)

  def has_work(state):
    b, count, _, _ = state
    return (b < num_blocks) & (count < max_output_size)

  def process_block(state):
    b, count, picked_boxes, picks = state
    start = b * block
    block_boxes = jax.lax.dynamic_slice_in_dim(sorted_boxes, start, block)
    candidate = jax.lax.dynamic_slice_in_dim(alive, start, block)
    block_order = jax.lax.dynamic_slice_in_dim(order, start, block)
    by_picks = _overlaps(block_boxes, picked_boxes, iou_threshold) & (slots < count)[None, :]
    candidate &= ~jnp.any(by_picks, axis=1)
    by_block = _overlaps(block_boxes, block_boxes, iou_threshold) & earlier
    keep = _resolve_block(candidate, by_block)
    slot = count + jnp.cumsum(keep) - 1
    slot = jnp.where(keep & (slot < max_output_size), slot, max_output_size)
    picks = picks.at[slot].set(block_order, mode="drop")
    picked_boxes = picked_boxes.at[slot].set(block_boxes, mode="drop")
    count = jnp.minimum(count + jnp.sum(keep, dtype=jnp.int32), max_output_size)
    return b + 1, count, picked_boxes, picks

  init = (jnp.int32(0), jnp.int32(0), jnp.zeros((max_output_size, 4), jnp.float32), picks)
  _, count, _, picks = jax.lax.while_loop(has_work, process_block, init)
  return picks, count
