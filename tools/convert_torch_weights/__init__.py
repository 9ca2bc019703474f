"""``python -m tools.convert_torch_weights``: the weight converter of ``densecap_jax.convert``."""
