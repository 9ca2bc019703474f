"""Tests for streaming runs: read-ahead threads, batching as images come, bounded memory."""

import os
import re
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pytest
from PIL import Image
import small_model

from densecap_jax.commands import extract_features
from densecap_jax import predictor
from densecap_jax import features
from densecap_jax.data import image_stream

VOCAB = [None, "a", "red", "circle", "square", "blue"]
# Runs predict in a fresh process and prints its peak resident memory (KiB on Linux).
_PEAK_RSS_SCRIPT = """
import resource, sys
from densecap_jax.commands import predict
try:
  predict.main(sys.argv[1:])
finally:
  print("peak_rss_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def test_read_ahead_keeps_order_bounds_the_lead_and_passes_value_errors():
  started = []
  consumed = []
  lead = []
  lock = threading.Lock()

  def work(i):
    with lock:
      started.append(i)
    time.sleep(0.001 * (i % 3))
    if i == 5:
      raise ValueError("unreadable 5")
    return i * 10

  for item, result in image_stream.read_ahead(work, range(20), depth=3, workers=2):
    with lock:
      lead.append(len(started) - len(consumed))
    consumed.append(item)
    if item == 5:
      assert isinstance(result, ValueError) and str(result) == "unreadable 5"
    else:
      assert result == item * 10
  assert consumed == list(range(20))
  assert max(lead) <= 4  # the one handed out and at most depth = 3 ahead

  def bad(i):
    raise TypeError("not an image")

  with pytest.raises(TypeError, match="not an image"):
    list(image_stream.read_ahead(bad, range(3), depth=2))


def _fake(size):
  return image_stream.PreparedImage(np.zeros(size + (3,), np.float32), None, size)


def test_group_batches_fills_batches_and_bounds_what_waits():
  buckets = ((32, 64), (64, 32), (64, 64))
  sizes = [(30, 64), (64, 30), (30, 60), (64, 64), (64, 20), (31, 64), (64, 31), (64, 64)]
  pairs = [(i, _fake(s)) for i, s in enumerate(sizes)]
  groups = [[i for i, _ in g] for g in image_stream.group_batches(pairs, buckets, 2)]
  # Full pairs as soon as they fill; the rest at the end, in the order of their first image.
  assert groups == [[0, 2], [1, 4], [3, 7], [5], [6]]
  groups = [[i for i, _ in g] for g in image_stream.group_batches(pairs, buckets, 4, max_pending=3)]
  assert sorted(i for g in groups for i in g) == list(range(8))
  assert groups[0] == [0, 2]  # 3 waiting: the largest group goes, partly filled
  assert all(len(g) <= 4 for g in groups)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return small_model.save_random_tiny_model(tmp_path_factory.mktemp("model") / "m", VOCAB,
                                            image_size=64)


def test_extract_features_rows_stay_in_input_order_when_batches_finish_out_of_order(
    model_dir, tmp_path):
  photos = tmp_path / "photos"
  photos.mkdir()
  rng = np.random.default_rng(0)
  # Landscape and portrait alternate: the portrait batch fills (and is written) first.
  names = ["p0.png", "l1.png", "p2.png", "l3.png", "bad.png", "p4.png"]
  for name in names:
    size = (120, 60) if name.startswith("p") else (90, 120)
    Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(photos / name)
  (photos / "bad.png").write_bytes(b"not a png")
  listed = [str(photos / n) for n in names]
  (tmp_path / "list.txt").write_text("\n".join(listed))
  output = tmp_path / "feats.h5"
  with pytest.raises(SystemExit, match="1 of 6 images could not be read"):
    extract_features.main(["--checkpoint", model_dir, "--input_txt", str(tmp_path / "list.txt"),
                           "--output_h5", str(output), "--boxes_per_image", "3",
                           "--batch_size", "2"])
  with h5py.File(output, "r") as f:
    paths = [p.decode() for p in f["image_paths"][:]]
    feats = f["feats"][:]
    assert f["boxes"].shape == (5, 3, 4)
  assert paths == [p for p in listed if not p.endswith("bad.png")]
  model = predictor.load_model(model_dir, batch_size=2, final_nms_thresh=0.4)  # the command's
  extractor = features.FeatureExtractor(model, 3)
  rows = extractor.detections([model.prepare(p) for p in paths])  # one call, on the host
  np.testing.assert_allclose(feats, np.stack([r["feats"] for r in rows]), rtol=1e-5, atol=1e-5)


def _make_photos(folder, count):
  folder.mkdir()
  rng = np.random.default_rng(count)
  for i in range(count):
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
  return folder


def _peak_rss_kib(photos, out, env):
  """Peak RSS of one ``predict`` run over ``photos`` with the bundled model, in a fresh process."""
  run = subprocess.run(
      [sys.executable, "-c", _PEAK_RSS_SCRIPT, "--input_dir", str(photos), "--max_images", "-1",
       "--output_vis_dir", str(out / "vis"), "--output_dir", str(out / "drawn")],
      capture_output=True, text=True, env=env, timeout=600, check=False)
  assert run.returncode == 0, run.stderr[-2000:]
  return int(re.search(r"peak_rss_kib (\d+)", run.stderr).group(1))


@pytest.mark.slow
def test_predict_memory_does_not_grow_with_the_folder_size(tmp_path):
  """400 images take no more memory than 50: images stream, a few batches at a time.

  Before streaming, predict held every prepared image (about 0.74 MB each at
  the bundled model's 256 pixels) until the end: 400 images peaked about
  270 MB above 50. Now the difference is noise (under 10 MB measured).
  """
  env = dict(os.environ, MALLOC_ARENA_MAX="2")
  few = _make_photos(tmp_path / "few", 50)
  many = _make_photos(tmp_path / "many", 400)
  _peak_rss_kib(_make_photos(tmp_path / "warm", 2), tmp_path / "out-warm", env)  # compile once
  peak_few = _peak_rss_kib(few, tmp_path / "out-few", env)
  peak_many = _peak_rss_kib(many, tmp_path / "out-many", env)
  assert len(os.listdir(tmp_path / "out-many" / "drawn")) == 400
  assert peak_many - peak_few < 40 * 1024, (peak_few, peak_many)
