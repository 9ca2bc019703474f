"""Model configurations: ``get_model_config('vgg16' | 'tiny')``.

Each module here has a ``get_config()`` returning an ``ml_collections.ConfigDict``
with the model's sizes, the loss weights and the test-time settings. Option
names follow the original's ``train_opts.lua`` and ``DenseCapModel`` options so a
reader can map one to the other. ``vocab_size`` is data-dependent: it is a
placeholder (``None``) that the caller sets from the vocabulary.
"""

import importlib

MODEL_CONFIGS = ("vgg16", "tiny")


def get_model_config(name):
  """The ``ConfigDict`` of the model config called ``name``.

  Raises:
    ValueError: ``name`` is not one of ``MODEL_CONFIGS``.
  """
  if name not in MODEL_CONFIGS:
    raise ValueError(f"unknown model config {name!r}; expected one of {MODEL_CONFIGS}")
  return importlib.import_module(f"{__name__}.{name}").get_config()
