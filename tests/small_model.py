"""A randomly initialised ``tiny`` model directory for tests of the tools that load models."""

import jax

from densecap_jax import model_dir
from densecap_jax import configs
from densecap_jax.configs import buckets as buckets_lib
from densecap_jax.models import densecap


def save_random_tiny_model(path, vocab, *, image_size, buckets=None, num_proposals=20,
                           adjust_params=None):
  """Writes a ``tiny`` model with random params to ``path``; returns ``str(path)``.

  Args:
    path: the model directory to create.
    vocab: vocabulary list (``vocab[0]`` unused).
    image_size: long side of the model's images.
    buckets: shape buckets (default: ``make_buckets(image_size)``).
    num_proposals: proposals kept after the RPN NMS.
    adjust_params: optional ``fn(params) -> params`` applied before saving.
  """
  config = configs.get_model_config("tiny")
  config.vocab_size = len(vocab) - 1
  config.image_size = image_size
  config.buckets = buckets if buckets is not None else buckets_lib.make_buckets(image_size)
  config.num_proposals = num_proposals
  params = densecap.init_params(config, jax.random.key(0))
  if adjust_params is not None:
    params = adjust_params(params)
  model_dir.save_model(path, params, config, vocab)
  return str(path)
