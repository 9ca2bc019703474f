"""DenseCap (Johnson, Karpathy, Fei-Fei, CVPR 2016) in JAX/Flax.

``densecap_jax.load_model(path=None)`` returns a model whose ``.predict(images)``
gives boxes, scores and captions per image (see ``densecap_jax.inference``).
"""

__version__ = "0.1.0"


def load_model(path=None, **settings):
  """See :func:`densecap_jax.inference.load_model`."""
  from densecap_jax import predictor as inference  # pylint: disable=g-import-not-at-top
  return inference.load_model(path, **settings)
