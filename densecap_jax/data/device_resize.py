"""The test-time resize of reference §1.2 on the device, bit for bit the NumPy one.

Decoded uint8 RGB photos go to the device; there they are resized with
``torch/image``'s bilinear ``image.scale`` (long side ``image_size``), turned
to BGR, scaled to 0-255 and the VGG mean is subtracted, as
``images.prepare_test_image`` does on the host. The result is the model's
float32 input, already padded into its shape bucket and placed on the
devices, plus the uint8 RGB resized image the boxes refer to (``display``).

Design:

* **Taps, not dense matrices.** Each output sample of the separable resize
  is a weighted sum of ``T`` source samples (``images._torch_linear_taps``:
  2 when enlarging, about ``src / dst + 1`` when shrinking), computed on the
  host once per (source, output) length and cached. The device gathers the
  ``T`` source columns (then rows) and sums them. Two dense interpolation
  matrices ``(h, H0)`` and ``(W0, w)`` would cost ``h * H0 * W0`` multiply-adds
  per channel -- 44 GFLOP for a 3000 x 4000 photo, against 0.05 GFLOP for
  the taps -- and a matrix product sums in its own order, so it could only
  approach the NumPy result (within about 1e-4), not equal it.
* **The same float32 operations in the same order as NumPy**, so the result
  is identical, not close: ``u = LUT[pixel]`` (the 256 values ``v / 255``
  computed by NumPy, so no backend may turn the division into a
  multiplication by ``1 / 255``), ``acc = w0 * u0``, ``acc = acc + w_t * u_t``
  for each further tap, ``acc / norm``, first along the width then along the
  height, ``* 255``, BGR, ``- mean``. Compilers fuse a multiply feeding an
  add into one fused multiply-add (XLA:CPU does; rounding once instead of
  twice changes the last bit); :func:`_rounded` passes each product through
  an integer OR with a zero only known at run time, which no compiler can
  see through, so every product is rounded to float32 as NumPy rounds it.
  Padded taps have weight 0 (adding ``+0`` changes nothing) and padded
  outputs norm 1. Verified on CPU (``tests/test_device_resize.py``: many
  sizes, up and down, odd sizes, grey; the test asserts the same on GPUs,
  not yet run on one). On other backends the only operation that could
  differ is the float32 division by ``norm`` (IEEE on CPU and, by LLVM's
  default, on NVIDIA GPUs; possibly approximate on TPUs), which bounds any
  difference by about 1e-5 on the 0-255 scale.
* **Static shapes.** The uint8 input is zero-padded to an input bucket per
  side (:func:`input_bucket`: multiples of 64 up to 512, then 640, 768, 896,
  1024, 1280, ... -- at most 25 % padding), the tap count to a power of two
  (:func:`tap_bucket`) and the output to the model's shape bucket, so a new
  photo size compiles nothing unless it crosses into a new input bucket.
  Taps only ever point into the real image, so the padding is never read.

Arrays are channels last; batches have a leading image axis.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from densecap_jax.data import images as images_lib

# v / 255 for every byte v, exactly as ``prepare_test_image`` computes it.
UNIT_LUT = np.arange(256, dtype=np.float32) / np.float32(255)
# Input bucket sides below this are multiples of 64; above, 2^k * {5, 6, 7, 8} / 4.
_FINE_LADDER_TOP = 512


def input_bucket(side):
  """The padded length of an original side of ``side`` pixels (static shapes).

  Multiples of 64 up to 512, then ``2^k * {1.25, 1.5, 1.75, 2}`` (640, 768,
  896, 1024, 1280, 1536, 1792, 2048, 2560, ...): at most 25 % padding, about
  four buckets per doubling.
  """
  if side < 1:
    raise ValueError(f"an image side must be positive, got {side}")
  if side <= _FINE_LADDER_TOP:
    return int(math.ceil(side / 64)) * 64
  step = 2 ** (int(math.ceil(math.log2(side))) - 3)  # 2^k / 8: four steps per doubling
  bucket = int(math.ceil(side / step)) * step
  return max(bucket, 64)


def tap_bucket(taps):
  """The padded tap count for ``taps`` taps: the next power of two."""
  return 1 << max(int(taps) - 1, 0).bit_length()


@functools.lru_cache(maxsize=512)
def axis_taps(src_len, dst_len):
  """``images._torch_linear_taps(src_len, dst_len)``, cached: ``(index, weight, norm)``.

  Returns:
    ``(dst_len, T)`` int32 source indices and float32 weights, ``(dst_len,)``
    float32 norms; read-only arrays (shared by every call).
  """
  index, weight, norm = images_lib._torch_linear_taps(src_len, dst_len)  # pylint: disable=protected-access
  index = index.astype(np.int32)
  for a in (index, weight, norm):
    a.flags.writeable = False
  return index, weight, norm


def _padded_taps(src_len, dst_len, out_len, num_taps):
  """Taps of one axis padded to ``out_len`` outputs and ``num_taps`` taps (weight 0, norm 1)."""
  index, weight, norm = axis_taps(src_len, dst_len)
  out_index = np.zeros((out_len, num_taps), np.int32)
  out_weight = np.zeros((out_len, num_taps), np.float32)
  out_norm = np.ones((out_len,), np.float32)
  out_index[:dst_len, :index.shape[1]] = index
  out_weight[:dst_len, :weight.shape[1]] = weight
  out_norm[:dst_len] = norm
  return out_index, out_weight, out_norm


def batch_arrays(rgbs, sizes, out_bucket, batch_size):
  """Host arrays for :func:`resize_batch`: padded uint8 images and the taps of each.

  Args:
    rgbs: up to ``batch_size`` ``(H0_i, W0_i, 3)`` uint8 RGB originals.
    sizes: their resized ``(h_i, w_i)``, each within ``out_bucket``.
    out_bucket: ``(hb, wb)``, the model's shape bucket.
    batch_size: images in the batch; slots beyond ``len(rgbs)`` are unused
      (all zero in the output).

  Returns:
    A dict of NumPy arrays, the arguments of :func:`resize_batch` but ``zero``
    (``B = batch_size``): ``pixels`` ``(B, Hin, Win, 3)`` uint8, zero-padded to
    the largest :func:`input_bucket` of the batch; ``col_index`` ``(B, wb, Tw)``
    int32, ``col_weight`` ``(B, wb, Tw)`` float32, ``col_norm`` ``(B, wb)``
    float32; ``row_index``, ``row_weight`` ``(B, hb, Th)``, ``row_norm``
    ``(B, hb)``; ``sizes`` ``(B, 2)`` int32 resized sizes (0 for unused slots).
  """
  if not 0 < len(rgbs) <= batch_size or len(sizes) != len(rgbs):
    raise ValueError(f"expected 1 to {batch_size} images with one size each, got "
                     f"{len(rgbs)} images and {len(sizes)} sizes")
  hb, wb = out_bucket
  in_h = max(input_bucket(r.shape[0]) for r in rgbs)
  in_w = max(input_bucket(r.shape[1]) for r in rgbs)
  taps_w = tap_bucket(max(axis_taps(r.shape[1], s[1])[0].shape[1] for r, s in zip(rgbs, sizes)))
  taps_h = tap_bucket(max(axis_taps(r.shape[0], s[0])[0].shape[1] for r, s in zip(rgbs, sizes)))
  out = {
      "pixels": np.zeros((batch_size, in_h, in_w, 3), np.uint8),
      "col_index": np.zeros((batch_size, wb, taps_w), np.int32),
      "col_weight": np.zeros((batch_size, wb, taps_w), np.float32),
      "col_norm": np.ones((batch_size, wb), np.float32),
      "row_index": np.zeros((batch_size, hb, taps_h), np.int32),
      "row_weight": np.zeros((batch_size, hb, taps_h), np.float32),
      "row_norm": np.ones((batch_size, hb), np.float32),
      "sizes": np.zeros((batch_size, 2), np.int32),
  }
  for k, (rgb, (h, w)) in enumerate(zip(rgbs, sizes)):
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
      raise ValueError(f"expected (H, W, 3) uint8 RGB, got {rgb.dtype} {rgb.shape}")
    if not (0 < h <= hb and 0 < w <= wb):
      raise ValueError(f"resized size {h}x{w} does not fit the bucket {hb}x{wb}")
    out["pixels"][k, :rgb.shape[0], :rgb.shape[1]] = rgb
    out["col_index"][k], out["col_weight"][k], out["col_norm"][k] = _padded_taps(
        rgb.shape[1], w, wb, taps_w)
    out["row_index"][k], out["row_weight"][k], out["row_norm"][k] = _padded_taps(
        rgb.shape[0], h, hb, taps_h)
    out["sizes"][k] = (h, w)
  return out


def _rounded(x, zero):
  """``x`` unchanged, but opaque to the compiler: a product stays a rounded float32 product.

  ``zero`` is a uint32 0 given at run time; OR-ing the bits with it changes
  nothing, and as the compiler cannot know it is 0, it cannot fuse the
  multiply before into the add after (a fused multiply-add rounds once).
  """
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32) | zero
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _scale_axis(values, index, weight, norm, axis, zero):
  """One pass of the separable resize: ``(sum_t w_t * values[index_t]) / norm`` along ``axis``.

  Args:
    values: ``(H, W, 3)`` float32.
    index, weight: ``(n, T)`` int32 / float32 taps; ``norm``: ``(n,)``.
    axis: 0 (rows) or 1 (columns).
    zero: uint32 0 (see :func:`_rounded`).

  Returns:
    ``values`` with ``axis`` of length ``n``, float32.
  """
  shape = (-1, 1, 1) if axis == 0 else (1, -1, 1)
  acc = None
  for t in range(index.shape[1]):  # in tap order, as NumPy sums them
    term = _rounded(weight[:, t].reshape(shape) * jnp.take(values, index[:, t], axis=axis), zero)
    acc = term if acc is None else acc + term
  return _divide(acc, norm.reshape(shape), zero)


def _divide(numerator, denominator, zero):
  """``numerator / denominator`` (broadcast), a true float32 division as NumPy's.

  XLA rewrites a division by a broadcast array into a multiplication by its
  reciprocal (rounded twice); a divisor that depends on every element of
  ``numerator`` (its bits AND ``zero``, i.e. 0, OR-ed in) is not a broadcast.
  """
  spread = jax.lax.bitcast_convert_type(jnp.broadcast_to(denominator, numerator.shape), jnp.uint32)
  bits = spread | (jax.lax.bitcast_convert_type(numerator, jnp.uint32) & zero)
  return numerator / jax.lax.bitcast_convert_type(bits, jnp.float32)


def _resize_one(pixels, col_index, col_weight, col_norm, row_index, row_weight, row_norm, size,
                zero):
  """One image of :func:`resize_batch` (no batch axis)."""
  unit = jnp.asarray(UNIT_LUT)[pixels.astype(jnp.int32)]
  cols = _scale_axis(unit, col_index, col_weight, col_norm, 1, zero)
  rows = _scale_axis(cols, row_index, row_weight, row_norm, 0, zero)
  scaled = _rounded(rows * np.float32(255), zero)
  mean = jnp.asarray(images_lib.VGG_MEAN_BGR)
  model_input = scaled[..., ::-1] - mean
  display = jnp.clip(jnp.rint((model_input + mean)[..., ::-1]), 0, 255).astype(jnp.uint8)
  valid = ((jnp.arange(model_input.shape[0]) < size[0])[:, None]
           & (jnp.arange(model_input.shape[1]) < size[1])[None, :])[..., None]
  return jnp.where(valid, model_input, 0), jnp.where(valid, display, 0)


def resize_batch(pixels, col_index, col_weight, col_norm, row_index, row_weight, row_norm, sizes,
                 zero):
  """A batch of uint8 originals -> the model input and display images of §1.2 (jit it).

  The arguments are those of :func:`batch_arrays` and ``zero``, a uint32 0
  given at run time (``np.uint32(0)``; see :func:`_rounded`).

  Returns:
    ``(model_input, display)``: ``(B, hb, wb, 3)`` float32 BGR minus the VGG
    mean (``images.prepare_test_image`` bit for bit) and ``(B, hb, wb, 3)``
    uint8 RGB (``inference.DenseCapPredictor.prepare``'s ``display``), both
    zero outside each image's resized size.
  """
  return jax.vmap(_resize_one, in_axes=(0,) * 8 + (None,))(
      pixels, col_index, col_weight, col_norm, row_index, row_weight, row_norm, sizes, zero)


resize_batch_jit = jax.jit(resize_batch)


def prepare_on_device(rgb, image_size=720):
  """One image through the device resize, back on the host: ``(model_input, display)``.

  For tests and benchmarks; equal to ``images.prepare_test_image(rgb, image_size)``
  and to ``DenseCapPredictor.prepare(rgb).display``.

  Args:
    rgb: ``(H0, W0, 3)`` uint8 RGB.
    image_size: long side after resizing.

  Returns:
    ``(h, w, 3)`` float32 and ``(h, w, 3)`` uint8, ``(h, w) = torch_scale_size(H0, W0, image_size)``.
  """
  h, w = images_lib.torch_scale_size(rgb.shape[0], rgb.shape[1], image_size)
  if h < 1 or w < 1:
    raise ValueError(f"image of {rgb.shape[0]}x{rgb.shape[1]} (HxW) would be resized to {h}x{w}")
  arrays = batch_arrays([rgb], [(h, w)], (h, w), 1)
  model_input, display = jax.device_get(resize_batch_jit(**arrays, zero=np.uint32(0)))
  return model_input[0], display[0]
