"""The ``tiny`` training config (``densecap_jax/train/configs/tiny.py``)."""

from densecap_jax.train.configs.tiny import get_config  # pylint: disable=unused-import
