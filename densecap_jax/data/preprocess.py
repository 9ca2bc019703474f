"""``python -m densecap_jax.data.preprocess``: Visual Genome regions to HDF5 + JSON (``densecap_jax.commands.preprocess``)."""

from densecap_jax.commands.preprocess import main

if __name__ == "__main__":
  main()
