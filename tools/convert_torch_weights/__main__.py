"""``python -m tools.convert_torch_weights --input FILE --output DIR``: runs ``densecap_jax.convert``."""

import sys

from densecap_jax.commands.convert import main

if __name__ == "__main__":
  sys.exit(main())
