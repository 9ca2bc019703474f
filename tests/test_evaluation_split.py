"""Tests for densecap_jax.evaluation.split_eval: a model over a split on every device."""

import re
import zlib

import jax
import numpy as np
import pytest
import tqdm

from densecap_jax import model_dir
from densecap_jax.commands import evaluate
from densecap_jax.configs import buckets as buckets_lib
from densecap_jax.data import images
from densecap_jax.data import loader
from densecap_jax.data import vocab as vocab_lib
from densecap_jax.evaluation import metric
from densecap_jax.evaluation import split_eval
import small_dataset
import small_model

SIZE = 64


def fake_meteor(candidates, references):
  """A deterministic stand-in for METEOR: a score in [0, 0.3] from the texts' checksum."""
  return [zlib.crc32((c + "|" + "|".join(r)).encode()) % 7 / 20 for c, r in
          zip(candidates, references)]


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
  folder = tmp_path_factory.mktemp("split_eval")
  data = loader.DenseCapH5(*small_dataset.make_small_dataset(
      folder, 24, seed=5, image_size=SIZE, val_fraction=0.5))
  path = small_model.save_random_tiny_model(folder / "model", data.vocab, image_size=SIZE,
                                            num_proposals=30)
  params, config, _ = model_dir.load_model(path)
  return params, config, data


def _one_image_at_a_time(params, config, data, predict_fn):
  """The plain reference: each image alone through the jitted model on one device, in order."""
  evaluator = metric.DenseCaptioningEvaluator(meteor_fn=fake_meteor)
  for index in data.split_indices("val"):
    bgr = data.read_image_bgr(index)
    h, w = bgr.shape[:2]
    bucket = buckets_lib.pick_bucket(h, w, config.buckets)
    image = np.zeros((1,) + tuple(bucket) + (3,), np.float32)
    image[0, :h, :w] = images.bgr_uint8_to_model_input(bgr)
    boxes, scores, tokens, valid = jax.device_get(predict_fn(
        params, image, np.array([[h, w]], np.int32), 0.7, 0.3))
    gt_boxes, gt_labels = data.regions(index)
    keep = valid[0]
    evaluator.add_result(scores[0][keep], boxes[0][keep],
                         vocab_lib.decode_captions(tokens[0][keep], data.vocab), gt_boxes,
                         vocab_lib.decode_captions(gt_labels, data.vocab))
  return evaluator.evaluate()


def test_every_device_gives_the_numbers_of_one_image_at_a_time(model_and_data):
  params, config, data = model_and_data
  assert jax.device_count() == 8
  predict_fn = split_eval.make_predict_fn(config)
  reference = _one_image_at_a_time(params, config, data, predict_fn)
  assert reference["num_images"] == len(data.split_indices("val")) >= 10
  assert reference["detmap"] > 0 and reference["map"] > 0
  # 16 images a batch: two per device, the last batch partly filled.
  results = split_eval.evaluate_split(params, data, "val", predict_fn, config=config,
                                      batch_size=16, meteor_fn=fake_meteor, progress=False)
  assert results["num_images"] == reference["num_images"]
  np.testing.assert_allclose(results["map"], reference["map"], rtol=1e-6)
  np.testing.assert_allclose(results["detmap"], reference["detmap"], rtol=1e-6)


def test_progress_rate_leaves_out_the_compiling_batches(model_and_data, monkeypatch, capsys):
  # A fake clock and a stand-in for the model: the first batch of each image
  # shape takes 1000 s (XLA compiles a program per shape), every other batch
  # 1 s. Counted in, the compiling batch of 8 images would estimate 500 s for
  # the other 4.
  params, config, data = model_and_data
  config = config.copy_and_resolve_references()
  config.buckets = ((SIZE, SIZE),)  # 12 images: a batch of 8 that compiles, then one of 4
  clock = [0.0]
  monkeypatch.setattr(tqdm.std, "time", lambda: clock[0])
  monkeypatch.setattr(tqdm.tqdm, "monitor_interval", 0)
  shapes, calls = set(), []

  def timed(predict_fn):
    del predict_fn

    def call(params, images, *args):
      del params, args
      clock[0] += 1.0 if images.shape in shapes else 1000.0
      shapes.add(images.shape)
      calls.append(images.shape)
      lead = images.shape[:2]  # (devices, images per device): no detections
      return (np.zeros(lead + (1, 4), np.float32), np.zeros(lead + (1,), np.float32),
              np.zeros(lead + (1, 3), np.int32), np.zeros(lead + (1,), bool))

    return call

  monkeypatch.setattr(split_eval, "_pmapped", timed)
  capsys.readouterr()
  results = split_eval.evaluate_split(params, data, "val", split_eval.make_predict_fn(config),
                                      config=config, batch_size=8, meteor_fn=fake_meteor)
  err = capsys.readouterr().err
  assert len(calls) == 2 and len(shapes) == 1 and results["num_images"] == 12
  assert "eval val (compiling)" in err and "12/12" in err
  remaining = re.findall(r"<(\d+):(\d+),", err)
  assert remaining and max(60 * int(m) + int(s) for m, s in remaining) <= 1, err


def test_nms_thresholds_default_to_the_model_configs(model_and_data, monkeypatch):
  params, config, data = model_and_data
  config = config.copy_and_resolve_references()
  config.rpn_nms_thresh, config.final_nms_thresh = 0.85, 0.25
  seen = []

  def recording(predict_fn):
    del predict_fn

    def call(params, images, image_sizes, example_mask, rpn_nms_thresh, final_nms_thresh):
      del params, image_sizes, example_mask
      seen.append((rpn_nms_thresh, final_nms_thresh))
      lead = images.shape[:2]
      return (np.zeros(lead + (1, 4), np.float32), np.zeros(lead + (1,), np.float32),
              np.zeros(lead + (1, 3), np.int32), np.zeros(lead + (1,), bool))

    return call

  monkeypatch.setattr(split_eval, "_pmapped", recording)
  run = lambda **kw: split_eval.evaluate_split(
      params, data, "val", None, config=config, batch_size=16, meteor_fn=fake_meteor,
      progress=False, **kw)
  run()
  assert set(seen) == {(0.85, 0.25)}
  seen.clear()
  run(rpn_nms_thresh=0.5, final_nms_thresh=0.4)
  assert set(seen) == {(0.5, 0.4)}


def test_command_runs_the_models_settings_unless_a_flag_overrides_them(capsys):
  flags = ["--checkpoint", "m", "--data_h5", "d.h5", "--data_json", "d.json"]
  args = evaluate.parse_args(flags)
  assert (args.rpn_nms_thresh, args.final_nms_thresh, args.num_proposals) == (None, None, None)
  args = evaluate.parse_args(flags + ["--num_proposals", "30", "--final_nms_thresh", "0.4"])
  assert (args.num_proposals, args.final_nms_thresh) == (30, 0.4)
  with pytest.raises(SystemExit):
    evaluate.parse_args(flags + ["--rpn_nms_thresh", "2"])
  assert r"error: --rpn_nms_thresh must be in [0, 1], got 2.0" in capsys.readouterr().err
