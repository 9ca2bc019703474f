"""``python -m densecap_jax.data.synthetic``: render the synthetic dataset (``densecap_jax.commands.synthetic``)."""

from densecap_jax.commands.synthetic import main

if __name__ == "__main__":
  main()
