"""Tests for the VGG-16 backbone: ceil-mode sizes, padded images, freezing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from densecap_jax.models import vgg16

# Same 13-conv / 4-pool structure as VGG-16, tiny widths.
NARROW = ((2, 2), (2, 2), (3, 3, 3), (3, 3, 3), (4, 4, 4))


def _init(widths, shape, seed=0):
  model = vgg16.VGG16(widths)
  params = model.init(jax.random.key(seed), jnp.zeros(shape, jnp.float32))
  return model, params


def _numpy_max_pool_ceil(x):
  """Reference ceil-mode 2x2/2 max-pool of (H, W) by loops over windows."""
  h, w = x.shape
  out = np.empty((-(-h // 2), -(-w // 2)), x.dtype)
  for i in range(out.shape[0]):
    for j in range(out.shape[1]):
      out[i, j] = x[2 * i:2 * i + 2, 2 * j:2 * j + 2].max()
  return out


@pytest.mark.parametrize("size,expected", [(540, 34), (720, 45), (16, 1), (17, 2), (33, 3)])
def test_feature_size_is_repeated_ceil_halving(size, expected):
  assert vgg16.feature_size(size) == expected


def test_feature_size_of_int_arrays():
  np.testing.assert_array_equal(vgg16.feature_size(jnp.array([[540, 720], [100, 1]])),
                                [[34, 45], [7, 1]])


def test_max_pool_ceil_matches_window_loop():
  x = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
  out = vgg16.max_pool_ceil(jnp.asarray(x)[None, :, :, None])[0, :, :, 0]
  np.testing.assert_array_equal(out, _numpy_max_pool_ceil(x))


def test_output_of_a_540x720_image_is_34x45():
  model, params = _init(((1,), (1,), (1,), (1,), (1,)), (1, 540, 720, 3))
  out = model.apply(params, jnp.ones((1, 540, 720, 3)))
  assert out.shape == (1, 34, 45, 1)


def test_layer_names_are_the_original_ones():
  _, params = _init(NARROW, (1, 16, 16, 3))
  names = sorted(params["params"])
  expected = sorted(f"conv{b}_{i}" for b, n in enumerate((2, 2, 3, 3, 3), 1)
                    for i in range(1, n + 1))
  assert names == expected


def test_input_scale_multiplies_the_images_before_conv1_1():
  rng = np.random.default_rng(4)
  image = jnp.asarray(rng.normal(size=(1, 20, 24, 3)).astype(np.float32) * 60)
  model, params = _init(NARROW, (1, 20, 24, 3))
  scaled = vgg16.VGG16(NARROW, input_scale=1 / 64)
  np.testing.assert_array_equal(scaled.apply(params, image), model.apply(params, image / 64))
  assert not np.array_equal(scaled.apply(params, image), model.apply(params, image))


def test_padded_image_gives_the_features_of_the_unpadded_one():
  rng = np.random.default_rng(1)
  image = rng.normal(size=(50, 70, 3)).astype(np.float32) * 50
  model, params = _init(NARROW, (1, 50, 70, 3))
  plain = model.apply(params, jnp.asarray(image)[None])
  padded_image = np.zeros((64, 96, 3), np.float32)
  padded_image[:50, :70] = image
  padded = model.apply(params, jnp.asarray(padded_image)[None], jnp.array([[50, 70]]))
  assert plain.shape == (1, 4, 5, 4) and padded.shape == (1, 4, 6, 4)
  np.testing.assert_allclose(padded[:, :4, :5], plain, rtol=1e-5, atol=1e-4)
  np.testing.assert_array_equal(padded[:, :, 5:], 0.0)


def test_batch_of_padded_images_with_different_sizes():
  rng = np.random.default_rng(2)
  model, params = _init(NARROW, (1, 48, 48, 3))
  sizes = [(48, 33), (20, 48)]
  padded = np.zeros((2, 48, 48, 3), np.float32)
  images = []
  for b, (h, w) in enumerate(sizes):
    images.append(rng.normal(size=(h, w, 3)).astype(np.float32) * 50)
    padded[b, :h, :w] = images[-1]
  out = model.apply(params, jnp.asarray(padded), jnp.asarray(sizes, jnp.int32))
  for b, (h, w) in enumerate(sizes):
    plain = model.apply(params, jnp.asarray(images[b])[None])[0]
    hf, wf = vgg16.feature_size(h), vgg16.feature_size(w)
    np.testing.assert_allclose(out[b, :hf, :wf], plain, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("finetune,trained", [(False, ()), (True, ("conv3_1", "conv5_3"))])
def test_frozen_blocks_get_no_gradient(finetune, trained):
  model, params = _init(NARROW, (1, 32, 32, 3))
  images = jnp.asarray(np.random.default_rng(3).normal(size=(1, 32, 32, 3)), jnp.float32)
  grads = jax.grad(lambda p: jnp.sum(model.apply(p, images, finetune=finetune) ** 2))(params)
  grads = grads["params"]
  for name in ("conv1_1", "conv1_2", "conv2_1", "conv2_2"):
    assert not np.any(grads[name]["kernel"]), name
  for name in ("conv3_1", "conv5_3"):
    assert np.any(grads[name]["kernel"]) == (name in trained), name


def _numpy_window_mean(x, height, width, factor):
  """Reference: mean of each factor x factor window's pixels inside (height, width), 0 if none."""
  rows, cols = -(-x.shape[0] // factor), -(-x.shape[1] // factor)
  out = np.zeros((rows, cols, x.shape[2]), np.float64)
  for i in range(rows):
    for j in range(cols):
      window = x[i * factor:min((i + 1) * factor, height), j * factor:min((j + 1) * factor, width)]
      if window.size:
        out[i, j] = window.reshape(-1, x.shape[2]).mean(0)
  return out


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_window_mean_averages_the_valid_pixels_of_each_ceil_mode_window(factor):
  x = np.random.default_rng(5).normal(size=(2, 19, 13, 3)).astype(np.float32)
  sizes = np.array([[19, 13], [10, 6]])
  out = vgg16.window_mean(jnp.asarray(x), jnp.asarray(sizes), factor)
  for k, (h, w) in enumerate(sizes):
    np.testing.assert_allclose(out[k], _numpy_window_mean(x[k], h, w, factor), rtol=1e-5,
                               atol=1e-6)
  whole = vgg16.window_mean(jnp.asarray(x), None, factor)
  np.testing.assert_allclose(whole[0], _numpy_window_mean(x[0], 19, 13, factor), rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize("skip_blocks", [(1,), (2,), (4,), (2, 4)])
def test_skip_blocks_append_their_cell_means_to_relu5_3(skip_blocks):
  """relu5_3's channels are unchanged; the appended ones are each block's output averaged
  over each stride-16 cell (taken with ``capture_intermediates``), in block order."""
  image = jnp.asarray(np.random.default_rng(6).normal(size=(1, 40, 56, 3)).astype(np.float32))
  model, params = _init(NARROW, (1, 40, 56, 3))
  plain = model.apply(params, image)
  skipped = vgg16.VGG16(NARROW, skip_blocks=skip_blocks)
  out, state = skipped.apply(params, image, capture_intermediates=True)
  assert out.shape[-1] == vgg16.feature_channels(NARROW, skip_blocks)
  np.testing.assert_array_equal(out[..., :4], plain)
  start = 4
  for block in skip_blocks:
    last = f"conv{block}_{len(NARROW[block - 1])}"
    block_out = np.maximum(np.asarray(state["intermediates"][last]["__call__"][0]), 0)[0]
    expected = _numpy_window_mean(block_out, 40, 56, 2 ** (5 - block))
    width = NARROW[block - 1][-1]
    np.testing.assert_allclose(out[0, ..., start:start + width], expected, rtol=1e-5,
                               atol=1e-6)
    start += width
  assert start == out.shape[-1]


def test_skip_block_keeps_padded_images_exact():
  rng = np.random.default_rng(7)
  image = rng.normal(size=(37, 53, 3)).astype(np.float32) * 50
  model = vgg16.VGG16(NARROW, skip_blocks=(2, 4))
  params = model.init(jax.random.key(0), jnp.zeros((1, 37, 53, 3)))
  plain = model.apply(params, jnp.asarray(image)[None])
  padded_image = np.zeros((64, 80, 3), np.float32)
  padded_image[:37, :53] = image
  padded = model.apply(params, jnp.asarray(padded_image)[None], jnp.array([[37, 53]]))
  np.testing.assert_allclose(padded[:, :3, :4], plain, rtol=1e-5, atol=1e-4)
  np.testing.assert_array_equal(padded[:, :, 4:], 0.0)


def test_skip_channels_pass_no_gradient_back():
  """The CNN's gradient is the same with the appended channels as without them."""
  image = jnp.asarray(np.random.default_rng(8).normal(size=(1, 32, 32, 3)).astype(np.float32))
  plain = vgg16.VGG16(NARROW, frozen_blocks=0)
  skipped = vgg16.VGG16(NARROW, frozen_blocks=0, skip_blocks=(1, 2))
  params = plain.init(jax.random.key(1), image)
  weights = jnp.asarray(np.random.default_rng(9).normal(size=(4 + 2 + 2,)), jnp.float32)

  def grads(model, channels):
    return jax.grad(lambda p: jnp.sum(model.apply(p, image, finetune=True)
                                      * weights[:channels]))(params)

  with_skip, without = grads(skipped, 8), grads(plain, 4)
  for name in ("conv1_1", "conv2_2", "conv5_3"):
    np.testing.assert_array_equal(with_skip["params"][name]["kernel"],
                                  without["params"][name]["kernel"])
  assert np.any(without["params"]["conv1_1"]["kernel"])


def test_feature_channels_counts_the_appended_block():
  assert vgg16.feature_channels(NARROW) == 4
  assert vgg16.feature_channels(NARROW, (2,)) == 6
  assert vgg16.feature_channels(NARROW, (2, 3)) == 9
