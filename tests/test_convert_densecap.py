"""The original's DenseCap checkpoint (.t7) -> densecap_jax model: mapping, CLI and parity.

A down-sized checkpoint in the released structure (tests/convert_fixtures.py)
is converted by the CLI and loaded with ``checkpoint.load_model``; every stage
of our model on the converted weights is compared with a NumPy reference of
Torch's semantics applied to the checkpoint's own (Torch-layout) weights.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import convert_fixtures as cf
from densecap_jax import model_dir
from densecap_jax import predictor as predictor_lib
from densecap_jax.models import densecap
from densecap_jax.ops import roi_pool as roi_pool_lib
from densecap_jax.commands import convert as cli
from densecap_jax.convert import densecap_t7
from densecap_jax.convert import mapping
from densecap_jax.convert import t7

OPT_OVERRIDES = {"mid_box_reg_weight": 0.07, "end_objectness_weight": 0.3,
                 "end_box_reg_weight": 0.2, "captioning_weight": 2, "box_reg_decay": 1e-4,
                 "sampler_high_thresh": 0.65, "sampler_batch_size": 128, "drop_prob": 0.4,
                 "train_remove_outbounds_boxes": 0}
TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  directory = tmp_path_factory.mktemp("t7")
  tree, weights = cf.densecap_checkpoint(seed=0, opt_overrides=OPT_OVERRIDES)
  t7.save(directory / "densecap.t7", tree)
  assert cli.main(["--input", str(directory / "densecap.t7"),
                   "--output", str(directory / "model")]) == 0
  params, config, vocab = model_dir.load_model(directory / "model")
  return weights, params, config, vocab, directory / "model"


def _apply(config, params, method, *args):
  return densecap.build_model(config).apply({"params": params}, *args, method=method)


def test_cli_prints_each_tensor_and_never_overwrites(tmp_path, capsys):
  tree, _ = cf.densecap_checkpoint(seed=1)
  t7.save(tmp_path / "in.t7", tree)
  assert cli.main(["--input", str(tmp_path / "in.t7"), "--output", str(tmp_path / "m")]) == 0
  out = capsys.readouterr().out
  lines = [" ".join(line.split()) for line in out.splitlines()]
  assert ("backbone/conv1_1/kernel (3, 3, 3, 4) <- checkpoint.model.nets.conv_net1.modules[1]"
          ".weight (4, 3, 3, 3)") in lines
  assert ("language_model/lstm/weight (22, 40) <- checkpoint.model.nets.language_model.rnn"
          ".modules[1].weight (22, 40)") in lines
  assert ("recognition/fc6/kernel (490, 24) <- checkpoint.model.nets.recog_base.modules[2]"
          ".weight (24, 490)") in lines
  assert "config 'custom', 47 tensors, vocabulary of 7 words" in out
  assert "sizes differ from the released VGG-16 model" in out

  assert cli.main(["--input", str(tmp_path / "in.t7"), "--output", str(tmp_path / "m")]) == 1
  assert "exists; the converter never overwrites" in capsys.readouterr().err


def test_cli_refuses_truncated_file(tmp_path, capsys):
  tree, _ = cf.densecap_checkpoint(seed=1)
  data = t7.dumps(tree)
  (tmp_path / "cut.t7").write_bytes(data[:len(data) // 2])
  assert cli.main(["--input", str(tmp_path / "cut.t7"), "--output", str(tmp_path / "m")]) == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "truncated" in err and len(err.splitlines()) == 1
  assert not (tmp_path / "m").exists()


def test_config_and_vocab_come_from_the_checkpoint(converted):
  weights, params, config, vocab, _ = converted
  assert vocab == [None] + weights["vocab"]
  assert config.name == "custom"
  assert tuple(map(tuple, config.cnn_widths)) == cf.SMALL_WIDTHS
  assert config.frozen_blocks == 2
  assert (config.rpn_num_filters, config.fc_dim, config.rnn_size, config.rnn_encoding_size,
          config.vocab_size, config.seq_length) == (8, 24, 10, 12, 7, 5)
  np.testing.assert_allclose(config.anchor_sizes, np.asarray(cf.VGG_ANCHORS) * 0.25)
  assert config.anchor_scale == 1.0
  assert tuple(config.field_centers) == (8.5, 8.5, 16.0, 16.0)
  assert tuple(config.roi_output_size) == (7, 7)
  for key in ("mid_box_reg_weight", "end_objectness_weight", "end_box_reg_weight",
              "captioning_weight", "box_reg_decay", "sampler_high_thresh", "sampler_batch_size",
              "drop_prob"):
    assert config[key] == pytest.approx(OPT_OVERRIDES[key]), key
  assert config.train_remove_outbounds_boxes is False
  assert config.mid_objectness_weight == pytest.approx(0.1)
  # the converted tree is exactly what the model initialises
  expected = jax.eval_shape(lambda: densecap.init_params(config, jax.random.key(0)))
  assert jax.tree.map(lambda x: x.shape, expected) == jax.tree.map(np.shape, params)


def test_backbone_matches_torch_on_a_padded_bucket(converted):
  weights, params, config, *_ = converted
  rng = np.random.default_rng(1)
  image = rng.standard_normal((3, 37, 53)).astype(np.float32)  # odd sizes: ceil-mode pools
  reference = cf.torch_vgg(image, weights["convs"])  # (C, 3, 4)
  padded = np.zeros((1, 48, 64, 3), np.float32)
  padded[0, :37, :53] = image.transpose(1, 2, 0)
  ours = _apply(config, params, densecap.DenseCap.features, padded,
                jnp.array([[37, 53]], jnp.int32))
  assert reference.shape[1:] == (3, 4) and ours.shape == (1, 3, 4, reference.shape[0])
  np.testing.assert_allclose(ours[0], reference.transpose(1, 2, 0), **TOL)


def test_rpn_matches_torch(converted):
  weights, params, config, *_ = converted
  features = np.random.default_rng(2).random((10, 4, 5)).astype(np.float32)
  hidden = np.maximum(cf.torch_conv(features, *weights["rpn_conv"], 1), 0)
  box_ref = cf.torch_conv(hidden, *weights["rpn_box"], 0)
  score_ref = cf.torch_conv(hidden, *weights["rpn_score"], 0)
  boxes, scores = _apply(config, params, densecap.DenseCap.rpn, features.transpose(1, 2, 0)[None])
  np.testing.assert_allclose(boxes[0], box_ref.transpose(1, 2, 0), **TOL)
  np.testing.assert_allclose(scores[0], score_ref.transpose(1, 2, 0), **TOL)


def test_recognition_path_matches_torch(converted):
  weights, params, config, *_ = converted
  pooled = np.random.default_rng(3).random((3, 10, 7, 7)).astype(np.float32)  # B x C x 7 x 7
  x = pooled.reshape(3, -1)  # Torch's View(-1): (C, H, W) order
  x = np.maximum(cf.torch_linear(x, *weights["fc6"]), 0)
  codes_ref = np.maximum(cf.torch_linear(x, *weights["fc7"]), 0)
  codes, logits, transforms = _apply(config, params, densecap.DenseCap.recognize,
                                     pooled.transpose(0, 2, 3, 1))
  np.testing.assert_allclose(codes, codes_ref, **TOL)
  np.testing.assert_allclose(logits, cf.torch_linear(codes_ref, *weights["objectness"])[:, 0],
                             **TOL)
  np.testing.assert_allclose(transforms, cf.torch_linear(codes_ref, *weights["box_reg"]), **TOL)


def _lm_reference(weights, codes, tokens):
  """Scores of the image step then each token (torch-rnn LSTM, h0 = c0 = 0)."""
  x = np.maximum(cf.torch_linear(codes, *weights["image_encoder"]), 0)
  h = c = np.zeros((codes.shape[0], weights["lstm"][1].size // 4))
  inputs = [x] + [weights["lookup"][tokens[:, t] - 1] for t in range(tokens.shape[1])]
  scores = []
  for x in inputs:
    h, c = cf.torch_rnn_lstm_step(x, h, c, *weights["lstm"])
    scores.append(cf.torch_linear(h, *weights["output_proj"]))
  return np.stack(scores, axis=1)


def _greedy_reference(weights, codes, seq_length):
  """Greedy tokens: feed START, then each argmax (§6.5)."""
  v = weights["output_proj"][1].size - 1
  tokens = np.full((codes.shape[0], 1), v + 1)
  for _ in range(seq_length):
    scores = _lm_reference(weights, codes, tokens)[:, -1]
    tokens = np.concatenate([tokens, scores.argmax(axis=1)[:, None] + 1], axis=1)
  return tokens[:, 1:]


def test_language_model_matches_torch_rnn(converted):
  weights, params, config, *_ = converted
  v = config.vocab_size
  rng = np.random.default_rng(4)
  codes = rng.random((2, 24)).astype(np.float32) * 2
  labels = np.array([[3, 1, 7, 0, 0], [2, 5, 4, 6, 1]], np.int32)
  start_and_words = np.concatenate([np.full((2, 1), v + 1), np.where(labels == 0, v + 2, labels)],
                                   axis=1)
  ours = _apply(config, params, densecap.DenseCap.caption_scores, codes, labels)
  np.testing.assert_allclose(ours, _lm_reference(weights, codes, start_and_words), **TOL)

  sampled = np.asarray(_apply(config, params, densecap.DenseCap.sample_captions, codes))
  np.testing.assert_array_equal(sampled, _greedy_reference(weights, codes, config.seq_length))


def test_predict_on_the_converted_model_matches_torch(tmp_path):
  # box_reg zero (its initialisation in the original): final boxes are the
  # proposals themselves, so each output box can be re-scored from scratch.
  tree, weights = cf.densecap_checkpoint(seed=9)
  tree["model"]["nets"]["box_reg_branch"].fields.update(
      weight=np.zeros((4, 24), np.float32), bias=np.zeros(4, np.float32))
  weights["box_reg"] = (np.zeros((4, 24)), np.zeros(4))
  t7.save(tmp_path / "m.t7", tree)
  assert cli.main(["--input", str(tmp_path / "m.t7"), "--output", str(tmp_path / "m")]) == 0

  predictor = predictor_lib.load_model(tmp_path / "m", image_size=64, num_proposals=8)
  image = np.random.default_rng(5).integers(0, 256, (48, 64, 3), np.uint8)
  (result,) = predictor.predict([image])
  n = len(result["captions"])
  assert 1 <= n <= 8 and np.all(np.diff(result["scores"]) <= 0)

  model_input = predictor.prepare(image).model_input  # (48, 64, 3) BGR minus mean
  features = cf.torch_vgg(model_input.transpose(2, 0, 1), weights["convs"]).transpose(1, 2, 0)
  x, y, w, h = np.asarray(result["boxes"], np.float64).T  # xywh -> xcycwh (§0.2)
  boxes = np.stack([x + (w - 1) / 2, y + (h - 1) / 2, w, h], axis=1)
  pooled = np.asarray(roi_pool_lib.bilinear_roi_pool(
      jnp.asarray(features, jnp.float32), jnp.asarray(boxes, jnp.float32), (48, 64)))
  codes = pooled.transpose(0, 3, 1, 2).reshape(n, -1)
  for name in ("fc6", "fc7"):
    codes = np.maximum(cf.torch_linear(codes, *weights[name]), 0)
  np.testing.assert_allclose(result["scores"],
                             cf.torch_linear(codes, *weights["objectness"])[:, 0], **TOL)
  words = [None] + weights["vocab"]
  end = len(words)  # V + 1
  expected = []
  for row in _greedy_reference(weights, codes, 5):  # decodeSequence (§6.6)
    row = list(row) + [end]
    expected.append(" ".join(words[t] for t in row[:row.index(end)]))
  assert result["captions"] == expected


def test_nn_backend_float_tensors_and_conv_mm_give_the_same_params():
  cudnn_tree, _ = cf.densecap_checkpoint(seed=6, cudnn=True, cuda=True)
  nn_tree, _ = cf.densecap_checkpoint(seed=6, cudnn=False, cuda=False,
                                      conv_net1_class="nn.SpatialConvolutionMM")
  a = densecap_t7.convert(t7.loads(t7.dumps(cudnn_tree)))
  b = densecap_t7.convert(t7.loads(t7.dumps(nn_tree)))
  for name, value in mapping.flatten(a.params).items():
    np.testing.assert_array_equal(value, mapping.flatten(b.params)[name], err_msg=name)


def test_bare_model_converts():
  tree, _ = cf.densecap_checkpoint(seed=7)
  conversion = densecap_t7.convert(t7.loads(t7.dumps(tree["model"])))
  assert conversion.sources["backbone/conv1_1/kernel"].startswith(
      "model.nets.conv_net1.modules[1].weight")


def _broken(edit):
  tree, _ = cf.densecap_checkpoint(seed=8)
  tree = copy.deepcopy(tree)
  edit(tree["model"]["nets"], tree)
  return t7.loads(t7.dumps(tree))


def _set(container, index, value):
  container["modules"][index - 1] = value


@pytest.mark.parametrize("edit, message", [
    (lambda nets, _: _set(nets["conv_net2"], 2, t7.TorchObject("nn.Tanh", {})),
     r"checkpoint\.model\.nets\.conv_net2\.modules\[2\]: unknown module nn\.Tanh"),
    (lambda nets, _: nets["conv_net1"]["modules"][4].fields.update(ceil_mode=False),
     r"conv_net1\.modules\[5\]: max-pool in floor mode"),
    (lambda nets, _: nets["recog_base"]["modules"][4].fields.update(
        weight=np.zeros((24, 23), np.float32), gradWeight=np.zeros((24, 23), np.float32)),
     r"shape mismatch for recognition/fc7/kernel: the model needs \(24, 24\), the file gives "
     r"\(23, 24\)"),
    (lambda nets, _: nets["language_model"]["idx_to_token"].pop(7),
     r"vocab_size 7 but idx_to_token has 6 words"),
    (lambda nets, _: nets["language_model"]["rnn"]["modules"].insert(
        1, nets["language_model"]["rnn"]["modules"][0]),
     r"one LSTM layer and one output Linear, found 2 LSTM"),
    (lambda nets, tree: tree.pop("model"), r"expected a DenseCap checkpoint"),
])
def test_refuses_with_a_clear_message(edit, message):
  tree = _broken(edit)
  with pytest.raises(ValueError, match=message):
    densecap_t7.convert(tree)


def test_released_sizes_are_named_vgg16():
  config = mapping.model_config(cnn_widths=((64, 64), (128, 128), (256,) * 3, (512,) * 3,
                                            (512,) * 3), fc_dim=4096, vocab_size=10497)
  assert config.name == "vgg16"
  assert mapping.model_config(fc_dim=2048).name == "custom"
