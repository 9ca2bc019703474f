"""Tests for densecap_jax.checkpoint."""

import json
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from densecap_jax import checkpoint


def _params():
  rng = np.random.default_rng(0)
  return {"conv1_1": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 3, 4)), jnp.float32),
                      "bias": np.zeros(4, np.float32)},
          "word_embed": {"embedding": rng.standard_normal((7, 5)).astype(np.float32)}}


def _config():
  return ml_collections.ConfigDict({"image_size": 256, "vocab_size": 5, "buckets": [[64, 256]]})


def test_round_trip(tmp_path):
  params, config = _params(), _config()
  checkpoint.save_model(tmp_path / "model", params, config, [None, "a", "red", "circle", "<UNK>", "b"])
  got_params, got_config, vocab = checkpoint.load_model(tmp_path / "model")
  np.testing.assert_array_equal(got_params["conv1_1"]["kernel"], params["conv1_1"]["kernel"])
  np.testing.assert_array_equal(got_params["word_embed"]["embedding"],
                                params["word_embed"]["embedding"])
  assert isinstance(got_params["conv1_1"]["bias"], np.ndarray)
  assert got_config.image_size == 256 and got_config.vocab_size == 5
  assert vocab == [None, "a", "red", "circle", "<UNK>", "b"]
  with open(tmp_path / "model" / "vocab.json") as f:
    assert json.load(f)["idx_to_token"]["1"] == "a"  # the original's 1-based string keys
  # Nothing but the model directory is left behind.
  assert os.listdir(tmp_path) == ["model"]


def test_existing_directory_is_kept_unless_overwrite(tmp_path):
  checkpoint.save_model(tmp_path / "m", _params(), _config(), [None, "x"])
  with pytest.raises(FileExistsError, match="exists"):
    checkpoint.save_model(tmp_path / "m", _params(), _config(), [None, "y"])
  assert checkpoint.load_model(tmp_path / "m")[2] == [None, "x"]
  checkpoint.save_model(tmp_path / "m", _params(), _config(), [None, "y"], overwrite=True)
  assert checkpoint.load_model(tmp_path / "m")[2] == [None, "y"]
  assert os.listdir(tmp_path) == ["m"]


def test_failed_save_leaves_nothing(tmp_path):
  with pytest.raises(AttributeError):  # not a ConfigDict: fails after params were written
    checkpoint.save_model(tmp_path / "m", _params(), object(), [None, "x"])
  assert os.listdir(tmp_path) == []


def test_missing_pieces_give_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="model directory not found"):
    checkpoint.load_model(tmp_path / "nope")
  checkpoint.save_model(tmp_path / "m", _params(), _config(), [None, "x"])
  os.remove(tmp_path / "m" / "vocab.json")
  with pytest.raises(FileNotFoundError, match="vocab.json is missing"):
    checkpoint.load_model(tmp_path / "m")


def test_training_directory_resolves_to_best_then_last(tmp_path):
  checkpoint.save_model(tmp_path / "run" / "last", _params(), _config(), [None, "last"])
  assert checkpoint.load_model(tmp_path / "run")[2] == [None, "last"]
  checkpoint.save_model(tmp_path / "run" / "best", _params(), _config(), [None, "best"])
  assert checkpoint.load_model(tmp_path / "run")[2] == [None, "best"]
