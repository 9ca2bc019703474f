"""ImageNet VGG-16 weights (Caffe or torchvision) -> a densecap_jax model to train from.

The original builds its model from ``VGG_ILSVRC_16_layers.caffemodel``
through loadcaffe (reference §2): conv1_1 … conv5_3 become the backbone and
fc6 / fc7 the recognition base; fc8 is dropped. The rest of the model (RPN,
objectness and box-regression heads, language model) starts from its usual
initialisation. Here the same parts are taken from the file and the rest is
initialised as ``densecap.init_params`` does, with a fixed seed.

Input conventions. The model's input is BGR in 0–255 minus the VGG mean
(§1), which is exactly what the Caffe VGG-16 was trained on, so Caffe
weights are used unchanged (as loadcaffe does). torchvision's VGG-16 expects
RGB in 0–1 normalised by ImageNet's mean and std; its conv1_1 is rewritten
(:func:`fold_torchvision_input`) so that it computes the same function of
the model's input.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np

from densecap_jax.data import images as images_lib
from densecap_jax.models import densecap
from densecap_jax.models import vgg16
from densecap_jax.convert import mapping

TORCHVISION_MEAN_RGB = np.array([0.485, 0.456, 0.406])
TORCHVISION_STD_RGB = np.array([0.229, 0.224, 0.225])
NUM_BLOCKS = 5
_CAFFE_CONV = re.compile(r"^conv(\d+)_(\d+)$")
_TORCHVISION_KEY = re.compile(r"^(features|classifier)\.(\d+)\.(weight|bias)$")


def fold_torchvision_input(weight, bias):
  """torchvision's conv1_1 rewritten for BGR-minus-VGG-mean input.

  torchvision feeds ``t_c = (P_c / 255 - mu_c) / s_c`` for RGB pixels
  ``P`` in 0–255; the model feeds ``x_j = Q_j - m_j`` with ``Q`` the same
  pixels in BGR order (``Q_j = P_{2-j}``) and ``m`` the VGG mean (BGR). So
  ``t_c = x_{2-c} / (255 s_c) + (m_{2-c} - 255 mu_c) / (255 s_c)`` and, summing
  over the 3x3 taps, the equivalent convolution of ``x`` is

    ``W'[o, j] = W[o, 2-j] / (255 s_{2-j})``,
    ``b'[o] = b[o] + sum_c (sum_taps W[o, c]) (m_{2-c} - 255 mu_c) / (255 s_c)``.

  It is exact wherever the 3x3 window lies inside the image. At the border,
  torchvision pads ``t`` with 0 while the model pads ``x`` with 0, i.e. ``t``
  with ``(m_{2-c} - 255 mu_c) / (255 s_c)`` = (0.0001, 0.0087, 0.0071) for
  R, G, B: the two means differ by under one grey level, so the border
  outputs differ by that much input.

  Args:
    weight: ``(out, 3, kH, kW)`` torchvision conv1_1 weight (RGB input channels).
    bias: ``(out,)``.

  Returns:
    ``(weight', bias')`` float32, the weight's input channels in BGR order.
  """
  weight = np.asarray(weight, np.float64)
  scale = 1.0 / (255.0 * TORCHVISION_STD_RGB)  # per RGB channel c
  shift = (images_lib.VGG_MEAN_BGR[::-1].astype(np.float64) - 255.0 * TORCHVISION_MEAN_RGB) * scale
  folded = (weight * scale[None, :, None, None])[:, ::-1]
  new_bias = np.asarray(bias, np.float64) + weight.sum(axis=(2, 3)) @ shift
  return folded.astype(np.float32), new_bias.astype(np.float32)


def vgg_from_caffe(layers):
  """``(convs, fc6, fc7, notes)`` of Caffe VGG layers (``caffemodel.load``).

  Convolutions must be named ``conv<block>_<index>`` and the fully connected
  layers ``fc6``, ``fc7`` (``fc8`` is skipped). ``convs[block][i]`` and fc6 /
  fc7 are ``(weight, bias, source)`` in Caffe's layout (``OIHW``, ``out x in``).

  Raises:
    ValueError: another layer with weights, misnumbered convs, blobs of the
      wrong shape.
  """
  convs, fcs, notes = {}, {}, []
  for layer in layers:
    if not layer.blobs:
      continue
    what = f"layer {layer.name!r} ({layer.type})"
    if len(layer.blobs) != 2:
      raise ValueError(f"{what}: expected 2 blobs (weight, bias), got {len(layer.blobs)}")
    weight, bias = layer.blobs
    source = f"{layer.name} {tuple(weight.shape)}, {tuple(bias.shape)}"
    match = _CAFFE_CONV.match(layer.name)
    if layer.type == "Convolution" and match:
      convs[(int(match[1]), int(match[2]))] = (weight, bias.reshape(-1), source)
    elif layer.type == "InnerProduct" and layer.name in ("fc6", "fc7"):
      fcs[layer.name] = (weight.reshape(weight.shape[-2:]), bias.reshape(-1), source)
    elif layer.type == "InnerProduct" and layer.name == "fc8":
      notes.append(f"skipped {layer.name} (the ImageNet classifier)")
    else:
      raise ValueError(f"{what}: unknown layer with weights; expected conv<block>_<index>, "
                       f"fc6, fc7 or fc8")
  return _blocks(convs, "caffemodel"), *_fc67(fcs, "caffemodel"), notes


def vgg_from_torchvision(state):
  """``(convs, fc6, fc7, notes)`` of a torchvision VGG state dict (``pth.load``).

  ``features.<i>`` convolutions form blocks split at the gaps left by the
  max-pools (a conv, a ReLU, then the next conv two indices on); conv1_1 is
  folded for the model's input (:func:`fold_torchvision_input`);
  ``classifier.0`` / ``classifier.3`` are fc6 / fc7 and ``classifier.6`` (fc8)
  is skipped.

  Raises:
    ValueError: keys other than VGG's (e.g. a batch-norm VGG), a missing
      weight or bias, wrong shapes.
  """
  layers = {}
  for key, value in state.items():
    match = _TORCHVISION_KEY.match(key)
    if not match:
      raise ValueError(f"unknown key {key!r}; expected torchvision VGG keys features.<i>.weight "
                       f"/ .bias and classifier.<i>.weight / .bias")
    layers.setdefault((match[1], int(match[2])), {})[match[3]] = value
  for (part, index), tensors in layers.items():
    if set(tensors) != {"weight", "bias"}:
      raise ValueError(f"{part}.{index}: needs both weight and bias, found {sorted(tensors)}")
  features = sorted(i for part, i in layers if part == "features")
  convs, block, previous = {}, 0, None
  position = 0
  for index in features:
    if previous is None or index - previous > 2:
      block, position = block + 1, 1
    else:
      position += 1
    previous = index
    tensors = layers[("features", index)]
    source = (f"features.{index}.weight {tuple(tensors['weight'].shape)}, "
              f"features.{index}.bias {tuple(tensors['bias'].shape)}")
    convs[(block, position)] = (tensors["weight"], tensors["bias"], source)
  notes = []
  if (1, 1) in convs:
    weight, bias, source = convs[(1, 1)]
    if weight.ndim != 4 or weight.shape[1] != 3:
      raise ValueError(f"features.0.weight: expected out x 3 x kH x kW, got {weight.shape}")
    convs[(1, 1)] = (*fold_torchvision_input(weight, bias),
                     source + " (RGB 0-1 normalised input folded to BGR minus VGG mean)")
    notes.append("conv1_1 rewritten for BGR-minus-mean input (torchvision expects normalised "
                 "RGB in 0-1); exact away from the 1-pixel image border")
  classifier = sorted(i for part, i in layers if part == "classifier")
  if len(classifier) != 3:
    raise ValueError(f"expected three classifier layers (fc6, fc7, fc8), found indices "
                     f"{classifier}")
  fcs = {}
  for name, index in zip(("fc6", "fc7"), classifier[:2]):
    tensors = layers[("classifier", index)]
    fcs[name] = (tensors["weight"], tensors["bias"],
                 f"classifier.{index}.weight {tuple(tensors['weight'].shape)}, "
                 f"classifier.{index}.bias {tuple(tensors['bias'].shape)}")
  notes.append(f"skipped classifier.{classifier[2]} (fc8, the ImageNet classifier)")
  return _blocks(convs, "state dict"), *_fc67(fcs, "state dict"), notes


def _blocks(convs, what):
  """``{(block, index): layer}`` -> list of blocks, checked to be numbered 1.. without gaps."""
  blocks = sorted({b for b, _ in convs})
  if blocks != list(range(1, NUM_BLOCKS + 1)):
    raise ValueError(f"{what}: expected convolutions in {NUM_BLOCKS} blocks (VGG up to "
                     f"conv5_3), found blocks {blocks}")
  result = []
  for block in blocks:
    indices = sorted(i for b, i in convs if b == block)
    if indices != list(range(1, len(indices) + 1)):
      raise ValueError(f"{what}: block {block} has convolutions {indices}, expected 1..n")
    result.append([convs[(block, i)] for i in indices])
  return result


def _fc67(fcs, what):
  missing = [name for name in ("fc6", "fc7") if name not in fcs]
  if missing:
    raise ValueError(f"{what}: no {' or '.join(missing)} layer")
  return fcs["fc6"], fcs["fc7"]


def convert(convs, fc6, fc7, notes, vocab, seed=0):
  """A :class:`mapping.Conversion`: VGG weights in a freshly initialised DenseCap model.

  Args:
    convs, fc6, fc7, notes: from :func:`vgg_from_caffe` / :func:`vgg_from_torchvision`.
    vocab: the training data's vocabulary (``vocab[i]`` = token of id ``i``),
      which sizes the language model.
    seed: ``jax.random`` seed of the other parts' initialisation.

  Raises:
    ValueError: shapes that do not chain (conv channels, fc6 input
      ``C x 7 x 7``, fc7 input), naming the layer.
  """
  widths, channels = [], 3
  for block in convs:
    widths.append([])
    for weight, bias, source in block:
      weight = np.asarray(weight)
      if weight.ndim != 4 or weight.shape[1] != channels or weight.shape[2:] != (3, 3):
        raise ValueError(f"{source}: expected a 3x3 convolution of {channels} input channels")
      channels = weight.shape[0]
      widths[-1].append(channels)
  fc_dim = np.shape(fc6[0])[0]
  config = mapping.model_config(cnn_widths=tuple(tuple(b) for b in widths), fc_dim=fc_dim,
                                vocab_size=len(vocab) - 1)
  roi = tuple(config.roi_output_size)
  if np.shape(fc6[0])[1] != channels * roi[0] * roi[1]:
    raise ValueError(f"fc6 {fc6[2]}: takes {np.shape(fc6[0])[1]} inputs, the RoI features "
                     f"have {channels} x {roi[0]} x {roi[1]}")
  if np.shape(fc7[0]) != (fc_dim, fc_dim):
    raise ValueError(f"fc7 {fc7[2]}: expected {fc_dim} x {fc_dim}")

  params = init_heads(config, seed)
  sources = {name: f"initialised (seed {seed})" for name in mapping.flatten(params)}
  for block_index, block in enumerate(convs, start=1):
    for index, (weight, bias, source) in enumerate(block, start=1):
      name = f"backbone/conv{block_index}_{index}"
      _put(params, sources, name, mapping.conv_kernel(weight, source),
           mapping.vector(bias, np.shape(weight)[0], source), source)
  for name, (weight, bias, source) in (("fc6", fc6), ("fc7", fc7)):
    _put(params, sources, f"recognition/{name}", mapping.linear_kernel(weight, source),
         mapping.vector(bias, np.shape(weight)[0], source), source)
  mapping.check_params(params, config)
  fresh = sorted({name.rsplit("/", 1)[0] for name, s in sources.items() if s.startswith("init")})
  notes = list(notes) + [f"freshly initialised (seed {seed}): {', '.join(fresh)}"]
  return mapping.Conversion(params, config, list(vocab), sources, notes)


def init_heads(config, seed):
  """Fresh params of every part but the backbone (RPN, recognition, language model).

  Flax derives each parameter's random key from the seed and the
  parameter's path, so these are the values ``densecap.init_params(config,
  jax.random.key(seed))`` gives for the same parts; leaving the backbone out
  spares compiling its initialisation.

  Returns:
    ``{'localization': ..., 'recognition': ..., 'language_model': ...}`` of
    NumPy arrays.
  """
  model = densecap.build_model(config)
  channels = vgg16.feature_channels(model.cnn_widths, model.skip_blocks)
  features = jnp.zeros((1, 2, 2, channels), jnp.float32)
  pooled = jnp.zeros((1,) + tuple(config.roi_output_size) + (channels,), jnp.float32)
  labels = jnp.zeros((1, config.seq_length), jnp.int32)

  def heads(module, features, pooled, labels):
    module.rpn(features)
    codes, _, _ = module.recognize(pooled)
    return module.caption_scores(codes, labels)

  init = jax.jit(lambda key: model.init(key, features, pooled, labels, method=heads))
  return jax.tree.map(np.asarray, init(jax.random.key(seed))["params"])


def _put(params, sources, name, kernel, bias, source):
  for leaf, value in (("kernel", kernel), ("bias", bias)):
    mapping.set_leaf(params, f"{name}/{leaf}", value)
    sources[f"{name}/{leaf}"] = source
