"""``python -m densecap_jax.evaluation``: dense-captioning mAP of a model or of a predictions file (``densecap_jax.commands.evaluate``)."""

from densecap_jax.commands.evaluate import main

if __name__ == "__main__":
  main()
