"""Model configurations: ``get_model_config('vgg16' | 'tiny')``.

The model config ``NAME`` is the module ``NAME_model.py`` here (the training
recipes around the models are ``densecap_jax/train/configs/NAME.py``). Its
``get_config()`` returns an ``ml_collections.ConfigDict`` with the model's
sizes, the loss weights and the test-time settings. Option names follow the
original's ``train_opts.lua`` and ``DenseCapModel`` options so a reader can
map one to the other. ``vocab_size`` is data-dependent: it is a placeholder
(``None``) that the caller sets from the vocabulary. ``buckets.py`` makes the
``buckets`` field: the padded image shapes every program is compiled for.

``precision`` (one of :data:`PRECISIONS`) says how convolutions and matrix
products compute; ``models/precision.py`` applies it. This module imports
nothing heavy, so commands can check a precision before JAX starts.
"""

import importlib

MODEL_CONFIGS = ("vgg16", "tiny")

# float32: exact (highest precision on every backend; the default and the one
# the parity tests run); tf32: TensorFloat-32 products on GPUs (3-pass bf16 on
# TPUs); bfloat16: bf16 products with float32 accumulation.
PRECISIONS = ("float32", "tf32", "bfloat16")
DEFAULT_PRECISION = "float32"


def get_model_config(name):
  """The ``ConfigDict`` of the model config called ``name``.

  Raises:
    ValueError: ``name`` is not one of ``MODEL_CONFIGS``.
  """
  if name not in MODEL_CONFIGS:
    raise ValueError(f"unknown model config {name!r}; expected one of {MODEL_CONFIGS}")
  return importlib.import_module(f"{__name__}.{name}_model").get_config()


def check_precision(precision, name="precision"):
  """``precision`` if it is one of :data:`PRECISIONS`; else ValueError (one line naming ``name``)."""
  if precision not in PRECISIONS:
    raise ValueError(f"{name} must be one of {', '.join(PRECISIONS)}, got {precision!r}")
  return precision


def precision_of(config):
  """The checked ``precision`` of a model config; float32 when the field is absent.

  Model directories saved before the field existed (and converted original
  checkpoints) hold no ``precision``: they run in float32.
  """
  return check_precision(config.get("precision", DEFAULT_PRECISION), "model config precision")


def with_precision(config, precision):
  """A copy of the model ``config`` with ``precision`` set (checked); ``None`` = ``config`` itself."""
  if precision is None:
    return config
  check_precision(precision)
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.precision = precision
  return config
