"""Tests for densecap_jax.ops.nms against the original's vectors and a NumPy greedy loop."""

import jax
import numpy as np
import pytest

from densecap_jax.ops.nms import nms

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
