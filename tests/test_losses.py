"""Tests for the DenseCap losses against NumPy computations of §4.1."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from densecap_jax.models import losses


def _np_smooth_l1(d):
  return np.where(np.abs(d) < 1, 0.5 * d * d, np.abs(d) - 0.5)


def _np_invert(anchors, targets):
  xa, ya, wa, ha = anchors.T
  xt, yt, wt, ht = targets.T
  return np.stack([(xt - xa) / wa, (yt - ya) / ha, np.log(wt / wa), np.log(ht / ha)], axis=1)


def test_smooth_l1_values_by_hand():
  x = jnp.array([-2.0, -1.0, -0.5, 0.0, 0.5, 0.9, 1.0, 3.0])
  np.testing.assert_allclose(losses.smooth_l1(x),
                             [1.5, 0.5, 0.125, 0.0, 0.125, 0.405, 0.5, 2.5], rtol=1e-6)


def test_rpn_objectness_is_mean_over_pos_plus_mean_over_neg():
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(6, 2)).astype(np.float32) * 3
  is_pos = np.array([1, 1, 0, 0, 0, 0], bool)
  log_p = scores - np.log(np.exp(scores).sum(1, keepdims=True))
  expected = -log_p[:2, 0].mean() - log_p[2:, 1].mean()
  got = losses.rpn_objectness_loss(jnp.asarray(scores), jnp.asarray(is_pos),
                                   jnp.asarray(~is_pos))
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_rpn_box_reg_masks_large_targets_but_counts_them():
  anchors = np.array([[50, 50, 20, 20], [50, 50, 20, 20], [50, 50, 20, 20], [50, 50, 20, 20]],
                     np.float32)
  targets = np.array([[55, 48, 30, 18], [300, 50, 20, 20], [10, 10, 5, 5], [0, 0, 0, 0]],
                     np.float32)  # row 1: tx = 12.5 > 10 (masked); row 3: padding.
  transforms = np.array([[0.1, -0.3, 0.2, 0.0], [2.0, 2.0, 2.0, 2.0], [1.0, 0.0, -3.0, 0.5],
                         [5.0, 5.0, 5.0, 5.0]], np.float32)
  is_pos = np.array([True, True, True, False])
  t = _np_invert(anchors[[0, 2]], targets[[0, 2]])
  expected = _np_smooth_l1(transforms[[0, 2]] - t).sum() / (3 * 4)
  got = losses.rpn_box_reg_loss(jnp.asarray(transforms), jnp.asarray(anchors),
                                jnp.asarray(targets), jnp.asarray(is_pos))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  grad = jax.grad(lambda t: losses.rpn_box_reg_loss(t, anchors, targets, is_pos))(
      jnp.asarray(transforms))
  np.testing.assert_array_equal(np.asarray(grad)[[1, 3]], 0.0)
  assert np.all(np.isfinite(grad))


def test_end_objectness_logistic_values_and_stability():
  logits = np.array([2.0, -1.0, 0.5, -100.0, 100.0, 0.0], np.float32)
  is_pos = np.array([1, 1, 0, 1, 0, 0], bool)
  per_row = np.where(is_pos, np.log1p(np.exp(-logits.astype(np.float64))),
                     np.log1p(np.exp(-logits.astype(np.float64))) + logits)
  got = losses.end_objectness_loss(jnp.asarray(logits), jnp.asarray(is_pos))
  np.testing.assert_allclose(got, per_row.mean(), rtol=1e-6)
  assert abs(per_row[3] - 100) < 1e-6 and abs(per_row[4] - 100) < 1e-6
  grad = jax.grad(losses.end_objectness_loss)(jnp.asarray(logits), jnp.asarray(is_pos))
  sigmoid = 1 / (1 + np.exp(-logits.astype(np.float64)))
  np.testing.assert_allclose(grad, (sigmoid - is_pos) / len(logits), rtol=1e-5, atol=1e-7)


def _end_box_reg_case():
  roi = np.array([[40, 50, 20, 30], [60, 60, 10, 10], [30, 30, 8, 8], [70, 70, 5, 5]],
                 np.float32)
  gt = np.array([[45, 48, 26, 24], [900, 60, 10, 10], [31, 29, 10, 6], [0, 0, 0, 0]],
                np.float32)  # row 1: |tx| > 10 (masked); row 3: negative with padding GT.
  trans = np.array([[0.2, -0.1, 0.1, 0.3], [1.0, 1.0, 1.0, 1.0], [-1.5, 0.3, 0.0, 2.0],
                    [0.4, 0.4, 0.4, 0.4]], np.float32)
  is_pos = np.array([True, True, True, False])
  return roi, trans, gt, is_pos


def test_end_box_reg_value():
  roi, trans, gt, is_pos = _end_box_reg_case()
  t = _np_invert(roi[[0, 2]], gt[[0, 2]])
  expected = _np_smooth_l1(trans[[0, 2]] - t).sum() / 12
  np.testing.assert_allclose(losses.end_box_reg_loss(roi, trans, gt, is_pos), expected,
                             rtol=1e-5)


def test_end_box_reg_gradient_reaches_roi_boxes():
  roi, trans, gt, is_pos = _end_box_reg_case()
  g_roi, g_trans = jax.grad(losses.end_box_reg_loss, argnums=(0, 1))(
      jnp.asarray(roi), jnp.asarray(trans), jnp.asarray(gt), jnp.asarray(is_pos))
  assert np.all(np.isfinite(g_roi)) and np.all(np.isfinite(g_trans))
  np.testing.assert_array_equal(np.asarray(g_roi)[[1, 3]], 0.0)
  np.testing.assert_array_equal(np.asarray(g_trans)[[1, 3]], 0.0)

  # Central differences of the NumPy loss w.r.t. the boxes of row 0 and 2.
  def np_loss(r):
    t = _np_invert(r[[0, 2]], gt[[0, 2]].astype(np.float64))
    return _np_smooth_l1(trans[[0, 2]] - t).sum() / 12
  r64 = roi.astype(np.float64)
  for row in (0, 2):
    for k in range(4):
      step = np.zeros_like(r64)
      step[row, k] = 1e-4
      numeric = (np_loss(r64 + step) - np_loss(r64 - step)) / 2e-4
      np.testing.assert_allclose(g_roi[row, k], numeric, rtol=1e-3, atol=1e-6)


def test_captioning_loss_sums_steps_and_divides_by_positives():
  rng = np.random.default_rng(1)
  scores = rng.normal(size=(3, 4, 5)).astype(np.float32)
  targets = np.array([[0, 2, 5, 0], [0, 1, 1, 5], [0, 3, 5, 0]], np.int32)
  is_pos = np.array([True, True, False])
  log_p = scores - np.log(np.exp(scores).sum(-1, keepdims=True))
  total = sum(-log_p[i, t, targets[i, t] - 1] for i in range(2) for t in range(4)
              if targets[i, t] > 0)
  got = losses.captioning_loss(jnp.asarray(scores), jnp.asarray(targets), jnp.asarray(is_pos))
  np.testing.assert_allclose(got, total / 2, rtol=1e-5)


def test_word_presence_loss_is_bag_of_words_cross_entropy_over_positives():
  rng = np.random.default_rng(5)
  scores = rng.normal(size=(3, 6)).astype(np.float32) * 3  # V = 6 words
  labels = np.array([[2, 2, 5, 0], [1, 6, 3, 4], [1, 0, 0, 0]], np.int32)
  is_pos = np.array([True, True, False])
  p = 1 / (1 + np.exp(-scores.astype(np.float64)))
  per_row = []
  for i in range(2):
    words = set(labels[i][labels[i] > 0])
    per_row.append(-sum(np.log(p[i, j - 1]) if j in words else np.log(1 - p[i, j - 1])
                        for j in range(1, 7)))
  got = losses.word_presence_loss(jnp.asarray(scores), jnp.asarray(labels), jnp.asarray(is_pos))
  np.testing.assert_allclose(got, np.mean(per_row), rtol=1e-5)
  none = losses.word_presence_loss(jnp.asarray(scores), jnp.asarray(labels),
                                   jnp.zeros(3, bool))
  assert float(none) == 0.0


def test_weighted_losses_use_released_weights():
  config = ml_collections.ConfigDict(dict(
      mid_objectness_weight=0.1, mid_box_reg_weight=0.05, end_objectness_weight=0.1,
      end_box_reg_weight=0.1, captioning_weight=1.0))
  out = losses.weighted_losses({name: 2.0 for name in losses.LOSS_NAMES}, config)
  assert out == {"mid_objectness_loss": 0.2, "mid_box_reg_loss": 0.1,
                 "end_objectness_loss": 0.2, "end_box_reg_loss": 0.2, "captioning_loss": 2.0}


def test_box_decay_is_identity_with_gradient_w_times_t():
  t = jnp.asarray(np.random.default_rng(2).normal(size=(2, 3, 8)), jnp.float32)
  mask = jnp.asarray([[[1.0], [1.0], [0.0]], [[1.0], [0.0], [0.0]]])
  upstream = jnp.asarray(np.random.default_rng(3).normal(size=t.shape), jnp.float32)
  w = 5e-5
  out, vjp = jax.vjp(lambda x: losses.box_decay(x, w, mask), t)
  np.testing.assert_array_equal(out, t)
  np.testing.assert_allclose(vjp(upstream)[0], upstream + w * mask * t, rtol=1e-6)
  np.testing.assert_allclose(losses.box_decay_loss(t, w, mask),
                             0.5 * w * np.sum(np.asarray(mask) * np.asarray(t) ** 2),
                             rtol=1e-6)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_large_transform_rows_catches_non_finite(bad):
  rows = losses.large_transform_rows(jnp.array([[0.0, 0.0, 0.0, bad], [9.9, -10.0, 0, 0],
                                                [0, 10.01, 0, 0]]))
  np.testing.assert_array_equal(rows, [True, False, True])
