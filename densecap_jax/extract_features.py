"""``python -m densecap_jax.extract_features``: region codes of images to HDF5 (``densecap_jax.commands.extract_features``)."""

from densecap_jax.commands.extract_features import main

if __name__ == "__main__":
  main()
