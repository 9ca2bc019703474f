"""Tests for the pretrain command (``python -m densecap_jax.train.pretrain``)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from densecap_jax import model_dir
from densecap_jax.commands import pretrain as pretrain_command
from densecap_jax.data import loader
from densecap_jax.data import synthetic_world as synthetic
from densecap_jax.data import visual_genome
from densecap_jax.train import region_pretraining
from densecap_jax.train.configs import tiny
from tests import small_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = small_dataset.LABELLED_SIZE
SEED = small_dataset.LABELLED_SEED
RENDER = small_dataset.LABELLED_RENDER


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return small_dataset.make_labelled_dataset(tmp_path_factory.mktemp("synthetic"))


def run_command(args, cwd):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
             XDG_CACHE_HOME=str(cwd / "cache"))
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-m", "densecap_jax.train.pretrain"] + args, cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=300, check=False)


def small_flags(h5, js):
  return ["--config", "tiny", f"--config.data_h5={h5}", f"--config.data_json={js}",
          f"--config.model.image_size={SIZE}", f"--config.model.buckets=(({SIZE},{SIZE}),)",
          "--config.pretrain.steps=3", "--config.pretrain.warmup_steps=1",
          "--config.pretrain.batch_size=2", "--config.pretrain.max_regions=4"]


def test_command_pretrains_from_the_labels_file_with_the_config_settings(dataset, tmp_path):
  h5, js, objects = dataset
  done = run_command(small_flags(h5, js) + ["--labels", objects, "--workdir", "run"], tmp_path)
  assert done.returncode == 0, done.stderr[-3000:]
  out = str(tmp_path / "run" / "model")
  assert "pretrained model: run/model" in done.stdout
  assert "--config.checkpoint_start_from=run/model" in done.stdout
  with open(tmp_path / "run" / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows] == [3, 3]  # config.pretrain.steps; then relu5_3's scale
  assert sorted(rows[1]) == ["conv5_scale", "step"]  # the tiny config sets pretrain.feature_rms
  assert sorted(k for k in rows[0] if k.endswith("_accuracy")) == [
      "pretrain_colour_accuracy", "pretrain_shape_accuracy", "pretrain_size_accuracy",
      "pretrain_texture_accuracy"]
  params, saved_config, vocab = model_dir.load_model(out)

  # The same stage run here with the scenes' own labels (regenerated from the seed) and the
  # settings passed explicitly gives the same model.
  data = loader.DenseCapH5(h5, js)
  config = tiny.get_config().model
  config.image_size, config.buckets, config.vocab_size = SIZE, ((SIZE, SIZE),), data.vocab_size

  def scene_labels(index):
    image_id = int(os.path.splitext(data.filenames[index])[0])
    boxes, classes = synthetic.object_attributes(synthetic.make_scene(SEED, image_id, RENDER))
    boxes, _ = visual_genome.encode_boxes(
        boxes, np.tile(data.original_sizes[index], (len(boxes), 1)), SIZE)
    return boxes.astype(np.float32), classes

  heads = {name: len(values) for name, values in synthetic.ATTRIBUTES.items()}
  want = region_pretraining.pretrain(
      config, data, scene_labels, heads, str(tmp_path / "here"), steps=3, batch_size=2,
      learning_rate=1e-3, warmup_steps=1, max_regions=4, seed=tiny.get_config().seed,
      feature_rms=tiny.get_config().pretrain.feature_rms, progress=False)
  want_params, want_config, want_vocab = model_dir.load_model(want)
  assert vocab == want_vocab and saved_config.to_dict() == want_config.to_dict()
  for path in (("backbone", "conv1_1", "kernel"), ("backbone", "conv5_3", "kernel"),
               ("recognition", "fc6", "kernel"), ("recognition", "fc7", "kernel")):
    got, expected = params, want_params
    for key in path:
      got, expected = got[key], expected[key]
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-6)
  init = region_pretraining.initial_params(config, tiny.get_config().seed)
  assert not np.array_equal(np.asarray(params["backbone"]["conv1_1"]["kernel"]),
                            np.asarray(init["backbone"]["conv1_1"]["kernel"]))

  # Run again: the model is there and is left as it is.
  mtime = os.path.getmtime(tmp_path / "run" / "metrics.jsonl")
  again = run_command(small_flags(h5, js) + ["--labels", objects, "--workdir", "run"], tmp_path)
  assert again.returncode == 0 and "pretrained model: run/model" in again.stdout
  assert os.path.getmtime(tmp_path / "run" / "metrics.jsonl") == mtime


def test_a_bad_labels_file_is_one_error_line(dataset, tmp_path):
  h5, js, _ = dataset
  labels = tmp_path / "objects.json"
  labels.write_text(json.dumps({"attributes": {"colour": ["red"]},
                                "images": {"1": [{"x": 1, "y": 1, "width": 2, "height": 2,
                                                  "colour": "mauve"}]}}))
  done = run_command(small_flags(h5, js) + ["--labels", str(labels), "--workdir", "run"],
                     tmp_path)
  assert done.returncode == 1
  assert done.stderr.strip().splitlines()[-1] == (
      f"error: {labels}: \"images\".\"1\"[0].\"colour\" must be one of red, got 'mauve'")
  assert "Traceback" not in done.stderr and not (tmp_path / "run").exists()


@pytest.mark.parametrize("field, value, message", [
    ("steps", 0, "pretrain.steps=0 is not accepted: expected a positive integer"),
    ("batch_size", 0, "pretrain.batch_size=0 is not accepted"),
    ("max_regions", -1, "pretrain.max_regions=-1 is not accepted"),
    ("warmup_steps", 2000, "pretrain.warmup_steps=2000 is not accepted: expected an integer in "
                           "[0, pretrain.steps=2000)"),
    ("learning_rate", 0.0, "pretrain.learning_rate=0.0 is not accepted: expected a positive"),
    ("feature_rms", -0.1, "pretrain.feature_rms=-0.1 is not accepted: expected a number >= 0"),
])
def test_pretrain_settings_are_checked(field, value, message):
  settings = tiny.get_config().pretrain
  pretrain_command.check_pretrain_config(settings)  # the shipped values pass
  settings[field] = value
  with pytest.raises(ValueError) as raised:
    pretrain_command.check_pretrain_config(settings)
  assert message in str(raised.value)


def test_shipped_pretrain_settings():
  settings = tiny.get_config().pretrain
  assert (settings.steps, settings.batch_size, settings.learning_rate, settings.warmup_steps,
          settings.max_regions, settings.feature_rms) == (2000, 8, 1e-3, 100, 8, 0.086)
