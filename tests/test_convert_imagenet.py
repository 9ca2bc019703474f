"""ImageNet VGG-16 weights (Caffe .caffemodel, torchvision .pth) -> a densecap_jax model.

Fixtures are written in the file formats by tests/convert_fixtures.py (a
minimal protobuf encoder; zip + pickle as torch.save lays them out).
"""

import contextlib
import io
import json
import zipfile

import jax
import numpy as np
import pytest

import convert_fixtures as cf
from densecap_jax import configs
from densecap_jax import model_dir
from densecap_jax.data import images as images_lib
from densecap_jax import convert as convert_lib
from densecap_jax.commands import convert as cli
from densecap_jax.convert import caffemodel
from densecap_jax.convert import imagenet
from densecap_jax.convert import mapping
from densecap_jax.convert import pth
from densecap_jax.models import densecap

VOCAB = ["a", "cat", "on", "mat", "<UNK>"]
TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


@pytest.fixture(scope="module")
def vgg():
  """Torch-layout VGG weights: convs per block, fc6 (C*7*7 inputs), fc7, fc8."""
  rng = np.random.default_rng(0)
  convs, channels = [], 3
  for block in cf.SMALL_WIDTHS:
    convs.append([])
    for width in block:
      convs[-1].append((rng.standard_normal((width, channels, 3, 3)).astype(np.float32),
                        rng.standard_normal(width).astype(np.float32)))
      channels = width
  fc = lambda out, inp: (rng.standard_normal((out, inp)).astype(np.float32),
                         rng.standard_normal(out).astype(np.float32))
  return {"convs": convs, "fc6": fc(16, channels * 49), "fc7": fc(16, 16), "fc8": fc(5, 16)}


@pytest.fixture(scope="module")
def vocab_json(tmp_path_factory):
  path = tmp_path_factory.mktemp("data") / "VG-regions-dicts.json"
  path.write_text(json.dumps({"idx_to_token": {str(i + 1): w for i, w in enumerate(VOCAB)},
                              "token_to_idx": {w: i + 1 for i, w in enumerate(VOCAB)}}))
  return path


def _torchvision_state(vgg):
  flat = [layer for block in vgg["convs"] for layer in block]
  arrays = {}
  for index, (weight, bias) in zip(TORCHVISION_CONV_INDICES, flat):
    arrays[f"features.{index}.weight"], arrays[f"features.{index}.bias"] = weight, bias
  for index, name in ((0, "fc6"), (3, "fc7"), (6, "fc8")):
    arrays[f"classifier.{index}.weight"], arrays[f"classifier.{index}.bias"] = vgg[name]
  return arrays


def _cli_convert(directory, name, data, vocab_json):
  """Runs the CLI on ``data``; returns ``(params, config, vocab, printed report)``."""
  (directory / name).write_bytes(data)
  report = io.StringIO()
  with contextlib.redirect_stdout(report):
    assert cli.main(["--input", str(directory / name), "--output", str(directory / "model"),
                     "--vocab", str(vocab_json), "--seed", "3"]) == 0
  return (*model_dir.load_model(directory / "model"), report.getvalue())


@pytest.fixture(scope="module")
def caffe_model(tmp_path_factory, vgg, vocab_json):
  layers = cf.vgg_caffe_layers(vgg["convs"], vgg["fc6"], vgg["fc7"], vgg["fc8"])
  return _cli_convert(tmp_path_factory.mktemp("caffe"), "VGG_ILSVRC_16_layers.caffemodel",
                      cf.caffemodel_bytes(layers, version=1), vocab_json)


@pytest.fixture(scope="module")
def pth_model(tmp_path_factory, vgg, vocab_json):
  return _cli_convert(tmp_path_factory.mktemp("pth"), "vgg16.pth",
                      cf.pth_zip_bytes(cf.state_dict(_torchvision_state(vgg))), vocab_json)


def _check_vgg_parts(params, vgg, skip_conv1_1=False):
  for block, layers in enumerate(vgg["convs"], start=1):
    for index, (weight, bias) in enumerate(layers, start=1):
      if skip_conv1_1 and (block, index) == (1, 1):
        continue
      conv = params["backbone"][f"conv{block}_{index}"]
      np.testing.assert_array_equal(conv["kernel"], weight.transpose(2, 3, 1, 0))
      np.testing.assert_array_equal(conv["bias"], bias)
  for name in ("fc6", "fc7"):
    np.testing.assert_array_equal(params["recognition"][name]["kernel"], vgg[name][0].T)
    np.testing.assert_array_equal(params["recognition"][name]["bias"], vgg[name][1])


def test_caffemodel_converts(caffe_model, vgg):
  params, config, vocab, report = caffe_model
  assert vocab == [None] + VOCAB
  assert tuple(map(tuple, config.cnn_widths)) == cf.SMALL_WIDTHS
  assert (config.fc_dim, config.vocab_size, config.name) == (16, len(VOCAB), "custom")
  _check_vgg_parts(params, vgg)  # BGR minus mean, as the original's loadcaffe path: unchanged
  lines = [" ".join(line.split()) for line in report.splitlines()]
  assert "backbone/conv1_1/kernel (3, 3, 3, 4) <- conv1_1 (4, 3, 3, 3), (1, 1, 1, 4)" in lines
  assert "language_model/lstm/weight (1024, 2048) <- initialised (seed 3)" in lines
  assert "note: skipped fc8 (the ImageNet classifier)" in lines


def test_other_parts_start_from_the_original_init_with_the_seed(caffe_model, pth_model):
  caffe_params, config = caffe_model[:2]
  pth_params = pth_model[0]
  for part in ("localization", "language_model"):  # same seed, same values
    for name, value in mapping.flatten(caffe_params[part]).items():
      np.testing.assert_array_equal(mapping.flatten(pth_params[part])[name], value, err_msg=name)
  np.testing.assert_array_equal(caffe_params["recognition"]["box_reg"]["kernel"], 0)
  np.testing.assert_array_equal(caffe_params["localization"]["rpn_box"]["kernel"], 0)
  hidden = config.rnn_size
  np.testing.assert_array_equal(caffe_params["language_model"]["lstm"]["bias"],
                                np.repeat([0.0, 1.0, 0.0, 0.0], hidden))  # forget gate 1 (§6.2)
  assert abs(np.std(caffe_params["localization"]["rpn_conv"]["kernel"]) - 0.01) < 0.002


def test_caffemodel_v2_layers_read_as_v1(vgg):
  layers = cf.vgg_caffe_layers(vgg["convs"], vgg["fc6"], vgg["fc7"], vgg["fc8"])
  v1 = imagenet.vgg_from_caffe(caffemodel.loads(cf.caffemodel_bytes(layers, version=1)))
  v2 = imagenet.vgg_from_caffe(caffemodel.loads(cf.caffemodel_bytes(layers, version=2)))
  for a, b in zip(jax.tree.leaves(v1[:3]), jax.tree.leaves(v2[:3])):
    if isinstance(a, np.ndarray):
      np.testing.assert_array_equal(a, b)
  assert [[w.shape for w, _, _ in block] for block in v2[0]] == [
      [w.shape for w, _ in block] for block in vgg["convs"]]


def test_caffemodel_reads_unpacked_floats_and_legacy_v0_layers():
  weight = np.arange(6, dtype=np.float32).reshape(2, 3)
  blob = cf.blob_proto(weight, legacy_dims=True, packed=False)
  v0 = cf._bytes_field(1, b"fc6") + cf._bytes_field(2, b"innerproduct") + cf._bytes_field(
      50, blob)
  net = cf._bytes_field(2, cf._bytes_field(1, v0))
  (layer,) = caffemodel.loads(net)
  assert (layer.name, layer.type) == ("fc6", "InnerProduct")
  np.testing.assert_array_equal(layer.blobs[0], weight.reshape(1, 1, 2, 3))


def test_torchvision_pth_converts(pth_model, vgg):
  params, config, _, report = pth_model
  assert tuple(map(tuple, config.cnn_widths)) == cf.SMALL_WIDTHS
  _check_vgg_parts(params, vgg, skip_conv1_1=True)
  folded = imagenet.fold_torchvision_input(*vgg["convs"][0][0])
  np.testing.assert_array_equal(params["backbone"]["conv1_1"]["kernel"],
                                folded[0].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["backbone"]["conv1_1"]["bias"], folded[1])
  assert "conv1_1 rewritten for BGR-minus-mean input" in report
  assert "skipped classifier.6 (fc8" in report


@pytest.mark.parametrize("rebuild", ["_rebuild_tensor_v2", "_rebuild_tensor"])
def test_legacy_pth_layout_reads_the_same_state_dict(vgg, rebuild):
  arrays = _torchvision_state(vgg)
  state = pth.loads(cf.pth_legacy_bytes(cf.state_dict(arrays, rebuild)))
  assert list(state) == list(arrays)
  for name, value in arrays.items():
    np.testing.assert_array_equal(state[name], value, err_msg=name)


def test_torchvision_conv1_1_fold_computes_the_same_function():
  rng = np.random.default_rng(1)
  weight = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
  bias = rng.standard_normal(5).astype(np.float32)
  rgb = rng.integers(0, 256, (9, 11, 3)).astype(np.float64)  # H x W x RGB, 0-255
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  torchvision_input = ((rgb / 255 - mean) / std).transpose(2, 0, 1)
  model_input = (rgb[..., ::-1] - np.array([103.939, 116.779, 123.68])).transpose(2, 0, 1)

  reference = cf.torch_conv(torchvision_input, weight, bias, 1)
  ours = cf.torch_conv(model_input, *imagenet.fold_torchvision_input(weight, bias), 1)
  np.testing.assert_allclose(ours[:, 1:-1, 1:-1], reference[:, 1:-1, 1:-1], rtol=1e-4, atol=1e-4)
  # Everywhere, once torchvision's padding is the model's zero (the VGG mean colour).
  pad_value = (np.array([123.68, 116.779, 103.939]) / 255 - mean) / std
  padded = np.broadcast_to(pad_value[:, None, None], (3, 11, 13)).copy()
  padded[:, 1:-1, 1:-1] = torchvision_input
  np.testing.assert_allclose(ours, cf.torch_conv(padded, weight, bias, 0), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(images_lib.VGG_MEAN_BGR, [103.939, 116.779, 123.68])


def test_malicious_pickle_is_refused_without_running_it(tmp_path, vocab_json, capsys):
  marker = tmp_path / "pwned"
  payload = cf.malicious_pickle(f"touch {marker}")
  zipped = cf.pth_zip_bytes(cf.state_dict({"x": np.zeros(1)}))
  out = io.BytesIO()  # the archive of a state dict with its data.pkl swapped for the payload
  with zipfile.ZipFile(io.BytesIO(zipped)) as src, zipfile.ZipFile(out, "w") as dst:
    for item in src.namelist():
      dst.writestr(item, payload if item.endswith("data.pkl") else src.read(item))
  for name, data in (("evil.pth", out.getvalue()), ("evil_legacy.pth", payload)):
    with pytest.raises(ValueError, match=r"refusing to load the global posix\.system"):
      pth.loads(data, name)
    (tmp_path / name).write_bytes(data)
    assert cli.main(["--input", str(tmp_path / name), "--output", str(tmp_path / "m"),
                     "--vocab", str(vocab_json)]) == 1
    assert "refusing to load the global posix.system" in capsys.readouterr().err
  assert not marker.exists()
  assert not (tmp_path / "m").exists()


def test_pickle_calling_an_allowed_marker_fails_cleanly():
  # GLOBAL torch FloatStorage; EMPTY_TUPLE; REDUCE: the marker is not callable.
  with pytest.raises(ValueError, match="not a PyTorch weights file"):
    pth.loads(b"\x80\x02ctorch\nFloatStorage\n)R.")


def test_truncated_files_are_refused(vgg):
  layers = cf.vgg_caffe_layers(vgg["convs"], vgg["fc6"], vgg["fc7"], vgg["fc8"])
  data = cf.caffemodel_bytes(layers)
  with pytest.raises(ValueError, match="truncated"):
    caffemodel.loads(data[:len(data) - 100], "vgg.caffemodel")
  state = cf.state_dict(_torchvision_state(vgg))
  with pytest.raises(ValueError, match="broken zip archive"):
    pth.loads(cf.pth_zip_bytes(state)[:-200], "vgg.pth")
  with pytest.raises(ValueError, match="truncated"):
    pth.loads(cf.pth_legacy_bytes(state)[:-200], "vgg.pth")


def test_refuses_unknown_layers_and_shape_mismatches(vgg):
  state = _torchvision_state(vgg)
  with pytest.raises(ValueError, match=r"unknown key 'features.1.running_mean'"):
    imagenet.vgg_from_torchvision({**state, "features.1.running_mean": np.zeros(4)})
  layers = cf.vgg_caffe_layers(vgg["convs"], vgg["fc6"], vgg["fc7"], vgg["fc8"])
  extra = [caffemodel.Layer("score", "Convolution", [np.zeros((2, 10, 1, 1)), np.zeros(2)])]
  with pytest.raises(ValueError, match=r"layer 'score' \(Convolution\): unknown layer"):
    imagenet.vgg_from_caffe(caffemodel.loads(cf.caffemodel_bytes(layers)) + extra)
  small_fc6 = (vgg["fc6"][0][:, :100], vgg["fc6"][1])
  parsed = imagenet.vgg_from_caffe(caffemodel.loads(cf.caffemodel_bytes(
      cf.vgg_caffe_layers(vgg["convs"], small_fc6, vgg["fc7"], vgg["fc8"]))))
  with pytest.raises(ValueError, match=r"takes 100 inputs, the RoI features have 10 x 7 x 7"):
    imagenet.convert(*parsed, [None] + VOCAB)


def test_imagenet_weights_need_a_vocabulary(tmp_path, vgg, capsys):
  layers = cf.vgg_caffe_layers(vgg["convs"], vgg["fc6"], vgg["fc7"], vgg["fc8"])
  (tmp_path / "vgg.caffemodel").write_bytes(cf.caffemodel_bytes(layers))
  assert cli.main(["--input", str(tmp_path / "vgg.caffemodel"),
                   "--output", str(tmp_path / "m")]) == 1
  assert "need --vocab DATA_JSON" in capsys.readouterr().err


def test_detect_format(tmp_path, vgg):
  cases = {"a.t7": b"\x03\x00\x00\x00\x00", "b.t7": b"\x04\x00\x00\x00",
           "c.caffemodel": cf.caffemodel_bytes([("conv1_1", "Convolution", [])]),
           "d.pth": cf.pth_zip_bytes(cf.state_dict({"x": np.zeros(1)})),
           "e.pth": cf.pth_legacy_bytes(cf.state_dict({"x": np.zeros(1)}))}
  for name, data in cases.items():
    (tmp_path / name).write_bytes(data)
    assert convert_lib.detect_format(tmp_path / name) == name.split(".")[1], name
  (tmp_path / "x.bin").write_bytes(b"GIF89a")
  with pytest.raises(ValueError, match="unknown file format"):
    convert_lib.detect_format(tmp_path / "x.bin")
  (tmp_path / "empty").write_bytes(b"")
  with pytest.raises(ValueError, match="empty file"):
    convert_lib.detect_format(tmp_path / "empty")


def test_heads_take_the_features_of_a_skip_block():
  """``init_heads`` gives the heads ``densecap.init_params`` gives, with a skip block too."""
  config = configs.get_model_config("tiny")
  config.vocab_size = 7
  config.cnn_widths = ((2,), (3,), (3,), (4,), (4,))
  config.rpn_num_filters, config.fc_dim, config.rnn_size, config.rnn_encoding_size = 4, 8, 8, 8
  config.cnn_skip_blocks = (2,)
  heads = imagenet.init_heads(config, seed=5)
  full = densecap.init_params(config, jax.random.key(5))
  assert heads["localization"]["rpn_conv"]["kernel"].shape[2] == 4  # relu5_3's channels
  assert heads["recognition"]["fc6"]["kernel"].shape[0] == 7 * 7 * (4 + 3)
  for part in ("localization", "recognition", "language_model"):
    for name, value in mapping.flatten(heads[part]).items():
      np.testing.assert_array_equal(value, mapping.flatten(full[part])[name], err_msg=name)


def test_check_params_names_an_unexpected_tensor_unless_extras_are_allowed():
  config = configs.get_model_config("tiny")
  config.vocab_size = 5
  params = jax.device_get(densecap.init_params(config, jax.random.key(0)))
  mapping.check_params(params, config)
  params["extra"] = {"kernel": np.zeros(3)}
  with pytest.raises(ValueError, match=r"^extra/kernel is not a parameter of the model$"):
    mapping.check_params(params, config)
  mapping.check_params(params, config, allow_extra=True)
