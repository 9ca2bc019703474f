"""Tests for the photo index (``search.builder``, the ``index`` command), with the bundled model.

The photos are square synthetic scenes, so every image falls in one shape
bucket and the detection program compiles once.
"""

import errno
import filecmp
import json
import os
import shutil
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from densecap_jax import predictor
from densecap_jax.data import synthetic_world as synthetic
from densecap_jax.data import vocab as vocab_lib
from densecap_jax.search import builder as index_lib
from densecap_jax.commands import index as index_command
from densecap_jax.search import reader


def square_scenes(count, seed):
  """``count`` (image id, Scene) pairs of square synthetic scenes of ``seed``."""
  out, image_id = [], 0
  while len(out) < count:
    image_id += 1
    scene = synthetic.make_scene(seed, image_id, 256)
    if scene.width == scene.height:
      out.append((image_id, scene))
  return out


def write_scenes(folder, scenes):
  os.makedirs(folder, exist_ok=True)
  for image_id, scene in scenes:
    rgb, _ = synthetic.render_scene(scene)
    Image.fromarray(rgb).save(os.path.join(folder, f"{image_id}.jpg"), quality=90)


@pytest.fixture(scope="module")
def model():
  return predictor.load_model(batch_size=1)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp("photos"))
  write_scenes(folder, square_scenes(5, seed=3))
  return folder


@pytest.fixture
def counted(model, monkeypatch):
  """The number of images of each detection call."""
  counts = []
  detections = model.regions.detections

  def spy(prepared, max_detections=None):
    counts.append(len(prepared))
    return detections(prepared, max_detections)

  monkeypatch.setattr(model.regions, "detections", spy)
  return counts


def _copy_photos(photos, folder, names=None):
  os.makedirs(folder)
  for name in names or sorted(os.listdir(photos)):
    shutil.copy2(os.path.join(photos, name), os.path.join(folder, name))
  return str(folder)


def _same_tree(a, b):
  """Whether two index folders hold the same files with the same bytes (input_dir aside)."""
  files_a = sorted(os.path.relpath(os.path.join(d, f), a) for d, _, fs in os.walk(a) for f in fs)
  files_b = sorted(os.path.relpath(os.path.join(d, f), b) for d, _, fs in os.walk(b) for f in fs)
  assert files_a == files_b
  for name in files_a:
    if name != reader.MANIFEST:
      assert filecmp.cmp(os.path.join(a, name), os.path.join(b, name), shallow=False), name
  ma, mb = (json.load(open(os.path.join(p, reader.MANIFEST))) for p in (a, b))
  assert ma == mb


def test_index_stores_detections_in_image_pixels(model, photos, tmp_path):
  output = str(tmp_path / "p.index")
  stats = index_lib.build_index(model, photos, output, max_boxes=7, shard_size=2, progress=False)
  names = sorted(os.listdir(photos))
  assert sorted(stats["indexed"]) == names and not stats["dropped"] and not stats["failed"]
  index = reader.open_index(output)
  manifest = index.manifest
  assert manifest["format"] == "densecap_jax.index" and manifest["version"] == 1
  assert manifest["input_dir"] == os.path.abspath(photos)
  assert manifest["model"]["fingerprint"] == index_lib.model_fingerprint(model)
  assert manifest["model"]["fc_dim"] == 256 and manifest["settings"]["max_boxes"] == 7
  assert [s["images"] for s in manifest["shards"]] == [2, 2, 1]
  assert manifest["images"] == 5 and manifest["regions"] == index.num_regions
  assert index.image_names == sorted(names)  # shards hold the images in name order
  # The stored detections are the model's: boxes in the image's pixels, captions, codes.
  reference = model.score_phrases([index.image_path(i) for i in range(5)], ["a red circle"],
                                  max_detections=7)
  codes = index.concatenated("codes")
  tokens = index.concatenated("tokens")
  for i, ref in enumerate(reference):
    rows = np.flatnonzero(index.image_of_region == i)
    assert len(rows) == len(ref["captions"]) == 7
    np.testing.assert_allclose(index.rows("boxes", rows), ref["boxes"], rtol=1e-6)
    assert index.captions(rows) == ref["captions"]
    assert vocab_lib.decode_captions(tokens[rows], model.vocab) == ref["captions"]
    np.testing.assert_allclose(index.rows("scores", rows), ref["scores"], rtol=1e-6)
    mean = model.regions.score_codes(codes[rows], ["a red circle"])["mean_log_likelihood"]
    np.testing.assert_allclose(mean, ref["mean_log_likelihood"], rtol=1e-5, atol=1e-6)
    assert index.image_size(i) == (ref["width"], ref["height"])
  assert codes.dtype == np.float32 and codes.shape == (index.num_regions, 256)
  assert isinstance(index.shards[0].array("codes"), np.memmap)


def test_second_run_indexes_only_new_and_changed_files(model, photos, tmp_path, counted):
  names = sorted(os.listdir(photos))
  folder = _copy_photos(photos, tmp_path / "photos", names[:4])
  output = str(tmp_path / "p.index")
  index_lib.build_index(model, folder, output, shard_size=2, progress=False)
  before = reader.open_index(output)
  kept_rows = np.flatnonzero(before.image_of_region == before.image_names.index(names[1]))
  kept_codes = before.rows("codes", kept_rows)
  counted.clear()

  shutil.copy2(os.path.join(photos, names[4]), os.path.join(folder, names[4]))  # new
  with Image.open(os.path.join(photos, names[0])) as image:  # changed: another picture
    image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(os.path.join(folder, names[3]))
  os.remove(os.path.join(folder, names[2]))  # deleted
  stats = index_lib.build_index(model, folder, output, shard_size=2, progress=False)
  assert sorted(stats["indexed"]) == sorted([names[3], names[4]])
  assert sorted(stats["dropped"]) == sorted([names[2], names[3]])
  assert stats["kept"] == 2 and stats["images"] == 4
  assert sum(counted) == 2  # only those two went through the model
  after = reader.open_index(output)
  assert sorted(after.image_names) == sorted([names[0], names[1], names[3], names[4]])
  rows = np.flatnonzero(after.image_of_region == after.image_names.index(names[1]))
  np.testing.assert_array_equal(after.rows("codes", rows), kept_codes)
  listed = {s["name"] for s in after.manifest["shards"]}
  assert set(os.listdir(os.path.join(output, "shards"))) == listed  # replaced shards removed

  counted.clear()
  stats = index_lib.build_index(model, folder, output, shard_size=2, progress=False)
  assert stats["indexed"] == [] and stats["dropped"] == [] and sum(counted) == 0


class _Killed(Exception):
  pass


def test_rerun_after_a_kill_gives_the_same_index(model, photos, tmp_path):
  whole = str(tmp_path / "whole.index")
  index_lib.build_index(model, photos, whole, shard_size=2, progress=False)

  killed = str(tmp_path / "killed.index")

  def kill_after_first(shard):
    # A half-written next shard, as a kill while writing it leaves one.
    os.makedirs(os.path.join(killed, "shards", ".tmp-half"))
    os.makedirs(os.path.join(killed, "shards", "000001"))
    raise _Killed(shard.name)

  with pytest.raises(_Killed):
    index_lib.build_index(model, photos, killed, shard_size=2, progress=False,
                          on_commit=kill_after_first)
  assert [s["name"] for s in reader.read_manifest(killed)["shards"]] == ["000000"]
  stats = index_lib.build_index(model, photos, killed, shard_size=2, progress=False)
  assert stats["kept"] == 2 and len(stats["indexed"]) == 3
  _same_tree(whole, killed)


def test_run_against_another_model_or_settings_is_refused(model, photos, tmp_path):
  output = str(tmp_path / "p.index")
  index_lib.build_index(model, photos, output, max_boxes=5, shard_size=8, progress=False)
  with pytest.raises(ValueError, match="built with max_boxes 5, not 6"):
    index_lib.build_index(model, photos, output, max_boxes=6, progress=False)
  with pytest.raises(ValueError, match="built with codes_dtype float32, not float16"):
    index_lib.build_index(model, photos, output, max_boxes=5, codes_dtype="float16",
                          progress=False)
  manifest_path = os.path.join(output, reader.MANIFEST)
  manifest = json.load(open(manifest_path))
  manifest["model"]["fingerprint"] = "sha256:0"
  json.dump(manifest, open(manifest_path, "w"))
  with pytest.raises(ValueError, match="built with another model"):
    index_lib.build_index(model, photos, output, max_boxes=5, progress=False)
  other = _copy_photos(photos, tmp_path / "other", sorted(os.listdir(photos))[:1])
  manifest["model"]["fingerprint"] = index_lib.model_fingerprint(model)
  json.dump(manifest, open(manifest_path, "w"))
  with pytest.raises(ValueError, match="is of the folder"):
    index_lib.build_index(model, other, output, max_boxes=5, progress=False)


def test_codes_stored_as_float16(model, photos, tmp_path):
  folder = _copy_photos(photos, tmp_path / "photos", sorted(os.listdir(photos))[:1])
  output = str(tmp_path / "half.index")
  index_lib.build_index(model, folder, output, codes_dtype="float16", progress=False)
  index = reader.open_index(output)
  assert index.concatenated("codes").dtype == np.float16
  assert index.rows("codes", [0, 1]).dtype == np.float16


def _error(capsys, argv):
  with pytest.raises(SystemExit) as e:
    index_command.main(argv)
  message = str(e.value.code)
  assert message.startswith("error: ") and "\n" not in message, message
  return message


def test_command_errors_are_one_line(photos, tmp_path, capsys):
  assert "--input_dir is required" in _error(capsys, ["--output", str(tmp_path / "x")])
  assert "--output is required" in _error(capsys, ["--input_dir", photos])
  assert "not a folder" in _error(capsys, ["--input_dir", str(tmp_path / "none"),
                                           "--output", str(tmp_path / "x")])
  a_file = tmp_path / "a_file"
  a_file.write_text("mine")
  assert "not an index folder" in _error(capsys, ["--input_dir", photos, "--output", str(a_file)])
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("mine")
  assert "not an index" in _error(capsys, ["--input_dir", photos, "--output", str(mine)])
  assert (mine / "notes.txt").read_text() == "mine" and a_file.read_text() == "mine"
  assert "--max_boxes must be positive" in _error(
      capsys, ["--input_dir", photos, "--output", str(tmp_path / "x"), "--max_boxes", "0"])
  empty = tmp_path / "empty"
  empty.mkdir()
  assert "no image files" in _error(capsys, ["--input_dir", str(empty),
                                             "--output", str(tmp_path / "x")])


def test_command_indexes_a_folder_and_reports_unreadable_files(photos, tmp_path, capsys):
  folder = _copy_photos(photos, tmp_path / "photos", sorted(os.listdir(photos))[:1])
  (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
  output = str(tmp_path / "p.index")
  message = _error(capsys, ["--input_dir", folder, "--output", output, "--max_boxes", "3"])
  assert "1 image could not be read" in message and "broken.jpg" in message
  assert "indexed 1 image, kept 0, dropped 0" in capsys.readouterr().out
  index = reader.open_index(output)
  assert index.image_names == [sorted(os.listdir(photos))[0]] and index.num_regions == 3
  assert index.manifest["model"]["checkpoint"] == predictor.bundled_model_path()


def _hold_lock(folder, seconds):
  """A process that holds the writer lock of ``folder`` for ``seconds`` (started once held)."""
  code = ("import sys, time\n"
          "from densecap_jax.search import storage\n"
          "with storage.writer_lock(sys.argv[1]):\n"
          "  print('held', flush=True)\n"
          "  time.sleep(float(sys.argv[2]))\n")
  holder = subprocess.Popen([sys.executable, "-c", code, folder, str(seconds)],
                            stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "held"
  return holder


def test_a_second_writer_is_refused_while_another_holds_the_index(model, photos, tmp_path,
                                                                   capsys):
  folder = _copy_photos(photos, tmp_path / "photos", sorted(os.listdir(photos))[:2])
  output = str(tmp_path / "p.index")
  index_lib.build_index(model, folder, output, max_boxes=3, progress=False)
  before = open(os.path.join(output, reader.MANIFEST)).read()
  os.remove(os.path.join(folder, sorted(os.listdir(folder))[0]))  # work for a second run
  holder = _hold_lock(output, 60)
  try:
    with pytest.raises(ValueError) as e:
      index_lib.build_index(model, folder, output, max_boxes=3, progress=False)
    assert str(e.value) == (f"index {output} is in use by PID {holder.pid} (another index run); "
                            f"wait for it (--wait) or stop it")
    message = _error(capsys, ["--input_dir", folder, "--output", output, "--max_boxes", "3"])
    assert f"is in use by PID {holder.pid}" in message
    # Nothing was changed, and readers still open the index.
    assert open(os.path.join(output, reader.MANIFEST)).read() == before
    assert reader.open_index(output).num_images == 2
  finally:
    holder.kill()
    holder.wait()
  # With wait=True a run waits for the holder, then does its work.
  holder = _hold_lock(output, 3)
  start = time.monotonic()
  try:
    stats = index_lib.build_index(model, folder, output, max_boxes=3, progress=False, wait=True)
    assert time.monotonic() - start > 2.5  # it ran only after the holder had let go
  finally:
    holder.kill()
    holder.wait()
  assert len(stats["dropped"]) == 1 and reader.open_index(output).num_images == 1


@pytest.fixture(scope="module")
def small_index(model, photos, tmp_path_factory):
  """An index of 3 photos, one per shard, 3 regions each."""
  root = tmp_path_factory.mktemp("small")
  folder = _copy_photos(photos, root / "photos", sorted(os.listdir(photos))[:3])
  output = str(root / "p.index")
  index_lib.build_index(model, folder, output, max_boxes=3, shard_size=1, progress=False)
  return folder, output


def _cut_rows(path):
  np.save(path, np.load(path)[:-1])


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 100)


def _random_bytes(path):
  size = os.path.getsize(path)
  with open(path, "wb") as f:
    f.write(np.random.default_rng(0).bytes(size))


def _short_captions(path):
  json.dump(json.load(open(path))[:-1], open(path, "w"))


DAMAGE = {"codes cut to fewer rows": ("codes.npy", _cut_rows, "codes.npy has 2 rows, the "
                                      "manifest records 3"),
          "boxes deleted": ("boxes.npy", os.remove, "boxes.npy is missing"),
          "captions shortened": ("captions.json", _short_captions, "captions.json has 2 "
                                 "captions, the manifest records 3"),
          "random bytes": ("tokens.npy", _random_bytes, "tokens.npy is not a NumPy array "
                           "file (its header cannot be read)"),
          # A 128-byte header and 3 rows of 256 float32 (3200 bytes), cut by 100.
          "codes truncated": ("codes.npy", _truncate, "codes.npy has 3100 bytes, its header "
                              "says 3200")}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_shard_is_refused_on_opening_and_repaired_by_indexing(
    model, small_index, tmp_path, case, counted):
  folder, whole = small_index
  output = str(tmp_path / "p.index")
  shutil.copytree(whole, output)
  file, damage, why = DAMAGE[case]
  damage(os.path.join(output, "shards", "000001", file))
  with pytest.raises(ValueError) as e:
    reader.open_index(output)
  message = str(e.value)
  assert message.startswith(f"index {output} is damaged: shard 000001: {why}"), message
  assert message.endswith(f"; re-index it with densecap-index --input_dir "
                          f"{os.path.abspath(folder)} --output {output}"), message
  assert "\n" not in message and "pickle" not in message
  # The repair command indexes that shard's image again and nothing else.
  stats = index_lib.build_index(model, folder, output, max_boxes=3, shard_size=1, progress=False)
  assert stats["damaged"] == [f"shard 000001: {message.split('shard 000001: ')[1].split('; ')[0]}"
                              f"; indexing its 1 image again"]
  assert stats["indexed"] == [sorted(os.listdir(folder))[1]] and sum(counted) == 1
  _assert_same_entries(reader.open_index(output), reader.open_index(whole))
  assert not os.path.exists(os.path.join(output, "shards", "000001"))


def _assert_same_entries(index, reference):
  """Both indexes hold the same images with the same regions (shards and order aside)."""
  assert sorted(index.image_names) == sorted(reference.image_names)
  for name in reference.image_names:
    rows = np.flatnonzero(index.image_of_region == index.image_names.index(name))
    ref_rows = np.flatnonzero(reference.image_of_region == reference.image_names.index(name))
    for array in reader.ARRAYS:
      np.testing.assert_array_equal(index.rows(array, rows), reference.rows(array, ref_rows))
    assert index.captions(rows) == reference.captions(ref_rows)


def test_checksums_find_changed_values_and_old_manifests_still_open(model, small_index,
                                                                   tmp_path):
  folder, whole = small_index
  output = str(tmp_path / "p.index")
  shutil.copytree(whole, output)
  entries = reader.read_manifest(output)["shards"]
  codes = os.path.join(output, "shards", "000002", "codes.npy")
  assert entries[2]["files"]["codes.npy"] == {"bytes": os.path.getsize(codes),
                                              "crc32": zlib.crc32(open(codes, "rb").read())}
  changed = np.load(codes)
  changed[0, 0] += 1.0  # same size and header, another value
  np.save(codes, changed)
  # Opening checks sizes and headers of the arrays (not their checksums); indexing checks all.
  reader.open_index(output)
  stats = index_lib.build_index(model, folder, output, max_boxes=3, shard_size=1, progress=False)
  assert stats["damaged"] == ["shard 000002: codes.npy does not match its checksum in the "
                              "manifest; indexing its 1 image again"]
  _assert_same_entries(reader.open_index(output), reader.open_index(whole))
  # An index written before checksums were recorded opens, and is still checked otherwise.
  manifest_path = os.path.join(output, reader.MANIFEST)
  manifest = json.load(open(manifest_path))
  for entry in manifest["shards"]:
    del entry["files"]
  json.dump(manifest, open(manifest_path, "w"))
  assert reader.open_index(output).num_regions == 9
  _cut_rows(os.path.join(output, "shards", manifest["shards"][0]["name"], "scores.npy"))
  with pytest.raises(ValueError, match="scores.npy has 2 rows, the manifest records 3"):
    reader.open_index(output)


def test_an_index_opened_before_a_run_replaced_its_shard_says_to_open_it_again(
    model, small_index, tmp_path):
  folder, _ = small_index
  output = str(tmp_path / "p.index")
  shutil.copytree(folder, tmp_path / "photos")
  index_lib.build_index(model, str(tmp_path / "photos"), output, max_boxes=3, shard_size=1,
                        progress=False)
  opened = reader.open_index(output)
  os.remove(tmp_path / "photos" / sorted(os.listdir(folder))[0])  # shard 000000 goes
  index_lib.build_index(model, str(tmp_path / "photos"), output, max_boxes=3, shard_size=1,
                        progress=False)
  with pytest.raises(ValueError) as e:
    opened.rows("codes", [0])
  assert str(e.value) == (f"index {output} changed since it was opened (shard 000000 is no "
                          f"longer in it); open it again")
  np.testing.assert_array_equal(opened.rows("codes", [3]),  # shard 000001 is still there
                                reader.open_index(output).rows("codes", [0]))


def test_a_new_index_that_failed_on_a_full_disk_can_be_made_again(model, photos, tmp_path,
                                                                  monkeypatch, capsys):
  folder = _copy_photos(photos, tmp_path / "photos", sorted(os.listdir(photos))[:1])
  output = str(tmp_path / "p.index")

  def full_disk(path, obj):
    raise OSError(errno.ENOSPC, "No space left on device", path)

  with monkeypatch.context() as patch:
    patch.setattr(index_lib, "_write_json", full_disk)
    with pytest.raises(OSError):
      index_lib.build_index(model, folder, output, max_boxes=3, progress=False)
  assert not os.path.exists(os.path.join(output, reader.MANIFEST))
  assert index_command.check_args(index_command.parse_args(
      ["--input_dir", folder, "--output", output])) is None
  stats = index_lib.build_index(model, folder, output, max_boxes=3, progress=False)
  assert stats["images"] == 1 and reader.open_index(output).num_regions == 3
  # A folder with other things in it is still refused.
  mine = tmp_path / "mine"
  (mine / "shards" / "000000").mkdir(parents=True)
  with pytest.raises(ValueError, match="is a folder that is not an index"):
    index_lib.check_output(str(mine))


def test_a_shard_write_on_a_full_disk_is_one_line_naming_the_file(model, photos, tmp_path,
                                                                  monkeypatch):
  folder = _copy_photos(photos, tmp_path / "photos", sorted(os.listdir(photos))[:1])
  output = str(tmp_path / "p.index")

  def short_write(path, array):  # what NumPy raises when the disk fills during np.save
    del array
    raise OSError("102400 requested and 57312 written")

  with monkeypatch.context() as patch:
    patch.setattr(index_lib.np, "save", short_write)
    with pytest.raises(OSError) as e:
      index_lib.build_index(model, folder, output, max_boxes=3, progress=False)
  message = str(e.value)
  assert "no space left on device writing " in message and "requested" not in message
  assert os.path.join(output, "shards") in message and "\n" not in message
  assert not [n for n in os.listdir(os.path.join(output, "shards")) if n.startswith(".tmp")]


def test_a_reader_opening_while_a_run_replaces_a_shard_opens_the_new_commit(
    model, small_index, tmp_path, monkeypatch):
  folder, _ = small_index
  output = str(tmp_path / "p.index")
  shutil.copytree(folder, tmp_path / "photos")
  photos = str(tmp_path / "photos")
  index_lib.build_index(model, photos, output, max_boxes=3, shard_size=1, progress=False)
  check = reader.check_shard
  calls, running = [], []

  def run_meanwhile(*args, **kwargs):
    if running:  # the run's own checks
      return check(*args, **kwargs)
    # The reader has read the manifest; a run drops shard 000000 and commits before it looks.
    if not calls:
      running.append(True)
      os.remove(os.path.join(photos, sorted(os.listdir(photos))[0]))
      index_lib.build_index(model, photos, output, max_boxes=3, shard_size=1, progress=False)
      running.pop()
    calls.append(args[1]["name"])
    return check(*args, **kwargs)

  monkeypatch.setattr(reader, "check_shard", run_meanwhile)
  index = reader.open_index(output)
  assert calls == ["000000", "000001", "000002"]  # the first check failed; then the new manifest
  assert index.image_names == sorted(os.listdir(photos)) and index.num_regions == 6
