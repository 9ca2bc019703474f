"""Models by name (pretrained.resolve / fetch, densecap-fetch) against a local HTTP server.

The server holds a down-sized DenseCap ``.t7`` written by the project's own
writer, zipped as the release is, and a small torchvision-layout ``.pth``.
"""

import contextlib
import dataclasses
import errno
import hashlib
import io
import json
import os
import zipfile

import numpy as np
import pytest

import convert_fixtures as cf
import densecap_jax
import disk_faults
import photos
from densecap_jax import download
from densecap_jax import model_dir
from densecap_jax import predictor
from densecap_jax import pretrained
from densecap_jax.commands import fetch as fetch_command
from densecap_jax.commands import predict
from densecap_jax.convert import t7
from file_server import FileServer, closed_port_url, one_line_naming

ZIP = "densecap-pretrained-vgg16.t7.zip"
PTH = "vgg16-397923af.pth"
VOCAB = ["a", "cat", "on", "mat", "<UNK>"]
TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def _zip_of(name, data):
  out = io.BytesIO()
  with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
    zf.writestr(name, data)
  return out.getvalue()


@pytest.fixture(scope="module")
def released():
  """``(zip bytes, t7 bytes, vocab)`` of a small checkpoint laid out as the release."""
  tree, weights = cf.densecap_checkpoint(seed=0)
  data = t7.dumps(tree)
  return _zip_of("densecap-pretrained-vgg16.t7", data), data, weights["vocab"]


@pytest.fixture(scope="module")
def vgg_pth():
  """``(pth bytes, torch-layout conv weights)`` of a small VGG in torchvision's layout."""
  rng = np.random.default_rng(0)
  arrays, convs, channels = {}, [], 3
  for width in [w for block in cf.SMALL_WIDTHS for w in block]:
    convs.append((rng.standard_normal((width, channels, 3, 3)).astype(np.float32),
                  rng.standard_normal(width).astype(np.float32)))
    channels = width
  for index, (weight, bias) in zip(TORCHVISION_CONV_INDICES, convs):
    arrays[f"features.{index}.weight"], arrays[f"features.{index}.bias"] = weight, bias
  for index, (out, inp) in ((0, (16, channels * 49)), (3, (16, 16)), (6, (5, 16))):
    arrays[f"classifier.{index}.weight"] = rng.standard_normal((out, inp)).astype(np.float32)
    arrays[f"classifier.{index}.bias"] = rng.standard_normal(out).astype(np.float32)
  return cf.pth_zip_bytes(cf.state_dict(arrays)), convs


@pytest.fixture
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv(pretrained.MODELS_DIR_ENV, str(tmp_path / "cache"))
  monkeypatch.delenv(pretrained.MODELS_URL_ENV, raising=False)
  return tmp_path / "cache"


@pytest.fixture
def server(released, vgg_pth):
  with FileServer({ZIP: released[0], PTH: vgg_pth[0]}) as s:
    yield s


def _no_model_left(cache, name="densecap-vgg16"):
  assert not (cache / name).exists()
  leftovers = [p for p in os.listdir(cache) if p.startswith(".")] if cache.exists() else []
  assert not leftovers, leftovers
  assert pretrained.cached() == []


def test_download_convert_cache_then_load_without_the_server(cache, server, released):
  path = pretrained.resolve("densecap-vgg16", base_url=server.url, progress=False)
  assert path == str(cache / "densecap-vgg16")
  params, config, vocab = model_dir.load_model(path)
  assert vocab[1:] == list(released[2])
  assert params["backbone"]["conv1_1"]["kernel"].shape == (3, 3, 3, cf.SMALL_WIDTHS[0][0])
  assert server.requests == [(ZIP, None)]
  assert os.listdir(cache / "downloads") == []  # the download is removed
  record = json.loads((cache / "checksums.json").read_text())
  assert record[ZIP]["sha256"] == hashlib.sha256(released[0]).hexdigest()
  source = json.loads((cache / "densecap-vgg16" / "source.json").read_text())
  assert source["url"] == server.url + ZIP
  assert pretrained.cached() == [("densecap-vgg16", path, pretrained.directory_size(path))]

  server.stop()
  assert pretrained.resolve("densecap-vgg16", progress=False) == path
  assert pretrained.resolve(path) == path
  assert model_dir.load_model(pretrained.resolve("densecap-vgg16"))[2] == vocab


def test_resume_after_a_dropped_connection_is_byte_identical(cache, server, released,
                                                             monkeypatch):
  server.drops[ZIP] = (1, len(released[0]) // 3)
  monkeypatch.setenv(pretrained.MODELS_URL_ENV, server.url)
  path = pretrained.resolve("densecap-vgg16", keep_download=True, progress=False)
  assert server.requests == [(ZIP, None), (ZIP, f"bytes={len(released[0]) // 3}-")]
  assert (cache / "downloads" / ZIP).read_bytes() == released[0]
  assert model_dir.load_model(path)[2][1:] == list(released[2])


def test_corrupt_zip_is_rejected_by_its_crc(cache, server, released):
  data = bytearray(released[0])
  data[len(data) // 2] ^= 0xFF  # inside the stored .t7: the zip's CRC-32 no longer matches
  server.files[ZIP] = bytes(data)
  with pytest.raises(ValueError) as error:
    pretrained.resolve("densecap-vgg16", base_url=server.url, progress=False)
  text = one_line_naming(error.value, server.url + ZIP)
  assert "corrupt" in text and "CRC" in text
  _no_model_left(cache)
  assert os.listdir(cache / "downloads") == []  # downloaded anew next time
  assert not (cache / "checksums.json").exists()  # nothing recorded from a bad file


def test_truncated_file_is_rejected(cache, server, released):
  server.files[ZIP] = released[0][:len(released[0]) // 2]
  with pytest.raises(ValueError) as error:
    pretrained.resolve("densecap-vgg16", base_url=server.url, progress=False)
  assert "corrupt or truncated" in one_line_naming(error.value, server.url + ZIP)
  _no_model_left(cache)


def test_truncated_t7_inside_the_zip_does_not_convert(cache, server, released):
  server.files[ZIP] = _zip_of("densecap-pretrained-vgg16.t7", released[1][:len(released[1]) // 2])
  with pytest.raises(ValueError) as error:
    pretrained.resolve("densecap-vgg16", base_url=server.url, progress=False)
  text = one_line_naming(error.value, server.url + ZIP)
  assert "does not convert" in text and "densecap-convert --input" in text
  _no_model_left(cache)


def test_connection_dropping_every_time(cache, server):
  server.drops[ZIP] = (100, 500)
  with pytest.raises(download.DownloadError) as error:
    pretrained.resolve("densecap-vgg16", base_url=server.url, progress=False)
  text = one_line_naming(error.value, server.url + ZIP)
  assert "run again to resume" in text
  _no_model_left(cache)


def test_404_says_where_to_put_the_file(cache, server):
  del server.files[ZIP]
  with pytest.raises(download.DownloadError) as error:
    pretrained.resolve("densecap-vgg16", base_url=server.url, progress=False)
  text = one_line_naming(error.value, server.url + ZIP)
  assert "HTTP 404" in text
  assert f"by hand to {cache / 'downloads' / ZIP} and run again" in text
  _no_model_left(cache)


def test_server_down(cache):
  url = closed_port_url()
  with pytest.raises(download.DownloadError) as error:
    pretrained.resolve("densecap-vgg16", base_url=url, progress=False)
  assert "connection refused" in one_line_naming(error.value, url + ZIP)
  _no_model_left(cache)


def test_file_put_there_by_hand_is_used_offline(cache, released):
  (cache / "downloads").mkdir(parents=True)
  (cache / "downloads" / ZIP).write_bytes(released[0])
  path = pretrained.resolve("densecap-vgg16", base_url=closed_port_url(), progress=False)
  assert model_dir.load_model(path)[2][1:] == list(released[2])


def test_first_download_sha256_is_checked_later(cache, server, released):
  pretrained.resolve("densecap-vgg16", base_url=server.url, progress=False)
  recorded = hashlib.sha256(released[0]).hexdigest()
  (cache / "densecap-vgg16").rename(cache / "elsewhere")
  tree, _ = cf.densecap_checkpoint(seed=5)
  server.files[ZIP] = _zip_of("densecap-pretrained-vgg16.t7", t7.dumps(tree))
  with pytest.raises(download.ChecksumError) as error:
    pretrained.resolve("densecap-vgg16", base_url=server.url, progress=False)
  text = one_line_naming(error.value, server.url + ZIP)
  assert f"differs from the expected {recorded}" in text
  assert f"the first download recorded in {cache / 'checksums.json'}" in text
  assert not (cache / "densecap-vgg16").exists()
  assert os.listdir(cache / "downloads") == []
  server.files[ZIP] = released[0] + b"more"
  with pytest.raises(download.ChecksumError) as error:
    pretrained.resolve("densecap-vgg16", base_url=server.url, progress=False)
  assert (f"the server offers {len(released[0]) + 4:,} bytes, expected {len(released[0]):,}"
          in one_line_naming(error.value, server.url + ZIP))
  assert not (cache / "densecap-vgg16").exists()


def test_pinned_prefix_of_the_pth(cache, server, tmp_path):
  vocab_json = tmp_path / "vocab.json"
  vocab_json.write_text(json.dumps({"idx_to_token": {str(i + 1): w
                                                     for i, w in enumerate(VOCAB)}}))
  with pytest.raises(download.ChecksumError) as error:
    pretrained.resolve("vgg16-imagenet", base_url=server.url, vocab_json=vocab_json,
                       progress=False)
  assert "does not start with the expected 397923af" in one_line_naming(error.value,
                                                                         server.url + PTH)
  assert pretrained.cached() == []


@pytest.mark.slow  # compiles the initialisation of the heads
def test_vgg16_imagenet_converts_per_vocabulary(cache, server, vgg_pth, tmp_path, monkeypatch):
  model = pretrained.REGISTRY["vgg16-imagenet"]
  prefix = hashlib.sha256(vgg_pth[0]).hexdigest()[:8]
  monkeypatch.setitem(pretrained.REGISTRY, "vgg16-imagenet", dataclasses.replace(
      model, sources=(dataclasses.replace(model.sources[0], sha256_prefix=prefix),)))
  with pytest.raises(ValueError, match="pass the training data's JSON"):
    pretrained.resolve("vgg16-imagenet", base_url=server.url, progress=False)
  vocab_json = tmp_path / "vocab.json"
  vocab_json.write_text(json.dumps({"idx_to_token": {str(i + 1): w
                                                     for i, w in enumerate(VOCAB)}}))
  path = pretrained.resolve("vgg16-imagenet", base_url=server.url, vocab_json=vocab_json,
                            progress=False)
  assert path == str(cache / f"vgg16-imagenet-vocab-{pretrained.vocab_key(vocab_json)}")
  params, config, vocab = model_dir.load_model(path)
  assert vocab[1:] == VOCAB and config.vocab_size == len(VOCAB)
  np.testing.assert_array_equal(params["backbone"]["conv1_2"]["kernel"],
                                vgg_pth[1][1][0].transpose(2, 3, 1, 0))
  assert pretrained.cached() == [("vgg16-imagenet", path, pretrained.directory_size(path))]


def test_full_disk_while_converting(cache, server, monkeypatch):
  disk_faults.no_space_left(monkeypatch)
  with pytest.raises(download.DownloadError) as error:
    pretrained.resolve("densecap-vgg16", base_url=server.url, progress=False)
  assert error.value.errno == errno.ENOSPC
  assert "no space left on device" in one_line_naming(error.value, server.url + ZIP)
  _no_model_left(cache)
  assert os.listdir(cache / "downloads") == [ZIP]  # verified; the next run converts it


def test_full_disk_while_downloading(cache, server, monkeypatch):
  def write(f, data):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(download, "_write", write)
  with pytest.raises(download.DownloadError) as error:
    pretrained.resolve("densecap-vgg16", base_url=server.url, progress=False)
  assert error.value.errno == errno.ENOSPC
  one_line_naming(error.value, server.url + ZIP)
  _no_model_left(cache)


def test_names_paths_and_unknown_names(cache, tmp_path):
  assert pretrained.NAMES == ("densecap-vgg16", "vgg16-imagenet", "tiny-synthetic")
  bundled = pretrained.resolve("tiny-synthetic")
  assert model_dir.load_model(bundled)[1].name == "tiny"
  assert pretrained.resolve(tmp_path) == str(tmp_path)
  with pytest.raises(ValueError) as error:
    pretrained.resolve("densecap-vgg19")
  text = str(error.value)
  assert len(text.splitlines()) == 1
  assert "'densecap-vgg19' is neither a model directory nor a model name" in text
  assert "densecap-vgg16, vgg16-imagenet, tiny-synthetic" in text
  with pytest.raises(ValueError, match="has no source 'pth'"):
    pretrained.fetch("densecap-vgg16", source="pth")
  assert not cache.exists()


def test_mirror_replaces_the_folder_of_the_url(monkeypatch):
  source = pretrained.REGISTRY["densecap-vgg16"].sources[0]
  monkeypatch.delenv(pretrained.MODELS_URL_ENV, raising=False)
  assert pretrained.source_url(source) == source.url
  assert pretrained.source_url(source, "file:///srv/m/") == f"file:///srv/m/{ZIP}"
  monkeypatch.setenv(pretrained.MODELS_URL_ENV, "http://127.0.0.1:9/x")
  assert pretrained.source_url(source) == f"http://127.0.0.1:9/x/{ZIP}"


def _run(argv):
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    status = fetch_command.main(argv)
  return status, out.getvalue(), err.getvalue()


def test_command_lists_and_fetches(cache, server, vgg_pth):
  status, out, _ = _run([])
  assert status == 0
  assert f"models by name (cache: {cache}):" in out
  assert "densecap-vgg16" in out and "sha256 recorded on first download" in out
  assert f"pth: https://download.pytorch.org/models/{PTH} (sha256 pinned to start with 397923af)" in out
  assert "cached models: none" in out

  status, out, _ = _run(["densecap-vgg16", "--models_url", server.url, "--no_progress"])
  assert status == 0 and out == f"densecap-vgg16: {cache / 'densecap-vgg16'}\n"
  status, out, _ = _run([])
  assert "densecap-vgg16 " in out.split("cached models:")[1]
  assert str(cache / "densecap-vgg16") in out

  server.files[PTH] = b"not the weights"
  status, out, err = _run(["vgg16-imagenet", "--models_url", server.url, "--no_progress"])
  assert status == 1 and out == ""
  assert err.startswith("error: ") and len(err.splitlines()) == 1 and server.url + PTH in err


def test_command_downloads_vocabulary_models_for_later(cache, server, vgg_pth, monkeypatch):
  model = pretrained.REGISTRY["vgg16-imagenet"]
  prefix = hashlib.sha256(vgg_pth[0]).hexdigest()[:8]
  monkeypatch.setitem(pretrained.REGISTRY, "vgg16-imagenet", dataclasses.replace(
      model, sources=(dataclasses.replace(model.sources[0], sha256_prefix=prefix),)))
  status, out, _ = _run(["vgg16-imagenet", "--models_url", server.url, "--no_progress"])
  assert status == 0
  assert out.startswith(f"vgg16-imagenet: downloaded {cache / 'downloads' / PTH}")
  assert (cache / "downloads" / PTH).read_bytes() == vgg_pth[0]
  status, out, _ = _run([])
  assert "kept downloads:" in out and PTH in out


def test_something_else_under_the_name_is_not_taken_for_a_model(cache, server):
  (cache / "densecap-vgg16").mkdir(parents=True)
  (cache / "densecap-vgg16" / "notes.txt").write_text("mine")
  with pytest.raises(ValueError, match="densecap-vgg16 exists but is not a model directory; "
                                       "remove it and run again"):
    pretrained.resolve("densecap-vgg16", base_url=server.url, progress=False)
  assert server.requests == []
  assert pretrained.cached() == []


def test_corrupt_file_put_there_by_hand_is_kept_and_named(cache, released):
  (cache / "downloads").mkdir(parents=True)
  (cache / "downloads" / ZIP).write_bytes(released[0][:1000])
  url = closed_port_url()
  with pytest.raises(ValueError) as error:
    pretrained.resolve("densecap-vgg16", base_url=url, progress=False)
  text = one_line_naming(error.value, url + ZIP)
  assert f"corrupt or truncated: File is not a zip file; delete {cache / 'downloads' / ZIP} " \
         f"and run again, or convert it yourself" in text
  assert (cache / "downloads" / ZIP).stat().st_size == 1000
  _no_model_left(cache)


def test_load_model_by_name_captions_real_photos_then_works_offline(cache, server):
  """densecap_jax.load_model("densecap-vgg16"): from nothing to captions, then from the cache."""

  model = densecap_jax.load_model("densecap-vgg16", models_url=server.url, image_size=96,
                                  num_proposals=20)
  (result,) = model.predict([photos.photo_path("chelsea")], max_detections=5)
  assert len(result["boxes"]) == len(result["captions"]) == len(result["scores"]) > 0
  assert all(isinstance(c, str) for c in result["captions"])
  assert server.requests == [(ZIP, None)]

  server.stop()
  again = densecap_jax.load_model("densecap-vgg16", image_size=96, num_proposals=20)
  (same,) = again.predict([photos.photo_path("chelsea")], max_detections=5)
  assert same["captions"] == result["captions"]
  np.testing.assert_array_equal(same["boxes"], result["boxes"])
  assert predictor.model_path("tiny-synthetic") == predictor.bundled_model_path()
  assert predictor.model_path(None) == predictor.bundled_model_path()


def test_commands_take_a_model_name_for_checkpoint(cache, server, tmp_path):

  out = tmp_path / "out"
  predict.main(["--checkpoint", "densecap-vgg16", "--models_url", server.url,
                "--input_image", photos.photo_path("astronaut"), "--image_size", "96",
                "--num_proposals", "20", "--output_vis_dir", str(out), "--max_detections", "3"])
  results = json.loads((out / "results.json").read_text())
  assert results["opt"]["checkpoint"] == "densecap-vgg16"
  assert len(results["results"][0]["captions"]) == 3
  assert (cache / "densecap-vgg16" / "config.json").exists()
  with pytest.raises(SystemExit) as exit_info:
    predict.main(["--checkpoint", "densecap-vgg17", "--input_image",
                  photos.photo_path("astronaut")])
  message = str(exit_info.value.code)
  assert "model directory not found" in message and "densecap-vgg17" in message
  assert "densecap-vgg16" in message and "\n" not in message
