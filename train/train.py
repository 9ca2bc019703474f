"""Trains DenseCap: ``python train/train.py --config train/configs/tiny.py --workdir runs/tiny``.

The command of ``densecap_jax.train`` (``python -m densecap_jax.train``); see there.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from densecap_jax.commands.train import run  # pylint: disable=g-import-not-at-top

if __name__ == "__main__":
  run()
