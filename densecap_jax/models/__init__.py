"""Flax modules of DenseCap and its training / inference entry points."""

from densecap_jax.models.densecap import DenseCap
from densecap_jax.models.densecap import build_model
from densecap_jax.models.densecap import init_params
from densecap_jax.models.detection import infer
from densecap_jax.models.training import train_forward
