"""Image reading, the two resize kernels of the original, and VGG normalisation.

* Visual Genome images (``load_rgb``, used by ``preprocess.py``) are read with
  their pixels as stored, as the original did: the dataset's boxes refer to
  the stored pixels.
* Users' photos (``load_user_image`` and ``user_rgb``, behind
  ``load_model().predict``, ``predict``, ``extract_features`` and the server)
  are turned upright by their EXIF orientation (``exif_upright``), as
  browsers, phones and photo viewers show them; boxes refer to the upright
  image.
* Training / evaluation images (reference §1.1) are resized once by
  ``preprocess.py`` with PIL bilinear to ``trunc(W0 * s) x trunc(H0 * s)``,
  ``s = image_size / max(H0, W0)``: ``pil_resize_size`` and
  ``resize_long_side_pil``.
* Test-time images (§1.2) are resized by ``torch/image``'s ``image.scale``:
  ``torch_scale_size`` and ``resize_long_side_torch``.
* Both then go to BGR, 0-255 scale, minus the VGG mean: ``vgg_preprocess``.

Arrays are ``(H, W, C)`` NumPy arrays (channels last).
"""

import io
import os
import re
import warnings

import numpy as np
from PIL import Image
from PIL import ImageOps

# Per-channel mean in BGR order, 0-255 scale (§1.1 step 4).
VGG_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)
# Largest image file read (width x height), checked from the header before any
# pixel is decoded. It replaces Pillow's decompression-bomb warning (above
# about 89 million pixels) and error (above about 179 million).
MAX_PIXELS = 100_000_000


class ImageTooLargeError(ValueError):
  """An image file with more pixels than allowed.

  Attributes:
    name: the file (or upload) named in the message.
    pixels: its pixel count, width x height (``None``: not known, over ``limit``).
    limit: the largest pixel count allowed.
    size: ``(width, height)``, or ``None`` when not known.
  """

  def __init__(self, name, pixels, limit, size=None):
    if size:
      shape = f"{size[0]}x{size[1]} = {pixels} pixels"
    else:
      shape = f"{pixels} pixels" if pixels is not None else "more pixels than that"
    super().__init__(f"image too large: {name} has {shape}, over the limit of {limit} pixels")
    self.name, self.pixels, self.limit, self.size = name, pixels, limit, size


class UnsupportedImageError(ValueError):
  """A file that is not an image, or of a format not read."""


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


def _decode(source, name, max_pixels, formats, convert):
  """Opens an image file, checks its size from the header, decodes it and applies ``convert``.

  Args:
    source: a path, or the encoded bytes.
    name: how messages name the file.
    max_pixels: the most pixels (width x height) allowed; ``None``: no limit.
    formats: Pillow format names tried (``None``: all).
    convert: ``PIL.Image -> result``, called on the loaded image while it is open.

  Raises:
    ValueError: one line naming the file: missing, empty, not an image
      (:class:`UnsupportedImageError`), too large (:class:`ImageTooLargeError`),
      truncated or corrupt, or refused by ``convert``.
  """
  if isinstance(source, (bytes, bytearray, memoryview)):
    if not len(source):
      raise ValueError(f"empty file: {name}")
    source = io.BytesIO(source)
  elif (isinstance(source, (str, os.PathLike)) and os.path.isfile(source)
        and os.path.getsize(source) == 0):
    raise ValueError(f"empty file: {name}")
  try:
    # Pillow's own bomb check warns (or raises) inside open; ours below replaces it.
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      with Image.open(source, formats=formats) as img:
        width, height = img.size
        if max_pixels is not None and width * height > max_pixels:
          raise ImageTooLargeError(name, width * height, max_pixels, (width, height))
        img.load()
        return convert(img)
  except ImageTooLargeError:
    raise
  except Image.DecompressionBombError as e:
    # Over Pillow's own hard limit, before the header reached our check.
    found = re.search(r"\((\d+) pixels\)", str(e))
    pixels = int(found.group(1)) if found else None
    limit = 2 * Image.MAX_IMAGE_PIXELS
    if max_pixels is not None and (pixels is None or max_pixels < pixels):
      limit = min(limit, max_pixels)
    raise ImageTooLargeError(name, pixels, limit) from None
  except FileNotFoundError:
    raise ValueError(f"image not found: {name}") from None
  except Image.UnidentifiedImageError:
    raise UnsupportedImageError(f"cannot read image {name}: not an image, or of an "
                                f"unsupported format") from None
  except (OSError, SyntaxError, ValueError) as e:
    raise ValueError(f"cannot read image {name}: {e}") from None


def load_rgb(path, max_pixels=MAX_PIXELS):
  """Reads a dataset image file as ``(H, W, 3)`` uint8 RGB, its pixels as stored.

  Like the original's ``scipy.misc.imread`` (§1.1 step 1), pixel data are
  taken as stored (no EXIF rotation; Visual Genome boxes refer to the stored
  pixels; users' photos go through :func:`user_rgb` instead) and grey images
  are replicated to three channels. Other modes the original could not handle
  become RGB too: alpha is dropped, CMYK is converted, 16-bit grey is scaled
  to 8 bits.

  Raises:
    ValueError: the file is missing, empty, not an image, over ``max_pixels``,
      truncated or of an unsupported mode; the message names the file.
  """
  return _decode(path, path, max_pixels, None, _to_rgb_uint8)


def exif_upright(image):
  """A PIL image turned and flipped as its EXIF orientation says, the way viewers show it.

  The one place users' photos are turned upright (``load_user_image``,
  ``user_rgb``, hence the Python API, ``predict``, ``extract_features`` and the
  server). Phone cameras often store a portrait photo as landscape pixels with
  EXIF Orientation 6 or 8. The result has no orientation tag, so applying this
  twice is the same as once; an image without one is returned as a copy.
  """
  return ImageOps.exif_transpose(image)


def load_user_image(source, *, name=None, max_pixels=MAX_PIXELS, formats=None):
  """A user's photo (a path, or the encoded bytes) -> a loaded, upright PIL image.

  The pixel count is checked from the header before any pixel is decoded,
  then the EXIF orientation is applied (:func:`exif_upright`). The image keeps
  its decoded mode (:func:`user_rgb` makes it RGB).

  Args:
    source: a path or the file's bytes.
    name: how messages name it (default: the path, or "the image").
    max_pixels: the most pixels (width x height) allowed; ``None``: no limit.
    formats: Pillow format names tried (default: all Pillow reads).

  Raises:
    ValueError: one line naming the file (see ``_decode``; too large is
      :class:`ImageTooLargeError`, not an image :class:`UnsupportedImageError`).
  """
  if name is None:
    name = "the image" if isinstance(source, (bytes, bytearray, memoryview)) else os.fspath(source)
  return _decode(source, name, max_pixels, formats, exif_upright)


def _array_rgb(array):
  """A uint8 ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` array -> ``(H, W, 3)``.

  Grey is replicated and alpha dropped, as PIL's ``convert("RGB")`` does.
  """
  shape_ok = array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))
  if array.dtype != np.uint8 or not shape_ok:
    raise ValueError(f"expected a uint8 image array of shape (H, W), (H, W, 1), (H, W, 3) RGB "
                     f"or (H, W, 4) RGBA, got {array.dtype} {array.shape}")
  if array.shape[0] < 1 or array.shape[1] < 1:
    raise ValueError(f"the image array is empty: shape {array.shape}")
  if array.ndim == 2:
    array = array[:, :, None]
  if array.shape[2] == 1:
    return np.repeat(array, 3, axis=2)
  return np.ascontiguousarray(array[:, :, :3])


def user_rgb(image, *, max_pixels=MAX_PIXELS):
  """A user's image -> ``(H, W, 3)`` uint8 RGB, upright.

  Args:
    image: a path (read with :func:`load_user_image`), a PIL image (turned
      upright by its EXIF orientation with :func:`exif_upright`, then made
      RGB), or a uint8 NumPy array ``(H, W)`` / ``(H, W, 1)`` grey, ``(H, W, 3)``
      RGB or ``(H, W, 4)`` RGBA (taken as is).
    max_pixels: the largest file read (paths only).

  Raises:
    TypeError: ``image`` is none of these.
    ValueError: an unreadable file or an array of another dtype or shape.
  """
  if isinstance(image, (str, os.PathLike)):
    return _to_rgb_uint8(load_user_image(image, max_pixels=max_pixels))
  if isinstance(image, Image.Image):
    try:
      return _to_rgb_uint8(exif_upright(image))
    except (OSError, SyntaxError) as e:
      raise ValueError(f"cannot read the PIL image: {e}") from None
  if isinstance(image, np.ndarray) or hasattr(image, "__array__"):
    return _array_rgb(np.asarray(image))
  raise TypeError(f"expected an image path, a PIL image or a uint8 NumPy array, "
                  f"got {type(image).__name__}")


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
