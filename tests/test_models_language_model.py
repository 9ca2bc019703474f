"""Tests for the language model against NumPy references of §6."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from densecap_jax.data import vocab
from densecap_jax.models import language_model as lm

V, L, D_CODE, W, H = 7, 4, 6, 5, 3


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def _np_lstm_step(weight, bias, c, h, x):
  """torch-rnn equations (§6.3) written out gate by gate: i, f, o, g."""
  d = x.shape[-1]
  wx, wh = weight[:d], weight[d:]
  a = x @ wx + h @ wh + bias
  n = h.shape[-1]
  i, f, o, g = (_sigmoid(a[:, :n]), _sigmoid(a[:, n:2 * n]), _sigmoid(a[:, 2 * n:3 * n]),
                np.tanh(a[:, 3 * n:]))
  c = f * c + i * g
  return c, o * np.tanh(c)


def _np_params(params):
  p = jax.tree.map(np.asarray, params["params"])
  return {
      "enc_w": p["image_encoder"]["kernel"], "enc_b": p["image_encoder"]["bias"],
      "embed": p["word_embed"]["embedding"],
      "lstm_w": p["lstm"]["weight"], "lstm_b": p["lstm"]["bias"],
      "out_w": p["output_proj"]["kernel"], "out_b": p["output_proj"]["bias"],
  }


@pytest.fixture(scope="module")
def model_and_params():
  model = lm.LanguageModel(V, L, D_CODE, W, H)
  params = model.init(jax.random.key(0), jnp.zeros((1, D_CODE)), jnp.zeros((1, L), jnp.int32))
  # Non-trivial biases so that every term of the equations is exercised.
  params = jax.tree.map(lambda x: x + 0.1 * jnp.cos(jnp.arange(x.size).reshape(x.shape)), params)
  return model, params


def test_lstm_step_matches_numpy_reference():
  rng = np.random.default_rng(0)
  d, n = 4, 3
  weight = rng.normal(size=(d + n, 4 * n)).astype(np.float32)
  bias = rng.normal(size=(4 * n,)).astype(np.float32)
  c, h, x = (rng.normal(size=(2, k)).astype(np.float32) for k in (n, n, d))
  (c_new, h_new), out = lm.lstm_step(jnp.asarray(weight), jnp.asarray(bias), (c, h), x)
  c_ref, h_ref = _np_lstm_step(weight, bias, c, h, x)
  np.testing.assert_allclose(c_new, c_ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(h_new, h_ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out, h_new)


def test_lstm_init_follows_torch_rnn():
  params = lm.LSTM(256, 256).init(jax.random.key(1), jnp.zeros((1, 1, 256)))["params"]
  weight, bias = np.asarray(params["weight"]), np.asarray(params["bias"])
  assert weight.shape == (512, 1024) and bias.shape == (1024,)
  assert abs(weight.std() - 1 / np.sqrt(512)) < 0.05 / np.sqrt(512)
  np.testing.assert_array_equal(bias[256:512], 1.0)
  np.testing.assert_array_equal(np.delete(bias, np.s_[256:512]), 0.0)


def test_parameter_shapes(model_and_params):
  p = model_and_params[1]["params"]
  assert p["word_embed"]["embedding"].shape == (V + 2, W)
  assert p["lstm"]["weight"].shape == (W + H, 4 * H)
  assert p["output_proj"]["kernel"].shape == (H, V + 1)
  assert p["image_encoder"]["kernel"].shape == (D_CODE, W)


def test_input_tokens_add_start_and_null():
  labels = jnp.array([[3, 5, 0, 0], [1, 2, 3, 4], [0, 0, 0, 0]])
  np.testing.assert_array_equal(lm.lm_input_tokens(labels, 10),
                                [[11, 3, 5, 12, 12], [11, 1, 2, 3, 4], [11, 12, 12, 12, 12]])


def test_targets_worked_by_hand():
  # §6.4: column 0 ignored, labels, first 0 at/after column 1 -> END (V+1 = 11).
  labels = jnp.array([[3, 5, 0, 0], [1, 2, 3, 4], [0, 0, 0, 0], [7, 0, 0, 0]])
  np.testing.assert_array_equal(lm.lm_targets(labels, 10),
                                [[0, 3, 5, 11, 0, 0],
                                 [0, 1, 2, 3, 4, 11],
                                 [0, 11, 0, 0, 0, 0],
                                 [0, 7, 11, 0, 0, 0]])


def _np_teacher_forcing(p, codes, labels):
  x_img = np.maximum(codes @ p["enc_w"] + p["enc_b"], 0)
  tokens = np.concatenate([np.full((len(labels), 1), V + 1), labels], axis=1)
  tokens[tokens == 0] = V + 2
  inputs = [x_img] + [p["embed"][tokens[:, t] - 1] for t in range(tokens.shape[1])]
  c = h = np.zeros((len(codes), H), np.float32)
  scores = []
  for x in inputs:
    c, h = _np_lstm_step(p["lstm_w"], p["lstm_b"], c, h, x)
    scores.append(h @ p["out_w"] + p["out_b"])
  return np.stack(scores, axis=1)


def test_teacher_forcing_scores_match_numpy(model_and_params):
  model, params = model_and_params
  rng = np.random.default_rng(2)
  codes = rng.normal(size=(3, D_CODE)).astype(np.float32)
  labels = np.array([[1, 2, 0, 0], [7, 7, 7, 7], [0, 0, 0, 0]], np.int32)
  scores = model.apply(params, jnp.asarray(codes), jnp.asarray(labels))
  assert scores.shape == (3, L + 2, V + 1)
  np.testing.assert_allclose(scores, _np_teacher_forcing(_np_params(params), codes, labels),
                             rtol=1e-4, atol=1e-5)


def test_greedy_sampling_matches_numpy_loop(model_and_params):
  model, params = model_and_params
  p = _np_params(params)
  codes = np.random.default_rng(3).normal(size=(5, D_CODE)).astype(np.float32) * 3
  tokens = model.apply(params, jnp.asarray(codes), method=lm.LanguageModel.sample)
  c = h = np.zeros((5, H), np.float32)
  c, h = _np_lstm_step(p["lstm_w"], p["lstm_b"], c, h,
                       np.maximum(codes @ p["enc_w"] + p["enc_b"], 0))
  word = np.full(5, V + 1)
  expected = []
  for _ in range(L):
    c, h = _np_lstm_step(p["lstm_w"], p["lstm_b"], c, h, p["embed"][word - 1])
    word = np.argmax(h @ p["out_w"] + p["out_b"], axis=1) + 1
    expected.append(word)
  assert tokens.dtype == jnp.int32 and tokens.shape == (5, L)
  np.testing.assert_array_equal(tokens, np.stack(expected, axis=1))
  assert np.all((np.asarray(tokens) >= 1) & (np.asarray(tokens) <= V + 1))


def test_sampling_keeps_generating_after_end(model_and_params):
  # Make END (class V) always the argmax: every step, including after END, emits END.
  model, params = model_and_params
  params = jax.tree.map(lambda x: x, params)
  params["params"]["output_proj"]["bias"] = params["params"]["output_proj"]["bias"].at[V].set(1e3)
  tokens = model.apply(params, jnp.ones((2, D_CODE)), method=lm.LanguageModel.sample)
  np.testing.assert_array_equal(tokens, V + 1)


VOCAB = [None, "a", "man", "<UNK>", "dog"]


@pytest.mark.parametrize("row,expected", [
    ([1, 2, 5, 4], "a man"),          # stops at END = V + 1 = 5
    ([2, 0, 4, 4], "man"),            # stops at 0
    ([5, 1, 2, 3], ""),               # immediate END
    ([1, 3, 4, 2], "a <UNK> dog man"),  # full length, <UNK> literal
])
def test_decode_rules(row, expected):
  assert vocab.decode_captions(np.array(row), VOCAB) == expected


def test_decode_keeps_leading_shape():
  tokens = np.array([[[1, 5, 0, 0], [4, 4, 5, 1]], [[0, 0, 0, 0], [2, 1, 5, 5]]])
  assert vocab.decode_captions(tokens, VOCAB) == [
      ["a", "dog dog"], ["", "man a"]]


def test_decode_rejects_unknown_ids():
  with pytest.raises(ValueError, match="token id 9"):
    vocab.decode_captions(np.array([[1, 9]]), VOCAB)
