"""DenseCap (Johnson, Karpathy, Fei-Fei, CVPR 2016) in JAX/Flax.

``densecap_jax.load_model(path=None)`` returns a model whose ``.predict(images)``
gives boxes, scores and captions per image (``densecap_jax.predictor``).
"""

import importlib

__version__ = "0.1.0"


def load_model(path=None, **settings):
  """See :func:`densecap_jax.predictor.load_model`.

  The predictor (and JAX, Flax and orbax with it) is loaded on the first call,
  so that importing any part of the package stays cheap.
  """
  return importlib.import_module("densecap_jax.predictor").load_model(path, **settings)
