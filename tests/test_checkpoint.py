"""Tests for densecap_jax.checkpoint."""

import errno
import gc
import hashlib
import json
import os
import stat

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from densecap_jax import model_dir as model_dir_lib
import disk_faults


def _params():
  rng = np.random.default_rng(0)
  return {"conv1_1": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 3, 4)), jnp.float32),
                      "bias": np.zeros(4, np.float32)},
          "word_embed": {"embedding": rng.standard_normal((7, 5)).astype(np.float32)}}


def _config():
  return ml_collections.ConfigDict({"image_size": 256, "vocab_size": 5, "buckets": [[64, 256]]})


def test_round_trip(tmp_path):
  params, config = _params(), _config()
  model_dir_lib.save_model(tmp_path / "model", params, config, [None, "a", "red", "circle", "<UNK>", "b"])
  got_params, got_config, vocab = model_dir_lib.load_model(tmp_path / "model")
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
  model_dir_lib.save_model(tmp_path / "m", _params(), _config(), [None, "x"])
  with pytest.raises(FileExistsError, match="exists"):
    model_dir_lib.save_model(tmp_path / "m", _params(), _config(), [None, "y"])
  assert model_dir_lib.load_model(tmp_path / "m")[2] == [None, "x"]
  model_dir_lib.save_model(tmp_path / "m", _params(), _config(), [None, "y"], overwrite=True)
  assert model_dir_lib.load_model(tmp_path / "m")[2] == [None, "y"]
  assert os.listdir(tmp_path) == ["m"]


def test_failed_save_leaves_nothing(tmp_path):
  with pytest.raises(AttributeError):  # not a ConfigDict: fails after params were written
    model_dir_lib.save_model(tmp_path / "m", _params(), object(), [None, "x"])
  assert os.listdir(tmp_path) == []


def test_missing_pieces_give_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="model directory not found"):
    model_dir_lib.load_model(tmp_path / "nope")
  model_dir_lib.save_model(tmp_path / "m", _params(), _config(), [None, "x"])
  os.remove(tmp_path / "m" / "vocab.json")
  with pytest.raises(FileNotFoundError, match="vocab.json is missing"):
    model_dir_lib.load_model(tmp_path / "m")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o027, 0o750), (0o077, 0o700)],
                         ids=["022", "027", "077"])
def test_model_directory_gets_the_umask(tmp_path, umask, mode):
  old = os.umask(umask)
  try:
    model_dir_lib.save_model(tmp_path / "run" / "best", _params(), _config(), [None, "x"])
    model_dir_lib.save_model(tmp_path / "run" / "last", _params(), _config(), [None, "x"])
    model_dir_lib.save_model(tmp_path / "run" / "last", _params(), _config(), [None, "y"],
                          overwrite=True)
  finally:
    os.umask(old)
  for name in ("best", "last"):
    model_dir = tmp_path / "run" / name
    assert stat.S_IMODE(model_dir.stat().st_mode) == mode, name
    assert stat.S_IMODE((model_dir / "params").stat().st_mode) == mode
    assert stat.S_IMODE((model_dir / "config.json").stat().st_mode) == 0o666 & ~umask
  assert sorted(os.listdir(tmp_path / "run")) == ["best", "last"]


def _one_line_error(directory, match):
  with pytest.raises(ValueError, match=match) as info:
    model_dir_lib.load_model(directory)
  assert type(info.value) is ValueError  # not a json.JSONDecodeError
  assert "\n" not in str(info.value)
  return str(info.value)


@pytest.mark.parametrize("text, problem", [
    ('{"image_size": 256,', "is not valid JSON: .* at line 1 column 20"),
    ('[1, 2]', "must hold a JSON object of config fields, not list"),
    ('', "is not valid JSON"),
    (b'{"a": "\xff"}', "is not valid UTF-8"),
])
def test_broken_config_json_names_the_file(tmp_path, text, problem):
  model_dir_lib.save_model(tmp_path / "m", _params(), _config(), [None, "x"])
  path = tmp_path / "m" / "config.json"
  (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
  _one_line_error(tmp_path / "m", f"^model config {path} {problem}")


@pytest.mark.parametrize("text, problem", [
    ('{"idx_to_token": {"1": "x"', "is not valid JSON"),
    ('{"token_to_idx": {"x": 1}}', "field 'idx_to_token' must be an object"),
    ('{"idx_to_token": {"1": "x", "3": "y"}}', "idx_to_token ids must be exactly 1..2"),
])
def test_broken_vocab_json_names_the_file(tmp_path, text, problem):
  model_dir_lib.save_model(tmp_path / "m", _params(), _config(), [None, "x"])
  path = tmp_path / "m" / "vocab.json"
  path.write_text(text)
  _one_line_error(tmp_path / "m", f"^model vocabulary {path}:? {problem}")


@pytest.mark.parametrize("damage", ["truncate", "remove", "no_metadata"])
def test_corrupt_params_name_the_directory(tmp_path, capfd, damage):
  model_dir_lib.save_model(tmp_path / "m", _params(), _config(), [None, "x"])
  params_dir = tmp_path / "m" / "params"
  if damage == "no_metadata":
    os.remove(params_dir / "_METADATA")
  else:
    data = [p for p in (params_dir / "d").iterdir() if p.is_file()]
    assert data
    for p in data:
      if damage == "truncate":
        with open(p, "r+b") as f:
          f.truncate(p.stat().st_size // 2)
      else:
        os.remove(p)
  message = _one_line_error(tmp_path / "m", f"^model directory {tmp_path / 'm'}: the "
                                            "parameters in params/ cannot be read")
  assert "tensorstore_spec" not in message
  gc.collect()
  err = capfd.readouterr().err
  assert "Traceback" not in err and "Event loop is closed" not in err, err


def test_training_directory_resolves_to_best_then_last(tmp_path):
  model_dir_lib.save_model(tmp_path / "run" / "last", _params(), _config(), [None, "last"])
  assert model_dir_lib.load_model(tmp_path / "run")[2] == [None, "last"]
  model_dir_lib.save_model(tmp_path / "run" / "best", _params(), _config(), [None, "best"])
  assert model_dir_lib.load_model(tmp_path / "run")[2] == [None, "best"]


def _large_params():
  rng = np.random.default_rng(1)
  return {"word_embed": {"embedding": rng.standard_normal((200, 100)).astype(np.float32)},
          "fc": {"bias": np.arange(3, dtype=np.float32)}}


def test_checksums_are_sha256_of_dtype_shape_and_bytes():
  a = np.arange(6, dtype=np.float32).reshape(2, 3)
  sums = model_dir_lib.tree_checksums({"x": {"k": jnp.asarray(a)}, "s": np.int32(7)})
  assert sums["algorithm"] == "sha256"
  assert sums["arrays"] == {
      "x/k": hashlib.sha256(b"<f4(2, 3)" + a.tobytes()).hexdigest(),
      "s": hashlib.sha256(b"<i4()" + np.int32(7).tobytes()).hexdigest()}


def test_damaged_parameter_bytes_are_refused_naming_the_directory(tmp_path):
  params = _large_params()
  model_dir_lib.save_model(tmp_path / "m", params, _config(), [None, "x"])
  assert sorted(os.listdir(tmp_path / "m")) == ["checksums.json", "config.json", "params",
                                                "vocab.json"]
  disk_faults.flip_bytes_of_largest_file(tmp_path / "m" / "params")
  message = _one_line_error(tmp_path / "m", f"^model directory {tmp_path / 'm'}: the parameters "
                                            "in params/ cannot be used, its arrays do not match "
                                            "checksums.json: word_embed/embedding differs;")
  assert "fc/bias" not in message
  # A model saved before checksums were kept loads unchecked, damaged values and all.
  os.remove(tmp_path / "m" / "checksums.json")
  loaded = model_dir_lib.load_model(tmp_path / "m")[0]["word_embed"]["embedding"]
  assert loaded.shape == (200, 100)
  assert not np.array_equal(loaded, params["word_embed"]["embedding"], equal_nan=True)


def test_nonfinite_arrays_are_named():
  params = _large_params()
  assert model_dir_lib.nonfinite_arrays(params) == []
  params["word_embed"]["embedding"][3, 4] = np.nan
  params["fc"]["bias"][0] = -np.inf
  assert model_dir_lib.nonfinite_arrays(params) == ["fc/bias", "word_embed/embedding"]
  assert model_dir_lib.nonfinite_arrays({"step": np.int32(3)}) == []


def test_a_full_disk_while_saving_a_model_is_one_line(tmp_path, monkeypatch, capfd):
  model_dir_lib.save_model(tmp_path / "m", _params(), _config(), [None, "x"])
  disk_faults.no_space_left(monkeypatch)
  with pytest.raises(OSError) as error:
    model_dir_lib.save_model(tmp_path / "m", _large_params(), _config(), [None, "y"], overwrite=True)
  assert error.value.errno == errno.ENOSPC
  assert str(error.value).startswith(
      f"no space left on device writing model {tmp_path / 'm'} in {tmp_path} (")
  assert "\n" not in str(error.value)
  gc.collect()
  err = capfd.readouterr().err
  assert "Traceback" not in err and "Event loop is closed" not in err, err
  assert os.listdir(tmp_path) == ["m"]  # the old model stays, nothing half-written beside it
  monkeypatch.undo()
  assert model_dir_lib.load_model(tmp_path / "m")[2] == [None, "x"]
