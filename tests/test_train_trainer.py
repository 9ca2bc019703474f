"""End-to-end: synthetic data -> preprocess -> train (8 CPU devices) -> eval driver."""

import json
import os
import types

import jax
import ml_collections
import numpy as np
import pytest

from densecap_jax import model_dir as checkpoint
from densecap_jax.evaluation import metric
from densecap_jax.evaluation import split_eval
from densecap_jax.models import densecap
from densecap_jax.train import config_checks
from densecap_jax.train import loop
from densecap_jax.train import trainer
from densecap_jax.commands import evaluate
from densecap_jax.train.configs import tiny
import disk_faults
import small_dataset

SIZE = 64


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  folder = tmp_path_factory.mktemp("synthetic")
  return small_dataset.make_small_dataset(folder, 20, seed=3, image_size=SIZE)


def small_config(dataset, **overrides):
  config = tiny.get_config()
  config.data_h5, config.data_json = dataset
  config.model.image_size = SIZE
  config.model.buckets = ((SIZE, SIZE),)
  config.model.sampler_batch_size = 32
  config.per_device_batch_size = 1
  config.lr_schedule = "constant"
  config.warmup_steps = 0
  config.save_checkpoint_every = 5
  config.losses_log_every = 1
  config.val_images_use = 0
  config.test_num_proposals = 30
  for key, value in overrides.items():
    setattr(config, key, value)
  return config


def test_no_cnn_gradient_program_when_trained_modules_fix_the_backbone():
  config = tiny.get_config()
  assert config.finetune_cnn_after == 0 and trainer.cnn_finetune_start(config) == 0
  config.trained_modules = ("language_model",)
  assert trainer.cnn_finetune_start(config) == -1
  config.trained_modules = ("backbone", "language_model")
  assert trainer.cnn_finetune_start(config) == 0


@pytest.mark.slow
def test_resume_continues_bit_identically(dataset, tmp_path):
  full, reason = trainer.train(small_config(dataset, max_iters=10), str(tmp_path / "full"),
                               progress=False)
  assert reason == "done" and int(full.step) == 10
  trainer.train(small_config(dataset, max_iters=5), str(tmp_path / "split"), progress=False)
  with pytest.raises(ValueError, match="already holds checkpoints"):
    trainer.train(small_config(dataset, max_iters=10), str(tmp_path / "split"), resume=False,
                  progress=False)
  resumed, _ = trainer.train(small_config(dataset, max_iters=10), str(tmp_path / "split"),
                             progress=False)
  for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(full.opt_state), jax.tree.leaves(resumed.opt_state)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_training_lowers_loss_then_eval_driver_scores_the_model(dataset, tmp_path, capsys):
  workdir = tmp_path / "run"
  config = small_config(dataset, max_iters=60, save_checkpoint_every=30, val_images_use=4)
  state, reason = trainer.train(config, str(workdir), progress=False)
  assert reason == "done"
  with open(workdir / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  losses = [r["loss"] for r in rows if "loss" in r]
  # 60 steps of 8 images each: the mean loss of the last 10 steps is under 60 %
  # of the first 5 steps' (the captioning loss dominates and falls fastest).
  assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:5]), losses
  assert [r["step"] for r in rows if "val_map" in r] == [30, 60]
  attribute_keys = ["val_colour_shape_accuracy", "val_colour_accuracy", "val_shape_accuracy",
                    "val_texture_accuracy", "val_size_accuracy", "val_attribute_matched"]
  for row in (r for r in rows if "val_map" in r):  # the tiny config logs the attribute accuracy
    for key in attribute_keys:
      assert 0.0 <= row[key] <= 100.0, (key, row)
  params, model_config, vocab = checkpoint.load_model(workdir)  # best/
  assert model_config.vocab_size == len(vocab) - 1
  last = checkpoint.load_model(workdir / "last")[0]
  for a, b in zip(jax.tree.leaves(last), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, b)

  output = tmp_path / "eval.json"
  evaluate.main(["--checkpoint", str(workdir / "last"), "--data_h5", dataset[0], "--data_json",
                 dataset[1], "--split", "val", "--num_proposals", "30", "--batch_size", "2",
                 "--output", str(output)])
  printed = capsys.readouterr().out
  assert "mAP" in printed and str(output) in printed
  with open(output) as f:
    results = json.load(f)["results"]
  assert 0.0 <= results["map"] <= 1.0 and 0.0 <= results["detmap"] <= 1.0
  assert results["num_images"] == 4


def test_eval_driver_rejects_a_missing_model(dataset, tmp_path):
  with pytest.raises(SystemExit, match="model directory not found"):
    evaluate.main(["--checkpoint", str(tmp_path / "nope"), "--data_h5", dataset[0],
                   "--data_json", dataset[1]])


def test_validation_is_logged_and_printed_in_percent(tmp_path, capsys):
  # One ground-truth box found exactly by one detection whose caption scores
  # METEOR 0.1: a true positive at every IoU threshold, and at the METEOR
  # thresholds 0 and 0.05 (strict >) but not 0.1 ... 0.25. detmap = 1 and
  # map = 10 / 30 as fractions: 100 and 33.33 in percent.
  evaluator = metric.DenseCaptioningEvaluator(meteor_fn=lambda c, r: [0.1] * len(c))
  box = np.array([[50.0, 50.0, 21.0, 21.0]])  # xcycwh
  evaluator.add_result(np.array([2.0]), box, ["a cat"], box, ["a cat"])
  results = evaluator.evaluate()
  assert results["detmap"] == 1.0 and results["map"] == pytest.approx(1 / 3)
  writer = loop.MetricsWriter(str(tmp_path), tensorboard=False,
                              percent_keys=trainer.VALIDATION_KEYS)
  capsys.readouterr()
  loop.run_validation(7, None, lambda params: trainer.validation_scalars(results, "map"), writer)
  assert "step 7: val_map 33.33, val_detmap 100\n" in capsys.readouterr().out
  loop.run_validation(8, None, lambda params: trainer.validation_scalars(results, "detmap"),
                      writer)
  with open(tmp_path / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert rows == [{"step": 7, "val_map": pytest.approx(100 / 3), "val_detmap": 100.0,
                   "unit": "percent"},
                  {"step": 8, "val_detmap": 100.0, "unit": "percent"}]


def test_attribute_scalars_of_validation_predictions():
  config = tiny.get_config()
  measure = trainer.attribute_measure(config)
  assert measure.required == ("colour", "shape")
  box = np.array([[50.0, 50.0, 21.0, 21.0]])  # xcycwh
  far = np.array([[150.0, 150.0, 21.0, 21.0]])
  predictions = [
      # a dotted red circle, captioned with the right colour and texture (a
      # synonym of the reference's word) and the wrong shape
      (np.array([1.0]), box, ["a small dotted red square"], box,
       ["a small red circle with dots"]),
      # a blue star captioned right, and a green cross no detection overlaps
      (np.array([2.0, 1.0]), np.concatenate([box, box]), ["a blue star", "a red star"],
       np.concatenate([box, far]), ["the star is blue", "a large green cross"]),
  ]
  scalars = trainer.attribute_scalars(measure, predictions)
  assert scalars == {"val_colour_shape_accuracy": 50.0, "val_colour_accuracy": 100.0,
                     "val_shape_accuracy": 50.0, "val_texture_accuracy": 100.0,
                     "val_size_accuracy": 100.0, "val_attribute_matched": pytest.approx(200 / 3)}
  config.val_attribute_words = {}
  assert trainer.attribute_measure(config) is None
  config.val_attribute_words = {"colour": ("red",)}
  with pytest.raises(ValueError, match="val_attribute_joint.*required attributes"):
    trainer.attribute_measure(config)


def test_a_best_score_stored_as_a_fraction_is_read_in_percent(tmp_path):
  # best/val_metrics.json of a run from before the percent unit: 0.3 is 30 %,
  # which a new validation at 20 % must not beat.
  (tmp_path / "best").mkdir()
  path = tmp_path / "best" / trainer.BEST_METRICS
  path.write_text(json.dumps({"step": 5, "val_detmap": 0.3}))
  best = trainer._read_best(str(tmp_path), rewrite=False)
  assert best == {"step": 5, "val_detmap": 30.0, "unit": "percent"}
  assert json.loads(path.read_text()) == {"step": 5, "val_detmap": 0.3}
  assert trainer._read_best(str(tmp_path)) == best  # rewritten: read again, it stays 30
  assert json.loads(path.read_text()) == best and trainer._read_best(str(tmp_path)) == best


def test_missing_java_stops_training_before_the_first_step(dataset, tmp_path, monkeypatch):
  monkeypatch.setenv("PATH", str(tmp_path))  # no java on PATH
  with pytest.raises(ValueError, match="val_metric=detmap") as error:
    trainer.train(small_config(dataset, max_iters=5, val_images_use=4), str(tmp_path / "run"),
                  progress=False)
  assert "\n" not in str(error.value)
  assert not (tmp_path / "run" / "checkpoints").exists() or not os.listdir(
      tmp_path / "run" / "checkpoints")
  # Without validation, Java is not needed.
  config_checks.check_config(small_config(dataset, max_iters=5, val_images_use=0))


@pytest.mark.slow
def test_failed_validation_keeps_the_checkpoint_and_is_redone_on_resume(dataset, tmp_path,
                                                                        monkeypatch):
  monkeypatch.setenv("PATH", str(tmp_path))  # no java: detection mAP only needs none
  workdir = tmp_path / "run"
  config = small_config(dataset, max_iters=5, val_images_use=4, val_metric="detmap")
  real_evaluate_split = split_eval.evaluate_split

  def broken(*args, **kwargs):
    raise OSError("disk full")

  monkeypatch.setattr(split_eval, "evaluate_split", broken)
  with pytest.raises(loop.ValidationError, match="validation at step 5 failed") as error:
    trainer.train(config, str(workdir), progress=False)
  assert "OSError: disk full" in str(error.value) and "\n" not in str(error.value)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["5"]  # saved before validating
  assert not (workdir / "best").exists()

  monkeypatch.setattr(split_eval, "evaluate_split", real_evaluate_split)
  state, reason = trainer.train(small_config(dataset, max_iters=5, val_images_use=4,
                                             val_metric="detmap"), str(workdir), progress=False)
  assert reason == "done" and int(state.step) == 5
  with open(workdir / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows if "val_detmap" in r] == [5]
  assert not any("val_map" in r for r in rows)
  with open(workdir / "best" / trainer.BEST_METRICS) as f:
    best = json.load(f)
  assert best["step"] == 5 and best["val_detmap"] == rows[-1]["val_detmap"]


@pytest.mark.slow
def test_a_run_resumed_from_fractions_keeps_one_unit(dataset, tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("PATH", str(tmp_path))  # no java: detection mAP only needs none
  workdir = tmp_path / "run"

  def config(max_iters):
    return small_config(dataset, max_iters=max_iters, val_images_use=4, val_metric="detmap")

  trainer.train(config(5), str(workdir), progress=False)
  metrics, best_path = workdir / "metrics.jsonl", workdir / "best" / trainer.BEST_METRICS
  rows = [json.loads(line) for line in metrics.read_text().splitlines()]
  [at_5] = [r["val_detmap"] for r in rows if "val_detmap" in r]
  # As a run logged before the percent unit would have left it: fractions
  # without a unit, and a best score of 0.999 (99.9 %) that no validation of
  # this run can beat.
  legacy = [{k: v / 100 if k == "val_detmap" else v for k, v in r.items() if k != "unit"}
            for r in rows]
  metrics.write_text("".join(json.dumps(r) + "\n" for r in legacy))
  best_path.write_text(json.dumps({"step": 5, "val_detmap": 0.999}))
  capsys.readouterr()
  trainer.train(config(10), str(workdir), progress=False)
  assert "1 validation lines" in capsys.readouterr().out
  rows = [json.loads(line) for line in metrics.read_text().splitlines()]
  validations = [r for r in rows if "val_detmap" in r]
  assert [(r["step"], r["unit"]) for r in validations] == [(5, "percent"), (10, "percent")]
  assert validations[0]["val_detmap"] == pytest.approx(at_5, rel=1e-12)
  assert 0 <= validations[1]["val_detmap"] <= 100
  assert json.loads(best_path.read_text()) == {"step": 5, "val_detmap": pytest.approx(99.9),
                                               "unit": "percent"}


def test_nonfinite_parameters_never_replace_a_model(tmp_path, capsys):
  vocab = [None, "a"]
  config = ml_collections.ConfigDict({"name": "densecap"})
  good = {"fc6": {"kernel": np.ones((4, 3), np.float32)}, "step": np.int32(1)}
  assert trainer.save_finite_model(str(tmp_path / "last"), good, config, vocab, 5)
  bad = {"fc6": {"kernel": np.full((4, 3), np.nan, np.float32)}, "step": np.int32(1)}
  assert not trainer.save_finite_model(str(tmp_path / "last"), bad, config, vocab, 10)
  err = capsys.readouterr().err
  assert err == (f"warning: {tmp_path / 'last'} not written from step 10: 1 parameter arrays hold "
                 "NaN or infinity (first: fc6/kernel); the previous model there is kept\n")
  np.testing.assert_array_equal(checkpoint.load_model(tmp_path / "last")[0]["fc6"]["kernel"],
                                good["fc6"]["kernel"])
  # The processes other than the first only check.
  assert not trainer.save_finite_model(str(tmp_path / "other"), bad, config, vocab, 10,
                                       write=False)
  assert not (tmp_path / "other").exists() and capsys.readouterr().err == ""


@pytest.mark.slow
def test_a_damaged_checkpoint_is_passed_over_on_resume(dataset, tmp_path, capfd):
  workdir = tmp_path / "run"
  trainer.train(small_config(dataset, max_iters=10), str(workdir), progress=False)
  disk_faults.flip_bytes_of_largest_file(workdir / "checkpoints" / "10")
  capfd.readouterr()
  state, reason = trainer.train(small_config(dataset, max_iters=10), str(workdir),
                                progress=False)
  out, err = capfd.readouterr()
  assert reason == "done" and int(state.step) == 10
  assert f"checkpoint {workdir / 'checkpoints' / '10'} cannot be read (its arrays do not" in err
  assert "resuming from step 5 of" in out and "non-finite" not in out + err
  assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "10.unreadable", "5"]
  params = checkpoint.load_model(workdir / "last")[0]
  assert checkpoint.nonfinite_arrays(params) == []
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, b)


def test_a_start_checkpoint_of_other_shapes_is_a_one_line_error(tmp_path):
  config = tiny.get_config()
  vocab = [f"w{i}" for i in range(12)]
  config.model.vocab_size = len(vocab)
  params = jax.device_get(densecap.init_params(config.model, jax.random.key(0)))

  def start_from(tree, model_config):
    start = str(tmp_path / f"start{len(os.listdir(tmp_path))}")
    checkpoint.save_model(start, tree, config.model, vocab)
    data = types.SimpleNamespace(vocab=checkpoint.load_model(start)[2])  # the same vocabulary
    run = config.copy_and_resolve_references()
    run.model, run.checkpoint_start_from = model_config, start
    return start, trainer._initial_params(run, data)  # pylint: disable=protected-access

  _, loaded = start_from(params, config.model)  # its own shapes pass
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  no_words = config.model.copy_and_resolve_references()
  no_words.word_loss_weight = 0.0  # the start's word head is there but not read
  assert "word_classifier" in start_from(params, no_words)[1]
  other = config.model.copy_and_resolve_references()
  other.cnn_skip_blocks = (1, 2, 3, 4)
  with pytest.raises(ValueError, match=r"^\S+/start2 does not fit the config's model: shape "
                                       r"mismatch for recognition/fc6/kernel: the model needs "
                                       r"\(9016, 256\), the file gives \(7448, 256\)$"):
    start_from(params, other)
  del params["recognition"]["box_reg"]
  with pytest.raises(ValueError, match=r"^\S+/start3 does not fit the config's model: no value "
                                       r"for the model parameter recognition/box_reg/bias"):
    start_from(params, config.model)
