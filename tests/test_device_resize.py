"""Tests for densecap_jax.data.device_resize: the test-time resize on the device.

The device path must give the NumPy path's model input (``prepare_test_image``)
and display image bit for bit on CPUs and GPUs -- and within 1e-4 on the 0-255
scale on any backend -- for every size, compile nothing new for photo sizes within a
bucket, and leave predictions unchanged.
"""

import glob
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image
import small_model

from densecap_jax import predictor
from densecap_jax.commands import predict
from densecap_jax.data import device_resize
from densecap_jax.data import images as images_lib

VOCAB = [None, "a", "red", "circle", "square", "blue"]
# Bit for bit on CPUs and GPUs (IEEE float32 division); within 1e-4 on TPUs.
EXACT = jax.default_backend() != "tpu"

# (H0, W0) originals per long side: shrinking, enlarging, equal, odd, thin, one-pixel sides.
CASES = {
    720: [(3000 // 4, 4000 // 4), (768, 1024), (1024, 768), (480, 640), (720, 540), (541, 720),
          (301, 300), (97, 1201), (1201, 97), (33, 35), (1, 5), (719, 721)],
    256: [(90, 120), (120, 60), (511, 37), (1000, 13), (256, 256), (3, 7), (255, 257)],
    64: [(90, 120), (63, 64), (1, 1), (64, 2), (1280, 960)],
}


def _host(rgb, image_size):
  """The NumPy path: ``(model_input, display)`` as ``DenseCapPredictor.prepare`` makes them."""
  model_input = images_lib.prepare_test_image(rgb, image_size)
  display = np.clip(np.rint((model_input + images_lib.VGG_MEAN_BGR)[..., ::-1]), 0, 255)
  return model_input, display.astype(np.uint8)


def _check_equal(device, host):
  assert device.shape == host.shape and device.dtype == host.dtype
  assert np.abs(device.astype(np.float64) - host.astype(np.float64)).max() <= 1e-4
  if EXACT:
    np.testing.assert_array_equal(device, host)


@pytest.mark.parametrize("image_size", sorted(CASES))
def test_batch_equals_numpy_path_for_many_sizes(image_size):
  rng = np.random.default_rng(image_size)
  rgbs = [rng.integers(0, 256, size + (3,), dtype=np.uint8) for size in CASES[image_size]]
  sizes = [images_lib.torch_scale_size(*r.shape[:2], image_size) for r in rgbs]
  bucket = (max(s[0] for s in sizes) + 3, max(s[1] for s in sizes) + 5)  # padding on both sides
  arrays = device_resize.batch_arrays(rgbs, sizes, bucket, len(rgbs) + 1)  # and an unused slot
  model_input, display = jax.device_get(
      device_resize.resize_batch_jit(**arrays, zero=np.uint32(0)))
  assert model_input.shape == (len(rgbs) + 1,) + bucket + (3,) and display.dtype == np.uint8
  for k, (rgb, (h, w)) in enumerate(zip(rgbs, sizes)):
    host_input, host_display = _host(rgb, image_size)
    _check_equal(model_input[k, :h, :w], host_input)
    _check_equal(display[k, :h, :w], host_display)
    assert not model_input[k, h:].any() and not model_input[k, :, w:].any()  # padding is zero
    assert not display[k, h:].any() and not display[k, :, w:].any()
  assert not model_input[-1].any() and not display[-1].any()


def test_one_image_grey_and_constant_images():
  rng = np.random.default_rng(1)
  grey = images_lib.user_rgb(rng.integers(0, 256, (123, 77), dtype=np.uint8))  # replicated
  for rgb in (grey, np.full((50, 70, 3), 255, np.uint8), np.zeros((70, 50, 3), np.uint8)):
    for image_size in (40, 200):
      model_input, display = device_resize.prepare_on_device(rgb, image_size)
      host_input, host_display = _host(rgb, image_size)
      _check_equal(model_input, host_input)
      _check_equal(display, host_display)
  _, display = device_resize.prepare_on_device(grey, 200)
  assert (display == display[..., :1]).all()
  with pytest.raises(ValueError, match="would be resized to 0x"):
    device_resize.prepare_on_device(np.zeros((1, 2000, 3), np.uint8), 720)


def test_input_and_tap_buckets():
  ladder = sorted({device_resize.input_bucket(n) for n in range(1, 9000)})
  assert ladder[:10] == [64, 128, 192, 256, 320, 384, 448, 512, 640, 768]
  assert ladder[10:18] == [896, 1024, 1280, 1536, 1792, 2048, 2560, 3072]
  for n in range(1, 9000, 7):
    bucket = device_resize.input_bucket(n)
    assert bucket >= n and bucket % 64 == 0 and (bucket <= 1.25 * n or bucket - n < 64)
  assert device_resize.input_bucket(3000) == 3072 and device_resize.input_bucket(4000) == 4096
  assert [device_resize.tap_bucket(t) for t in (1, 2, 3, 4, 5, 7, 8, 9)] == [1, 2, 4, 4, 8, 8, 8,
                                                                             16]
  with pytest.raises(ValueError, match="positive"):
    device_resize.input_bucket(0)


def test_batch_arrays_checks_its_inputs():
  rgb = np.zeros((10, 20, 3), np.uint8)
  with pytest.raises(ValueError, match="does not fit the bucket"):
    device_resize.batch_arrays([rgb], [(10, 30)], (16, 16), 1)
  with pytest.raises(ValueError, match="uint8 RGB"):
    device_resize.batch_arrays([rgb.astype(np.float32)], [(10, 20)], (16, 32), 1)
  with pytest.raises(ValueError, match="expected 1 to 1 images"):
    device_resize.batch_arrays([rgb, rgb], [(10, 20)] * 2, (16, 32), 1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return small_model.save_random_tiny_model(tmp_path_factory.mktemp("model") / "m", VOCAB,
                                            image_size=64)


def test_new_photo_sizes_within_a_bucket_compile_nothing(model_dir, record_compiles):
  model = predictor.load_model(model_dir)
  assert model.preprocess == "device"
  rng = np.random.default_rng(2)
  # 90x120 -> 48x64: input bucket 128x128, 4 taps each way. (Its programs may already be
  # compiled by an earlier test in this process, so only the second call is checked.)
  first = model.predict(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
  photos = [rng.integers(0, 256, (84, 118, 3), dtype=np.uint8),  # -> 45x64, the same buckets
            rng.integers(0, 256, (80, 110), dtype=np.uint8)]  # grey -> 46x64, the same buckets
  with record_compiles() as compiled:
    second = model.predict(photos)
  assert not compiled, compiled
  assert len(first) == 1 and len(second) == 2


def test_predictions_and_displays_equal_the_host_path(model_dir):
  rng = np.random.default_rng(3)
  images = [rng.integers(0, 256, size, dtype=np.uint8)  # two buckets: 48x64 and 64x32
            for size in ((90, 120, 3), (120, 60, 3), (300, 150), (84, 118, 3))]
  model = predictor.load_model(model_dir, batch_size=2)
  on_device = [model.prepare(image, on_device=True) for image in images]
  on_host = [model.prepare(image) for image in images]
  assert on_device[2].model_input is None and on_device[2].rgb.shape == (300, 150, 3)
  assert on_device[2].size == on_device[2].resized_size == on_host[2].size == (64, 32)
  device_results = model.predict_prepared(on_device, displays=True)
  for d, h, p, q in zip(device_results, model.predict_prepared(on_host), on_device, on_host):
    np.testing.assert_array_equal(d["boxes"], h["boxes"])
    np.testing.assert_array_equal(d["scores"], h["scores"])
    assert d["captions"] == h["captions"]
    np.testing.assert_array_equal(p.display, q.display)
  # The API streams, on the device (boxes in the resized image, as predict_prepared's).
  for d, h in zip(model.predict(images, coords="resized"), device_results):
    np.testing.assert_array_equal(d["boxes"], h["boxes"])
  with pytest.raises(ValueError, match="preprocess must be one of device, host"):
    predictor.load_model(model_dir, preprocess="gpu")


@pytest.mark.slow
def test_predict_command_writes_the_same_files_either_way(model_dir, tmp_path):
  photos = tmp_path / "photos"
  photos.mkdir()
  rng = np.random.default_rng(4)
  for name, size in (("a.jpg", (90, 120)), ("b.png", (120, 60)), ("c.png", (84, 118))):
    Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(photos / name)
  outputs = {}
  for preprocess in ("device", "host"):
    vis_dir, drawn_dir = tmp_path / preprocess / "vis", tmp_path / preprocess / "drawn"
    predict.main(["--input_dir", str(photos), "--checkpoint", model_dir, "--output_vis_dir",
                  str(vis_dir), "--output_dir", str(drawn_dir), "--preprocess", preprocess,
                  "--batch_size", "2"])
    with open(vis_dir / "results.json") as f:
      results = json.load(f)
    assert results["opt"]["preprocess"] == preprocess
    files = {os.path.relpath(p, tmp_path / preprocess): open(p, "rb").read()
             for p in glob.glob(str(tmp_path / preprocess / "*" / "*.*"))
             if not p.endswith((".json", ".js"))}
    outputs[preprocess] = (results["results"], files)
  assert outputs["device"] == outputs["host"]
  assert len(outputs["device"][1]) >= 6  # three resized and three drawn pictures
