"""Tests for ``densecap_jax.ops.roi_pool`` (bilinear RoI pooling, reference §3.7)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from densecap_jax.ops.roi_pool import bilinear_roi_pool, box_to_affine
from densecap_jax.ops import roi_pool


def _reference_taps(box, image_size, feature_size, output_size):
  """Yields ``(i, j, row, col, weight)`` for every in-map bilinear corner of one box.

  Plain float64 transcription of §3.7: BoxToAffine, the base grid, the
  align-corners feature coordinates and the four-corner rule.
  """
  xc, yc, w, h = (float(t) for t in box)
  height, width = image_size
  feat_h, feat_w = feature_size
  out_h, out_w = output_size
  for i in range(out_h):
    for j in range(out_w):
      u = -1 + 2 * i / (out_h - 1)
      v = -1 + 2 * j / (out_w - 1)
      y_n = h / height * u + (2 * yc - height - 1) / (height - 1)
      x_n = w / width * v + (2 * xc - width - 1) / (width - 1)
      fy = (y_n + 1) * (feat_h - 1) / 2
      fx = (x_n + 1) * (feat_w - 1) / 2
      y0, x0 = math.floor(fy), math.floor(fx)
      ay, ax = fy - y0, fx - x0
      corners = [(y0, x0, (1 - ay) * (1 - ax)), (y0, x0 + 1, (1 - ay) * ax),
                 (y0 + 1, x0, ay * (1 - ax)), (y0 + 1, x0 + 1, ay * ax)]
      for row, col, weight in corners:
        if 0 <= row <= feat_h - 1 and 0 <= col <= feat_w - 1:
          yield i, j, row, col, weight


def _reference_pool(features, boxes, image_size, output_size=(7, 7)):
  features = np.asarray(features, np.float64)
  out = np.zeros((len(boxes), *output_size, features.shape[-1]))
  for b, box in enumerate(boxes):
    for i, j, row, col, weight in _reference_taps(
        box, image_size, features.shape[:2], output_size):
      out[b, i, j] += weight * features[row, col]
  return out


def _reference_feature_grad(feature_shape, boxes, image_size, out_grad):
  """Adjoint of ``_reference_pool`` in the features: scatter-add over all boxes."""
  grad = np.zeros(feature_shape)
  output_size = out_grad.shape[1:3]
  for b, box in enumerate(boxes):
    for i, j, row, col, weight in _reference_taps(
        box, image_size, feature_shape[:2], output_size):
      grad[row, col] += weight * out_grad[b, i, j]
  return grad


def _box_on_feature_grid(fx0, step_x, fy0, step_y, image_size, feature_size,
                         output_size=(7, 7)):
  """The xcycwh box whose samples fall at ``fx0 + j*step_x``, ``fy0 + i*step_y``.

  Inverts §3.7: ``fx_j = ((w/W) v_j + c + 1)(Wf - 1)/2`` with
  ``c = (2 xc - W - 1)/(W - 1)`` and ``v_j = -1 + 2j/(out_w - 1)``.
  """
  def axis(f0, step, size, feat, out):
    extent = step * (out - 1) * 2 / (feat - 1)  # = 2 w / W
    length = extent / 2 * size
    centre_n = 2 * f0 / (feat - 1) - 1 + extent / 2
    return (centre_n * (size - 1) + size + 1) / 2, length
  xc, w = axis(fx0, step_x, image_size[1], feature_size[1], output_size[1])
  yc, h = axis(fy0, step_y, image_size[0], feature_size[0], output_size[0])
  return [xc, yc, w, h]


# Boxes whose sample points sit at fractional parts 0.25 / 0.75 of a 6 x 7
# map for a 40 x 50 image: away from the kinks of bilinear interpolation,
# several of them reaching outside the map on one or two sides.
_SMOOTH_BOXES = np.array([
    _box_on_feature_grid(0.25, 0.5, 1.25, 0.5, (40, 50), (6, 7)),
    _box_on_feature_grid(-0.75, 1.5, -1.25, 1.0, (40, 50), (6, 7)),
    _box_on_feature_grid(2.75, 0.5, 3.25, 0.5, (40, 50), (6, 7)),
    _box_on_feature_grid(-2.25, 0.5, 0.75, 1.0, (40, 50), (6, 7)),
], np.float32)


def _random_boxes(rng, n, image_size):
  """xcycwh boxes: inside, straddling and outside a ``(H, W)`` image."""
  height, width = image_size
  xc = rng.uniform(-0.4 * width, 1.4 * width, n)
  yc = rng.uniform(-0.4 * height, 1.4 * height, n)
  w = rng.uniform(2, 1.5 * width, n)
  h = rng.uniform(2, 1.5 * height, n)
  return np.stack([xc, yc, w, h], -1).astype(np.float32)


def test_box_to_affine_matches_original_test_vectors():
  height, width = 20, 30
  boxes = np.array([[(width + 1) / 2, (height + 1) / 2, width, height],
                    [10, 12, 4, 5],
                    [15, 17, 2, 3],
                    [(width + 1) / 2, (height + 1) / 2, width / 2, height / 2]],
                   np.float32)
  expected = np.array([
      [[1, 0, 0], [0, 1, 0]],
      [[1 / 4, 0, 3 / 19], [0, 2 / 15, -11 / 29]],
      [[3 / 20, 0, 13 / 19], [0, 1 / 15, -1 / 29]],
      [[0.5, 0, 0], [0, 0.5, 0]],
  ])
  np.testing.assert_allclose(box_to_affine(boxes, (height, width)), expected, atol=1e-6)
  traced = jax.jit(box_to_affine)(boxes, jnp.array([height, width]))
  np.testing.assert_allclose(traced, expected, atol=1e-6)


def test_box_to_affine_gradient_is_the_original_backward():
  # §3.7 item 5: dxc = 2/(W-1) dθ[1,2], dyc = 2/(H-1) dθ[0,2], dw = dθ[1,1]/W, dh = dθ[0,0]/H.
  height, width = 20, 30
  rng = np.random.default_rng(0)
  boxes = rng.normal(size=(5, 4)).astype(np.float32)
  d_theta = rng.normal(size=(5, 2, 3)).astype(np.float32)
  _, vjp = jax.vjp(lambda b: box_to_affine(b, (height, width)), boxes)
  expected = np.stack([2 / (width - 1) * d_theta[:, 1, 2], 2 / (height - 1) * d_theta[:, 0, 2],
                       d_theta[:, 1, 1] / width, d_theta[:, 0, 0] / height], -1)
  np.testing.assert_allclose(vjp(d_theta)[0], expected, rtol=1e-6, atol=1e-7)


def test_matches_numpy_reference_on_random_boxes():
  rng = np.random.default_rng(1)
  image_size = (40, 50)
  features = rng.normal(size=(6, 7, 5)).astype(np.float32)
  boxes = _random_boxes(rng, 24, image_size)
  boxes[0] = [-100, 20, 30, 30]   # fully left of the image
  boxes[1] = [25, 90, 30, 30]     # fully below
  boxes[2] = [25.5, 20.5, 200, 160]  # covers the image and beyond
  got = bilinear_roi_pool(features, boxes, image_size)
  expected = _reference_pool(features, boxes, image_size)
  assert got.shape == (24, 7, 7, 5) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(got[:2], 0.0)
  assert np.count_nonzero(expected[2]) and np.count_nonzero(expected[2] == 0)


def _coordinate_map(height, width):
  """``F[r, c] = (100 r + c, 1000 + 100 r + c)``: each cell says where it is."""
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  value = 100.0 * rows + cols
  return np.stack([value, 1000 + value], -1).astype(np.float32)


def test_whole_image_box_samples_feature_cells_exactly():
  # 13 x 13 image, 13 x 13 map, box = whole image (7, 7, 13, 13): θ is the
  # identity, so fy = (u_i + 1) * 12 / 2 = 2i and fx = 2j: out[i, j] = F[2i, 2j].
  features = _coordinate_map(13, 13)
  got = bilinear_roi_pool(features, np.array([[7, 7, 13, 13]], np.float32), (13, 13))
  expected = features[0::2, 0::2][None]
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_half_cell_shift_interpolates_and_zero_pads_past_the_edge():
  # Box (7.5, 7, 13, 13) on a 13 x 13 image and map: θ_x = [0, 1, (15 - 14)/12],
  # so fx = (v_j + 1 + 1/12) * 6 = 2j + 0.5 and fy = 2i. Columns 0..5 average
  # F[2i, 2j] and F[2i, 2j + 1]; column 6 (fx = 12.5) has its right corners
  # outside the map and gets 0.5 * F[2i, 12].
  features = _coordinate_map(13, 13)
  got = bilinear_roi_pool(features, np.array([[7.5, 7, 13, 13]], np.float32), (13, 13))
  expected = np.empty((7, 7, 2), np.float32)
  for i in range(7):
    for j in range(6):
      expected[i, j] = 0.5 * (features[2 * i, 2 * j] + features[2 * i, 2 * j + 1])
    expected[i, 6] = 0.5 * features[2 * i, 12]
  np.testing.assert_allclose(got[0], expected, rtol=1e-5, atol=1e-4)


def test_box_outside_the_map_pools_zeros():
  features = np.ones((5, 6, 3), np.float32)
  boxes = np.array([[-50, 10, 20, 20], [10, 80, 20, 20]], np.float32)
  np.testing.assert_array_equal(bilinear_roi_pool(features, boxes, (40, 48)), 0.0)


@pytest.mark.parametrize("num_boxes", [10, 13, 7])
def test_non_square_output_shape(num_boxes):
  rng = np.random.default_rng(num_boxes)
  features = rng.normal(size=(28, 29, 8)).astype(np.float32)
  boxes = rng.normal(size=(num_boxes, 4)).astype(np.float32)
  got = bilinear_roi_pool(features, boxes, (28, 29), output_size=(8, 7))
  assert got.shape == (num_boxes, 8, 7, 8)
  np.testing.assert_allclose(got, _reference_pool(features, boxes, (28, 29), (8, 7)),
                             rtol=1e-5, atol=1e-5)


def test_check_grads_features_and_boxes():
  rng = np.random.default_rng(2)
  features = rng.normal(size=(6, 7, 3)).astype(np.float32)
  pool = lambda f, b: bilinear_roi_pool(f, b, (40, 50))
  check_grads(pool, (features, _SMOOTH_BOXES), order=1, modes=["rev"],
              atol=1e-2, rtol=1e-2, eps=1e-2)


def test_box_gradient_matches_reference_finite_differences():
  rng = np.random.default_rng(3)
  image_size = (40, 50)
  features = rng.normal(size=(6, 7, 3)).astype(np.float32)
  out_grad = rng.normal(size=(len(_SMOOTH_BOXES), 7, 7, 3))
  loss = lambda b: jnp.sum(bilinear_roi_pool(features, b, image_size) * out_grad)
  got = jax.grad(loss)(_SMOOTH_BOXES)
  boxes = _SMOOTH_BOXES.astype(np.float64)
  expected = np.zeros_like(boxes)
  eps = 1e-4
  for k in range(4):
    step = np.zeros(4)
    step[k] = eps
    plus = _reference_pool(features, boxes + step, image_size)
    minus = _reference_pool(features, boxes - step, image_size)
    expected[:, k] = np.sum((plus - minus) * out_grad, axis=(1, 2, 3)) / (2 * eps)
  assert np.all(np.abs(expected) > 1e-3)
  np.testing.assert_allclose(got, expected, rtol=2e-3, atol=1e-4)


def test_weighted_corner_gradients_equal_those_of_the_elementwise_product():
  rng = np.random.default_rng(3)
  weight = jnp.asarray(rng.random((6, 7, 7)), jnp.float32)
  values = jnp.asarray(rng.normal(size=(6, 7, 7, 64)), jnp.float32)
  cotangent = jnp.asarray(rng.normal(size=(6, 7, 7, 64)), jnp.float32)
  out, vjp = jax.vjp(roi_pool._weighted, weight, values)
  d_weight, d_values = jax.jit(vjp)(cotangent)
  plain_out, plain_vjp = jax.vjp(lambda w, v: w[..., None] * v, weight, values)
  np.testing.assert_array_equal(out, plain_out)
  np.testing.assert_array_equal(d_values, plain_vjp(cotangent)[1])
  want = np.einsum("...c,...c->...", np.asarray(cotangent, np.float64),
                   np.asarray(values, np.float64))
  np.testing.assert_allclose(d_weight, want, rtol=1e-5, atol=1e-5)
  assert d_weight.dtype == jnp.float32


def test_weighted_corner_gradient_is_a_product_on_cpu_only():
  weight = jnp.ones((6, 7, 7), jnp.float32)
  values = jnp.ones((6, 7, 7, 64), jnp.float32)
  grad = jax.grad(lambda w, v: jnp.sum(roi_pool._weighted(w, v) ** 2), argnums=(0, 1))

  def ops(platform):
    text = jax.jit(grad).trace(weight, values).lower(lowering_platforms=(platform,)).as_text()
    return {op: text.count(f"stablehlo.{op}") for op in ("dot_general", "reduce")}

  assert ops("cpu")["dot_general"] == 1
  assert ops("cuda")["dot_general"] == 0 and ops("cuda")["reduce"] >= 1


def test_feature_gradient_sums_over_boxes():
  rng = np.random.default_rng(4)
  image_size = (40, 50)
  features = rng.normal(size=(6, 7, 3)).astype(np.float32)
  boxes = _random_boxes(rng, 6, image_size)
  out_grad = rng.normal(size=(6, 7, 7, 3)).astype(np.float32)

  def feature_grad(b, g):
    _, vjp = jax.vjp(lambda f: bilinear_roi_pool(f, b, image_size), features)
    return vjp(g)[0]

  together = feature_grad(boxes, out_grad)
  apart = feature_grad(boxes[:3], out_grad[:3]) + feature_grad(boxes[3:], out_grad[3:])
  np.testing.assert_allclose(together, apart, rtol=1e-5, atol=1e-5)
  expected = _reference_feature_grad(features.shape, boxes, image_size, out_grad)
  np.testing.assert_allclose(together, expected, rtol=1e-5, atol=1e-5)


def test_feature_size_ignores_padding():
  rng = np.random.default_rng(5)
  image_size = (40, 50)
  features = rng.normal(size=(6, 7, 3)).astype(np.float32)
  padded = rng.normal(size=(9, 11, 3)).astype(np.float32) + 100.0
  padded[:6, :7] = features
  boxes = _random_boxes(rng, 12, image_size)
  pool = jax.jit(bilinear_roi_pool)
  expected = pool(features, boxes, image_size)
  got = pool(padded, boxes, image_size, feature_size=jnp.array([6, 7]))
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)

  out_grad = rng.normal(size=expected.shape).astype(np.float32)
  grad_of = lambda f, size: jax.vjp(
      lambda f: bilinear_roi_pool(f, boxes, image_size, feature_size=size), f)[1](out_grad)[0]
  padded_grad = grad_of(padded, (6, 7))
  np.testing.assert_allclose(padded_grad[:6, :7], grad_of(features, None), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(padded_grad[6:], 0.0)
  np.testing.assert_array_equal(padded_grad[:, 7:], 0.0)


def test_no_recompilation_for_new_values():
  traces = []

  @jax.jit
  def pool(features, boxes, image_size, feature_size):
    traces.append(1)
    return bilinear_roi_pool(features, boxes, image_size, feature_size=feature_size)

  rng = np.random.default_rng(6)
  features = rng.normal(size=(6, 7, 2)).astype(np.float32)
  for image_size, feature_size in [((40, 50), (6, 7)), ((33, 47), (5, 7)), ((20, 20), (3, 3))]:
    boxes = _random_boxes(rng, 5, image_size)
    got = pool(features, boxes, jnp.array(image_size), jnp.array(feature_size))
    expected = _reference_pool(features[:feature_size[0], :feature_size[1]], boxes, image_size)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  assert len(traces) == 1


def test_output_keeps_feature_dtype():
  features = jnp.ones((4, 5, 2), jnp.bfloat16)
  got = bilinear_roi_pool(features, np.array([[3, 3, 4, 4]], np.float32), (8, 10))
  assert got.dtype == jnp.bfloat16


@pytest.mark.parametrize("features_shape, boxes_shape, output_size, match", [
    ((6, 7), (3, 4), (7, 7), "features must be"),
    ((6, 7, 2), (3, 5), (7, 7), "boxes must be"),
    ((6, 7, 2), (3, 4), (1, 7), "output_size must be"),
    ((6, 7, 2), (3, 4), (7.0, 7), "output_size must be"),
])
def test_bad_shapes_raise(features_shape, boxes_shape, output_size, match):
  with pytest.raises(ValueError, match=match):
    bilinear_roi_pool(np.zeros(features_shape, np.float32), np.zeros(boxes_shape, np.float32),
                      (40, 50), output_size=output_size)


def test_vmap_over_images_matches_per_image_calls():
  rng = np.random.default_rng(7)
  features = rng.normal(size=(2, 6, 7, 3)).astype(np.float32)
  image_sizes = np.array([[40, 50], [30, 45]])
  feature_sizes = np.array([[6, 7], [4, 6]])
  boxes = np.stack([_random_boxes(rng, 5, size) for size in image_sizes])
  pooled = jax.vmap(lambda f, b, s, fs: bilinear_roi_pool(f, b, s, feature_size=fs))(
      features, boxes, image_sizes, feature_sizes)
  for n in range(2):
    h, w = feature_sizes[n]
    expected = _reference_pool(features[n, :h, :w], boxes[n], tuple(image_sizes[n]))
    np.testing.assert_allclose(pooled[n], expected, rtol=1e-5, atol=1e-5)
