"""Tests for densecap_jax.train.optim against a NumPy transcription of optim_updates.adam."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from densecap_jax.train import optim


def _numpy_adam(x, grads, lr, b1, b2, eps):
  """optim_updates.lua adam, step by step; returns the parameter after each step."""
  m, v, t, out = np.zeros_like(x), np.zeros_like(x), 0, []
  for g in grads:
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    t += 1
    step = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
    x = x - step * m / (np.sqrt(v) + eps)
    out.append(x)
  return out


def _run(tx, params, grads):
  state = tx.init(params)
  out = []
  for g in grads:
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
    out.append(params)
  return out


def test_torch_adam_matches_reference():
  rng = np.random.default_rng(0)
  x = rng.standard_normal(6)
  grads = [rng.standard_normal(6) * 1e-3 for _ in range(5)]
  # A large eps makes its placement visible: optax.adam differs, ours does not.
  lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-3
  expected = _numpy_adam(x, grads, lr, b1, b2, eps)
  got = _run(optim.torch_adam(lr, b1, b2, eps), jnp.asarray(x, jnp.float32),
             [jnp.asarray(g, jnp.float32) for g in grads])
  for e, g in zip(expected, got):
    np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
  optax_out = _run(optax.adam(lr, b1, b2, eps), jnp.asarray(x, jnp.float32),
                   [jnp.asarray(g, jnp.float32) for g in grads])
  assert np.abs(np.asarray(optax_out[-1]) - expected[-1]).max() > 1e-3


def test_torch_adam_schedule_gets_zero_based_count():
  seen = []
  tx = optim.torch_adam(lambda count: (seen.append(count), 0.1)[1])
  state = tx.init(jnp.zeros(2))
  tx.update(jnp.ones(2), state)
  assert int(seen[0]) == 0


def test_param_groups():
  params = {"params": {"conv1_1": {"kernel": 0}, "conv2_2": {"bias": 0}, "conv3_1": {"kernel": 0},
                       "conv5_3": {"bias": 0}, "rpn_conv": {"kernel": 0}, "fc6": {"kernel": 0},
                       "lm": {"lstm": {"kernel": 0}}}}
  labels = optim.param_groups(params)["params"]
  assert labels["conv1_1"]["kernel"] == labels["conv2_2"]["bias"] == "frozen"
  assert labels["conv3_1"]["kernel"] == labels["conv5_3"]["bias"] == "cnn"
  assert labels["rpn_conv"]["kernel"] == labels["fc6"]["kernel"] == "rest"
  assert labels["lm"]["lstm"]["kernel"] == "rest"
  labels = optim.param_groups(params, frozen_blocks=0)["params"]
  assert labels["conv1_1"]["kernel"] == labels["conv5_3"]["bias"] == "cnn"


def test_trained_modules_freeze_the_rest():
  params = {"backbone": {"conv3_1": {"kernel": jnp.ones(3)}},
            "recognition": {"fc6": {"kernel": jnp.ones(3)}},
            "language_model": {"lstm": {"weight": jnp.ones(3)}}}
  labels = optim.param_groups(params, trained_modules=("language_model",))
  assert labels["backbone"]["conv3_1"]["kernel"] == labels["recognition"]["fc6"]["kernel"] == (
      "frozen")
  assert labels["language_model"]["lstm"]["weight"] == "rest"
  tx = optim.make_optimizer(0.1, finetune_cnn_after=0, trained_modules=("language_model",))
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(new["recognition"]["fc6"]["kernel"], 1.0)
  np.testing.assert_array_equal(new["backbone"]["conv3_1"]["kernel"], 1.0)
  assert np.all(np.asarray(new["language_model"]["lstm"]["weight"]) < 1.0)


def _model_like():
  return {"conv1_1": {"kernel": jnp.full(3, 1.0)}, "conv3_1": {"kernel": jnp.full(3, 2.0)},
          "fc6": {"kernel": jnp.full(3, 3.0)}}


def test_make_optimizer_groups_decay_and_finetune_start():
  lr, wd, start = 0.01, 0.1, 2
  params = _model_like()
  rng = np.random.default_rng(1)
  grads = [jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(3), jnp.float32), params)
           for _ in range(5)]
  tx = optim.make_optimizer(lr, weight_decay=wd, finetune_cnn_after=start)
  out = jax.jit(lambda: _run(tx, params, grads))()
  # Frozen layers never move.
  for p in out:
    np.testing.assert_array_equal(p["conv1_1"]["kernel"], params["conv1_1"]["kernel"])
  # The rest: Adam over g + wd * param from the first step.
  x = np.asarray(params["fc6"]["kernel"], np.float64)
  m = v = np.zeros(3)
  for t, g in enumerate(grads, start=1):
    g = np.asarray(g["fc6"]["kernel"]) + wd * x
    m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
    x = x - lr * np.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m / (np.sqrt(v) + 1e-8)
    np.testing.assert_allclose(out[t - 1]["fc6"]["kernel"], x, rtol=1e-5)
  # The CNN: unchanged for iterations 0, 1; from iteration 2 Adam with its own t = 1, 2, ...
  np.testing.assert_array_equal(out[start - 1]["conv3_1"]["kernel"], params["conv3_1"]["kernel"])
  x = np.asarray(params["conv3_1"]["kernel"], np.float64)
  m = v = np.zeros(3)
  for t, g in enumerate(grads[start:], start=1):
    g = np.asarray(g["conv3_1"]["kernel"]) + wd * x
    m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
    x = x - lr * np.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m / (np.sqrt(v) + 1e-8)
    np.testing.assert_allclose(out[start + t - 1]["conv3_1"]["kernel"], x, rtol=1e-5)


def test_cnn_never_moves_by_default():
  params = _model_like()
  grads = [jax.tree.map(jnp.ones_like, params)] * 3
  out = _run(optim.make_optimizer(0.1), params, grads)
  np.testing.assert_array_equal(out[-1]["conv3_1"]["kernel"], params["conv3_1"]["kernel"])
  assert not np.allclose(out[-1]["fc6"]["kernel"], params["fc6"]["kernel"])
