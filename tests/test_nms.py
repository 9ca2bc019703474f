"""Tests for densecap_jax.ops.nms against the original's vectors, a NumPy greedy loop and
the previous implementation (blocked greedy, kept here as a reference), and its loop trips on
the benchmark's inputs and the bundled model's examples."""

import functools
import glob
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from densecap_jax import configs
from densecap_jax import predictor
from densecap_jax.model_dir import load_model
from densecap_jax.configs import buckets as buckets_lib
from densecap_jax.data import images as images_lib
from densecap_jax.models import densecap
from densecap_jax.models import detection
from densecap_jax.ops import boxes as boxes_lib
from densecap_jax.ops import nms as nms_lib
from densecap_jax.ops.nms import nms, nms_with_trips

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
# The targets for the loop trips: RPN NMS (one image) and final NMS (a batch of 32).
MAX_RPN_TRIPS = 8
MAX_FINAL_TRIPS = 4

# test/nms_test.lua: rows (x1, y1, x2, y2, score).
LUA_BOXES = np.array([
    [-12, 3, -7, 9, 1],
    [-9, 7, -4, 13, 2],
    [-8, 8, -3, 14, 3],
    [3.5, 4.5, 8.5, 12.5, 4],
    [-6, -6, -1, -1, 5],
    [4, 5, 9, 13, 6],
    [4.5, 5.5, 9.5, 13.5, 7],
], np.float32)


def reference_nms(boxes, scores, threshold, max_boxes=None):
  """The original's greedy loop in float32 NumPy; returns 0-based picks.

  Scores are sorted ascending and the last remaining index is taken each time;
  the remaining boxes whose IoU with the pick is not ``<= threshold`` are dropped.
  """
  boxes = np.asarray(boxes, np.float32)
  x1, y1, x2, y2 = boxes.T
  one = np.float32(1)
  area = (x2 - x1 + one) * (y2 - y1 + one)
  remaining = list(np.argsort(np.asarray(scores, np.float32), kind="stable"))
  picks = []
  while remaining and (max_boxes is None or len(picks) < max_boxes):
    i = remaining.pop()
    picks.append(int(i))
    rest = np.array(remaining, dtype=np.int64)
    if rest.size == 0:
      break
    w = np.maximum(np.minimum(x2[rest], x2[i]) - np.maximum(x1[rest], x1[i]) + one, 0)
    h = np.maximum(np.minimum(y2[rest], y2[i]) - np.maximum(y1[rest], y1[i]) + one, 0)
    inter = w * h
    with np.errstate(invalid="ignore", divide="ignore"):
      iou = inter / (area[rest] + area[i] - inter)
    remaining = [int(j) for j, keep in zip(rest, iou <= threshold) if keep]
  return picks


def padded(picks, size):
  return np.array(picks[:size] + [-1] * (size - len(picks[:size])), np.int32)


def random_boxes(rng, n, num_clusters=6, span=200.0):
  """Clustered x1y1x2y2 boxes (so that suppression happens) and distinct scores."""
  centres = rng.uniform(0, span, (num_clusters, 2))[rng.integers(0, num_clusters, n)]
  centres += rng.normal(0, 8, (n, 2))
  sizes = rng.uniform(5, 60, (n, 2))
  boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], 1).astype(np.float32)
  scores = rng.permutation(n).astype(np.float32) + rng.uniform(0, 0.5, n).astype(np.float32)
  return boxes, scores


def greedy_nms(boxes, scores, threshold, max_boxes=None, valid=None):
  """``reference_nms`` with ``nms``'s order: ``np.argsort(-scores)``, stable (ties to the
  lower index, -0 equal to 0, NaN last); boxes with ``valid`` False are left out."""
  boxes = np.asarray(boxes, np.float32)
  scores = np.asarray(scores, np.float32)
  order = np.argsort(-scores, kind="stable")
  if valid is not None:
    order = order[np.asarray(valid, bool)[order]]
  # reference_nms takes the last of an ascending order: feed it ranks so that it
  # visits ``order`` front to back.
  rank = np.empty(len(scores), np.float32)
  rank[order] = np.arange(len(order), 0, -1, dtype=np.float32)
  picks = reference_nms(boxes[order], rank[order], threshold, max_boxes)
  return [int(order[i]) for i in picks]


def _previous_overlaps(boxes1, boxes2, iou_threshold):
  return ~(boxes_lib.box_iou_x1y1x2y2(boxes1, boxes2) <= iou_threshold)


def _previous_resolve_block(candidate, overlaps_earlier):
  def step(state):
    keep, _ = state
    new_keep = candidate & ~jnp.any(overlaps_earlier & keep[:, None], axis=0)
    return new_keep, jnp.any(new_keep != keep)

  keep, _ = jax.lax.while_loop(lambda state: state[1], step, (candidate, jnp.array(True)))
  return keep


@functools.partial(jax.jit, static_argnames=("max_output_size", "block_size"))
def previous_nms(boxes, scores, iou_threshold, max_output_size, valid=None, block_size=256):
  """The previous ``ops.nms`` verbatim (one image): a full stable sort, then blocks of
  ``block_size`` boxes, each dropped against the picks and resolved by the fixed point
  ``keep[j] = candidate[j] and no kept i < j overlaps j`` (nested while loops)."""
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
    by_picks = (_previous_overlaps(block_boxes, picked_boxes, iou_threshold)
                & (slots < count)[None, :])
    candidate &= ~jnp.any(by_picks, axis=1)
    by_block = _previous_overlaps(block_boxes, block_boxes, iou_threshold) & earlier
    keep = _previous_resolve_block(candidate, by_block)
    slot = count + jnp.cumsum(keep) - 1
    slot = jnp.where(keep & (slot < max_output_size), slot, max_output_size)
    picks = picks.at[slot].set(block_order, mode="drop")
    picked_boxes = picked_boxes.at[slot].set(block_boxes, mode="drop")
    count = jnp.minimum(count + jnp.sum(keep, dtype=jnp.int32), max_output_size)
    return b + 1, count, picked_boxes, picks

  init = (jnp.int32(0), jnp.int32(0), jnp.zeros((max_output_size, 4), jnp.float32), picks)
  _, count, _, picks = jax.lax.while_loop(has_work, process_block, init)
  return picks, count


def hard_case(rng, n):
  """Boxes, scores and an optional valid mask built to break shortcuts: score ties,
  duplicate boxes, zero- and negative-area boxes (NaN IoU), integer coordinates (IoU
  exactly at a threshold), +-0, +-inf and NaN scores, chains of shifted boxes."""
  if rng.random() < 0.3:  # a chain: each box overlaps the next, scores falling along it
    x1 = np.cumsum(rng.uniform(0.5, 4.0, n)) % 400
    y1 = rng.uniform(0, 10, n)
    size = rng.uniform(8, 20, (n, 2))
    boxes = np.stack([x1, y1, x1 + size[:, 0], y1 + size[:, 1]], 1).astype(np.float32)
    scores = -np.arange(n, dtype=np.float32) // int(rng.choice([1, 3]))
  else:
    boxes, _ = random_boxes(rng, n, num_clusters=int(rng.integers(1, 8)),
                            span=float(rng.choice([20.0, 200.0])))
    levels = int(rng.choice([2, 5, n + 1]))
    scores = rng.integers(0, levels, n).astype(np.float32)  # many ties unless levels > n
    scores = scores / np.float32(levels) - np.float32(0.5)
  if rng.random() < 0.7:  # exact duplicates
    boxes[rng.integers(0, n, n // 4)] = boxes[rng.integers(0, n, n // 4)]
  if rng.random() < 0.4:  # degenerate: inclusive width x2 - x1 + 1 of 0 or less
    bad = rng.integers(0, n, max(1, n // 10))
    boxes[bad, 2] = boxes[bad, 0] - rng.choice(np.float32([1, 2, 5]), len(bad))
  if rng.random() < 0.5:  # whole pixels
    boxes = np.round(boxes)
  if rng.random() < 0.5:
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan], np.float32)
    hit = rng.integers(0, n, max(1, n // 8))
    scores[hit] = special[rng.integers(0, len(special), len(hit))]
  valid = rng.random(n) < 0.8 if rng.random() < 0.5 else None
  return boxes, scores.astype(np.float32), valid


@pytest.mark.parametrize("threshold, expected_1based", [
    (0.7, [7, 5, 4, 3, 2, 1]),
    (0.5, [7, 5, 3, 1]),
])
def test_lua_vectors(threshold, expected_1based):
  idx, count = nms(LUA_BOXES[:, :4], LUA_BOXES[:, 4], threshold, 7)
  expected = [i - 1 for i in expected_1based]
  assert int(count) == len(expected)
  np.testing.assert_array_equal(idx, padded(expected, 7))


def test_lua_vectors_rescored():
  scores = LUA_BOXES[:, 4].copy()
  scores[0], scores[5] = 2.5, 10
  idx, count = nms(LUA_BOXES[:, :4], scores, 0.7, 7)
  expected = [i - 1 for i in [6, 5, 3, 1, 2]]
  assert int(count) == 5
  np.testing.assert_array_equal(idx, padded(expected, 7))


def test_lua_vectors_agree_with_reference():
  assert reference_nms(LUA_BOXES[:, :4], LUA_BOXES[:, 4], 0.7) == [6, 4, 3, 2, 1, 0]
  assert reference_nms(LUA_BOXES[:, :4], LUA_BOXES[:, 4], 0.5) == [6, 4, 2, 0]


@pytest.mark.parametrize("block_size", [16, 256])
@pytest.mark.parametrize("max_output_size", [10, 300])
def test_random_sets_match_reference(block_size, max_output_size):
  rng = np.random.default_rng(block_size + max_output_size)
  n = 200
  for trial in range(12):
    boxes, scores = random_boxes(rng, n)
    threshold = (0.3, 0.5, 0.7, 0.9)[trial % 4]
    idx, count = nms(boxes, scores, threshold, max_output_size, block_size=block_size)
    expected = reference_nms(boxes, scores, threshold, max_output_size)
    assert int(count) == len(expected)
    np.testing.assert_array_equal(idx, padded(expected, max_output_size))


def test_max_output_size_truncates_the_same_sequence():
  boxes, scores = random_boxes(np.random.default_rng(3), 120)
  full, n_full = nms(boxes, scores, 0.5, 120)
  short, n_short = nms(boxes, scores, 0.5, 7)
  assert int(n_full) > 7 and int(n_short) == 7
  np.testing.assert_array_equal(short, full[:7])


def test_padding_with_minus_one():
  boxes, scores = random_boxes(np.random.default_rng(4), 30, num_clusters=2, span=20.0)
  idx, count = nms(boxes, scores, 0.3, 50)
  count = int(count)
  assert 0 < count < 30
  assert np.all(np.asarray(idx[count:]) == -1)
  assert np.all(np.asarray(idx[:count]) >= 0)
  assert len(set(np.asarray(idx[:count]).tolist())) == count


def test_valid_mask_equals_nms_on_the_valid_subset():
  rng = np.random.default_rng(5)
  for _ in range(5):
    boxes, scores = random_boxes(rng, 150)
    valid = rng.random(150) < 0.6
    subset = np.flatnonzero(valid)
    idx, count = nms(boxes, scores, 0.5, 150, valid=valid, block_size=32)
    expected = [int(subset[i]) for i in reference_nms(boxes[subset], scores[subset], 0.5)]
    assert int(count) == len(expected)
    np.testing.assert_array_equal(idx, padded(expected, 150))


def test_invalid_box_neither_picked_nor_suppressing():
  boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
  scores = np.array([3, 2, 1], np.float32)
  idx, count = nms(boxes, scores, 0.7, 3)
  np.testing.assert_array_equal(idx, [0, 2, -1])
  idx, count = nms(boxes, scores, 0.7, 3, valid=np.array([False, True, True]))
  np.testing.assert_array_equal(idx, [1, 2, -1])
  assert int(count) == 2


def test_threshold_is_inclusive_keep():
  # Inclusive 3x1 boxes x in [0, 2] and [1, 3]: inter 2, union 3 + 3 - 2 = 4, IoU 0.5 exactly.
  boxes = np.array([[0, 0, 2, 0], [1, 0, 3, 0]], np.float32)
  scores = np.array([2, 1], np.float32)
  idx, count = nms(boxes, scores, 0.5, 2)  # IoU 0.5 <= 0.5: kept.
  np.testing.assert_array_equal(idx, [0, 1])
  idx, count = nms(boxes, scores, 0.49, 2)  # IoU 0.5 > 0.49: suppressed.
  np.testing.assert_array_equal(idx, [0, -1])


def test_nan_iou_suppresses():
  # Inclusive width x2 - x1 + 1 = 0: two such boxes have union 0 and IoU NaN,
  # which fails the original's `le` mask, so the second one is dropped.
  boxes = np.array([[5, 5, 4, 4], [5, 5, 4, 4], [20, 20, 30, 30]], np.float32)
  scores = np.array([3, 2, 1], np.float32)
  assert reference_nms(boxes, scores, 0.7) == [0, 2]
  idx, count = nms(boxes, scores, 0.7, 3)
  np.testing.assert_array_equal(idx, [0, 2, -1])


def test_score_ties_lower_index_first():
  boxes = np.array([[0, 0, 9, 9], [100, 0, 109, 9], [0, 0, 9, 9], [200, 0, 209, 9]], np.float32)
  scores = np.array([1, 2, 1, 2], np.float32)
  idx, count = nms(boxes, scores, 0.7, 4)
  # Scores 2 first (indices 1, 3), then index 0, which suppresses its copy 2.
  np.testing.assert_array_equal(idx, [1, 3, 0, -1])


def test_block_size_must_be_positive():
  with pytest.raises(ValueError, match="block_size must be positive"):
    nms(np.zeros((4, 4), np.float32), np.zeros((4,), np.float32), 0.7, 2, block_size=0)


def test_empty_input():
  idx, count = nms(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), 0.7, 5)
  np.testing.assert_array_equal(idx, [-1] * 5)
  assert int(count) == 0


def test_no_recompilation_for_new_values():
  rng = np.random.default_rng(6)
  boxes, scores = random_boxes(rng, 64)
  valid = np.ones(64, bool)
  nms(boxes, scores, 0.7, 20, valid=valid)
  size = nms._cache_size()
  for threshold in (0.3, 0.6):
    boxes, scores = random_boxes(rng, 64)
    valid = rng.random(64) < 0.5
    jax.block_until_ready(nms(boxes, scores, threshold, 20, valid=valid))
  assert nms._cache_size() == size


# (n, max_output_size, block_size): one compile each; blocks of 32 or 40 boxes give
# several blocks (the later-block loop, a ragged last block), 2,048 one block.
HARD_SHAPES = [(1, 1, 2048), (5, 3, 2048), (37, 37, 32), (200, 7, 2048), (200, 200, 40),
               (300, 60, 64), (300, 300, 2048)]


@pytest.mark.parametrize("n, max_output_size, block_size", HARD_SHAPES)
def test_hard_cases_match_previous_implementation_and_greedy(n, max_output_size, block_size):
  rng = np.random.default_rng(n * 1000 + max_output_size + block_size)
  for trial in range(12):
    boxes, scores, valid = hard_case(rng, n)
    threshold = float(rng.choice([0.0, 0.3, 0.5, 0.7, 0.9, 1.0, 2.0, -0.1]))
    idx, count = nms(boxes, scores, threshold, max_output_size, valid=valid,
                     block_size=block_size)
    before, before_count = previous_nms(boxes, scores, threshold, max_output_size, valid=valid)
    expected = greedy_nms(boxes, scores, threshold, max_output_size, valid)
    assert int(before_count) == len(expected), trial
    np.testing.assert_array_equal(before, padded(expected, max_output_size), err_msg=str(trial))
    assert int(count) == int(before_count), trial
    np.testing.assert_array_equal(idx, before, err_msg=str(trial))


def test_greedy_reference_agrees_with_the_original_loop():
  boxes, scores = random_boxes(np.random.default_rng(11), 150)
  for threshold in (0.3, 0.7):
    assert greedy_nms(boxes, scores, threshold, 40) == reference_nms(boxes, scores, threshold, 40)


def test_score_order_of_special_values():
  # The stable sort of -scores: -0 equals 0, NaN after -inf, ties to the lower index.
  scores = np.array([0, -0.0, np.nan, -np.inf, -0.0, np.inf, np.nan, -np.inf, 1, 0, -1],
                    np.float32)
  boxes = np.tile(np.array([[0, 0, 9, 9]], np.float32), (len(scores), 1))
  boxes[:, ::2] += 100 * np.arange(len(scores), dtype=np.float32)[:, None]  # no overlaps
  idx, count = nms(boxes, scores, 0.5, len(scores), block_size=4)
  assert int(count) == len(scores)
  np.testing.assert_array_equal(idx, np.argsort(-scores, kind="stable"))
  np.testing.assert_array_equal(idx, [5, 8, 0, 1, 4, 9, 10, 3, 7, 2, 6])


def test_batched_calls_equal_one_image_at_a_time():
  rng = np.random.default_rng(12)
  cases = [hard_case(rng, 120) for _ in range(6)]
  boxes = np.stack([c[0] for c in cases])
  scores = np.stack([c[1] for c in cases])
  valid = np.stack([np.ones(120, bool) if c[2] is None else c[2] for c in cases])
  batched, counts = nms(boxes.reshape(2, 3, 120, 4), scores.reshape(2, 3, 120), 0.5, 50,
                        valid=valid.reshape(2, 3, 120), block_size=64)
  assert batched.shape == (2, 3, 50) and counts.shape == (2, 3)
  mapped, mapped_counts = jax.vmap(
      lambda b, s, v: nms(b, s, 0.5, 50, valid=v, block_size=64))(boxes, scores, valid)
  for k in range(6):
    one, one_count = nms(boxes[k], scores[k], 0.5, 50, valid=valid[k], block_size=64)
    np.testing.assert_array_equal(batched.reshape(6, 50)[k], one)
    np.testing.assert_array_equal(mapped[k], one)
    assert int(counts.reshape(6)[k]) == int(one_count) == int(mapped_counts[k])


def test_block_size_changes_the_trips_only():
  boxes, scores = random_boxes(np.random.default_rng(13), 600, num_clusters=20, span=400.0)
  results = [nms_with_trips(boxes, scores, 0.5, 250, block_size=b) for b in (32, 100, 256, 600)]
  for idx, count, _ in results[1:]:
    np.testing.assert_array_equal(idx, results[0][0])
    assert int(count) == int(results[0][1])
  trips = [int(t) for _, _, t in results]
  assert trips[-1] < trips[0]  # one block: no block loop


def _ops_benchmark_inputs():
  sys.path.insert(0, BENCHMARKS)
  try:
    import ops as ops_benchmark  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(BENCHMARKS)
  boxes, scores = ops_benchmark.nms_inputs(np.random.default_rng(0))  # `ops.py --seed 0`
  return boxes, scores, ops_benchmark.NMS_THRESHOLD, ops_benchmark.NMS_PICKS


def test_trips_on_the_ops_benchmark_inputs():
  boxes, scores, threshold, picks = _ops_benchmark_inputs()
  assert len(boxes) == 18360 and picks == 1000
  idx, count, trips = nms_with_trips(boxes, scores, threshold, picks)
  before, before_count = previous_nms(boxes, scores, threshold, picks)
  assert int(count) == int(before_count) == picks
  np.testing.assert_array_equal(idx, before)
  assert int(trips) <= MAX_RPN_TRIPS, int(trips)


@pytest.fixture
def recorded_nms(monkeypatch):
  """Replaces ``ops.nms`` (as the model modules call it) by ``nms_with_trips`` and records
  each call's inputs, picks and trips from inside the compiled program (a host callback,
  once per image under ``vmap``): a list of dicts, filled by ``jax.effects_barrier()``."""
  calls = []

  def record(max_output_size, block_size, boxes, scores, threshold, valid, picks, trips):
    calls.append({"boxes": np.asarray(boxes), "scores": np.asarray(scores),
                  "threshold": float(threshold), "valid": np.asarray(valid),
                  "picks": np.asarray(picks), "trips": int(trips),
                  "max_output_size": max_output_size, "block_size": block_size})

  def recording_nms(boxes, scores, iou_threshold, max_output_size, valid=None,
                    block_size=nms_lib.DEFAULT_BLOCK_SIZE):
    picks, count, trips = nms_with_trips(boxes, scores, iou_threshold, max_output_size,
                                         valid, block_size)
    jax.debug.callback(functools.partial(record, max_output_size, block_size), boxes, scores,
                       iou_threshold, valid, picks, trips)
    return picks, count

  monkeypatch.setattr(nms_lib, "nms", recording_nms)
  return calls


def check_recorded_calls(calls):
  """Every recorded call has the previous implementation's picks; -> (RPN trips per image,
  final-NMS trips per batch). The RPN's NMS runs on one image (under ``vmap``), the final
  NMS on the batch."""
  rpn = [c for c in calls if c["boxes"].ndim == 2]
  final = [c for c in calls if c["boxes"].ndim == 3]
  assert len(rpn) + len(final) == len(calls) and rpn and final
  for c in rpn:
    before, _ = previous_nms(c["boxes"], c["scores"], c["threshold"], c["max_output_size"],
                             valid=c["valid"])
    np.testing.assert_array_equal(c["picks"], before)
  for c in final:
    before, _ = jax.vmap(lambda b, s, v, t=c["threshold"], m=c["max_output_size"]:
                         previous_nms(b, s, t, m, valid=v))(c["boxes"], c["scores"], c["valid"])
    np.testing.assert_array_equal(c["picks"], before)
  return [c["trips"] for c in rpn], [c["trips"] for c in final]


def _bundled_batches(batch_size=32):
  """Two batches of the bundled examples in the largest shape bucket (one compile): the
  example of that bucket as ``predict --batch_size 32`` batches it (unused slots zero),
  and all three examples and their mirror images, padded to the bucket."""
  params, config, _ = load_model(predictor.bundled_model_path())
  buckets = [tuple(b) for b in config.buckets]
  examples = [images_lib.prepare_test_image(images_lib.load_rgb(path), config.image_size)
              for path in sorted(glob.glob(os.path.join(predictor.bundled_examples_path(),
                                                        "*.jpg")))]
  assert len(examples) == 3

  def batch(members, bucket):
    images = np.zeros((batch_size,) + bucket + (3,), np.float32)
    sizes = np.tile(np.asarray(bucket, np.int32), (batch_size, 1))
    for k, x in enumerate(members):
      images[k, :x.shape[0], :x.shape[1]] = x
      sizes[k] = x.shape[:2]
    return images, sizes

  largest = max(buckets, key=lambda b: b[0] * b[1])
  alone = [x for x in examples if buckets_lib.pick_bucket(*x.shape[:2], buckets) == largest]
  assert len(alone) == 1
  mixed = (examples + [x[:, ::-1] for x in examples]) * 6
  return params, config, [batch(alone, largest), batch(mixed[:batch_size], largest)]


def test_trips_on_the_bundled_model_examples_at_batch_32(recorded_nms):
  params, config, batches = _bundled_batches()
  detect = jax.jit(lambda p, x, s: detection.detect_with_codes(p, x, s, config, 1)["valid"])
  for images, sizes in batches:
    recorded_nms.clear()
    jax.block_until_ready(detect(params, images, sizes))
    jax.effects_barrier()
    rpn_trips, final_trips = check_recorded_calls(recorded_nms)
    assert len(rpn_trips) == len(images) and len(final_trips) == 1
    assert max(rpn_trips) <= MAX_RPN_TRIPS, rpn_trips
    assert final_trips[0] <= MAX_FINAL_TRIPS, final_trips


@pytest.mark.slow
def test_trips_on_the_benchmark_inputs_with_random_weights(recorded_nms):
  """``benchmarks/model_stages.py``'s ``vgg16`` inputs (random parameters of seed 0, random
  540 x 720 images in the 544 x 720 bucket, 1,000 proposals): the RPN's NMS on 4 images,
  the final NMS on a batch of 32 (those 4 eight times: a batched NMS takes as many trips as
  its slowest image, so the CNN runs on 4 only)."""
  sys.path.insert(0, BENCHMARKS)
  try:
    import model_stages  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(BENCHMARKS)
  config = configs.get_model_config("vgg16")
  config.vocab_size = 10000  # model_stages.py's default for vgg16
  num_proposals, images_run, batch, chunk = 1000, 4, 32, 4
  params = densecap.init_params(config, jax.random.key(0))
  backbone, proposals, pool, recognize, _ = model_stages.stage_functions(config, num_proposals)

  @jax.jit
  def detect(params, images, sizes):
    (features,) = backbone(params, images, sizes)
    boxes, valid, feature_sizes = proposals(params, features, sizes, config.rpn_nms_thresh)
    (pooled,) = pool(features, boxes, sizes, feature_sizes)
    _, logits, transforms = recognize(params, pooled)
    return boxes_lib.apply_box_transform(boxes, transforms), logits, valid

  parts = []
  for start in range(0, images_run, chunk):
    images, sizes = zip(*(model_stages.random_image(np.random.default_rng(i), (544, 720),
                                                    (540, 720))
                          for i in range(start, start + chunk)))
    parts.append(jax.device_get(detect(params, np.concatenate(images), np.concatenate(sizes))))
  final_boxes, logits, valid = (np.concatenate(x * (batch // images_run)) for x in zip(*parts))
  final = jax.jit(lambda b, l, v: detection.final_nms(b, l, v, config.final_nms_thresh)[1])
  jax.block_until_ready(final(final_boxes, logits, valid))
  jax.effects_barrier()
  rpn_trips, final_trips = check_recorded_calls(recorded_nms)
  assert len(rpn_trips) == images_run and len(final_trips) == 1
  assert max(rpn_trips) <= MAX_RPN_TRIPS, rpn_trips
  assert final_trips[0] <= MAX_FINAL_TRIPS, final_trips
