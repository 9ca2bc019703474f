"""The released model's training run: VGG-16 on Visual Genome, the original's defaults."""

from densecap_jax.train.configs import common


def get_config():
  return common.get_config("vgg16")
