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
  backward products take bf16 operands too (the cotangent rounded to bf16),
  accumulated in float32 (``_bf16_matmul``, ``_bf16_product``). The
  parameters stay float32 (master weights, and what is saved). The backbone keeps its
  activations in bfloat16 between convs (half the memory traffic) and returns
  float32 features. On a CPU that multiplies bf16 natively
  (:func:`host_has_bf16_dots`: AMX or AVX512-BF16) the 3x3 convs
  with at least ``DOT_CONV_MIN_CHANNELS`` input channels run as nine shifted
  matrix products (:func:`conv3x3_as_dots`): XLA:CPU computes bf16
  convolutions on operands converted to float32 but bf16 x bf16 -> float32
  dots natively, so these convs then run faster than in float32
  (``benchmarks/cpu_bf16.py``). Other devices, and the backward products,
  keep the convolution.

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


def _keep_operands(*operands, dtype=None, inexact=True):
  """Flax ``promote_dtype`` leaving the operands' dtypes to the product (:func:`_bf16_matmul`)."""
  del dtype, inexact
  return list(operands)


def _bf16_product(product, forward_product=None):
  """``product`` (a ``lax`` conv or dot) of bf16 operands: float32 forward, bf16 backward.

  The forward pass accumulates and returns float32 (``preferred_element_type``),
  so the results the model ranks and decodes are not rounded to bf16; it runs
  ``forward_product`` (same signature and result as ``product``; default
  ``product``). The backward pass rounds the incoming cotangent to bf16 and
  runs the transposed products of ``product`` on bf16 operands, as fast as the
  forward ones (a float32 cotangent would make them float32 products).
  """
  forward_product = forward_product or product

  @functools.wraps(product)
  def wrapped(lhs, rhs, *args, preferred_element_type=None, **kwargs):
    del preferred_element_type
    bf16_out = lambda a, b: product(a, b, *args, **kwargs)

    @jax.custom_vjp
    def run(lhs, rhs):
      return forward_product(lhs, rhs, *args, preferred_element_type=jnp.float32, **kwargs)

    def forward(lhs, rhs):
      return run(lhs, rhs), (lhs, rhs)

    def backward(operands, cotangent):
      _, transpose = jax.vjp(bf16_out, *operands)
      return transpose(cotangent.astype(jnp.bfloat16))

    run.defvjp(forward, backward)
    return run(lhs.astype(jnp.bfloat16), rhs.astype(jnp.bfloat16))

  return wrapped


def _bf16_matmul(x, w):
  """``x @ w`` on bf16 operands, accumulated and returned in float32.

  ``x``: ``[..., K]``, ``w``: ``[K, N]``, of any float dtype (rounded to bf16
  here); returns ``[..., N]`` float32. The backward pass rounds the cotangent
  to bf16 and computes both gradients as bf16 x bf16 -> float32 products,
  ``dx = ct @ w.T`` and ``dw = x.T @ ct``, returned in the dtypes of ``x``
  and ``w``: float32 master weights get a float32 gradient. XLA:CPU runs
  ``dx`` as a native bf16 product, where the transposed products of a
  bf16 -> bf16 product ran on operands converted to float32 (the CPU
  bfloat16 section of ``benchmarks/README.md``).
  """
  return _bf16_matmul_for(jnp.dtype(x.dtype), jnp.dtype(w.dtype))(x, w)


@functools.cache
def _bf16_matmul_for(x_dtype, w_dtype):
  """:func:`_bf16_matmul` for operands of these dtypes (its gradients' dtypes)."""

  def forward(x, w):
    x16, w16 = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    out = lax.dot_general(x16, w16, (((x.ndim - 1,), (0,)), ((), ())),
                          preferred_element_type=jnp.float32)
    return out, (x16, w16)

  def backward(residuals, cotangent):
    x16, w16 = residuals
    ct16 = cotangent.astype(jnp.bfloat16)
    dx = lax.dot_general(ct16, w16, (((ct16.ndim - 1,), (1,)), ((), ())),
                         preferred_element_type=jnp.float32)
    dw = lax.dot_general(x16.reshape(-1, x16.shape[-1]), ct16.reshape(-1, ct16.shape[-1]),
                         (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    return dx.astype(x_dtype), dw.astype(w_dtype)

  run = jax.custom_vjp(lambda x, w: forward(x, w)[0])
  run.defvjp(forward, backward)
  return run


def _dot_general_f32(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                     **kwargs):
  """``lax.dot_general`` under ``"bfloat16"``: bf16 products, float32 results.

  The contraction of ``nn.Dense`` and :func:`matmul` (``lhs``'s last axis with
  a 2-D ``rhs``'s first) is :func:`_bf16_matmul`; any other goes through
  ``_bf16_product``.
  """
  del precision, preferred_element_type
  (lhs_contract, rhs_contract), batch = dimension_numbers
  if (tuple(lhs_contract), tuple(rhs_contract)) == ((lhs.ndim - 1,), (0,)) and rhs.ndim == 2 \
      and not any(batch) and not kwargs:
    return _bf16_matmul(lhs, rhs)
  return _dot_general_any(lhs, rhs, dimension_numbers, **kwargs)


# On a CPU with native bf16 products under "bfloat16", 3x3 convs with at
# least this many input channels run as dots: in VGG-16 conv3_2 ... conv5_3
# and the RPN conv, the threshold with which the backbone ran fastest on AMX
# and on AVX512-BF16 (the CPU bfloat16 section of benchmarks/README.md); on
# the larger, shallower maps of blocks 1-2 slicing and summing the nine
# shifted taps costs more than the bf16 products save.
DOT_CONV_MIN_CHANNELS = 256

# Flax's NHWC / HWIO convolution layout.
_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                 out_spec=(0, 3, 1, 2))


def conv3x3_as_dots(inputs, kernel, preferred_element_type=None):
  """A 3x3, stride-1, zero-padded ("same") convolution as nine matrix products.

  ``out[n, y, x] = sum_{i, j} pad(inputs)[n, y + i, x + j, :] @ kernel[i, j]``:
  the products of ``lax.conv_general_dilated`` with padding 1, summed in
  another order.

  Args:
    inputs: ``[N, H, W, C]``.
    kernel: ``[3, 3, C, O]`` (HWIO), the dtype of ``inputs``.
    preferred_element_type: dtype of the products' accumulation and result
      (default: that of the operands).

  Returns:
    ``[N, H, W, O]``.
  """
  _, height, width, _ = inputs.shape
  padded = jnp.pad(inputs, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = None
  for i in range(3):
    for j in range(3):
      tap = lax.dot_general(padded[:, i:i + height, j:j + width, :], kernel[i, j],
                            (((3,), (0,)), ((), ())),
                            preferred_element_type=preferred_element_type)
      out = tap if out is None else out + tap
  return out


# /proc/cpuinfo flags of CPUs that multiply bf16 natively: AMX tiles (Intel
# since Sapphire Rapids) or AVX512-BF16 dot products (Intel Cooper Lake, AMD Zen 4).
BF16_DOT_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_has_bf16_dots(cpu_flags):
  """Whether a CPU with these ``/proc/cpuinfo`` flags (names) multiplies bf16 natively."""
  return bool(set(cpu_flags) & set(BF16_DOT_CPU_FLAGS))


@functools.cache
def host_has_bf16_dots():
  """Whether this machine's CPU multiplies bf16 natively (:data:`BF16_DOT_CPU_FLAGS`)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      return any(line.startswith("flags") and cpu_has_bf16_dots(line.split()) for line in f)
  except OSError:
    return False


def _runs_as_dots(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                  dimension_numbers, feature_group_count):
  """Whether a conv is one :func:`conv3x3_as_dots` computes and speeds up on CPU."""
  ones = (1, 1)
  return (lhs.ndim == 4 and rhs.shape[:2] == (3, 3)
          and rhs.shape[2] >= DOT_CONV_MIN_CHANNELS
          and not isinstance(padding, str)
          and [tuple(pair) for pair in padding] == [ones, ones]
          and tuple(window_strides) == ones
          and tuple(lhs_dilation or ones) == ones and tuple(rhs_dilation or ones) == ones
          and feature_group_count == 1
          and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC)


def _conv_forward(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                  dimension_numbers=None, feature_group_count=1, precision=None,
                  preferred_element_type=None):
  """``lax.conv_general_dilated``; on CPU as :func:`conv3x3_as_dots` where that pays."""
  conv = functools.partial(
      lax.conv_general_dilated, window_strides=window_strides, padding=padding,
      lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      precision=precision, preferred_element_type=preferred_element_type)
  if not host_has_bf16_dots() or not _runs_as_dots(
      lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
      feature_group_count):
    return conv(lhs, rhs)
  dots = functools.partial(conv3x3_as_dots, preferred_element_type=preferred_element_type)
  return lax.platform_dependent(lhs, rhs, cpu=dots, default=conv)


# Products of bf16 operands accumulated and returned in float32 (``_bf16_product``).
_dot_general_any = _bf16_product(lax.dot_general)
_conv_f32 = _bf16_product(lax.conv_general_dilated, _conv_forward)


def dense_kwargs(precision):
  """Keyword arguments of ``nn.Dense`` under ``precision``; the result is float32 for every policy."""
  if configs.check_precision(precision) == "bfloat16":
    return dict(promote_dtype=_keep_operands, dot_general=_dot_general_f32)
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
    return _bf16_matmul(x, w)
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
