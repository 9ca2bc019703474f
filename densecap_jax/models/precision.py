"""The precision policy: how convolutions and matrix products compute.

One model-config field, ``precision`` (``configs.PRECISIONS``), read by every
module of the model:

* ``"float32"`` (the default): float32 operands and results at
  ``lax.Precision.HIGHEST``, the original's FP32 on every backend (without
  it, GPUs since Ampere round float32 operands to TF32 and TPUs to bfloat16).
  On CPU this is the same program as the default precision, bit for bit.
* ``"tf32"``: float32 arrays at ``lax.Precision.HIGH``: TensorFloat-32
  products on GPUs (10-bit mantissa operands, float32 accumulation), three
  bfloat16 passes on TPUs; CPUs compute float32 as for ``"float32"``.
* ``"bfloat16"``: operands (activations and kernels) rounded to bfloat16,
  products accumulated and returned in float32
  (``preferred_element_type``), biases added in float32; in training the
  backward products take bf16 operands too (``_bf16_product``). The
  parameters stay float32 (master weights, and what is saved). The backbone keeps its
  activations in bfloat16 between convs (half the memory traffic) and returns
  float32 features.

Whatever the policy, everything that ranks, decodes or scores stays float32:
anchors, box transforms and clipping, IoU / NMS, RoI sampling coordinates and
bilinear pooling (float32 features in, float32 out), the heads whose outputs
are ranked or decoded into boxes (``rpn_box``, ``rpn_score``, ``objectness``,
``box_reg``), the LSTM's gates and cell state, the caption scores (their
log-softmax, the greedy argmax) and every loss. ``conv1_1`` stays float32 too:
it reads the pixels, whose bf16 rounding (up to 0.5 on the 0-255 scale) was
the largest single error of the policy (with the bundled model, keeping it
float32 raised the share of final boxes reproduced at IoU >= 0.9 from 90 % to
92 %). These ``EXACT_LAYERS`` use :func:`exact_kwargs`, float32 at
``HIGHEST`` always: together 0.3 % of the work of the ``vgg16`` model at
720 pixels.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from densecap_jax import configs

PRECISIONS = configs.PRECISIONS

# Layers that stay float32 / HIGHEST under every policy (see the module doc).
EXACT_LAYERS = ("conv1_1", "rpn_box", "rpn_score", "objectness", "box_reg")

_LAX_PRECISION = {
    "float32": lax.Precision.HIGHEST,
    "tf32": lax.Precision.HIGH,
    "bfloat16": lax.Precision.DEFAULT,
}


def lax_precision(precision):
  """The ``lax.Precision`` of float32 products under ``precision`` (a ``PRECISIONS`` name)."""
  return _LAX_PRECISION[configs.check_precision(precision)]


def compute_dtype(precision):
  """Operand dtype of convs and matmuls: ``jnp.bfloat16`` for ``"bfloat16"``, else float32."""
  return jnp.bfloat16 if configs.check_precision(precision) == "bfloat16" else jnp.float32


def _bf16_operands(inputs, kernel, bias=None, *, dtype=None, inexact=True):
  """Flax ``promote_dtype`` for bfloat16 layers: inputs and kernel to bf16, bias kept float32."""
  del dtype, inexact
  return [inputs.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), bias]


def _bf16_product(product):
  """``product`` (a ``lax`` conv or dot) of bf16 operands: float32 forward, bf16 backward.

  The forward pass accumulates and returns float32 (``preferred_element_type``),
  so the results the model ranks and decodes are not rounded to bf16. The
  backward pass rounds the incoming cotangent to bf16 and runs the transposed
  products on bf16 operands, as fast as the forward ones (a float32 cotangent
  would make them float32 products).
  """

  @functools.wraps(product)
  def wrapped(lhs, rhs, *args, preferred_element_type=None, **kwargs):
    del preferred_element_type
    bf16_out = lambda a, b: product(a, b, *args, **kwargs)

    @jax.custom_vjp
    def run(lhs, rhs):
      return product(lhs, rhs, *args, preferred_element_type=jnp.float32, **kwargs)

    def forward(lhs, rhs):
      return run(lhs, rhs), (lhs, rhs)

    def backward(operands, cotangent):
      _, transpose = jax.vjp(bf16_out, *operands)
      return transpose(cotangent.astype(jnp.bfloat16))

    run.defvjp(forward, backward)
    return run(lhs.astype(jnp.bfloat16), rhs.astype(jnp.bfloat16))

  return wrapped


# Products of bf16 operands accumulated and returned in float32 (``_bf16_product``).
_dot_general_f32 = _bf16_product(lax.dot_general)
_conv_f32 = _bf16_product(lax.conv_general_dilated)


def dense_kwargs(precision):
  """Keyword arguments of ``nn.Dense`` under ``precision``; the result is float32 for every policy."""
  if configs.check_precision(precision) == "bfloat16":
    return dict(promote_dtype=_bf16_operands, dot_general=_dot_general_f32)
  return dict(precision=lax_precision(precision))


def conv_kwargs(precision):
  """Keyword arguments of ``nn.Conv`` under ``precision``; the result is float32 for every policy."""
  if configs.check_precision(precision) == "bfloat16":
    return dict(promote_dtype=_bf16_operands, conv_general_dilated=_conv_f32)
  return dict(precision=lax_precision(precision))


def exact_kwargs():
  """Keyword arguments of an ``EXACT_LAYERS`` layer: float32 at ``HIGHEST`` under every policy."""
  return dict(precision=lax.Precision.HIGHEST)


def matmul(x, w, precision):
  """``x @ w`` under ``precision``: ``(..., K) @ (K, N)`` -> ``(..., N)`` float32."""
  if configs.check_precision(precision) == "bfloat16":
    return _dot_general_f32(x, w, (((x.ndim - 1,), (0,)), ((), ())))
  return jnp.matmul(x, w, precision=lax_precision(precision))


def cast_for_inference(params, precision):
  """Params with the kernels that ``precision`` rounds to bfloat16 stored in bfloat16.

  Under ``"bfloat16"`` every conv / Dense ``kernel`` outside ``EXACT_LAYERS``
  and the LSTM ``weight`` are cast once, so a jitted forward pass does not
  round them on every call; the outputs are the same as with the float32
  params (the model rounds them to the same values). Biases, the word
  embedding and ``EXACT_LAYERS`` stay float32. Other policies: ``params`` unchanged.
  Not for training, whose master params stay float32.

  Args:
    params: the ``'params'`` collection (float32 leaves).
    precision: a ``PRECISIONS`` name.

  Returns:
    A pytree of the same structure.
  """
  if configs.check_precision(precision) != "bfloat16":
    return params

  def cast(path, leaf):
    names = [getattr(key, "key", str(key)) for key in path]
    rounded = names[-1] in ("kernel", "weight") and not set(names) & set(EXACT_LAYERS)
    return leaf.astype(jnp.bfloat16) if rounded and leaf.dtype == jnp.float32 else leaf

  return jax.tree_util.tree_map_with_path(cast, params)
