"""``python -m densecap_jax.predict``: captioned boxes for images (``densecap_jax.commands.predict``)."""

from densecap_jax.commands.predict import main

if __name__ == "__main__":
  main()
