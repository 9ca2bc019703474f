"""Shape buckets: a few padded image sizes so a whole dataset compiles a handful of programs.

Images are resized so that their long side is ``image_size`` (reference §1) and
then zero-padded (bottom and right) into the smallest bucket that holds them.
Every bucket side is a multiple of 16, the VGG-16 feature stride, so the
padded feature map is exactly ``bucket / 16`` and the valid one is
``ceil(size / 16)`` cells (four ceil-mode poolings, §2).
"""

import math

import numpy as np

DEFAULT_SHORT_SIDE_FRACTIONS = (0.25, 0.5, 0.625, 0.75, 0.875, 1.0)


def _round_up(x, multiple):
  return int(math.ceil(x / multiple)) * multiple


def make_buckets(image_size, fractions=DEFAULT_SHORT_SIDE_FRACTIONS, multiple=16):
  """Landscape and portrait buckets for images whose long side is ``image_size``.

  Args:
    image_size: long side after resizing, pixels.
    fractions: short side / long side of each bucket, ascending, last = 1.
    multiple: every bucket side is rounded up to a multiple of this.

  Returns:
    Sorted tuple of ``(height, width)`` buckets, each side a multiple of
    ``multiple``; ``(S, S)`` once, then ``(short, S)`` and ``(S, short)``.
  """
  if image_size <= 0:
    raise ValueError(f"image_size must be positive, got {image_size}")
  long_side = _round_up(image_size, multiple)
  shorts = sorted({min(_round_up(f * image_size, multiple), long_side) for f in fractions})
  shorts[-1] = long_side
  buckets = {(long_side, long_side)}
  for s in shorts:
    buckets.add((s, long_side))
    buckets.add((long_side, s))
  return tuple(sorted(buckets))


def pick_bucket(height, width, buckets):
  """The smallest bucket (by area, then height) that holds an image of ``height x width``.

  Raises:
    ValueError: when no bucket is large enough; the message names the
      ``--image_size`` that fits the buckets.
  """
  fitting = [b for b in buckets if b[0] >= height and b[1] >= width]
  if not fitting:
    long_side = min(max(b) for b in buckets)
    raise ValueError(
        f"image of {height}x{width} (HxW) fits no shape bucket (largest "
        f"{'x'.join(map(str, max(buckets, key=lambda b: b[0] * b[1])))}): the image was resized "
        f"for a larger size than the model's; use --image_size {long_side} (preprocess the "
        f"data, or run the model, at the size its buckets were made for)")
  return min(fitting, key=lambda b: (b[0] * b[1], b[0]))


def pad_to_bucket(image, bucket):
  """Zero-pads an ``(H, W, C)`` image at the bottom and right to ``bucket = (Hb, Wb)``."""
  h, w = image.shape[:2]
  if h > bucket[0] or w > bucket[1]:
    raise ValueError(f"image of {h}x{w} does not fit bucket {bucket[0]}x{bucket[1]}")
  out = np.zeros((bucket[0], bucket[1]) + image.shape[2:], dtype=image.dtype)
  out[:h, :w] = image
  return out
