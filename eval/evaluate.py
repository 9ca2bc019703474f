"""Dense-captioning mAP of a model on a split: ``python eval/evaluate.py --checkpoint MODEL_DIR ...``.

The command of ``densecap_jax.evaluation`` (``python -m densecap_jax.evaluation``); see there.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from densecap_jax.commands.evaluate import main  # pylint: disable=g-import-not-at-top

if __name__ == "__main__":
  main()
