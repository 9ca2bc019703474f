"""``python -m densecap_jax.serve``: the web demo and its JSON API (``densecap_jax.commands.serve``)."""

from densecap_jax.commands.serve import main

if __name__ == "__main__":
  main()
