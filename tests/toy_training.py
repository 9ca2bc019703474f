"""A toy regression trained with densecap_jax.train.loop, for the loop's tests.

Run as ``python tests/toy_training.py WORKDIR NUM_STEPS [SECONDS_PER_STEP]``:
trains (or resumes) in WORKDIR and writes the final params to
``WORKDIR/final.npy``.
"""

import os
import sys
import time

if __name__ == "__main__":
  os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
import optax

from densecap_jax.train import loop

DIM = 5


def loss_fn(params, batch, rng):
  keep = jax.random.bernoulli(rng, 0.8, batch["x"].shape)  # randomness, like dropout
  pred = (batch["x"] * keep / 0.8) @ params["w"] + params["b"]
  loss = jnp.mean((pred - batch["y"])**2)
  return loss, {"abs_w": jnp.abs(params["w"]).mean()}


def batch_at(step, num_devices, per_device=2):
  rng = np.random.default_rng(step)
  x = rng.standard_normal((num_devices, per_device, DIM)).astype(np.float32)
  y = (x @ np.arange(1, DIM + 1, dtype=np.float32) + 0.5).astype(np.float32)
  return {"x": x, "y": y}


def batches_from(start, num_devices, delay=0.0):
  step = start
  while True:
    if delay:
      time.sleep(delay)
    yield batch_at(step, num_devices)
    step += 1


def init_params():
  return {"w": jnp.zeros(DIM, jnp.float32), "b": jnp.zeros([], jnp.float32)}


def run(workdir, num_steps, delay=0.0, checkpoint_every=2):
  tx = optax.adam(0.05)
  state = loop.init_train_state(init_params(), tx)
  checkpoints = loop.Checkpoints(os.path.join(workdir, "checkpoints"), max_to_keep=2)
  writer = loop.MetricsWriter(workdir, tensorboard=False)
  restored = checkpoints.restore_latest(state)
  if restored is not None:
    state = restored[0]
    writer.truncate_after(int(state.step))
  step_fn = loop.pmap_train_step(loop.make_train_step(loss_fn, tx))
  num_devices = jax.local_device_count()
  state, reason = loop.train_loop(
      state=state, step_fn=step_fn, batches=batches_from(int(state.step), num_devices, delay),
      base_rng=jax.random.key(0), num_steps=num_steps, checkpoints=checkpoints,
      checkpoint_every=checkpoint_every, writer=writer, log_every=1, progress=False)
  checkpoints.close()
  writer.close()
  return state, reason


if __name__ == "__main__":
  final, why = run(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
  np.save(os.path.join(sys.argv[1], "final.npy"),
          np.concatenate([np.asarray(final.params["w"]), [np.asarray(final.params["b"])]]))
  print("stopped:", why, "at step", int(final.step))
