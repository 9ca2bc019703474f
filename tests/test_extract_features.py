"""Tests for the extract_features command and its model functions, on a small random model."""

import contextlib
import io
import json
import os
import re

import h5py
import jax
import numpy as np
import pytest
from PIL import Image
import small_model
from test_data_images import write_orientation_6_jpeg

from densecap_jax import model_dir as model_dir_lib
from densecap_jax.commands import extract_features
from densecap_jax import predictor
from densecap_jax.configs import buckets as buckets_lib
from densecap_jax.data import images as images_lib
from densecap_jax.models import densecap
from densecap_jax.models import detection
from densecap_jax.models import vgg16
from densecap_jax.ops import boxes as boxes_lib
from densecap_jax.ops import roi_pool
from densecap_jax import features

VOCAB = [None, "a", "red", "circle", "square", "blue"]
NUM_PROPOSALS = 20
SIZES = {"a.jpg": (90, 120), "b.png": (120, 60), "c.jpg": (90, 120)}  # (H0, W0)


def _moving_box_regression(params):
  """Box regression that visibly moves the boxes, so proposals and final boxes differ."""
  box_reg = params["recognition"]["box_reg"]
  box_reg["kernel"] = 0.002 * jax.random.normal(jax.random.key(1), box_reg["kernel"].shape)
  return params


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return small_model.save_random_tiny_model(
      tmp_path_factory.mktemp("model") / "m", VOCAB, image_size=64,
      num_proposals=NUM_PROPOSALS, adjust_params=_moving_box_regression)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
  folder = tmp_path_factory.mktemp("photos")
  rng = np.random.default_rng(0)
  for name, size in SIZES.items():
    Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(folder / name)
  (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
  return folder


def _listing(folder, names, path):
  path.write_text("".join(f"{folder / n}\n" for n in names) + "\n")
  return str(path)


def _read(path):
  with h5py.File(path, "r") as f:
    data = {name: f[name][()] for name in f}
    data["attrs"] = dict(f.attrs)
  data["image_paths"] = [p.decode() for p in data["image_paths"]]
  return data


@pytest.fixture(scope="module")
def detections(model_dir, photos, tmp_path_factory):
  """The command on a, broken, b, c with more rows per image than proposals (padding)."""
  folder = tmp_path_factory.mktemp("detections")
  listing = _listing(photos, ["a.jpg", "broken.jpg", "b.png", "c.jpg"], folder / "list.txt")
  output = folder / "out" / "feats.h5"
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed), pytest.raises(SystemExit) as e:
    extract_features.main(["--checkpoint", model_dir, "--input_txt", listing, "--output_h5",
                           str(output), "--boxes_per_image", "30", "--batch_size", "2"])
  return dict(_read(output), printed=printed.getvalue(), exit=e.value.code)


class HandModel:
  """The model's pieces run one by one on one image at a time, outside the command."""

  def __init__(self, model_dir):
    self.params, config, _ = model_dir_lib.load_model(model_dir)
    self.config = config
    model = densecap.build_model(config)
    self._features = jax.jit(lambda p, i, s: model.apply({"params": p}, i, s,
                                                         method=densecap.DenseCap.features))
    self._recognize = jax.jit(lambda p, x: model.apply({"params": p}, x,
                                                       method=densecap.DenseCap.recognize))
    self._infer = jax.jit(lambda p, i, s: detection.infer(p, i, s, config, final_nms_thresh=0.4))

  def _prepare(self, path):
    image = images_lib.prepare_test_image(images_lib.load_rgb(path), self.config.image_size)
    bucket = buckets_lib.pick_bucket(*image.shape[:2], self.config.buckets)
    return buckets_lib.pad_to_bucket(image, bucket)[None], np.array([image.shape[:2]], np.int32)

  def recognize(self, path, boxes_xcycwh):
    """``(k, 4)`` xcycwh boxes -> codes, logits, transforms of the pooled boxes."""
    image, size = self._prepare(path)
    features = self._features(self.params, image, size)[0]
    pooled = roi_pool.bilinear_roi_pool(features, boxes_xcycwh, size[0], (7, 7),
                                        feature_size=vgg16.feature_size(size[0]))
    return self._recognize(self.params, pooled)

  def infer(self, path):
    """Kept xcycwh boxes and logits of ``detection.infer`` with a final NMS at 0.4."""
    boxes, scores, _, valid = self._infer(self.params, *self._prepare(path))
    n = int(valid[0].sum())
    return np.asarray(boxes[0, :n]), np.asarray(scores[0, :n])


@pytest.fixture(scope="module")
def hand(model_dir):
  return HandModel(model_dir)


def _detection_xywh_to_xcycwh(b):
  """Inverse of the §10.2 conversion ``x = xc - (w - 1) / 2``."""
  return np.stack([b[:, 0] + (b[:, 2] - 1) / 2, b[:, 1] + (b[:, 3] - 1) / 2, b[:, 2], b[:, 3]], -1)


def test_output_schema_and_skipped_image(detections, model_dir, photos):
  data = detections
  assert "skipped: cannot read image" in data["printed"] and "broken.jpg" in data["printed"]
  summary = data["printed"].strip().splitlines()[-1]
  assert summary.startswith(f"wrote {data['num_boxes'].sum()} boxes of 3 images (256-d features)")
  # Written, but the exit status says that an image could not be read, and which.
  assert data["exit"] == f"error: 1 of 4 images could not be read: {photos / 'broken.jpg'}"
  assert data["image_paths"] == [str(photos / n) for n in ("a.jpg", "b.png", "c.jpg")]
  assert data["feats"].shape == (3, 30, 256) and data["feats"].dtype == np.float32
  assert data["boxes"].shape == data["proposal_boxes"].shape == (3, 30, 4)
  assert data["boxes"].dtype == data["scores"].dtype == np.float32
  assert data["scores"].shape == (3, 30)
  assert data["num_boxes"].shape == (3,) and data["num_boxes"].dtype == np.int32
  attrs = data["attrs"]
  assert attrs["final_nms_thresh"] == 0.4 and attrs["rpn_nms_thresh"] == 0.7
  assert attrs["num_proposals"] == NUM_PROPOSALS and attrs["image_size"] == 64
  assert attrs["source"] == "detections" and attrs["checkpoint"] == model_dir


# c.jpg shares a batch with a.jpg (slot 1) and comes after b.png's row.
@pytest.mark.parametrize("index, name", [(0, "a.jpg"), (2, "c.jpg")])
def test_detection_features_are_fc7_codes_of_their_proposals(detections, hand, photos, index,
                                                             name):
  expected_boxes, expected_scores = hand.infer(photos / name)
  n = int(detections["num_boxes"][index])
  assert 0 < n == len(expected_boxes) <= NUM_PROPOSALS < 30
  boxes = detections["resized_boxes"][index]
  scale = detections["image_scale"][index]  # a.jpg and c.jpg: 90 x 120 -> 48 x 64
  assert scale == pytest.approx(90 / 48)
  np.testing.assert_allclose(detections["boxes"][index, :n],
                             boxes_lib.scale_xywh(boxes[:n], scale), rtol=1e-6)
  # Same detections as infer (final NMS at 0.4), in xywh: x = xc - (w - 1) / 2.
  np.testing.assert_allclose(_detection_xywh_to_xcycwh(boxes[:n]), expected_boxes,
                             rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(detections["scores"][index, :n], expected_scores, rtol=1e-5,
                             atol=1e-5)
  # The codes are fc7 of the pooled proposals, whose regression gives the stored boxes.
  proposals = _detection_xywh_to_xcycwh(
      boxes_lib.scale_xywh(detections["proposal_boxes"][index, :n], 1 / scale))
  codes, logits, transforms = hand.recognize(photos / name, proposals)
  np.testing.assert_allclose(detections["feats"][index, :n], codes, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(detections["scores"][index, :n], logits, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(boxes_lib.apply_box_transform(proposals, transforms),
                             expected_boxes, rtol=1e-5, atol=1e-3)
  assert np.abs(proposals - expected_boxes).max() > 0.5
  assert np.all(detections["feats"][index, :n] >= 0)  # post-ReLU
  # Fewer detections than rows: zero padding.
  for key in ("feats", "boxes", "resized_boxes", "scores", "proposal_boxes"):
    assert not np.any(detections[key][index, n:]), key


def test_pool_final_boxes_gives_codes_of_the_stored_boxes(detections, hand, model_dir, photos,
                                                          tmp_path):
  output = tmp_path / "final.h5"
  extract_features.main(["--checkpoint", model_dir, "--input_dir", str(photos), "--output_h5",
                         str(output), "--boxes_per_image", "5", "--pool_final_boxes", "1",
                         "--max_images", "1"])
  data = _read(output)
  assert data["image_paths"] == [str(photos / "a.jpg")]
  n = int(data["num_boxes"][0])
  assert n == min(5, detections["num_boxes"][0])
  np.testing.assert_allclose(data["boxes"][0], detections["boxes"][0, :5], atol=1e-5)
  codes, _, _ = hand.recognize(photos / "a.jpg",
                               _detection_xywh_to_xcycwh(data["resized_boxes"][0, :n]))
  np.testing.assert_allclose(data["feats"][0, :n], codes, rtol=1e-4, atol=1e-4)
  assert not np.allclose(data["feats"][0, :n], detections["feats"][0, :n], atol=1e-3)
  assert data["attrs"]["pool_final_boxes"] == 1


def test_given_boxes_are_scaled_and_pooled(hand, model_dir, photos, tmp_path):
  given = {"a.jpg": [[1, 1, 40, 30], [50.5, 20, 30, 60], [100, 70, 21, 21]],
           str(photos / "b.png"): []}
  boxes_json = tmp_path / "boxes.json"
  boxes_json.write_text(json.dumps(given))
  listing = _listing(photos, ["a.jpg", "b.png"], tmp_path / "list.txt")
  output = tmp_path / "given.h5"
  extract_features.main(["--checkpoint", model_dir, "--input_txt", listing, "--output_h5",
                         str(output), "--boxes_json", str(boxes_json), "--boxes_per_image", "4"])
  data = _read(output)
  assert "proposal_boxes" not in data and data["attrs"]["source"] == "boxes_json"
  np.testing.assert_array_equal(data["num_boxes"], [3, 0])
  # a.jpg is 90 x 120 -> 48 x 64: factor 64 / 120 on 1-based xywh.
  f = 64 / 120
  original = np.array(given["a.jpg"], np.float64)
  scaled = np.stack([(original[:, 0] - 1) * f + 1, (original[:, 1] - 1) * f + 1,
                     original[:, 2] * f, original[:, 3] * f], -1)
  np.testing.assert_allclose(data["resized_boxes"][0, :3], scaled, rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(data["boxes"][0, :3], original, rtol=1e-6)  # as given
  # Pooled as the region API pools a given box: the inverse of x = xc - (w - 1) / 2.
  centred = _detection_xywh_to_xcycwh(scaled)
  codes, logits, _ = hand.recognize(photos / "a.jpg", centred.astype(np.float32))
  np.testing.assert_allclose(data["feats"][0, :3], codes, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(data["scores"][0, :3], logits, rtol=1e-4, atol=1e-4)
  for key in ("feats", "boxes", "resized_boxes", "scores"):
    assert not np.any(data[key][0, 3:]) and not np.any(data[key][1]), key


@pytest.mark.parametrize("entry, message", [
    ({"a.jpg": [[1, 2, 3]]}, r"'a.jpg' box 0: expected \[x, y, w, h\] \(4 numbers\)"),
    ({"a.jpg": [[1, 2, 3, 4], [1, 2, -3, 4]]}, r"'a.jpg' box 1: w and h must be positive"),
    ({"a.jpg": [[1, "2", 3, 4]]}, r"'a.jpg' box 0: expected \[x, y, w, h\]"),
    ({"a.jpg": {"x": 1}}, r"'a.jpg': expected a list of \[x, y, w, h\], got dict"),
    ({"a.jpg": [[1, 1, 2, 2]] * 3}, r"'a.jpg' has 3 boxes, more than --boxes_per_image 2"),
    ([[1, 1, 2, 2]], r"must hold an object"),
    # JSON integers have no limit: one too large for a float is infinite, not a traceback
    ({"a.jpg": [[1, 1, 2, 2], [10 ** 400, 1, 2, 2]]}, r"'a.jpg' box 1: x is inf$"),
    ({"a.jpg": [[1, 1, 2, -10 ** 400]]}, r"'a.jpg' box 0: h is -inf$"),
])
def test_bad_boxes_json(model_dir, photos, tmp_path, entry, message):
  boxes_json = tmp_path / "boxes.json"
  boxes_json.write_text(json.dumps(entry))
  with pytest.raises(SystemExit, match=message):
    extract_features.main(["--checkpoint", model_dir, "--input_dir", str(photos), "--max_images",
                           "1", "--boxes_json", str(boxes_json), "--boxes_per_image", "2",
                           "--output_h5", str(tmp_path / "x.h5")])
  assert not os.path.exists(tmp_path / "x.h5")


def test_bad_arguments(model_dir, photos, tmp_path):
  out = ["--output_h5", str(tmp_path / "x.h5")]
  cases = [
      (["--input_txt", str(tmp_path / "missing.txt")] + out, "--input_txt not found"),
      (out, "give --input_txt"),
      (["--input_dir", str(photos)], "--output_h5 is required"),
      (["--input_dir", str(photos), "--boxes_per_image", "0"] + out,
       "--boxes_per_image must be positive"),
      (["--input_dir", str(tmp_path)] + out, "--input_dir has no image files"),
      (["--input_dir", str(photos), "--boxes_json", str(tmp_path / "no.json")] + out,
       "--boxes_json not found"),
      (["--input_dir", str(photos), "--checkpoint", str(tmp_path / "nomodel")] + out,
       "model directory not found"),
  ]
  (tmp_path / "empty.txt").write_text("\n\n")
  cases.append((["--input_txt", str(tmp_path / "empty.txt")] + out, "lists no image paths"))
  for argv, message in cases:
    with pytest.raises(SystemExit, match=message):
      extract_features.main(["--checkpoint", model_dir] + argv)
  assert not os.path.exists(tmp_path / "x.h5")


def test_nothing_readable_or_unwritable_output(model_dir, photos, tmp_path):
  listing = _listing(photos, ["broken.jpg"], tmp_path / "list.txt")
  output = tmp_path / "feats.h5"
  output.write_bytes(b"previous contents")
  with pytest.raises(SystemExit, match="no image could be read, nothing written: .*broken.jpg"):
    extract_features.main(["--checkpoint", model_dir, "--input_txt", listing, "--output_h5",
                           str(output)])
  assert output.read_bytes() == b"previous contents"
  assert sorted(os.listdir(tmp_path)) == ["feats.h5", "list.txt"]  # no temporary file left
  (tmp_path / "file").write_text("")
  with pytest.raises(SystemExit, match="cannot write --output_h5"):
    extract_features.main(["--checkpoint", model_dir, "--input_txt", listing, "--output_h5",
                           str(tmp_path / "file" / "feats.h5")])


def test_no_recompilation_for_new_images_or_thresholds(model_dir, photos, record_compiles):
  model = predictor.load_model(model_dir)
  extractor = features.FeatureExtractor(model, boxes_per_image=4)
  prepared = [model.prepare(str(photos / n)) for n in ("a.jpg", "c.jpg")]
  (first,) = extractor.detections(prepared[:1])
  model.final_nms_thresh = 0.6
  with record_compiles() as compiled:
    (second,) = extractor.detections(prepared[1:])
  assert not [name for name in compiled if "detect" in name], compiled
  assert first["feats"].shape == second["feats"].shape == (4, 256)


def test_max_images_is_at_most_n_and_minus_one_is_all(model_dir, photos, tmp_path, capsys):
  output = tmp_path / "two.h5"
  with pytest.raises(SystemExit):  # broken.jpg is the third name in order
    extract_features.main(["--checkpoint", model_dir, "--input_dir", str(photos), "--output_h5",
                           str(output), "--max_images", "3", "--boxes_per_image", "2"])
  assert _read(output)["image_paths"] == [str(photos / n) for n in ("a.jpg", "b.png")]
  assert "boxes of 2 of 4 images (--max_images)" in capsys.readouterr().out
  for value in ("0", "-2"):
    with pytest.raises(SystemExit) as e:
      extract_features.main(["--checkpoint", str(tmp_path / "no_model"), "--input_dir",
                             str(photos), "--output_h5", str(output), "--max_images", value])
    assert e.value.code == f"error: --max_images must be positive, or -1 for all, got {value}"


@pytest.mark.parametrize("flags, message", [
    (["--num_proposals", "0"], "--num_proposals must be a positive integer, got 0"),
    (["--final_nms_thresh", "-1"], r"--final_nms_thresh must be in \[0, 1\], got -1.0"),
])
def test_out_of_range_model_flags_rejected_before_loading(photos, tmp_path, flags, message):
  with pytest.raises(SystemExit, match=f"^error: {message}$"):
    extract_features.main(["--checkpoint", str(tmp_path / "no_model"), "--input_dir",
                           str(photos), "--output_h5", str(tmp_path / "x.h5"), *flags])


def test_every_flag_shows_its_default(capsys, monkeypatch):
  monkeypatch.setenv("COLUMNS", "400")
  with pytest.raises(SystemExit):
    extract_features.main(["--help"])
  text = capsys.readouterr().out
  assert text.startswith("usage: python -m densecap_jax.extract_features ")
  blocks = re.split(r"\n  (?=--)", text)[1:]
  assert len(blocks) >= 14
  for block in blocks:
    assert "(default" in block, block
  assert "at most N images (of a folder, split or list); -1 = all (default: -1)" in text


def test_photos_are_read_upright(model_dir, tmp_path):
  stored = write_orientation_6_jpeg(tmp_path / "phone.jpg", height=40, width=60)
  Image.fromarray(np.rot90(stored, k=-1)).save(tmp_path / "upright.png")
  outputs = {}
  for name in ("phone.jpg", "upright.png"):
    listing = tmp_path / f"{name}.txt"
    listing.write_text(f"{tmp_path / name}\n")
    extract_features.main(["--checkpoint", model_dir, "--input_txt", str(listing), "--output_h5",
                           str(tmp_path / f"{name}.h5"), "--boxes_per_image", "5"])
    outputs[name] = _read(tmp_path / f"{name}.h5")
  phone, upright = outputs["phone.jpg"], outputs["upright.png"]
  assert phone["num_boxes"][0] == upright["num_boxes"][0] > 0
  for key in ("boxes", "scores", "feats"):
    np.testing.assert_array_equal(phone[key], upright[key])
