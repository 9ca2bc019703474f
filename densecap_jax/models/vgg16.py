"""VGG-16 convolutional backbone up to relu5_3 (reference §2, §2.1).

3x3 "same" convolutions with ReLU in five blocks, a 2x2 / stride-2 max-pool in
**ceil mode** after each of the first four blocks (no pool5), so the output
has stride 16 and ``ceil(n / 16)`` cells along a side of ``n`` pixels.

Padded images: images of different true sizes share one padded shape
(a shape bucket). Given the true sizes, the activations outside the valid
region are zeroed after every ReLU; the valid size halves with ceil at each
pool. Since the image is zero outside its true size, the padded image then
gives, inside the valid region, exactly the features of the unpadded image:
a "same" convolution sees zeros beyond the border either way, and a ceil-mode
pool window that sticks out of the image takes the max of non-negative values
and zeros, which is the max over its in-image part.

Precision (``models/precision.py``): under ``"bfloat16"`` every conv after
``conv1_1`` takes bf16 activations and kernels and accumulates in float32;
the activations are kept in bf16 between convs (the masks and pools are exact
in bf16) and the features returned are float32. ``conv1_1``, on the pixels,
is float32 under every policy.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from densecap_jax.models import precision as precision_lib


def pooled_size(size):
  """Size after one 2x2 / stride-2 ceil-mode pool: ``ceil(n / 2)``; int or int array."""
  return (size + 1) // 2


def feature_size(image_size, num_pools=4):
  """Feature-map size ``(Hf, Wf)`` of images of size ``image_size = (..., 2)`` (H, W).

  Repeated ceil halving, i.e. ``ceil(n / 2**num_pools)``; works on ints and int arrays.
  """
  size = image_size
  for _ in range(num_pools):
    size = pooled_size(size)
  return size


def valid_region_mask(sizes, height, width):
  """``(B, height, width, 1)`` float32 mask of the top-left ``sizes`` ``(B, 2)`` (H, W) region."""
  rows = jnp.arange(height)[None, :, None] < sizes[:, 0, None, None]
  cols = jnp.arange(width)[None, None, :] < sizes[:, 1, None, None]
  return (rows & cols).astype(jnp.float32)[..., None]


def feature_channels(widths, skip_blocks=()):
  """Channels of ``VGG16``'s features: relu5_3's, plus those of the ``skip_blocks``."""
  return widths[-1][-1] + sum(widths[block - 1][-1] for block in skip_blocks)


def window_mean(x, sizes, factor):
  """Mean of ``(B, H, W, C)`` over ``factor x factor`` windows, in ceil mode, valid pixels only.

  Returns ``(B, ceil(H/f), ceil(W/f), C)``: each cell is the mean of the pixels
  of its window inside the true size ``sizes`` (``(B, 2)`` int, or None for
  the whole array); a window with none gives 0. The cells line up with those
  of ``factor`` = 2^n ceil-mode pools, and a padded image gives the cells of
  the unpadded one.
  """
  b, h, w, c = x.shape
  rows, cols = -(-h // factor), -(-w // factor)
  if sizes is None:
    mask = jnp.ones((b, h, w, 1), x.dtype)
  else:
    mask = valid_region_mask(sizes, h, w).astype(x.dtype)
  pad = ((0, 0), (0, rows * factor - h), (0, cols * factor - w), (0, 0))
  def window_sum(v):
    v = jnp.pad(v, pad).astype(jnp.float32)
    return v.reshape(b, rows, factor, cols, factor, v.shape[-1]).sum(axis=(2, 4))
  return window_sum(x * mask) / jnp.maximum(window_sum(mask), 1.0)


def max_pool_ceil(x):
  """2x2 / stride-2 max-pool of ``(B, H, W, C)`` in ceil mode (``:ceil()`` of loadcaffe).

  An odd last row / column is padded with ``-inf``, so its window covers only
  the remaining pixels. Returns ``(B, ceil(H/2), ceil(W/2), C)``.
  """
  pad = ((0, x.shape[1] % 2), (0, x.shape[2] % 2))
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding=pad)


class VGG16(nn.Module):
  """VGG-16 conv1_1 ... relu5_3, layers named ``conv{block}_{index}``.

  Attributes:
    widths: output channels of each conv, grouped by block (five blocks).
    frozen_blocks: the first blocks never receive gradient (``conv_net1`` of
      the original: conv1_1 ... conv2_2 for 2, §2); their output goes through
      ``jax.lax.stop_gradient``.
    precision: ``configs.PRECISIONS`` name (module doc).
    input_scale: the images are multiplied by it before ``conv1_1`` (1.0: not
      at all, as the original). A network trained from scratch on the 0-255
      scale starts with region codes of rms ~35 under He init; 1/64 starts
      them near unit scale, as ImageNet weights give.
    skip_blocks: the output of each of these blocks (before its pool) is
      averaged over the pixels of each stride-16 cell (``window_mean``) and
      its channels are appended to relu5_3's, in block order: the RoI codes
      pooled from them keep what the earlier layers see (colour, texture
      energy) next to what the deep ones make of it, as multi-layer RoI
      features do (ION, HyperNet). Empty: relu5_3 alone, the original.
    skip_gradient: False: the appended channels pass no gradient back, and
      the CNN trains as it would without them; True: the losses of the RoI
      codes (captions, final box regression, objectness) also train the
      appended blocks through them (never a block up to ``frozen_blocks``).
      ``benchmarks/README.md``, "The bundled model's recipe", has the runs.
  """
  widths: Sequence[Sequence[int]]
  frozen_blocks: int = 2
  precision: str = "float32"
  input_scale: float = 1.0
  skip_blocks: Sequence[int] = ()
  skip_gradient: bool = False

  @nn.compact
  def __call__(self, images, image_sizes=None, finetune=False):
    """Features at stride 16.

    Args:
      images: ``(B, H, W, 3)`` float32 (BGR minus the VGG mean, §1), zero
        outside each image's true size.
      image_sizes: optional ``(B, 2)`` int32 true ``(H, W)``; when given, the
        activations outside the valid region are zeroed (see module doc).
      finetune: when False, no gradient flows into any conv (the original
        before ``finetune_cnn_after``); when True, blocks after
        ``frozen_blocks`` are trained (§4.2).

    Returns:
      ``(B, Hf, Wf, C)`` float32 relu5_3 features, ``Hf = ceil(H / 16)``
      (bf16 values under ``"bfloat16"``); with ``skip_blocks`` the blocks'
      cell means follow relu5_3's channels.
    """
    conv_kwargs = precision_lib.conv_kwargs(self.precision)
    exact_kwargs = precision_lib.exact_kwargs()
    dtype = precision_lib.compute_dtype(self.precision)
    x = images if self.input_scale == 1.0 else images * self.input_scale
    sizes = image_sizes
    if sizes is not None:
      x = x * valid_region_mask(sizes, x.shape[1], x.shape[2])
    num_blocks = len(self.widths)
    skips = []
    for block, block_widths in enumerate(self.widths, start=1):
      for index, width in enumerate(block_widths, start=1):
        x = nn.Conv(width, (3, 3), padding=1, kernel_init=nn.initializers.he_normal(),
                    name=f"conv{block}_{index}",
                    **(exact_kwargs if block == index == 1 else conv_kwargs))(x)
        x = nn.relu(x).astype(dtype)
        if sizes is not None:
          x = x * valid_region_mask(sizes, x.shape[1], x.shape[2]).astype(dtype)
      if block in self.skip_blocks:
        skip = window_mean(x, sizes, 2 ** (num_blocks - block)).astype(dtype)
        passes = self.skip_gradient and block > self.frozen_blocks
        skips.append(skip if passes else jax.lax.stop_gradient(skip))
      if block < num_blocks:
        x = max_pool_ceil(x)
        if sizes is not None:
          sizes = pooled_size(sizes)
      if block == self.frozen_blocks:
        x = jax.lax.stop_gradient(x)
    if skips:
      x = jnp.concatenate([x] + skips, axis=-1)
    if not finetune:
      x = jax.lax.stop_gradient(x)
    return x.astype(jnp.float32)
