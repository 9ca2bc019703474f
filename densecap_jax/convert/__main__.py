"""``python -m densecap_jax.convert``: Torch7 / PyTorch / Caffe weights to a model directory (``densecap_jax.commands.convert``)."""

import sys

from densecap_jax.commands.convert import main

if __name__ == "__main__":
  sys.exit(main())
