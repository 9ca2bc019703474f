"""Greedy non-maximum suppression with static shapes (``box_utils.nms``, §3.4).

The original sorts the scores, repeatedly takes the highest-scoring remaining
box and drops every remaining box whose IoU with it is not ``<= threshold``,
until no box remains or ``max_boxes`` have been picked. ``nms`` returns
exactly those picks (ties in score to the lower index, the inclusive +1 pixel
IoU) in a few sequential steps:

1. **Blocks in score order, no full sort.** ``lax.top_k`` takes the
   ``block_size`` best-scoring boxes (ties to the lower index, like the
   stable sort of ``-scores``): the 1,000 RPN picks of 18,360 boxes come
   from the first one or two thousand. Only while picks are still missing
   does a ``lax.while_loop`` take the next best unvisited boxes as another
   block (first dropping those that overlap an earlier pick); calls whose
   first block holds every pick never run it.
2. **The block's suppression test, once, as a bitmask.** For every pair
   ``i < j`` of the block (score order) "``i`` would suppress ``j``" (IoU
   not ``<= threshold``; NaN suppresses) is computed in parallel (the first
   block in 4 row tiles, so that 5/8 of the pairs are tested), and packed
   32 boxes to a ``uint32`` word: row ``j`` is the set of ``j``'s possible
   suppressors.
3. **A tri-state fixed point instead of one box at a time.** Greedy NMS
   keeps ``j`` exactly when no *kept* box before it suppresses it. Two sets
   grow to that answer: ``j`` is *dropped* once a kept box suppresses it and
   *kept* once all of its possible suppressors are dropped. Both rules are
   always right, so the sets only grow, and one round of them (two masked
   word reductions over the block) decides at least the first undecided box
   and in practice a whole layer of the greedy's dependencies: a block of
   2,048 boxes is decided in 3 to 8 rounds. The loop runs
   ``ROUNDS_PER_TRIP`` rounds per trip (each trip ends in a condition the
   host waits for on an accelerator) until the block is decided, or until
   its decided prefix already holds every pick still wanted.
4. The kept boxes go to the output in score order.

Cost: the block's pairs (``5/8 block_size**2`` IoUs), a few cheap rounds
over ``block_size**2 / 32`` words, one ``top_k``; further blocks also test
against the picks so far. ``block_size`` changes the speed only.

Loop trips (``nms_with_trips``, counted in tests/test_nms.py), against the
earlier 256-box blocks' 24 iterations for the first case: the benchmark's
18,360 RPN boxes -> 1,000 picks at 0.7 (``benchmarks/ops.py``) take 2; the
``vgg16`` test pass with random weights takes 1 for its RPN NMS and 3 for
the final NMS of a batch of 32 (1,000 proposals at 0.3); the bundled model
on its examples at batch 32 takes at most 6 (RPN, 3,264-4,352 boxes -> 300,
in two or three blocks) and 3 (final).
"""

import functools

import jax
import jax.numpy as jnp

from densecap_jax.ops.boxes import box_iou_x1y1x2y2

ROUNDS_PER_TRIP = 3  # tri-state rounds per loop trip
DEFAULT_BLOCK_SIZE = 2048
_WORD_BITS = 32
_ROW_TILES = 4  # tiles of the first block's pairwise test (see _suppressor_rows)
# Score keys for ``lax.top_k`` (descending in IEEE total order, ties to the lower
# index): a NaN score sorts after every number (as the sort of ``-scores`` does),
# a visited box after every NaN.
_NAN_KEY = 0xFFC00000  # a NaN with the sign bit: below -inf in total order
_VISITED_KEY = 0xFFFFFFFF  # the lowest float in total order


def _overlaps(boxes1, boxes2, iou_threshold):
  """``(..., B1, B2)`` bool: IoU is not ``<= iou_threshold`` (NaN IoU counts as overlap)."""
  return ~(box_iou_x1y1x2y2(boxes1, boxes2) <= iou_threshold)


def _float_bits(value):
  return jax.lax.bitcast_convert_type(jnp.uint32(value), jnp.float32)


def _score_keys(scores):
  """Keys whose ``top_k`` order is the stable ascending sort of ``-scores``.

  That sort treats -0 as 0 and puts NaN last; ``top_k`` orders floats in IEEE
  total order (-0 below 0, a NaN's place set by its sign), so zeros become +0
  and NaNs one negative NaN.
  """
  keys = jnp.where(scores == 0, jnp.float32(0), scores)
  return jnp.where(jnp.isnan(keys), _float_bits(_NAN_KEY), keys)


def _pack(bits):
  """``(..., 32 W)`` bool -> ``(..., W)`` uint32; bit ``k`` of word ``w`` is ``bits[32 w + k]``."""
  shape = bits.shape[:-1] + (bits.shape[-1] // _WORD_BITS, _WORD_BITS)
  shifts = jnp.arange(_WORD_BITS, dtype=jnp.uint32)
  return jnp.sum(bits.reshape(shape).astype(jnp.uint32) << shifts, axis=-1, dtype=jnp.uint32)


def _any_common_bit(rows, words):
  """``(G, B, W)`` rows and ``(G, W)`` words -> ``(G, B)``: row and word share a set bit."""
  return jnp.any((rows & words[:, None, :]) != 0, axis=-1)


def _suppressor_rows(block_boxes, iou_threshold, row_tiles):
  """``(G, B, W)`` uint32: bit ``i`` of row ``j`` is set when ``i < j`` and ``i`` would suppress ``j``.

  Only pairs with ``i < j`` matter, so the rows go in ``row_tiles`` tiles,
  each tested against the boxes up to its last row: ``(t + 1) / 2t`` of the
  pairs for ``t`` tiles (each tile is one more compiled kernel).
  """
  size = block_boxes.shape[1]
  words = size // _WORD_BITS
  tile = -(-size // (row_tiles * _WORD_BITS)) * _WORD_BITS
  parts = []
  for start in range(0, size, tile):
    stop = min(start + tile, size)
    earlier = jnp.arange(stop)[None, :] < jnp.arange(start, stop)[:, None]  # [j, i]: i < j
    # IoU with the earlier box as boxes1, as in the test against the picks (the same float
    # operations in the same order, whatever a compiler contracts), then rows j.
    over = _overlaps(block_boxes[:, :stop], block_boxes[:, start:stop], iou_threshold)
    part = _pack(jnp.swapaxes(over, 1, 2) & earlier)
    parts.append(jnp.pad(part, ((0, 0), (0, 0), (0, words - part.shape[-1]))))
  return jnp.concatenate(parts, axis=1)


def _resolve_block(candidate, suppressors, wanted, trips):
  """Greedy keep mask of each block by the tri-state fixed point.

  Args:
    candidate: ``(G, B)`` bool, boxes still eligible, in score order.
    suppressors: ``(G, B, W)`` uint32 from ``_suppressor_rows``.
    wanted: ``(G,)`` int32, picks still wanted; the loop may stop once the
      decided prefix of a block holds that many kept boxes.
    trips: int32 trip counter, carried on.

  Returns:
    ``(keep, trips)``: ``(G, B)`` bool, every box kept so far (exactly the
    greedy's picks of the block wherever it is decided, and all of them on
    the decided prefix), and the counter plus this loop's trips.
  """
  def one_round(kept, dropped):
    dropped = dropped | _any_common_bit(suppressors, _pack(kept))
    undecided_suppressor = _any_common_bit(suppressors, ~_pack(dropped))
    return kept | ~(dropped | undecided_suppressor), dropped

  position = jnp.arange(candidate.shape[1])

  def unresolved(state):
    kept, dropped, _ = state
    first_undecided = jnp.min(jnp.where(kept | dropped, candidate.shape[1], position), axis=1)
    kept_decided = jnp.sum(kept & (position < first_undecided[:, None]), axis=1,
                           dtype=jnp.int32)
    return jnp.any((first_undecided < candidate.shape[1]) & (kept_decided < wanted))

  def trip(state):
    kept, dropped, trips = state
    for _ in range(ROUNDS_PER_TRIP):
      kept, dropped = one_round(kept, dropped)
    return kept, dropped, trips + 1

  keep, _, trips = jax.lax.while_loop(
      unresolved, trip, (jnp.zeros_like(candidate), ~candidate, trips))
  return keep, trips


@functools.partial(jax.jit, static_argnames=("max_output_size", "block_size"))
def nms_with_trips(boxes, scores, iou_threshold, max_output_size, valid=None,
                   block_size=DEFAULT_BLOCK_SIZE):
  """``nms``, and the number of ``lax.while_loop`` trips it took (int32 scalar).

  The trips are those of the whole call: with leading batch dimensions the
  loops run until every image is done.
  """
  if block_size < 1:
    raise ValueError(f"block_size must be positive, got {block_size}")
  boxes = jnp.asarray(boxes, jnp.float32)
  scores = jnp.asarray(scores, jnp.float32)
  batch_shape, n = scores.shape[:-1], scores.shape[-1]
  if n == 0 or max_output_size == 0:
    return (jnp.full(batch_shape + (max_output_size,), -1, jnp.int32),
            jnp.zeros(batch_shape, jnp.int32), jnp.int32(0))
  boxes = boxes.reshape((-1, n, 4))
  scores = scores.reshape((-1, n))
  g = scores.shape[0]
  valid = (jnp.ones((g, n), bool) if valid is None
           else jnp.broadcast_to(jnp.asarray(valid, bool), batch_shape + (n,)).reshape((g, n)))
  threshold = jnp.asarray(iou_threshold, jnp.float32)
  block = min(block_size, n)
  size = -(-block // _WORD_BITS) * _WORD_BITS  # the block, padded to whole words
  num_blocks = -(-n // block)
  keys = _score_keys(scores)
  rows = jnp.arange(g)[:, None]
  slots = jnp.arange(max_output_size)

  def take_block(keys):
    """The next ``block`` boxes in score order, padded to ``size``."""
    _, index = jax.lax.top_k(keys, block)
    key_bits = jax.lax.bitcast_convert_type(keys[rows, index], jnp.uint32)
    candidate = valid[rows, index] & (key_bits != jnp.uint32(_VISITED_KEY))
    pad = size - block
    return (jnp.pad(index, ((0, 0), (0, pad)), constant_values=-1),
            jnp.pad(boxes[rows, index], ((0, 0), (0, pad), (0, 0))),
            jnp.pad(candidate, ((0, 0), (0, pad))),
            keys.at[rows, index].set(_float_bits(_VISITED_KEY)))

  def run_block(keys, count, picked_boxes, picks, trips, first):
    index, block_boxes, candidate, keys = take_block(keys)
    if not first:  # boxes overlapping an earlier pick are out
      earlier_pick = (slots < count[:, None])[:, None, :]
      candidate &= ~jnp.any(_overlaps(block_boxes, picked_boxes, threshold) & earlier_pick,
                            axis=2)
    suppressors = _suppressor_rows(block_boxes, threshold, _ROW_TILES if first else 1)
    keep, trips = _resolve_block(candidate, suppressors, max_output_size - count, trips)
    slot = count[:, None] + jnp.cumsum(keep, axis=1) - 1
    slot = jnp.where(keep & (slot < max_output_size), slot, max_output_size)
    picks = picks.at[rows, slot].set(index, mode="drop")
    picked_boxes = picked_boxes.at[rows, slot].set(block_boxes, mode="drop")
    count = jnp.minimum(count + jnp.sum(keep, axis=1, dtype=jnp.int32), max_output_size)
    return keys, count, picked_boxes, picks, trips

  state = run_block(keys, jnp.zeros((g,), jnp.int32), jnp.zeros((g, max_output_size, 4)),
                    jnp.full((g, max_output_size), -1, jnp.int32), jnp.int32(0), True)
  if num_blocks > 1:
    def more_wanted(state):
      b, _, count = state[:3]
      return (b < num_blocks) & jnp.any(count < max_output_size)

    def next_block(state):
      b, keys, count, picked_boxes, picks, trips = state
      return (b + 1,) + run_block(keys, count, picked_boxes, picks, trips + 1, False)

    state = jax.lax.while_loop(more_wanted, next_block, (jnp.int32(1),) + state)[1:]
  _, count, _, picks, trips = state
  return picks.reshape(batch_shape + (max_output_size,)), count.reshape(batch_shape), trips


@functools.partial(jax.jit, static_argnames=("max_output_size", "block_size"))
def nms(boxes, scores, iou_threshold, max_output_size, valid=None,
        block_size=DEFAULT_BLOCK_SIZE):
  """Greedy NMS of x1y1x2y2 boxes, highest score first.

  IoU uses the inclusive pixel convention of ``box_iou_x1y1x2y2``. After each
  pick, the boxes whose IoU with the pick is **> iou_threshold** are
  suppressed (IoU ``<= iou_threshold`` survives). A NaN IoU (zero union, e.g.
  two zero-area boxes) fails ``<=`` and therefore suppresses, as the original's
  ``le`` mask does.

  Ties in score are broken by the lower index first (a stable sort of
  ``-scores``: -0 equals 0, NaN scores come last); the original's order among
  equal scores is whatever Torch's sort gives (§15).

  Args:
    boxes: ``(..., N, 4)`` float x1y1x2y2; leading dimensions are a batch of
      independent sets (one loop for all: cheaper than ``vmap``'s).
    scores: ``(..., N)`` float.
    iou_threshold: float scalar (may be traced).
    max_output_size: static int, the most boxes to pick.
    valid: optional ``(..., N)`` bool; boxes with ``False`` are never picked
      and never suppress anything.
    block_size: static int, how many boxes in score order one block takes
      (speed only; the result does not depend on it). Best when one block
      holds every pick: ``N`` when all boxes may be picked, about twice the
      boxes visited before ``max_output_size`` picks otherwise.

  Returns:
    ``(indices, num_valid)``: ``indices`` ``(..., max_output_size)`` int32
    0-based indices into ``boxes`` in pick order (decreasing score), padded
    with -1; ``num_valid`` ``(...)`` int32, the number of picks.
  """
  picks, count, _ = nms_with_trips(boxes, scores, iou_threshold, max_output_size, valid,
                                   block_size)
  return picks, count
