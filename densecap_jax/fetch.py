"""``python -m densecap_jax.fetch``: list and fetch models by name (``densecap_jax.commands.fetch``)."""

import sys

from densecap_jax.commands.fetch import main

if __name__ == "__main__":
  sys.exit(main())
