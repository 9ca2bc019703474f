"""Image reading, the two resize kernels of the original, and VGG normalisation.

* Training / evaluation images (reference §1.1) are resized once by
  ``preprocess.py`` with PIL bilinear to ``trunc(W0 * s) x trunc(H0 * s)``,
  ``s = image_size / max(H0, W0)``: ``pil_resize_size`` and
  ``resize_long_side_pil``.
* Test-time images (§1.2) are resized by ``torch/image``'s ``image.scale``:
  ``torch_scale_size`` and ``resize_long_side_torch``.
* Both then go to BGR, 0-255 scale, minus the VGG mean: ``vgg_preprocess``.

Arrays are ``(H, W, C)`` NumPy arrays (channels last).
"""

import numpy as np
from PIL import Image

# Per-channel mean in BGR order, 0-255 scale (§1.1 step 4).
VGG_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)


def _to_rgb_uint8(img):
  """A decoded PIL image as ``(H, W, 3)`` uint8 RGB."""
  if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
    # 16-bit (and 32-bit integer) grey: map 0..65535 to 0..255.
    grey = np.asarray(img, np.float64)
    grey = np.clip(np.round(grey / 257.0), 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)
  if img.mode == "F":
    raise ValueError("floating-point images (PIL mode F) are not supported")
  # Grey is replicated, palettes expanded, alpha dropped, CMYK / YCbCr converted.
  return np.asarray(img.convert("RGB"), np.uint8)


def load_rgb(path):
  """Reads an image file as ``(H, W, 3)`` uint8 RGB.

  Like the original's ``scipy.misc.imread`` (§1.1 step 1), pixel data are
  taken as stored (no EXIF rotation; Visual Genome boxes refer to the stored
  pixels) and grey images are replicated to three channels. Other modes the
  original could not handle become RGB too: alpha is dropped, CMYK is
  converted, 16-bit grey is scaled to 8 bits.

  Raises:
    ValueError: the file is missing, not an image, truncated or of an
      unsupported mode; the message names the file.
  """
  try:
    with Image.open(path) as img:
      img.load()
      return _to_rgb_uint8(img)
  except FileNotFoundError:
    raise ValueError(f"image not found: {path}") from None
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f"cannot read image {path}: {e}") from None


def pil_resize_size(height, width, image_size):
  """Size ``(h, w)`` of the training resize (§1.1 step 2).

  ``s = float(image_size) / max(H0, W0)`` and each side is ``trunc(side * s)``
  in double precision, as ``scipy.misc.imresize(img, s)`` computed it.
  [QUIRK] the long side can come out as ``image_size - 1`` (e.g. 719 for an
  original long side of 156 or 571 with ``image_size = 720``).
  """
  scale = float(image_size) / max(height, width)
  return int(height * scale), int(width * scale)


def resize_long_side_pil(rgb, image_size):
  """Training resize (§1.1 step 2): PIL bilinear to ``pil_resize_size``.

  Args:
    rgb: ``(H0, W0, 3)`` uint8.
    image_size: target long side (720 in the original).

  Returns:
    ``(h, w, 3)`` uint8, ``(h, w) = pil_resize_size(H0, W0, image_size)``.

  Raises:
    ValueError: a side would become 0 pixels.
  """
  height, width = pil_resize_size(rgb.shape[0], rgb.shape[1], image_size)
  if height < 1 or width < 1:
    raise ValueError(
        f"image of {rgb.shape[0]}x{rgb.shape[1]} (HxW) would be resized to {height}x{width}")
  resized = Image.fromarray(rgb).resize((width, height), resample=Image.BILINEAR)
  return np.asarray(resized, np.uint8)


def torch_scale_size(height, width, size):
  """Size ``(h, w)`` of ``image.scale(img, size)`` (§1.2 step 2): ``trunc(side * size / max)``.

  The product is formed first, so the long side is exactly ``size``.
  """
  longest = max(height, width)
  return int(height * size / longest), int(width * size / longest)


def _torch_linear_taps(src_len, dst_len):
  """Taps of ``torch/image``'s 1-D bilinear ``scaleLinear_rowcol`` in float32.

  Returns:
    ``(index, weight, norm)``: ``(dst_len, T)`` int64 source indices and
    float32 weights, summed in tap order, then divided by the ``(dst_len,)``
    float32 ``norm``. Enlarging is linear interpolation with aligned corners;
    shrinking averages the source interval ``[d r, (d + 1) r)``, ``r = src / dst``,
    with fractional end weights; equal sizes copy.
  """
  one = np.float32(1)
  rows = []
  norms = []
  if dst_len > src_len:
    scale = np.float32(src_len - 1) / np.float32(dst_len - 1)
    for d in range(dst_len - 1):
      if src_len == 1:
        rows.append([(0, one)])
      else:
        pos = np.float32(d) * scale
        i = int(pos)
        frac = pos - np.float32(i)
        rows.append([(i, one - frac), (min(i + 1, src_len - 1), frac)])
      norms.append(one)
    rows.append([(src_len - 1, one)])
    norms.append(one)
  elif dst_len < src_len:
    scale = np.float32(src_len) / np.float32(dst_len)
    i0, f0 = 0, np.float32(0)
    for d in range(dst_len):
      pos = np.float32(d + 1) * scale
      i1 = int(pos)
      f1 = pos - np.float32(i1)
      taps = [(i0, one - f0)] + [(s, one) for s in range(i0 + 1, i1)]
      if i1 < src_len:
        taps.append((i1, f1))
      norm = one - f0
      for _, w in taps[1:]:
        norm = norm + w
      rows.append(taps)
      norms.append(norm)
      i0, f0 = i1, f1
  else:
    rows = [[(d, one)] for d in range(dst_len)]
    norms = [one] * dst_len
  width = max(len(r) for r in rows)
  index = np.zeros((dst_len, width), np.int64)
  weight = np.zeros((dst_len, width), np.float32)
  for d, taps in enumerate(rows):
    for t, (i, w) in enumerate(taps):
      index[d, t] = i
      weight[d, t] = w
  return index, weight, np.asarray(norms, np.float32)


def _scale_axis_torch(img, dst_len, axis):
  """Applies ``_torch_linear_taps`` along ``axis`` (0 = height, 1 = width) in float32."""
  index, weight, norm = _torch_linear_taps(img.shape[axis], dst_len)
  moved = np.moveaxis(img, axis, 0)
  extra = (1,) * (moved.ndim - 1)
  acc = weight[:, 0].reshape((-1,) + extra) * moved[index[:, 0]]
  for t in range(1, index.shape[1]):
    acc = acc + weight[:, t].reshape((-1,) + extra) * moved[index[:, t]]
  acc = acc / norm.reshape((-1,) + extra)
  return np.moveaxis(acc.astype(np.float32), 0, axis)


def scale_bilinear_torch(img, height, width):
  """``image.scale(img, width, height, 'bilinear')`` of ``torch/image`` (§1.2).

  Separable: first along the width (every source row), then along the height.

  Args:
    img: ``(H, W, C)`` float array.
    height, width: output size.

  Returns:
    ``(height, width, C)`` float32.
  """
  img = np.asarray(img, np.float32)
  return _scale_axis_torch(_scale_axis_torch(img, width, axis=1), height, axis=0)


def resize_long_side_torch(img, size):
  """Test-time resize (§1.2 step 2): ``image.scale(img, size)``, long side exactly ``size``.

  Args:
    img: ``(H0, W0, C)`` float array (the original works on RGB in [0, 1]).
    size: long side of the output (720 in the original).

  Returns:
    ``(h, w, C)`` float32, ``(h, w) = torch_scale_size(H0, W0, size)``.
  """
  height, width = torch_scale_size(img.shape[0], img.shape[1], size)
  if height < 1 or width < 1:
    raise ValueError(
        f"image of {img.shape[0]}x{img.shape[1]} (HxW) would be resized to {height}x{width}")
  return scale_bilinear_torch(img, height, width)


def vgg_preprocess(rgb):
  """RGB ``(H, W, 3)``, 0-255 scale (uint8 or float) -> float32 BGR minus the VGG mean (§1.1)."""
  rgb = np.asarray(rgb)
  if rgb.ndim != 3 or rgb.shape[-1] != 3:
    raise ValueError(f"expected an (H, W, 3) RGB image, got shape {rgb.shape}")
  return rgb[..., ::-1].astype(np.float32) - VGG_MEAN_BGR


def bgr_uint8_to_model_input(bgr):
  """Stored BGR uint8 ``(H, W, 3)`` (HDF5 pixels, channels last) -> float32 minus the VGG mean."""
  return np.asarray(bgr).astype(np.float32) - VGG_MEAN_BGR


def prepare_test_image(rgb, image_size=720):
  """The whole test-time pipeline of §1.2: uint8 RGB -> resized float32 BGR minus the VGG mean.

  ``rgb / 255`` (``image.load``), ``resize_long_side_torch``, ``* 255``,
  RGB -> BGR, minus ``VGG_MEAN_BGR``.

  Args:
    rgb: ``(H0, W0, 3)`` uint8 RGB.
    image_size: long side after resizing.

  Returns:
    ``(h, w, 3)`` float32, ``(h, w) = torch_scale_size(H0, W0, image_size)``.
  """
  unit = np.asarray(rgb, np.float32) / np.float32(255)
  return vgg_preprocess(resize_long_side_torch(unit, image_size) * np.float32(255))
