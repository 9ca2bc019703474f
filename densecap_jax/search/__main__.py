"""``python -m densecap_jax.search``: search an index by phrase (``densecap_jax.commands.search``)."""

from densecap_jax.commands.search import main

if __name__ == "__main__":
  main()
