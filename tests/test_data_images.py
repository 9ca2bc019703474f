"""Tests for densecap_jax.data.images: reading images, the test-time resize (§1.2), VGG normalisation."""

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from densecap_jax.data import images


def write_orientation_6_jpeg(path, height=20, width=30, seed=2):
  """A JPEG stored ``width`` wide x ``height`` high with EXIF Orientation 6 (view turned 90° cw).

  Returns the stored pixels as decoded, ``(height, width, 3)`` uint8.
  """
  stored = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3),
                                                                dtype=np.uint8))
  exif = Image.Exif()
  exif[0x0112] = 6
  stored.save(path, format="JPEG", quality=95, exif=exif.tobytes())
  with Image.open(path) as img:
    return np.asarray(img.convert("RGB"))


def png_header_only(width, height):
  """A PNG whose header claims ``width x height`` but whose pixel data are for 1 x 1."""
  buffer = io.BytesIO()
  Image.new("RGB", (1, 1)).save(buffer, format="PNG")
  data = bytearray(buffer.getvalue())
  ihdr = data.index(b"IHDR")
  data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
  data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
  return bytes(data)


def test_users_photos_are_upright_dataset_images_as_stored(tmp_path):
  path = tmp_path / "phone.jpg"
  stored = write_orientation_6_jpeg(path)
  upright = np.rot90(stored, k=-1)  # Orientation 6: turn 90 degrees clockwise to view
  assert upright.shape == (30, 20, 3)
  np.testing.assert_array_equal(images.user_rgb(str(path)), upright)
  np.testing.assert_array_equal(images.user_rgb(path), upright)  # PathLike
  with Image.open(path) as img:
    np.testing.assert_array_equal(images.user_rgb(img), upright)
  loaded = images.load_user_image(str(path))
  assert loaded.size == (20, 30)
  assert images.exif_upright(loaded).size == (20, 30)  # applying it again changes nothing
  np.testing.assert_array_equal(images.load_user_image(path.read_bytes()).convert("RGB"), upright)
  # Visual Genome preprocessing keeps the stored pixels, as the original did.
  np.testing.assert_array_equal(images.load_rgb(str(path)), stored)


def test_user_rgb_takes_grey_and_rgba_arrays_as_pil_does():
  rng = np.random.default_rng(3)
  grey = rng.integers(0, 256, (5, 7), dtype=np.uint8)
  rgba = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
  want_grey = np.asarray(Image.fromarray(grey).convert("RGB"))
  np.testing.assert_array_equal(images.user_rgb(grey), want_grey)
  np.testing.assert_array_equal(images.user_rgb(grey[:, :, None]), want_grey)
  np.testing.assert_array_equal(images.user_rgb(rgba),
                                np.asarray(Image.fromarray(rgba).convert("RGB")))
  np.testing.assert_array_equal(images.user_rgb(Image.fromarray(rgba)), rgba[:, :, :3])
  for bad in (np.zeros((5, 7), np.float32), np.zeros((5, 7, 2), np.uint8),
              np.zeros((2, 5, 7, 3), np.uint8), np.zeros((0, 7, 3), np.uint8)):
    with pytest.raises(ValueError, match="uint8 image array|empty"):
      images.user_rgb(bad)
  for bad in (42, b"bytes", [[1, 2]]):
    with pytest.raises(TypeError, match="expected an image path, a PIL image or a uint8"):
      images.user_rgb(bad)


def test_empty_and_missing_files_are_named(tmp_path):
  empty = tmp_path / "empty.jpg"
  empty.write_bytes(b"")
  for read in (images.user_rgb, images.load_rgb):
    with pytest.raises(ValueError, match=f"^empty file: {empty}$"):
      read(str(empty))
    with pytest.raises(ValueError, match="image not found: .*missing.jpg"):
      read(str(tmp_path / "missing.jpg"))
  with pytest.raises(ValueError, match="empty file: the image"):
    images.load_user_image(b"")


def test_pixel_limit_replaces_pillows_decompression_bomb_warning_and_error(tmp_path):
  over_warning = tmp_path / "big.png"  # 95 million pixels: Pillow warns (over ~89 million)
  over_warning.write_bytes(png_header_only(10000, 9500))
  over_error = tmp_path / "huge.png"  # 225 million: Pillow refuses (over ~179 million)
  over_error.write_bytes(png_header_only(15000, 15000))
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # any warning fails the test
    with pytest.raises(images.ImageTooLargeError) as e:
      images.user_rgb(str(over_warning), max_pixels=40_000_000)
    assert str(e.value) == (f"image too large: {over_warning} has 10000x9500 = 95000000 pixels, "
                            f"over the limit of 40000000 pixels")
    with pytest.raises(images.ImageTooLargeError) as e:
      images.user_rgb(str(over_error))
    assert str(e.value) == (f"image too large: {over_error} has 225000000 pixels, over the "
                            f"limit of {images.MAX_PIXELS} pixels")
    assert (e.value.pixels, e.value.limit) == (225_000_000, images.MAX_PIXELS)
    with pytest.raises(images.ImageTooLargeError, match="225000000 pixels"):
      images.load_rgb(str(over_error))
    # Under the limit, a big header goes on to decoding (here: the data are missing).
    with pytest.raises(ValueError, match="cannot read image .*big.png"):
      images.user_rgb(str(over_warning))


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
