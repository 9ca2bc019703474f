"""Tests for densecap_jax.data.images: the test-time resize (§1.2) and VGG normalisation."""

import numpy as np
import pytest

from densecap_jax.data import images


def _reference_1d(src, dst_len):
  """§1.2 in plain NumPy (float64): area average over [d r, (d+1) r) when shrinking,
  aligned-corner linear interpolation when enlarging, copy when equal."""
  src = np.asarray(src, np.float64)
  src_len = len(src)
  if dst_len == src_len:
    return src.copy()
  out = np.zeros(dst_len)
  if dst_len > src_len:
    for d in range(dst_len):
      pos = d * (src_len - 1) / (dst_len - 1)
      i = min(int(np.floor(pos)), src_len - 1)
      j = min(i + 1, src_len - 1)
      out[d] = (1 - (pos - i)) * src[i] + (pos - i) * src[j]
    return out
  r = src_len / dst_len
  for d in range(dst_len):
    start, end = d * r, (d + 1) * r
    weights = np.array([max(0.0, min(s + 1, end) - max(s, start)) for s in range(src_len)])
    out[d] = (weights * src).sum() / weights.sum()
  return out


def _reference_2d(img, height, width):
  """Separable: every row along the width first, then every column along the height."""
  tmp = np.stack([np.stack([_reference_1d(img[y, :, c], width) for c in range(img.shape[2])], -1)
                  for y in range(img.shape[0])])
  return np.stack([np.stack([_reference_1d(tmp[:, x, c], height) for c in range(img.shape[2])], -1)
                   for x in range(width)], axis=1)


@pytest.mark.parametrize("src_len, dst_len", [(13, 5), (10, 3), (7, 6), (9, 4), (5, 13), (2, 9),
                                              (1, 4), (6, 6), (720, 97)])
def test_scale_1d_matches_reference(src_len, dst_len):
  src = np.random.default_rng(src_len * 100 + dst_len).uniform(0, 1, src_len).astype(np.float32)
  out = images.scale_bilinear_torch(src[None, :, None], 1, dst_len)
  assert out.shape == (1, dst_len, 1) and out.dtype == np.float32
  np.testing.assert_allclose(out[0, :, 0], _reference_1d(src, dst_len), rtol=1e-5, atol=1e-6)


def test_scale_2d_separable_matches_reference():
  img = np.random.default_rng(0).uniform(0, 1, (11, 17, 3)).astype(np.float32)
  for height, width in [(5, 23), (20, 8), (11, 17)]:
    np.testing.assert_allclose(images.scale_bilinear_torch(img, height, width),
                               _reference_2d(img, height, width), rtol=1e-5, atol=1e-6)


def test_shrink_is_area_average_by_hand():
  # 4 -> 3: r = 4/3; output 0 averages [0, 4/3): (1*a + 1/3*b) / (4/3).
  src = np.array([3.0, 6.0, 9.0, 12.0], np.float32)
  out = images.scale_bilinear_torch(src[None, :, None], 1, 3)[0, :, 0]
  np.testing.assert_allclose(out, [(3 + 6 / 3) / (4 / 3), (6 * 2 / 3 + 9 * 2 / 3) / (4 / 3),
                                   (9 / 3 + 12) / (4 / 3)], rtol=1e-6)


def test_torch_resize_sizes():
  assert images.torch_scale_size(480, 640, 720) == (540, 720)
  # The product comes first, so the long side is exactly 720 where PIL's path gives 719.
  assert images.torch_scale_size(571, 300, 720) == (720, 378)
  assert images.pil_resize_size(571, 300, 720)[0] == 719
  out = images.resize_long_side_torch(np.zeros((7, 13, 3), np.float32), 20)
  assert out.shape == (10, 20, 3)


def test_vgg_preprocess_channel_order_and_mean():
  rgb = np.zeros((1, 2, 3), np.uint8)
  rgb[0, 0] = (10, 20, 30)
  out = images.vgg_preprocess(rgb)
  assert out.dtype == np.float32
  np.testing.assert_allclose(out[0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6)
  np.testing.assert_allclose(out[0, 1], [-103.939, -116.779, -123.68], rtol=1e-6)
  with pytest.raises(ValueError, match="RGB"):
    images.vgg_preprocess(np.zeros((4, 4), np.uint8))


def test_prepare_test_image_pipeline():
  rgb = np.random.default_rng(1).integers(0, 256, (9, 14, 3)).astype(np.uint8)
  out = images.prepare_test_image(rgb, image_size=20)
  resized = _reference_2d(rgb / 255.0, 12, 20) * 255  # 9 * 20 / 14 = 12.86 -> 12
  want = resized[..., ::-1] - np.array([103.939, 116.779, 123.68])
  assert out.shape == (12, 20, 3)
  np.testing.assert_allclose(out, want, atol=2e-3)
