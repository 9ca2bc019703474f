"""``python -m densecap_jax.score``: log-likelihoods of phrases given the regions of images (``densecap_jax.commands.score``)."""

from densecap_jax.commands.score import main

if __name__ == "__main__":
  main()
