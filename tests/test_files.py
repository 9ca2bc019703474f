"""Tests for densecap_jax.files."""

import os
import stat

import pytest

from densecap_jax import files


def test_atomic_output_replaces_on_success_with_usual_mode(tmp_path):
  path = tmp_path / "out.txt"
  with files.atomic_output(path) as tmp:
    with open(tmp, "w") as f:
      f.write("new")
    assert not path.exists()
  assert path.read_text() == "new"
  mask = os.umask(0)
  os.umask(mask)
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~mask
  assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_output_keeps_old_file_on_error(tmp_path):
  path = tmp_path / "out.txt"
  path.write_text("old")
  with pytest.raises(RuntimeError):
    with files.atomic_output(path) as tmp:
      with open(tmp, "w") as f:
        f.write("half")
      raise RuntimeError("boom")
  assert path.read_text() == "old"
  assert os.listdir(tmp_path) == ["out.txt"]


def test_read_json_errors(tmp_path):
  with pytest.raises(ValueError, match="results file not found"):
    files.read_json(tmp_path / "nope.json", "results file")
  (tmp_path / "bad.json").write_text("{1: 2}")
  with pytest.raises(ValueError, match=r"bad.json is not valid JSON: .* line 1"):
    files.read_json(tmp_path / "bad.json")
  files.write_json(tmp_path / "ok.json", {"a": [1, 2]})
  assert files.read_json(tmp_path / "ok.json") == {"a": [1, 2]}
