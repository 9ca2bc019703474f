"""Tests for densecap_jax.inference and the predict command, on a small random model."""

import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image
import small_model

from densecap_jax import predictor
from densecap_jax.commands import flags as cli
from densecap_jax.commands import predict
from densecap_jax.configs import buckets as buckets_lib
from densecap_jax.data import images as images_lib
from densecap_jax.models import detection
from densecap_jax.ops import boxes as boxes_lib

VOCAB = [None, "a", "red", "circle", "square", "blue"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return small_model.save_random_tiny_model(tmp_path_factory.mktemp("model") / "m", VOCAB,
                                            image_size=64)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
  folder = tmp_path_factory.mktemp("photos")
  rng = np.random.default_rng(0)
  for name, size in (("a.jpg", (90, 120)), ("b.png", (120, 60)), ("c.jpg", (90, 120))):
    Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(folder / name)
  (folder / "notes.txt").write_text("not an image")
  (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
  return folder


def test_predict_matches_infer_and_converts_boxes(model_dir, photos):
  model = predictor.load_model(model_dir, batch_size=2)
  assert model.image_size == 64 and model.num_proposals == 20
  image = Image.open(photos / "a.jpg")
  (result,) = model.predict([image], coords="resized")
  (in_image,) = model.predict([image])  # the default: the image's own pixels, 90 x 120
  assert (in_image["width"], in_image["height"]) == (120, 90)
  np.testing.assert_allclose(in_image["boxes"], boxes_lib.scale_xywh(result["boxes"], 90 / 48),
                             rtol=1e-6)
  # The same image straight through infer: boxes converted xcycwh -> xywh.
  prepared = images_lib.prepare_test_image(np.asarray(image), 64)
  bucket = buckets_lib.pick_bucket(*prepared.shape[:2], model.buckets)
  padded = buckets_lib.pad_to_bucket(prepared, bucket)[None]
  boxes, scores, tokens, valid = detection.infer(model.params, padded,
                                                 np.array([prepared.shape[:2]], np.int32),
                                                 model.config)
  n = int(valid.sum())
  assert len(result["captions"]) == n == len(result["scores"]) == len(result["boxes"])
  np.testing.assert_allclose(result["scores"], scores[0, :n], rtol=1e-5, atol=1e-5)
  expected = np.asarray(boxes[0, :n])
  np.testing.assert_allclose(result["boxes"][:, 0], expected[:, 0] - (expected[:, 2] - 1) / 2,
                             rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(result["boxes"][:, 2:], expected[:, 2:], rtol=1e-4, atol=1e-3)
  assert all(set(c.split()) <= set(VOCAB[1:]) for c in result["captions"])
  assert np.all(np.diff(result["scores"]) <= 0)


def test_batched_equals_one_at_a_time_and_max_detections(model_dir, photos):
  images = [np.asarray(Image.open(photos / n).convert("RGB")) for n in ("a.jpg", "b.png", "c.jpg")]
  batched = predictor.load_model(model_dir, batch_size=2).predict(images)
  single = predictor.load_model(model_dir).predict(images)
  for b, s in zip(batched, single):
    np.testing.assert_allclose(b["boxes"], s["boxes"], rtol=1e-5, atol=1e-4)
    assert b["captions"] == s["captions"]
  capped = predictor.load_model(model_dir).predict(images[:1], max_detections=3)
  assert len(capped[0]["captions"]) == min(3, len(single[0]["captions"]))


def test_prepare_display_is_the_resized_image(model_dir, photos):
  model = predictor.load_model(model_dir)
  prepared = model.prepare(str(photos / "b.png"))
  assert prepared.display.shape == (64, 32, 3) and prepared.display.dtype == np.uint8
  assert prepared.original_size == (120, 60)
  np.testing.assert_allclose(images_lib.vgg_preprocess(prepared.display), prepared.model_input,
                             atol=0.51)
  with pytest.raises(ValueError, match="expected a uint8 image array"):
    model.prepare(np.zeros((4, 4), np.float32))


def test_cli_writes_results_viewer_and_drawings(model_dir, photos, tmp_path, capsys):
  vis_dir, drawn_dir = tmp_path / "vis", tmp_path / "drawn"
  with pytest.raises(SystemExit) as e:  # broken.jpg cannot be read: non-zero exit, named
    predict.main(["--input_dir", str(photos), "--checkpoint", model_dir, "--output_vis_dir",
                  str(vis_dir), "--output_dir", str(drawn_dir), "--max_detections", "5",
                  "--batch_size", "2"])
  assert e.value.code == f"error: 1 of 4 images could not be read: {photos / 'broken.jpg'}"
  out = capsys.readouterr()
  assert "captioned 3 images," in out.out and "(--max_images)" not in out.out
  with open(vis_dir / "results.json") as f:
    results = json.load(f)
  assert [r["img_name"] for r in results["results"]] == ["a.jpg", "b.png", "c.jpg"]
  for r in results["results"]:
    assert len(r["boxes"]) == len(r["scores"]) == len(r["captions"]) <= 5
    assert all(len(b) == 4 for b in r["boxes"])
  assert results["opt"]["image_size"] == 64 and results["opt"]["checkpoint"] == model_dir
  for name in ("a.jpg", "b.png", "view_results.html", "results.js"):
    assert (vis_dir / name).exists()
  assert Image.open(vis_dir / "b.png").size == (32, 64)  # the resized image the boxes refer to
  assert sorted(os.listdir(drawn_dir)) == ["a.jpg", "b.png", "c.jpg"]
  assert os.path.getsize(photos / "a.jpg") > 0  # inputs untouched


def test_cli_refuses_bad_inputs_and_unsafe_outputs(model_dir, photos, tmp_path):
  with pytest.raises(SystemExit, match="--input_image not found"):
    predict.main(["--input_image", str(tmp_path / "missing.jpg"), "--checkpoint", model_dir])
  with pytest.raises(SystemExit, match="give one of --input_image"):
    predict.main(["--checkpoint", model_dir])
  with pytest.raises(SystemExit, match="holds input images, which would be overwritten"):
    predict.main(["--input_dir", str(photos), "--output_vis_dir", str(photos),
                  "--checkpoint", model_dir])
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(SystemExit, match="has no image files"):
    predict.main(["--input_dir", str(empty), "--checkpoint", model_dir])
  with pytest.raises(SystemExit, match="model directory not found"):
    predict.main(["--input_image", str(photos / "a.jpg"), "--checkpoint", str(tmp_path / "no")])


def test_cli_input_split(model_dir, photos, tmp_path):
  root = tmp_path / "vg"
  root.mkdir()
  for i in (7, 9):
    Image.open(photos / "a.jpg").save(root / f"{i}.jpg")
  splits = tmp_path / "splits.json"
  splits.write_text(json.dumps({"train": [1], "val": [], "test": [7, 9]}))
  predict.main(["--input_split", "test", "--splits_json", str(splits), "--vg_img_root_dir",
                str(root), "--checkpoint", model_dir, "--output_vis_dir", str(tmp_path / "v"),
                "--max_images", "1"])
  with open(tmp_path / "v" / "results.json") as f:
    assert [r["img_name"] for r in json.load(f)["results"]] == ["7.jpg"]


def test_package_level_load_model(model_dir, photos):
  import densecap_jax
  model = densecap_jax.load_model(model_dir)
  (result,) = model.predict([str(photos / "a.jpg")])
  assert set(result) == {"boxes", "scores", "captions", "width", "height"}
  assert (result["width"], result["height"]) == (120, 90)


def _good_photos(folder, names=("a.jpg", "b.png")):
  folder.mkdir()
  rng = np.random.default_rng(1)
  for name in names:
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / name)
  return folder


def test_cli_never_replaces_results_with_less(model_dir, tmp_path, capsys):
  good = _good_photos(tmp_path / "good")
  unreadable = tmp_path / "unreadable"
  unreadable.mkdir()
  (unreadable / "x.jpg").write_bytes(b"\xff\xd8\xff not really")
  (unreadable / "y.png").write_bytes(b"")
  vis_dir, drawn_dir = tmp_path / "vis", tmp_path / "drawn"
  common = ["--checkpoint", model_dir, "--output_vis_dir", str(vis_dir)]
  predict.main(["--input_dir", str(good), *common, "--output_dir", str(drawn_dir)])
  results = vis_dir / "results.json"
  before = results.read_bytes()
  capsys.readouterr()

  # Only unreadable inputs: nothing written, not even with --overwrite; both failures named.
  with pytest.raises(SystemExit) as e:
    predict.main(["--input_dir", str(unreadable), *common, "--overwrite"])
  assert e.value.code == (f"error: no image could be read, nothing written: "
                          f"{unreadable / 'x.jpg'}, {unreadable / 'y.png'}")
  out = capsys.readouterr()
  assert f"empty file: {unreadable / 'y.png'}" in out.out + out.err
  assert "results:" not in out.out
  assert results.read_bytes() == before and not (vis_dir / "x.jpg").exists()

  # An existing results.json is kept unless --overwrite, checked before the model loads.
  missing_model = ["--checkpoint", str(tmp_path / "no_model")]
  with pytest.raises(SystemExit) as e:
    predict.main(["--input_dir", str(good), "--output_vis_dir", str(vis_dir), *missing_model])
  assert e.value.code == (f"error: {results} exists (from another run); pass --overwrite to "
                          f"replace it, or choose another --output_vis_dir")
  # Drawn images likewise.
  with pytest.raises(SystemExit, match=r"--output_dir .* already holds 2 of the images to write "
                                       r"\(a.jpg, b.png\); pass --overwrite"):
    predict.main(["--input_dir", str(good), "--output_vis", "0", "--output_dir", str(drawn_dir),
                  *missing_model])
  with pytest.raises(SystemExit, match="the same folder"):
    predict.main(["--input_dir", str(good), "--output_vis_dir", str(tmp_path / "same"),
                  "--output_dir", str(tmp_path / "same"), *missing_model])
  assert results.read_bytes() == before

  # With --overwrite both are replaced.
  os.utime(results, (0, 0))
  os.utime(drawn_dir / "a.jpg", (0, 0))
  predict.main(["--input_dir", str(good), *common, "--output_dir", str(drawn_dir), "--overwrite"])
  assert os.path.getmtime(results) > 0 and os.path.getmtime(drawn_dir / "a.jpg") > 0


def test_cli_says_when_max_images_stops_it(model_dir, tmp_path, capsys):
  folder = _good_photos(tmp_path / "three", ("a.jpg", "b.png", "c.jpg"))
  predict.main(["--input_dir", str(folder), "--checkpoint", model_dir, "--output_vis_dir",
                str(tmp_path / "vis"), "--max_images", "2"])
  assert "captioned 2 of 3 images (--max_images)," in capsys.readouterr().out
  predict.main(["--input_dir", str(folder), "--checkpoint", model_dir, "--output_vis_dir",
                str(tmp_path / "vis_all"), "--max_images", "-1"])
  assert "captioned 3 images," in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--num_proposals", "0"], r"--num_proposals must be a positive integer, got 0"),
    (["--num_proposals", "-5"], r"--num_proposals must be a positive integer, got -5"),
    (["--image_size", "0"], r"--image_size must be a positive integer, got 0"),
    (["--final_nms_thresh", "1.5"], r"--final_nms_thresh must be in \[0, 1\], got 1.5"),
    (["--rpn_nms_thresh", "-0.1"], r"--rpn_nms_thresh must be in \[0, 1\], got -0.1"),
    (["--final_nms_thresh", "nan"], r"--final_nms_thresh must be in \[0, 1\], got nan"),
    (["--max_images", "0"], r"--max_images must be positive, or -1 for all, got 0"),
    (["--batch_size", "0"], r"--batch_size must be positive, got 0"),
])
def test_cli_rejects_out_of_range_flags_before_loading(photos, tmp_path, flags, message):
  with pytest.raises(SystemExit) as e:
    predict.main(["--input_image", str(photos / "a.jpg"), "--checkpoint",
                  str(tmp_path / "no_model"), "--output_vis_dir", str(tmp_path / "vis"), *flags])
  assert re.fullmatch(f"error: {message}", e.value.code)


def test_cli_runs_the_models_own_settings_unless_a_flag_overrides_them(model_dir, photos,
                                                                         tmp_path, monkeypatch):
  own = tmp_path / "own"
  shutil.copytree(model_dir, own)
  with open(own / "config.json") as f:
    config = json.load(f)
  config.update(rpn_nms_thresh=0.5, final_nms_thresh=0.45)
  (own / "config.json").write_text(json.dumps(config))
  built = []
  load = cli.load_model_from_flags
  monkeypatch.setattr(cli, "load_model_from_flags",
                      lambda *args, **kwargs: built.append(load(*args, **kwargs)) or built[-1])
  for flags, want in (([], (0.5, 0.45, 20)),
                      (["--rpn_nms_thresh", "0.6", "--final_nms_thresh", "0.2",
                        "--num_proposals", "12"], (0.6, 0.2, 12))):
    vis_dir = tmp_path / f"vis{len(built)}"
    predict.main(["--input_image", str(photos / "a.jpg"), "--checkpoint", str(own),
                  "--output_vis_dir", str(vis_dir), *flags])
    model = built[-1]
    assert (model.rpn_nms_thresh, model.final_nms_thresh, model.num_proposals) == want
    with open(vis_dir / "results.json") as f:
      opt = json.load(f)["opt"]
    assert (opt["rpn_nms_thresh"], opt["final_nms_thresh"], opt["num_proposals"]) == want


def test_api_rejects_out_of_range_settings(model_dir):
  for settings, message in (({"num_proposals": 0}, "num_proposals must be a positive integer"),
                            ({"final_nms_thresh": 2.0}, r"final_nms_thresh must be in \[0, 1\]")):
    with pytest.raises(ValueError, match=message):
      predictor.load_model(model_dir, **settings)


def _help(main, capsys, monkeypatch):
  monkeypatch.setenv("COLUMNS", "400")  # one line per flag
  with pytest.raises(SystemExit) as e:
    main(["--help"])
  assert e.value.code == 0
  return capsys.readouterr().out


def test_every_flag_shows_its_default(capsys, monkeypatch):
  text = _help(predict.main, capsys, monkeypatch)
  assert text.startswith("usage: python -m densecap_jax.predict ")
  blocks = re.split(r"\n  (?=--)", text)[1:]  # one block per option, after -h
  assert len(blocks) >= 20
  for block in blocks:
    assert "(default" in block, block
  assert "at most N images (of a folder, split or list); -1 = all (default: 100)" in text
  # The test-time settings default to the model's own values, read from the bundled model's
  # config.json and the vgg16 config without loading a model.
  assert ("IoU threshold of the NMS on the region proposals, in [0, 1] (default: the model's "
          "value, 0.9 for the bundled model, 0.7 for converted VGG-16 ones)") in text
  assert ("IoU threshold of the final NMS, in [0, 1] (default: the model's value, 0.3 for the "
          "bundled and converted VGG-16 models)") in text
  assert ("proposals after the RPN NMS (default: the model's value, 300 for the bundled model, "
          "1000 for converted VGG-16 ones)") in text


def test_predict_takes_one_image_and_grey_or_rgba_arrays(model_dir, photos):
  model = predictor.load_model(model_dir)
  path = str(photos / "a.jpg")
  (want,) = model.predict([path])
  for single in (path, photos / "a.jpg", Image.open(path)):
    (got,) = model.predict(single)
    np.testing.assert_array_equal(got["boxes"], want["boxes"])
    assert got["captions"] == want["captions"]
  rgb = np.asarray(Image.open(path).convert("L").convert("RGB"))
  grey = rgb[:, :, 0]
  rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], axis=2)
  (from_rgb,) = model.predict(rgb)
  for array in (grey, grey[:, :, None], rgba):
    (got,) = model.predict([array])
    np.testing.assert_array_equal(got["boxes"], from_rgb["boxes"])
    assert got["captions"] == from_rgb["captions"]
  assert len(model.predict(np.stack([rgb, rgb]))) == 2  # a 4-D array is a batch
  with pytest.raises(TypeError, match="expected images"):
    model.predict(42)
  with pytest.raises(TypeError, match="expected an image path, a PIL image or a uint8"):
    model.predict([42])
  with pytest.raises(ValueError, match="expected a uint8 image array"):
    model.predict(rgb.astype(np.float32))


def test_bucket_error_names_image_size():
  with pytest.raises(ValueError, match=r"fits no shape bucket.*use --image_size 256 "):
    buckets_lib.pick_bucket(720, 540, buckets_lib.make_buckets(256))


def test_cli_captions_given_boxes(model_dir, photos, tmp_path):
  boxes = {"a.jpg": [[60, 40, 50, 30], [1, 1, 120, 90], [10, 70, 30, 15]],
           str(photos / "b.png"): [[5, 10, 40, 100]]}
  (tmp_path / "boxes.json").write_text(json.dumps(boxes))
  vis_dir, drawn_dir = tmp_path / "vis", tmp_path / "drawn"
  predict.main(["--input_dir", str(photos), "--max_images", "2", "--checkpoint", model_dir,
                "--boxes_json", str(tmp_path / "boxes.json"), "--output_vis_dir", str(vis_dir),
                "--output_dir", str(drawn_dir), "--max_detections", "1"])
  with open(vis_dir / "results.json") as f:
    results = json.load(f)["results"]
  assert [r["img_name"] for r in results] == ["a.jpg", "b.png"]
  model = predictor.load_model(model_dir)
  paths = [str(photos / "a.jpg"), str(photos / "b.png")]
  want = model.caption_regions(paths, [boxes["a.jpg"], boxes[paths[1]]])
  for r, w, p in zip(results, want, paths):
    assert r["captions"] == w["captions"]  # in the order given, all kept
    np.testing.assert_allclose(r["caption_log_probs"], w["caption_log_probs"], rtol=1e-5)
    np.testing.assert_allclose(r["scores"], w["scores"], rtol=1e-5, atol=1e-5)
    prepared = model.prepare(p)
    np.testing.assert_allclose(r["boxes"], boxes_lib.to_resized(w["boxes"], prepared.original_size,
                                                             prepared.size), rtol=1e-6)
  # a.jpg is 90 x 120 (H x W), resized to 48 x 64: boxes scaled by 48 / 90.
  np.testing.assert_allclose(results[0]["boxes"][0],
                             boxes_lib.scale_xywh([60, 40, 50, 30], 48 / 90), rtol=1e-6)
  assert Image.open(vis_dir / "a.jpg").size == (64, 48)
  assert sorted(os.listdir(drawn_dir)) == ["a.jpg", "b.png"]


def test_cli_given_boxes_errors_name_image_and_box(model_dir, photos, tmp_path):
  boxes_json = tmp_path / "boxes.json"
  common = ["--input_image", str(photos / "a.jpg"), "--checkpoint", model_dir,
            "--boxes_json", str(boxes_json), "--output_vis_dir", str(tmp_path / "vis")]
  boxes_json.write_text(json.dumps({"a.jpg": [[1, 1, 10, 10], [500, 10, 20, float("inf")]]}))
  with pytest.raises(SystemExit) as e:
    predict.main(common)
  assert e.value.code == f"error: --boxes_json {boxes_json}: 'a.jpg' box 1: h is inf"
  assert not (tmp_path / "vis" / "results.json").exists()
  boxes_json.write_text(json.dumps({"a.jpg": [[1, 1, 0, 10]]}))
  with pytest.raises(SystemExit, match=r"^error: --boxes_json .*'a.jpg' box 0: w and h must be "
                                       r"positive, got w=0, h=10$"):
    predict.main(common)
