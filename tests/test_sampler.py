"""Tests for densecap_jax.ops.sampler: labelling rules and the sampled layout.

The mask rules are checked against the original's hand-made vectors
(test/BoxSampler_test.lua) and against a NumPy reference of the rules on random
boxes; the draws are checked structurally and statistically, since the
original's test injects its "random" indices.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from densecap_jax.ops.sampler import sample_boxes, sampler_masks


def reference_iou(inputs, targets, clean):
  """Pairwise IoU of xcycwh boxes in float64.

  ``clean=False``: the released BoxIoU (corners with (w-1)/2, no +1 in the
  intersection, areas w*h). ``clean=True``: corners xc +- w/2, areas w*h.
  """
  a = np.asarray(inputs, np.float64)[:, None, :]
  b = np.asarray(targets, np.float64)[None, :, :]

  def corners(x):
    half = x[..., 2:] / 2 if clean else (x[..., 2:] - 1) / 2
    return x[..., :2] - half, x[..., :2] + half

  (a_lo, a_hi), (b_lo, b_hi) = corners(a), corners(b)
  sides = np.maximum(np.minimum(a_hi, b_hi) - np.maximum(a_lo, b_lo), 0)
  inter = sides[..., 0] * sides[..., 1]
  return inter / (a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter)


def reference_masks(inputs, targets, target_mask, low, high, bounds, clean, valid=None):
  """The BoxSampler rules (reference §3.5) with NumPy loops; returns (pos, neg, best, fallback).

  Rows outside ``valid`` (padding cells) are no box at all: never best for a
  target, never positive or negative.
  """
  iou = reference_iou(inputs, targets, clean)
  n = iou.shape[0]
  valid = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
  iou[~valid] = -np.inf
  valid_targets = np.flatnonzero(target_mask)
  pos, neg = np.zeros(n, bool), np.zeros(n, bool)
  best = np.zeros(n, np.int64)
  for i in range(n):
    if valid_targets.size:
      row = iou[i, valid_targets]
      best[i] = valid_targets[int(np.argmax(row))]
      pos[i], neg[i] = row.max() > high, row.max() < low
    else:
      neg[i] = True
    if not valid[i]:
      pos[i] = neg[i] = False
    if bounds is not None:
      xc, yc, w, h = inputs[i]
      x_min, y_min, x_max, y_max = bounds
      if (xc - (w - 1) / 2 < x_min or yc - (h - 1) / 2 < y_min
          or xc + (w - 1) / 2 > x_max or yc + (h - 1) / 2 > y_max):
        pos[i] = neg[i] = False
  for j in valid_targets:
    k = int(np.argmax(iou[:, j]))
    pos[k], neg[k] = True, False
  fallback = not neg.any()
  if fallback:
    neg = ~pos & valid
  return pos, neg, best, fallback


def bits(s):
  return np.array([c == "1" for c in s])


# test/BoxSampler_test.lua inputs (xcycwh), 0/1 masks written as strings.
SIMPLE_INPUTS = np.array([
    [-4, 6, 4, 4], [-6.5, 1.5, 2, 6], [-4.5, -0.5, 6, 6], [-6.5, -6.5, 3, 3],
    [-0.5, -7.5, 3, 3], [7.5, -5.5, 3, 5], [5.5, -3, 6, 3], [4.5, 2, 3, 7],
    [6.5, 5, 6, 3], [4, 5, 3, 5]], np.float32)
SIMPLE_TARGETS = np.array([[-6.5, 1.5, 3, 7], [4.5, 4.5, 3, 5], [5, -2.5, 6, 3]], np.float32)
BOUNDS_INPUTS = SIMPLE_INPUTS.copy()
BOUNDS_INPUTS[4] = [0.5, -7.5, 3, 3]
ANOTHER_INPUTS = np.array([[4, 8, 2, 2], [6.5, 5, 3, 2], [3.5, 1, 3, 4], [8, 8, 2, 2]], np.float32)
ANOTHER_TARGETS = np.array([[4.5, 4, 3, 4]], np.float32)
NONEG_INPUTS = np.array([[3, 10, 2, 2], [7, 6.5, 4, 3], [8, 1.5, 2, 3], [10, 2.5, 2, 3]], np.float32)
NONEG_TARGETS = np.array([[6, 5.5, 4, 3], [9, 1.5, 2, 3]], np.float32)

# (inputs, targets, low, high, bounds, expected pos, expected neg, no-negatives fallback).
# All four expectations assume the continuous IoU; none of them holds against the
# released BoxIoU (reference §12), so they are checked with clean_iou=True only.
LUA_CASES = {
    "simpleTest": (SIMPLE_INPUTS, SIMPLE_TARGETS, 0.2, 0.4, None,
                   "0100001101", "1001110000", False),
    "anotherTest": (ANOTHER_INPUTS, ANOTHER_TARGETS, 0.3, 0.7, None, "0100", "1011", False),
    "boundsTest": (BOUNDS_INPUTS, SIMPLE_TARGETS, 0.2, 0.4, (-1, -9, 9, 8),
                   "0100001101", "0000110000", False),
    "noNegativesTest": (NONEG_INPUTS, NONEG_TARGETS, 0.25, 0.3, (0, 0, 10, 10),
                        "0110", "1001", True),
}


@pytest.mark.parametrize("name", sorted(LUA_CASES))
def test_lua_vectors_with_clean_iou(name):
  inputs, targets, low, high, bounds, pos, neg, fallback = LUA_CASES[name]
  masks = sampler_masks(inputs, targets, None, low, high, bounds, clean_iou=True)
  np.testing.assert_array_equal(masks.pos, bits(pos))
  np.testing.assert_array_equal(masks.neg, bits(neg))
  assert bool(masks.no_negatives) == fallback


@pytest.mark.parametrize("name", sorted(LUA_CASES))
def test_lua_vectors_fail_with_released_iou(name):
  inputs, targets, low, high, bounds, pos, neg, _ = LUA_CASES[name]
  masks = sampler_masks(inputs, targets, None, low, high, bounds)
  assert not (np.array_equal(masks.pos, bits(pos)) and np.array_equal(masks.neg, bits(neg)))
  ref_pos, ref_neg, _, ref_fallback = reference_masks(
      inputs, targets, np.ones(len(targets), bool), low, high, bounds, clean=False)
  np.testing.assert_array_equal(masks.pos, ref_pos)
  np.testing.assert_array_equal(masks.neg, ref_neg)
  assert bool(masks.no_negatives) == ref_fallback


def test_simple_test_positive_targets():
  # simpleTest pairs the sampled positives 7 and 8 (1-based) with targets 3 and 2.
  for clean in (False, True):
    masks = sampler_masks(SIMPLE_INPUTS, SIMPLE_TARGETS, None, 0.2, 0.4, clean_iou=clean)
    np.testing.assert_array_equal(np.asarray(masks.best_target)[[6, 7]], [2, 1])


def test_another_test_with_released_iou_forces_first_input():
  # Released BoxIoU: the target spans x 3.5..5.5, y 2.5..5.5; every input's
  # (w-1)/2 corners only touch it (zero-width intersection), so all IoUs are 0
  # and the "best input" for the target is the first one (argmax tie -> index 0).
  masks = sampler_masks(ANOTHER_INPUTS, ANOTHER_TARGETS, None, 0.3, 0.7)
  np.testing.assert_array_equal(masks.pos, [True, False, False, False])
  np.testing.assert_array_equal(masks.neg, [False, True, True, True])


def test_thresholds_are_strict():
  # Released BoxIoU, hand-worked: target (0, 0, 5, 3) has corners x -2..2,
  # y -1..1 and area 15. Input 0 = the target: inter 4*2 = 8, IoU 8/22 (the
  # best, forced positive). Input 1 shifted by 1 in x: inter 3*2 = 6,
  # IoU 6/24 = 0.25 exactly. Input 2 is far away: IoU 0.
  inputs = np.array([[0, 0, 5, 3], [1, 0, 5, 3], [50, 50, 5, 3]], np.float32)
  targets = np.array([[0, 0, 5, 3]], np.float32)
  at = sampler_masks(inputs, targets, None, 0.25, 0.25)
  np.testing.assert_array_equal(at.pos, [True, False, False])
  np.testing.assert_array_equal(at.neg, [False, False, True])
  around = sampler_masks(inputs, targets, None, 0.26, 0.24)
  np.testing.assert_array_equal(around.pos, [True, True, False])
  np.testing.assert_array_equal(around.neg, [False, True, True])


def random_scene(rng, n, m, m_valid, span=60.0):
  """Input boxes jittered around padded targets, plus background boxes."""
  targets = np.concatenate([rng.uniform(5, span - 5, (m, 2)), rng.uniform(4, 20, (m, 2))], 1)
  near = targets[rng.integers(0, m_valid, n)]
  inputs = near + rng.normal(0, 1, (n, 4)) * np.array([3, 3, 3, 3])
  far = rng.random(n) < 0.4
  inputs[far, :2] = rng.uniform(-10, span + 10, (far.sum(), 2))
  inputs[:, 2:] = np.abs(inputs[:, 2:]) + 2
  mask = np.arange(m) < m_valid
  return inputs.astype(np.float32), targets.astype(np.float32), mask


@pytest.mark.parametrize("clean", [False, True])
@pytest.mark.parametrize("with_bounds", [False, True])
def test_masks_match_reference_on_random_boxes(clean, with_bounds):
  rng = np.random.default_rng(int(clean) * 2 + int(with_bounds))
  bounds = (1.0, 1.0, 60.0, 50.0) if with_bounds else None
  for trial in range(10):
    inputs, targets, target_mask = random_scene(rng, 80, 6, 1 + trial % 6)
    low, high = (0.3, 0.7) if trial % 2 else (0.2, 0.4)
    masks = sampler_masks(inputs, targets, target_mask, low, high, bounds, clean_iou=clean)
    pos, neg, best, fallback = reference_masks(inputs, targets, target_mask, low, high, bounds,
                                               clean)
    np.testing.assert_array_equal(masks.pos, pos)
    np.testing.assert_array_equal(masks.neg, neg)
    np.testing.assert_array_equal(masks.best_target, best)
    assert bool(masks.no_negatives) == fallback


@pytest.mark.parametrize("clean", [False, True])
def test_masks_with_padding_rows_match_reference(clean):
  rng = np.random.default_rng(11 + int(clean))
  bounds = (1.0, 1.0, 60.0, 50.0)
  for trial in range(10):
    inputs, targets, target_mask = random_scene(rng, 80, 6, 1 + trial % 6)
    valid = rng.random(80) < 0.7
    valid[0] = True
    masks = sampler_masks(inputs, targets, target_mask, 0.3, 0.7, bounds, clean_iou=clean,
                          valid=valid)
    pos, neg, best, fallback = reference_masks(inputs, targets, target_mask, 0.3, 0.7, bounds,
                                               clean, valid)
    np.testing.assert_array_equal(masks.pos, pos)
    np.testing.assert_array_equal(masks.neg, neg)
    np.testing.assert_array_equal(masks.best_target[valid], best[valid])
    assert bool(masks.no_negatives) == fallback
    assert not np.any(np.asarray(masks.pos | masks.neg)[~valid])


def test_no_negatives_fallback_skips_padding_rows():
  # noNegativesTest with two padding rows in front: one is a copy of target 0
  # (it would be that target's forced positive), one an in-bounds box far from
  # both targets (it would be a negative). Neither is a box of the image: the
  # rules and the fallback see the four real rows only, as in the Lua test.
  padding = np.array([[6, 5.5, 4, 3], [2, 2, 2, 2]], np.float32)
  inputs = np.concatenate([padding, NONEG_INPUTS])
  valid = np.array([False, False, True, True, True, True])
  masks = sampler_masks(inputs, NONEG_TARGETS, None, 0.25, 0.3, (0, 0, 10, 10), clean_iou=True,
                        valid=valid)
  assert bool(masks.no_negatives)
  np.testing.assert_array_equal(masks.pos, bits("000110"))
  np.testing.assert_array_equal(masks.neg, bits("001001"))
  for seed in range(5):
    out = sample_boxes(jax.random.key(seed), inputs, NONEG_TARGETS, 8, 0.25, 0.3,
                       bounds=(0, 0, 10, 10), clean_iou=True, valid=valid)
    assert int(out.num_pos) == 2 and bool(out.neg_with_replacement)
    np.testing.assert_array_equal(np.sort(out.roi_idx[:2]), [3, 4])
    assert set(np.asarray(out.roi_idx[2:]).tolist()) <= {2, 5}, seed


def test_all_valid_rows_change_nothing():
  rng = np.random.default_rng(12)
  bounds = (1.0, 1.0, 60.0, 50.0)
  for trial in range(4):
    inputs, targets, target_mask = random_scene(rng, 50, 6, 1 + trial)
    valid = np.ones(50, bool)
    for a, b in zip(sampler_masks(inputs, targets, target_mask, 0.3, 0.7, bounds),
                    sampler_masks(inputs, targets, target_mask, 0.3, 0.7, bounds, valid=valid)):
      np.testing.assert_array_equal(a, b)
    key = jax.random.key(trial)
    for a, b in zip(sample_boxes(key, inputs, targets, 16, target_mask=target_mask, bounds=bounds),
                    sample_boxes(key, inputs, targets, 16, target_mask=target_mask, bounds=bounds,
                                 valid=valid)):
      np.testing.assert_array_equal(a, b)


def test_no_valid_target_gives_no_positive():
  inputs, targets, _ = random_scene(np.random.default_rng(7), 20, 4, 4)
  mask = np.zeros(4, bool)
  masks = sampler_masks(inputs, targets, mask, 0.3, 0.7)
  assert not np.any(masks.pos) and np.all(masks.neg)
  out = sample_boxes(jax.random.key(0), inputs, targets, 8, target_mask=mask)
  assert int(out.num_pos) == 0 and not np.any(out.is_pos)
  assert len(set(np.asarray(out.roi_idx).tolist())) == 8


def check_samples(out, pos, neg, best, num_samples, max_pos):
  """Structural checks of one BoxSamples against reference masks."""
  roi_idx, is_pos = np.asarray(out.roi_idx), np.asarray(out.is_pos)
  num_pos = int(out.num_pos)
  num_neg = num_samples - num_pos
  assert num_pos == min(max_pos, pos.sum())
  np.testing.assert_array_equal(is_pos, np.arange(num_samples) < num_pos)
  positives, negatives = roi_idx[:num_pos], roi_idx[num_pos:]
  assert pos[positives].all() and len(set(positives.tolist())) == num_pos
  assert neg[negatives].all()
  replace = neg.sum() < num_neg
  assert bool(out.neg_with_replacement) == replace
  if not replace:
    assert len(set(negatives.tolist())) == num_neg
  np.testing.assert_array_equal(out.pos_target_idx[:num_pos], best[positives])
  np.testing.assert_array_equal(out.pos_target_idx[num_pos:], 0)


@pytest.mark.parametrize("num_samples", [16, 64])
def test_sample_layout_on_random_boxes(num_samples):
  rng = np.random.default_rng(num_samples)
  bounds = (1.0, 1.0, 60.0, 50.0)
  for trial in range(8):
    inputs, targets, target_mask = random_scene(rng, 50, 6, 1 + trial % 6)
    pos, neg, best, _ = reference_masks(inputs, targets, target_mask, 0.3, 0.7, bounds, False)
    out = sample_boxes(jax.random.key(trial), inputs, targets, num_samples, 0.3, 0.7,
                       target_mask=target_mask, bounds=bounds)
    check_samples(out, pos, neg, best, num_samples, num_samples // 2)


def test_negative_replacement_when_too_few():
  # negativeReplacementTest: 10 inputs, 3 targets, batch size 64.
  rng = np.random.default_rng(8)
  inputs = rng.standard_normal((10, 4)).astype(np.float32)
  targets = rng.standard_normal((3, 4)).astype(np.float32)
  out = sample_boxes(jax.random.key(1), inputs, targets, 64)
  pos, neg, best, _ = reference_masks(inputs, targets, np.ones(3, bool), 0.3, 0.7, None, False)
  assert bool(out.neg_with_replacement)
  check_samples(out, pos, neg, best, 64, 32)


def test_no_negatives_fallback_samples_non_positives():
  out = sample_boxes(jax.random.key(2), NONEG_INPUTS, NONEG_TARGETS, 4, 0.25, 0.3,
                     bounds=(0, 0, 10, 10), clean_iou=True)
  assert bool(out.no_negatives)
  assert int(out.num_pos) == 2
  np.testing.assert_array_equal(np.sort(out.roi_idx[:2]), [1, 2])
  np.testing.assert_array_equal(np.sort(out.roi_idx[2:]), [0, 3])


def test_another_test_sampling():
  # anotherTest: one positive (input 2, 1-based) paired with target 1, and the
  # three remaining boxes fill the batch of 4 as a permutation of {1, 3, 4}.
  out = sample_boxes(jax.random.key(3), ANOTHER_INPUTS, ANOTHER_TARGETS, 4, clean_iou=True)
  assert int(out.num_pos) == 1
  assert int(out.roi_idx[0]) == 1 and int(out.pos_target_idx[0]) == 0
  np.testing.assert_array_equal(np.sort(out.roi_idx[1:]), [0, 2, 3])


def test_draws_are_uniform():
  # 6 positives and 6 negatives among 12 inputs; 2 positive and 2 negative slots.
  targets = np.array([[10 + 40 * j, 10, 10, 10] for j in range(6)], np.float32)
  inputs = np.concatenate([targets, targets + np.array([0, 200, 0, 0], np.float32)])
  trials = 3000
  keys = jax.random.split(jax.random.key(4), trials)
  out = jax.vmap(lambda k: sample_boxes(k, inputs, targets, 4))(keys)
  np.testing.assert_array_equal(out.num_pos, 2)
  pos_counts = np.bincount(np.asarray(out.roi_idx[:, :2]).ravel(), minlength=12)
  neg_counts = np.bincount(np.asarray(out.roi_idx[:, 2:]).ravel(), minlength=12)
  assert pos_counts[6:].sum() == 0 and neg_counts[:6].sum() == 0
  expected = trials * 2 / 6  # 1000 per box; binomial sd ~ 27.
  np.testing.assert_allclose(pos_counts[:6], expected, atol=130)
  np.testing.assert_allclose(neg_counts[6:], expected, atol=130)
  # The first slot is as likely to hold any positive (random draw order).
  first = np.bincount(np.asarray(out.roi_idx[:, 0]), minlength=12)[:6]
  np.testing.assert_allclose(first, trials / 6, atol=110)


def test_vmap_matches_single_calls():
  rng = np.random.default_rng(9)
  scenes = [random_scene(rng, 40, 5, 3) for _ in range(2)]
  inputs = np.stack([s[0] for s in scenes])
  targets = np.stack([s[1] for s in scenes])
  masks = np.stack([s[2] for s in scenes])
  bounds = (np.ones(2, np.float32), np.ones(2, np.float32),
            np.array([60, 55], np.float32), np.array([50, 45], np.float32))
  keys = jax.random.split(jax.random.key(5), 2)
  batched = jax.vmap(lambda k, i, t, m, b: sample_boxes(k, i, t, 16, target_mask=m, bounds=b))(
      keys, inputs, targets, masks, bounds)
  for b in range(2):
    single = sample_boxes(keys[b], inputs[b], targets[b], 16, target_mask=masks[b],
                          bounds=tuple(x[b] for x in bounds))
    for got, want in zip(batched, single):
      np.testing.assert_array_equal(got[b], want)


def test_no_recompilation_for_new_values():
  rng = np.random.default_rng(10)
  inputs, targets, mask = random_scene(rng, 30, 4, 2)
  bounds = tuple(jnp.float32(v) for v in (1, 1, 60, 50))
  sample_boxes(jax.random.key(0), inputs, targets, 8, 0.3, 0.7, target_mask=mask, bounds=bounds)
  size = sample_boxes._cache_size()
  for seed in range(2):
    inputs, targets, mask = random_scene(rng, 30, 4, 3 + seed)
    bounds = tuple(jnp.float32(v) for v in (1, 1, 50 + seed, 40))
    jax.block_until_ready(sample_boxes(jax.random.key(seed), inputs, targets, 8, 0.2 + seed / 10,
                                       0.6, target_mask=mask, bounds=bounds))
  assert sample_boxes._cache_size() == size
