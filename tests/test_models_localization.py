"""Tests for the localization layer helpers and the recognition network."""

import jax
import jax.numpy as jnp
import numpy as np

from densecap_jax.models import localization as loc
from densecap_jax.models import recognition
from densecap_jax.ops import anchors as anchors_lib


def test_anchor_major_is_the_original_flat_order():
  # Channel 4a + d at cell (r, c) holds 1000a + 100r + 10c + d.
  k, h, w, d = 3, 2, 4, 4
  a, r, c, dd = np.meshgrid(np.arange(k), np.arange(h), np.arange(w), np.arange(d),
                            indexing="ij")
  values = 1000 * a + 100 * r + 10 * c + dd  # (k, h, w, d)
  maps = values.transpose(1, 2, 0, 3).reshape(1, h, w, k * d)
  flat = np.asarray(loc.anchor_major(jnp.asarray(maps), k))[0]
  for n in range(k * h * w):
    aa, rest = divmod(n, h * w)
    rr, cc = divmod(rest, w)
    np.testing.assert_array_equal(flat[n], 1000 * aa + 100 * rr + 10 * cc + np.arange(d))


def test_rpn_anchors_follow_the_flat_order():
  sizes = anchors_lib.VGG16_ANCHOR_SIZES
  anchors = np.asarray(loc.rpn_anchors(3, 5, sizes, anchors_lib.VGG16_FIELD_CENTERS))
  assert anchors.shape == (12 * 15, 4)
  for n in (0, 7, 15, 16, 100, 179):
    a, rest = divmod(n, 15)
    r, c = divmod(rest, 5)
    np.testing.assert_array_equal(anchors[n], [8.5 + 16 * c, 8.5 + 16 * r, *sizes[a]])


def test_scaled_anchor_sizes():
  np.testing.assert_allclose(loc.scaled_anchor_sizes([[45, 90], [512, 512]], 0.5),
                             [[22.5, 45], [256, 256]])


def test_cell_mask():
  mask = np.asarray(loc.cell_mask(jnp.array([[2, 3], [1, 1]]), 2, 4, 2))
  cells0 = np.array([[1, 1, 1, 0], [1, 1, 1, 0]], bool).ravel()
  cells1 = np.array([[1, 0, 0, 0], [0, 0, 0, 0]], bool).ravel()
  np.testing.assert_array_equal(mask, [np.tile(cells0, 2), np.tile(cells1, 2)])


def test_gather_rows_gradient_comes_from_last_copy_only():
  x = jnp.arange(12.0).reshape(4, 3)
  index = jnp.array([2, 0, 2, 3, 2])
  weights = jnp.arange(1.0, 6.0)[:, None] * jnp.ones((1, 3))
  out, vjp = jax.vjp(lambda x: loc.gather_rows(x, index), x)
  np.testing.assert_array_equal(out, np.asarray(x)[[2, 0, 2, 3, 2]])
  grad = np.asarray(vjp(weights)[0])
  np.testing.assert_array_equal(grad[:, 0], [2.0, 0.0, 5.0, 4.0])


def test_propose_clips_filters_and_sorts():
  # Image 40 x 60 (H x W); boxes in xcycwh.
  boxes = jnp.array([
      [20.0, 20.0, 10.0, 10.0],   # inside, low score
      [21.0, 20.0, 10.0, 10.0],   # overlaps box 0 (IoU > 0.7), higher score
      [50.0, 30.0, 30.0, 10.0],   # sticks out on the right: clipped
      [30.0, 20.0, 1.0, 5.0],     # degenerate: invalid after clipping
      [10.0, 10.0, 6.0, 6.0],     # padding cell
  ])
  logits = jnp.array([0.5, 2.0, 1.0, 5.0, 9.0])
  scores = jnp.stack([logits, jnp.zeros_like(logits)], axis=1)
  cell_valid = jnp.array([True, True, True, True, False])
  proposals, valid = loc.propose(boxes, scores, cell_valid, jnp.array([40, 60]), 0.7, 4)
  np.testing.assert_array_equal(valid, [True, True, False, False])
  # Box 1 (clipped: w, h lose 1), then box 2 clipped to x2 = 60.
  x1 = 50 - 29 / 2
  np.testing.assert_allclose(proposals[:2], [[21.0, 20.0, 9.0, 9.0],
                                             [(x1 + 60) / 2, 30.0, 60 - x1, 9.0]])
  np.testing.assert_array_equal(proposals[2:], 0.0)


def _sample_inputs():
  anchors = jnp.asarray(loc.rpn_anchors(2, 2, [[16, 16], [24, 24]], (8.5, 8.5, 16.0, 16.0)))
  transforms = jnp.zeros_like(anchors)
  scores = jnp.zeros((anchors.shape[0], 2))
  gt_boxes = jnp.array([[8.5, 8.5, 16.0, 16.0], [24.5, 24.5, 24.0, 24.0], [0.0, 0.0, 0.0, 0.0]])
  gt_labels = jnp.array([[1, 2, 0], [3, 0, 0], [0, 0, 0]], jnp.int32)
  gt_mask = jnp.array([True, True, False])
  return anchors, transforms, scores, gt_boxes, gt_labels, gt_mask


def test_sample_rois_positives_first_with_matched_targets():
  anchors, transforms, scores, gt_boxes, gt_labels, gt_mask = _sample_inputs()
  cell_valid = jnp.ones((anchors.shape[0],), bool)
  sample = loc.sample_rois(jax.random.key(0), anchors, anchors, transforms, scores, cell_valid,
                           jnp.array([32, 32]), gt_boxes, gt_labels, gt_mask, num_samples=6)
  num_pos = int(sample.num_pos)
  # Anchor 0 (cell 0, 16 px) matches GT 0 exactly; anchor 7 (cell 3, 24 px) matches GT 1.
  assert num_pos == 2
  np.testing.assert_array_equal(sample.is_pos, [True, True, False, False, False, False])
  matched = {tuple(np.asarray(b)): tuple(np.asarray(t))
             for b, t in zip(sample.anchors[:2], sample.target_boxes[:2])}
  assert matched == {(8.5, 8.5, 16.0, 16.0): (8.5, 8.5, 16.0, 16.0),
                     (24.5, 24.5, 24.0, 24.0): (24.5, 24.5, 24.0, 24.0)}
  labels = {tuple(np.asarray(b))[2]: tuple(np.asarray(l))
            for b, l in zip(sample.anchors[:2], sample.target_labels[:2])}
  assert labels == {16.0: (1, 2, 0), 24.0: (3, 0, 0)}
  np.testing.assert_array_equal(sample.target_labels[2:], 0)
  np.testing.assert_array_equal(sample.boxes, sample.anchors)


def test_sample_rois_never_picks_padding_cells():
  anchors, transforms, scores, gt_boxes, gt_labels, gt_mask = _sample_inputs()
  # Cell 3 (row 1, col 1) is padding: its 24-px anchor (index 7) must not be positive.
  cell_valid = jnp.asarray(np.tile([True, True, True, False], 2))
  for seed in range(3):
    sample = loc.sample_rois(jax.random.key(seed), anchors, anchors, transforms, scores,
                             cell_valid, jnp.array([32, 32]), gt_boxes, gt_labels, gt_mask,
                             num_samples=6, remove_outbounds_boxes=False)
    picked = np.asarray(sample.anchors)
    assert not np.any((picked[:, 0] == 24.5) & (picked[:, 1] == 24.5)), seed


def test_sample_rois_no_negatives_fallback_skips_padding_cells():
  # A 32 x 32 image zero-padded to a 2 x 2 feature bucket whose cell 3 is
  # padding. Ground truth covers the three real 16-px anchors (all positive);
  # every 24-px anchor reaches outside the image, so there is no negative and
  # the fallback takes the non-positive boxes: the real 24-px anchors 4-6,
  # never the padding cell's anchors 3 and 7.
  anchors, transforms, scores, _, _, _ = _sample_inputs()
  cell_valid = jnp.asarray(np.tile([True, True, True, False], 2))
  gt_boxes = anchors[:3]
  gt_labels = jnp.array([[1, 0], [2, 0], [3, 0]], jnp.int32)
  gt_mask = jnp.ones((3,), bool)
  for seed in range(5):
    sample = loc.sample_rois(jax.random.key(seed), anchors, anchors, transforms, scores,
                             cell_valid, jnp.array([32, 32]), gt_boxes, gt_labels, gt_mask,
                             num_samples=8)
    picked = np.asarray(sample.anchors)
    negatives = picked[3:]
    assert not np.any((negatives[:, 0] == 24.5) & (negatives[:, 1] == 24.5)), seed
    assert np.all(negatives[:, 2] == 24.0), seed
    assert int(sample.num_pos) == 3 and bool(sample.neg_with_replacement)
    np.testing.assert_array_equal(np.sort(picked[:3, 0]), [8.5, 8.5, 24.5])
    assert np.all(picked[:3, 2] == 16.0)


def test_flatten_chw_is_caffe_order():
  x = np.random.default_rng(0).normal(size=(2, 7, 7, 3)).astype(np.float32)
  flat = np.asarray(recognition.flatten_chw(jnp.asarray(x)))
  c, i, j = 2, 3, 5
  np.testing.assert_array_equal(flat[:, c * 49 + i * 7 + j], x[:, i, j, c])


def test_recognition_with_torch_layout_fc6_weights():
  rng = np.random.default_rng(1)
  c, fc = 3, 8
  net = recognition.RecognitionNetwork(fc_dim=fc, drop_prob=0.5)
  feats_nchw = rng.normal(size=(4, c, 7, 7)).astype(np.float32)
  params = net.init(jax.random.key(0), jnp.zeros((1, 7, 7, c)))
  torch_fc6 = rng.normal(size=(fc, c * 49)).astype(np.float32)  # (out, in) as in Torch.
  params["params"]["fc6"]["kernel"] = jnp.asarray(torch_fc6.T)
  codes, logits, transforms = net.apply(params, jnp.asarray(feats_nchw.transpose(0, 2, 3, 1)))
  fc6_bias = np.asarray(params["params"]["fc6"]["bias"])
  fc6 = np.maximum(feats_nchw.reshape(4, -1) @ torch_fc6.T + fc6_bias, 0)
  p7 = params["params"]["fc7"]
  expected = np.maximum(fc6 @ np.asarray(p7["kernel"]) + np.asarray(p7["bias"]), 0)
  np.testing.assert_allclose(codes, expected, rtol=1e-4, atol=1e-4)
  assert logits.shape == (4,)
  np.testing.assert_array_equal(transforms, 0.0)  # box_reg starts at zero (§5).


def test_recognition_dropout_only_in_training():
  net = recognition.RecognitionNetwork(fc_dim=64, drop_prob=0.5)
  x = jnp.ones((2, 7, 7, 2))
  params = net.init(jax.random.key(0), x)
  test_codes = net.apply(params, x)[0]
  np.testing.assert_array_equal(test_codes, net.apply(params, x)[0])
  train_codes = net.apply(params, x, True, rngs={"dropout": jax.random.key(1)})[0]
  assert np.any(np.asarray(train_codes) == 0) and not np.allclose(train_codes, test_codes)


def test_sample_rois_on_anchors_matches_the_anchors_and_pools_the_predicted_boxes():
  """A transform that moved anchor 0 off its object: on the predicted boxes it is no longer a
  positive; on the anchors it still is, with its predicted box gathered for pooling."""
  anchors, transforms, scores, gt_boxes, gt_labels, gt_mask = _sample_inputs()
  moved = transforms.at[0].set(jnp.array([1.0, 0.0, 0.0, 0.0]))  # shifted one width right
  boxes = anchors.at[0].set(jnp.array([24.5, 8.5, 16.0, 16.0]))
  cell_valid = jnp.ones((anchors.shape[0],), bool)

  def positives(on_anchors):
    sample = loc.sample_rois(jax.random.key(0), boxes, anchors, moved, scores, cell_valid,
                             jnp.array([32, 32]), gt_boxes, gt_labels, gt_mask, num_samples=6,
                             on_anchors=on_anchors)
    pos = np.asarray(sample.is_pos)
    return ({tuple(np.asarray(a)) for a in sample.anchors[pos]},
            {tuple(np.asarray(b)) for b in sample.boxes[pos]})

  on_boxes_anchors, _ = positives(False)
  on_anchors_anchors, on_anchors_boxes = positives(True)
  assert (8.5, 8.5, 16.0, 16.0) in on_anchors_anchors
  assert (24.5, 8.5, 16.0, 16.0) in on_anchors_boxes  # pooled where the RPN put it
  assert on_anchors_anchors == {(8.5, 8.5, 16.0, 16.0), (24.5, 24.5, 24.0, 24.0)}
  assert (8.5, 8.5, 16.0, 16.0) not in on_boxes_anchors
