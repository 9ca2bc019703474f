"""The original's optimiser in optax (reference §7.1, §14 item 10).

* Adam with Torch-optim's epsilon placement: ``eps`` is added to the
  uncorrected ``sqrt(v)`` and the bias correction folds into the step size,
  ``step = lr * sqrt(1 - b2^t) / (1 - b1^t)``; optax's ``adam`` adds ``eps``
  to the corrected root instead.
* Weight decay is added to the gradients (``g += wd * param``) before Adam.
* Two parameter groups with separate Adam state and the same learning rate:
  the CNN (conv3_1 … conv5_3) and everything else (RPN, recognition, LM).
  conv1_1 … conv2_2 never change.
* ``frozen_blocks`` sets how many VGG blocks never change (2 by default).
* The CNN group steps only from iteration ``finetune_cnn_after`` on (−1 =
  never); its Adam count starts there.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

VGG16_BLOCKS = (("conv1_1", "conv1_2"), ("conv2_1", "conv2_2"),
                ("conv3_1", "conv3_2", "conv3_3"), ("conv4_1", "conv4_2", "conv4_3"),
                ("conv5_1", "conv5_2", "conv5_3"))

class TorchAdamState(NamedTuple):
  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


def torch_adam(learning_rate, b1=0.9, b2=0.999, eps=1e-8):
  """Adam as ``optim_updates.adam`` computes it.

  ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g²``, ``t += 1``,
  ``update = -lr·sqrt(1-b2^t)/(1-b1^t) · m / (sqrt(v) + eps)``.

  Args:
    learning_rate: a float or an optax schedule of the step count (0-based).
    b1, b2, eps: Adam's constants.
  """

  def init_fn(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return TorchAdamState(count=jnp.zeros([], jnp.int32), mu=zeros, nu=zeros)

  def update_fn(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, updates)
    count = state.count + 1
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    t = count.astype(jnp.float32)
    step = lr * jnp.sqrt(1 - b2**t) / (1 - b1**t)
    updates = jax.tree.map(lambda m, v: -step * m / (jnp.sqrt(v) + eps), mu, nu)
    return updates, TorchAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


class StartingAtState(NamedTuple):
  count: jax.Array
  inner: optax.OptState


def starting_at(inner, start_step):
  """Applies ``inner`` from the ``start_step``-th update on; zero updates before.

  Before ``start_step`` the inner state is left untouched, so an Adam inside
  starts its own count at ``start_step``.
  """

  def init_fn(params):
    return StartingAtState(count=jnp.zeros([], jnp.int32), inner=inner.init(params))

  def update_fn(updates, state, params=None):

    def run(_):
      return inner.update(updates, state.inner, params)

    def skip(_):
      return jax.tree.map(jnp.zeros_like, updates), state.inner

    new_updates, new_inner = jax.lax.cond(state.count >= start_step, run, skip, None)
    return new_updates, StartingAtState(count=state.count + 1, inner=new_inner)

  return optax.GradientTransformation(init_fn, update_fn)


def param_group(path, frozen_blocks=2, trained_modules=()):
  """``'frozen'``, ``'cnn'`` or ``'rest'`` for a parameter's key path.

  The convs of the first ``frozen_blocks`` VGG blocks are frozen (the original:
  2, conv1_1 … conv2_2), the other convs are the CNN group. A non-empty
  ``trained_modules`` (top-level module names, e.g. ``("language_model",)``)
  freezes every parameter outside those modules.
  """
  names = {getattr(k, "key", getattr(k, "name", None)) for k in path}
  if trained_modules and not names & set(trained_modules):
    return "frozen"
  for block, layers in enumerate(VGG16_BLOCKS):
    if names & set(layers):
      return "frozen" if block < frozen_blocks else "cnn"
  return "rest"


def param_groups(params, frozen_blocks=2, trained_modules=()):
  """The pytree of group labels of ``params`` (see :func:`param_group`)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: param_group(path, frozen_blocks, trained_modules), params)


def make_optimizer(learning_rate, *, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-6,
                   finetune_cnn_after=-1, frozen_blocks=2, trained_modules=()):
  """The original's optimiser over DenseCap params (module docstring).

  Args:
    learning_rate: float or optax schedule, shared by both groups.
    b1, b2, eps: Adam constants (Torch epsilon placement).
    weight_decay: ``g += weight_decay * param`` for every trained parameter.
    finetune_cnn_after: first iteration at which the CNN group steps; −1 never.
    frozen_blocks: VGG blocks whose convs never change (the original: 2).
    trained_modules: when non-empty, only these top-level modules change
      (e.g. ``("language_model",)`` trains the captioner on a fixed detector).

  Returns:
    An ``optax.GradientTransformation``.
  """

  def group():
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       torch_adam(learning_rate, b1, b2, eps))

  cnn = optax.set_to_zero() if finetune_cnn_after < 0 else starting_at(group(), finetune_cnn_after)
  return optax.multi_transform({"rest": group(), "cnn": cnn, "frozen": optax.set_to_zero()},
                               lambda params: param_groups(params, frozen_blocks, trained_modules))


def learning_rate_schedule(config):
  """Constant, or linear warm-up then cosine decay to 0 at ``max_iters``."""
  if config.lr_schedule == "constant":
    if config.warmup_steps:
      return optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)
    return config.learning_rate
  if config.lr_schedule == "cosine":
    if config.max_iters <= 0:
      raise ValueError("lr_schedule 'cosine' needs max_iters > 0")
    return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate,
                                              max(config.warmup_steps, 1), config.max_iters)
  raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {config.lr_schedule!r}")


def from_config(config):
  """``make_optimizer`` with the settings of a training config (``train/configs``)."""
  return make_optimizer(
      learning_rate_schedule(config), b1=config.optim_beta1, b2=config.optim_beta2,
      eps=config.optim_epsilon, weight_decay=config.weight_decay,
      finetune_cnn_after=config.finetune_cnn_after, frozen_blocks=config.model.frozen_blocks,
      trained_modules=tuple(config.get("trained_modules", ())))
