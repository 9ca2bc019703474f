"""Tests for densecap_jax.files."""

import errno
import json
import os
import stat

import numpy as np
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


def test_quoted_cuts_long_strings_and_gives_their_length():
  assert files.quoted("a red 'car'") == repr("a red 'car'")
  assert files.quoted("x" * 60) == repr("x" * 60)
  assert files.quoted("ab" * 5000) == "'" + "ab" * 30 + "...' (10,000 characters)"
  assert files.quoted("abcdef", limit=3) == "'abc...' (6 characters)"


def test_loads_json_bounds_depth_without_recursion_and_reads_huge_numbers():
  assert files.json_depth('[[1, "[[[\\"[{", {"a": []}]]') == 4  # brackets in strings skipped
  assert files.json_depth("3") == 0
  deep = "[" * 5000 + "]" * 5000
  with pytest.raises(RecursionError):
    json.loads(deep)
  with pytest.raises(files.JSONLimitError, match=r"^nested 5,000 levels deep, more than the "
                                                 r"limit of 8$"):
    files.loads_json(deep, 8)
  assert files.loads_json('{"a": [[1, 2.5]]}', 3) == {"a": [[1, 2.5]]}
  huge = "1" + "0" * 400
  assert files.loads_json(f"[{huge}, -{huge}, 12]", 1) == [np.inf, -np.inf, 12]
  for text, message in ((f"[{huge}]", r"number '10{19}\.\.\.' \(401 characters\) is beyond"),
                        ("[1e400]", "number '1e400' is beyond the range of a float"),
                        ("[NaN]", "NaN is not a number JSON allows")):
    with pytest.raises(files.JSONLimitError, match=message):
      files.loads_json(text, 1, finite=True)
  assert files.loads_json("[1e300, 7]", 1, finite=True) == [1e300, 7]


@pytest.mark.parametrize("failure", ["enospc", "short_write"])
def test_a_full_disk_is_one_line_naming_the_file_and_folder(tmp_path, failure):
  path = tmp_path / "out" / "codes.npy"
  path.parent.mkdir()
  path.write_bytes(b"old")

  def write(tmp):
    if failure == "enospc":
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    raise OSError("102400 requested and 57312 written")  # NumPy's report of a short write

  with pytest.raises(OSError) as error:
    with files.atomic_output(path) as tmp:
      with open(tmp, "wb") as f:
        f.write(b"half")
      write(tmp)
  assert error.value.errno == errno.ENOSPC
  assert str(error.value) == (f"[Errno {errno.ENOSPC}] no space left on device writing {path} "
                              f"(folder {path.parent})")
  assert path.read_bytes() == b"old" and os.listdir(path.parent) == ["codes.npy"]
  # Other errors pass through unchanged.
  with pytest.raises(OSError, match="^12 requested$"):
    with files.atomic_output(path):
      raise OSError("12 requested")


def test_a_short_numpy_write_on_a_full_disk_is_reported_as_such(tmp_path, monkeypatch):
  real_save = np.save

  def save_on_full_disk(file, array):
    real_save(file, array[:1])
    raise OSError(f"{array.nbytes} requested and {array[:1].nbytes} written")

  monkeypatch.setattr(np, "save", save_on_full_disk)
  path = tmp_path / "codes.npy"
  with pytest.raises(OSError, match=f"^.*no space left on device writing {path} "):
    with files.atomic_output(path) as tmp:
      with open(tmp, "wb") as f:
        np.save(f, np.zeros((100, 256), np.float32))
  assert not path.exists() and os.listdir(tmp_path) == []
