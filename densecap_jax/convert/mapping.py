"""Torch / Caffe parameter layouts -> the Flax params of ``densecap_jax.models.densecap``.

Layouts (reference §7.4):

* convolution weight ``out x in x kH x kW`` (Torch ``OIHW``, also Caffe's)
  -> Flax ``kernel`` ``kH x kW x in x out`` (``HWIO``); bias unchanged.
  Both frameworks compute a cross-correlation, so no kernel flip.
* linear weight ``out x in`` -> Flax ``kernel`` ``in x out``; bias unchanged.
* torch-rnn LSTM ``weight`` ``(D + H) x 4H`` and ``bias`` ``4H`` (gates i, f, o, g)
  -> ``language_model/lstm`` unchanged (same layout, §6.3).
* LookupTable ``(V + 2) x W`` -> ``language_model/word_embed/embedding``
  unchanged (row ``i`` holds token ``i + 1`` in both).

A :class:`Conversion` carries the params with the model config and the
vocabulary, plus where each tensor came from, for the converter's report.
"""

import dataclasses

import jax
import numpy as np

from densecap_jax import configs
from densecap_jax.models import densecap

# The fields that fix the parameter shapes; equal to the ``vgg16`` config's
# values for the released model.
SIZE_FIELDS = ("cnn_widths", "rpn_num_filters", "anchor_sizes", "roi_output_size", "fc_dim",
               "rnn_size", "rnn_encoding_size")


@dataclasses.dataclass
class Conversion:
  """A converted model.

  Attributes:
    params: nested dict of float32 NumPy arrays, the model's ``'params'`` tree.
    config: the model ``ConfigDict`` (``name`` is ``'vgg16'`` when every
      size equals the released model's, else ``'custom'``).
    vocab: ``vocab[i]`` is the token of id ``i`` (``vocab[0]`` is None).
    sources: ``'backbone/conv1_1/kernel'`` -> where the values came from.
    notes: lines for the report (sizes found, parts left at their init).
  """
  params: dict
  config: object
  vocab: list
  sources: dict
  notes: list


def conv_kernel(weight, what):
  """``(out, in, kH, kW)`` -> ``(kH, kW, in, out)`` float32.

  Raises:
    ValueError: ``weight`` is not 4-D.
  """
  weight = np.asarray(weight)
  if weight.ndim != 4:
    raise ValueError(f"{what}: convolution weight must be out x in x kH x kW, got shape "
                     f"{weight.shape}")
  return np.ascontiguousarray(weight.transpose(2, 3, 1, 0), np.float32)


def linear_kernel(weight, what):
  """``(out, in)`` -> ``(in, out)`` float32.

  Raises:
    ValueError: ``weight`` is not 2-D.
  """
  weight = np.asarray(weight)
  if weight.ndim != 2:
    raise ValueError(f"{what}: linear weight must be out x in, got shape {weight.shape}")
  return np.ascontiguousarray(weight.T, np.float32)


def vector(values, size, what):
  """``values`` as a float32 vector of ``size`` elements (a bias).

  Raises:
    ValueError: it has another number of elements.
  """
  values = np.asarray(values)
  if values.size != size:
    raise ValueError(f"{what}: expected {size} values, got shape {values.shape}")
  return np.ascontiguousarray(values.reshape(size), np.float32)


def model_config(**fields):
  """The ``vgg16`` model config with ``fields`` replaced; ``name`` set from the sizes."""
  config = configs.get_model_config("vgg16")
  reference = configs.get_model_config("vgg16")
  for key, value in fields.items():
    if key not in config:
      raise KeyError(f"unknown model config field {key!r}")
    setattr(config, key, value)
  same = all(_plain(config[key]) == _plain(reference[key]) for key in SIZE_FIELDS)
  config.name = "vgg16" if same else "custom"
  return config


def _plain(value):
  if isinstance(value, (tuple, list)):
    return tuple(_plain(v) for v in value)
  return float(value) if isinstance(value, (int, float)) else value


def check_params(params, config, *, allow_extra=False):
  """Checks that ``params`` has exactly the tree and shapes ``densecap.init_params`` gives.

  With ``allow_extra``, tensors the model does not have are accepted (it
  does not read them).

  Raises:
    ValueError: naming the first missing, unexpected or mis-shaped tensor.
  """
  expected = jax.eval_shape(lambda: densecap.init_params(config, jax.random.key(0)))
  want = {name: tuple(leaf.shape) for name, leaf in flatten(expected).items()}
  got = {name: tuple(np.shape(leaf)) for name, leaf in flatten(params).items()}
  for name in sorted(want):
    if name not in got:
      raise ValueError(f"no value for the model parameter {name} {want[name]}")
    if got[name] != want[name]:
      raise ValueError(f"shape mismatch for {name}: the model needs {want[name]}, the file "
                       f"gives {got[name]}")
  extra = sorted(set(got) - set(want))
  if extra and not allow_extra:
    raise ValueError(f"{extra[0]} is not a parameter of the model")


def flatten(tree, prefix=""):
  """``{'a/b/c': leaf}`` of a nested dict."""
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      flat.update(flatten(value, name + "/"))
    else:
      flat[name] = value
  return flat


def set_leaf(tree, name, value):
  """Sets ``tree['a']['b']['c'] = value`` for ``name = 'a/b/c'``, creating dicts."""
  *parents, last = name.split("/")
  for key in parents:
    tree = tree.setdefault(key, {})
  tree[last] = value
