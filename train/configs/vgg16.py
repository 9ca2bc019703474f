"""The ``vgg16`` training config (``densecap_jax/train/configs/vgg16.py``)."""

from densecap_jax.train.configs.vgg16 import get_config  # pylint: disable=unused-import
