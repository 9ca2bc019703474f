"""Tests for densecap_jax.ops.anchors."""

import numpy as np

from densecap_jax.ops import anchors as A
from densecap_jax.ops import boxes as B


def test_vgg16_constants():
  assert A.VGG16_ANCHOR_SIZES.shape == (12, 2)
  # Reference §3.2 table, (w, h) in order.
  np.testing.assert_array_equal(A.VGG16_ANCHOR_SIZES[[0, 1, 6, 9, 11]],
                                [[45, 90], [90, 45], [181, 362], [362, 724], [512, 512]])
  assert A.VGG16_FIELD_CENTERS == (8.5, 8.5, 16.0, 16.0)


def test_make_anchors_hand_worked():
  sizes = np.array([[10, 20], [30, 40]], np.float32)
  out = A.make_anchors(2, 3, sizes, 8.5, 4.0, 16.0, 8.0)
  assert out.shape == (2, 3, 2, 4) and out.dtype == np.float32
  # Cell (row 1, column 2), anchor 1: (8.5 + 16*2, 4 + 8*1, 30, 40).
  np.testing.assert_allclose(out[1, 2, 1], [40.5, 12.0, 30, 40])
  np.testing.assert_allclose(out[0, 0, 0], [8.5, 4.0, 10, 20])
  np.testing.assert_allclose(out[..., 0], np.broadcast_to((8.5 + 16 * np.arange(3))[None, :, None],
                                                          (2, 3, 2)))
  np.testing.assert_allclose(out[..., 1], np.broadcast_to((4 + 8 * np.arange(2))[:, None, None],
                                                          (2, 3, 2)))


def test_anchors_plus_transform_equals_makeboxes():
  # MakeAnchors_test.lua: anchors in the original's flat order (anchor, row, col)
  # with transforms applied equal the boxes that MakeBoxes computes directly:
  # x = (x0 + sx*c) + tx*w_a, w = w_a*exp(tw).
  height, width, k = 3, 4, 12
  x0, y0, sx, sy = A.VGG16_FIELD_CENTERS
  rng = np.random.default_rng(0)
  trans = rng.standard_normal((k, height, width, 4)).astype(np.float32) * 0.2
  anchors = A.make_anchors(height, width, A.VGG16_ANCHOR_SIZES, x0, y0, sx, sy)
  flat = np.asarray(anchors).transpose(2, 0, 1, 3).reshape(-1, 4)
  got = B.apply_box_transform(flat, trans.reshape(-1, 4))
  a, r, c = np.meshgrid(np.arange(k), np.arange(height), np.arange(width), indexing="ij")
  wa, ha = A.VGG16_ANCHOR_SIZES[a.ravel(), 0], A.VGG16_ANCHOR_SIZES[a.ravel(), 1]
  t = trans.reshape(-1, 4)
  expected = np.stack([x0 + sx * c.ravel() + t[:, 0] * wa, y0 + sy * r.ravel() + t[:, 1] * ha,
                       wa * np.exp(t[:, 2]), ha * np.exp(t[:, 3])], -1)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
