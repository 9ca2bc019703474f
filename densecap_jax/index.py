"""``python -m densecap_jax.index``: index a photo folder for phrase search (``densecap_jax.commands.index``)."""

from densecap_jax.commands.index import main

if __name__ == "__main__":
  main()
