"""Bilinear RoI pooling (``BilinearRoiPooling``, reference §3.7).

Each box, given in image pixels, is turned into an affine map of the
normalised ``[-1, 1]`` frame (``box_to_affine``), the map places an
``out_h x out_w`` grid of sample points inside the box (``affine_grid``), and
the feature map is read at those points by bilinear interpolation with zero
padding (``bilinear_sample``). The image and the feature map share the
normalised frame: image pixel 1 and feature cell 0 both sit at -1, image pixel
``W`` and feature cell ``Wf - 1`` both at +1 ("align corners"). This is the
original's pipeline BoxToAffine -> AffineGridGeneratorBHWD ->
BatchBilinearSamplerBHWD, including its slight misalignment with the
receptive-field centres of §2.1.

Everything is plain ``jnp``: the four corners are read with one flat-index
gather each, so autodiff gives the original's gradients (features: the sum
over all boxes of the interpolation weights times the output gradient; boxes:
the derivative of the piecewise-bilinear interpolation through the grid and
the affine map, §3.7 item 5). One product has its own VJP, ``_weighted``
(each corner's weight times its features), only so that CPUs compute the
weight's gradient as a matrix product; its values are autodiff's.
"""

import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np


def _height_width(size, name):
  """``(2,)`` size (tuple or array, possibly traced) -> two float32 scalars."""
  size = jnp.asarray(size, jnp.float32)
  if size.shape != (2,):
    raise ValueError(f"{name} must be (height, width), got shape {size.shape}")
  return size[0], size[1]


def box_to_affine(boxes, image_size):
  """Affine maps of the normalised frame for xcycwh boxes (``BoxToAffine``).

  For an image of height ``H`` and width ``W`` and a box ``(xc, yc, w, h)``::

    theta = [[h / H, 0,     (2 yc - H - 1) / (H - 1)],
             [0,     w / W, (2 xc - W - 1) / (W - 1)]]

  acting on the column vector ``(y, x, 1)`` (row-major (y, x) order, as
  stnbhwd): the grid point ``(0, 0)`` maps to the box centre and
  ``(+-1, +-1)`` to ``xc +- w (W - 1) / (2 W)``, ``yc +- h (H - 1) / (2 H)``
  in image pixels (slightly inside the nominal box edges, §3.7 item 2).

  Args:
    boxes: ``(B, 4)`` float xcycwh boxes in 1-based image pixels.
    image_size: ``(H, W)`` image height and width in pixels; Python numbers or
      a ``(2,)`` array, possibly traced.

  Returns:
    ``(B, 2, 3)`` float32 matrices ``theta``.
  """
  boxes = jnp.asarray(boxes, jnp.float32)
  height, width = _height_width(image_size, "image_size")
  xc, yc, w, h = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
  zero = jnp.zeros_like(xc)
  row_y = jnp.stack([h / height, zero, (2 * yc - height - 1) / (height - 1)], -1)
  row_x = jnp.stack([zero, w / width, (2 * xc - width - 1) / (width - 1)], -1)
  return jnp.stack([row_y, row_x], axis=1)


def affine_grid(theta, output_size):
  """Sample points of affine maps (``AffineGridGeneratorBHWD``).

  The base grid is ``u_i = -1 + 2 i / (out_h - 1)`` for rows and
  ``v_j = -1 + 2 j / (out_w - 1)`` for columns (0-based ``i, j``); the point
  for cell ``(i, j)`` is ``theta @ (u_i, v_j, 1)``.

  Args:
    theta: ``(B, 2, 3)`` float affine maps on ``(y, x, 1)``.
    output_size: static ``(out_h, out_w)``, both at least 2.

  Returns:
    ``(B, out_h, out_w, 2)`` float32 normalised ``(y, x)`` sample points.
  """
  out_h, out_w = output_size
  u = (-1 + 2 * np.arange(out_h) / (out_h - 1)).astype(np.float32)[:, None]
  v = (-1 + 2 * np.arange(out_w) / (out_w - 1)).astype(np.float32)[None, :]
  theta = jnp.asarray(theta, jnp.float32)[:, :, None, None, :]
  # Elementwise, not a matmul: GPU matmuls may round float32 inputs to TF32.
  points = theta[..., 0] * u + theta[..., 1] * v + theta[..., 2]
  return jnp.moveaxis(points, 1, -1)


@jax.custom_vjp
def _weighted(weight, values):
  """``weight[..., None] * values``: ``(...)`` times ``(..., C)`` -> ``(..., C)``.

  The gradient for ``weight`` is a sum over ``C`` of the cotangent times
  ``values``; on CPU it is computed as a product (``einsum``, float32 at
  ``HIGHEST``), since XLA:CPU runs that multiply-and-sum about 30x slower as
  a reduction (YNNPACK; 70 ms against 2 ms for 256 boxes x 7 x 7 x 512, the
  ``vgg16`` training step in ``benchmarks/README.md``). The sum's order, and
  so the last bits of the box gradients, differ from the reduction's.
  """
  return weight[..., None] * values


def _weighted_forward(weight, values):
  return _weighted(weight, values), (weight, values)


def _weighted_backward(residuals, cotangent):
  weight, values = residuals
  as_reduction = lambda c, v: jnp.sum(c * v, axis=-1)
  as_product = lambda c, v: jnp.einsum("...c,...c->...", c, v,
                                       precision=jax.lax.Precision.HIGHEST)
  d_weight = jax.lax.platform_dependent(cotangent, values, cpu=as_product,
                                        default=as_reduction)
  return d_weight.astype(weight.dtype), weight[..., None] * cotangent


_weighted.defvjp(_weighted_forward, _weighted_backward)


def _corner(flat_features, row, col, weight, valid_height, valid_width, width):
  """One bilinear corner: ``weight * F[row, col]``, 0 outside the valid map."""
  inside = (row >= 0) & (row < valid_height) & (col >= 0) & (col < valid_width)
  index = jnp.clip(row, 0, valid_height - 1) * width + jnp.clip(col, 0, valid_width - 1)
  values = flat_features.at[index].get(mode="promise_in_bounds")
  weight = jnp.where(inside, weight, 0.0).astype(flat_features.dtype)
  return _weighted(weight, values)


def bilinear_sample(features, grid, feature_size=None):
  """Reads a feature map at normalised points (``BilinearSamplerBHWD``).

  A point ``(y_n, x_n)`` maps to feature coordinates
  ``fy = (y_n + 1)(Hf - 1) / 2``, ``fx = (x_n + 1)(Wf - 1) / 2`` (0-based,
  align corners). With ``y0 = floor(fy)``, ``x0 = floor(fx)``,
  ``ay = fy - y0``, ``ax = fx - x0``, the value is
  ``(1-ay)(1-ax) F[y0, x0] + (1-ay) ax F[y0, x0+1] + ay (1-ax) F[y0+1, x0]
  + ay ax F[y0+1, x0+1]``, where each corner outside ``[0, Hf-1] x [0, Wf-1]``
  contributes 0.

  Args:
    features: ``(Hp, Wp, C)`` feature map, channels last.
    grid: ``(..., 2)`` float normalised ``(y, x)`` points.
    feature_size: optional ``(Hf, Wf)`` valid size (Python ints or a ``(2,)``
      array, possibly traced) when ``features`` is padded at the bottom and
      right; the normalisation uses it and cells beyond it count as outside.
      Defaults to ``(Hp, Wp)``.

  Returns:
    ``(..., C)`` samples, in ``features.dtype``.
  """
  padded_height, padded_width, channels = features.shape
  if feature_size is None:
    feature_size = (padded_height, padded_width)
  valid_height, valid_width = _height_width(feature_size, "feature_size")
  fy = (grid[..., 0] + 1) * (valid_height - 1) / 2
  fx = (grid[..., 1] + 1) * (valid_width - 1) / 2
  y0, x0 = jnp.floor(fy), jnp.floor(fx)
  ay, ax = fy - y0, fx - x0
  y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
  valid_height = jnp.minimum(valid_height.astype(jnp.int32), padded_height)
  valid_width = jnp.minimum(valid_width.astype(jnp.int32), padded_width)
  flat = features.reshape(padded_height * padded_width, channels)
  corner = functools.partial(_corner, flat, valid_height=valid_height,
                             valid_width=valid_width, width=padded_width)
  return (corner(y0, x0, (1 - ay) * (1 - ax))
          + corner(y0, x0 + 1, (1 - ay) * ax)
          + corner(y0 + 1, x0, ay * (1 - ax))
          + corner(y0 + 1, x0 + 1, ay * ax))


def bilinear_roi_pool(features, boxes, image_size, output_size=(7, 7),
                      feature_size=None):
  """Pools a fixed-size feature grid for each box (``BilinearRoiPooling``).

  Boxes are in *image* pixels; ``image_size`` and the feature map's size tie
  the two frames together through the normalised ``[-1, 1]`` frame (module
  docstring). Differentiable in ``features`` and ``boxes``; the feature
  gradient sums over boxes. Jitted, with only ``output_size`` static: new
  boxes, image sizes or feature sizes of the same shapes do not recompile.

  Args:
    features: ``(Hp, Wp, C)`` feature map (e.g. VGG-16 conv5_3), channels last.
    boxes: ``(B, 4)`` float xcycwh boxes in 1-based image pixels.
    image_size: ``(H, W)`` size of the image the features were computed from
      (Python numbers or a ``(2,)`` array, possibly traced).
    output_size: static ``(out_h, out_w)``, both at least 2 (the original
      uses 7 x 7).
    feature_size: optional ``(Hf, Wf)`` valid feature size when ``features``
      is padded at the bottom and right (bucketed images); possibly traced.
      Defaults to the array's ``(Hp, Wp)``.

  Returns:
    ``(B, out_h, out_w, C)`` pooled features in ``features.dtype`` (the
    original's ``B x C x out_h x out_w`` transposed to channels last).

  Memory: the forward pass needs only its output (the four corner gathers
  fuse into it); reverse mode keeps the four gathered corners and scatters
  four updates of the output's size (about 9x the output on XLA:CPU, e.g.
  0.9 GB for 1000 boxes x 7 x 7 x 512 float32).
  """
  if jnp.ndim(features) != 3:
    raise ValueError(
        f"features must be (height, width, channels), got shape {jnp.shape(features)}")
  if jnp.ndim(boxes) != 2 or jnp.shape(boxes)[1] != 4:
    raise ValueError(f"boxes must be (B, 4) xcycwh, got shape {jnp.shape(boxes)}")
  output_size = tuple(output_size)
  if (len(output_size) != 2 or min(output_size) < 2
      or not all(isinstance(n, numbers.Integral) for n in output_size)):
    raise ValueError(
        f"output_size must be (out_h, out_w) with both >= 2, got {output_size}")
  return _bilinear_roi_pool(features, boxes, image_size, output_size, feature_size)


@functools.partial(jax.jit, static_argnames=("output_size",))
def _bilinear_roi_pool(features, boxes, image_size, output_size, feature_size):
  """``bilinear_roi_pool`` after its argument checks."""
  theta = box_to_affine(boxes, image_size)
  grid = affine_grid(theta, output_size)
  return bilinear_sample(jnp.asarray(features), grid, feature_size)
