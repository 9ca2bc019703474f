"""Trains DenseCap: ``python train/train.py --config train/configs/tiny.py --workdir runs/tiny``.

Any config field can be overridden on the command line, e.g.
``--config.learning_rate=1e-4 --config.model.box_reg_decay=0``. Started
again with the same ``--workdir``, a run resumes from its newest checkpoint
(``--resume``, the default) and continues exactly as if it had not stopped;
``--noresume`` refuses a ``--workdir`` that already has checkpoints.
On a multi-host TPU pod or GPU cluster pass ``--distributed`` on every host.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
from ml_collections import config_flags

from densecap_jax import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, models and logs")
_RESUME = flags.DEFINE_bool("resume", True,
                             "continue from the newest checkpoint in --workdir (--noresume: "
                             "refuse a --workdir that has checkpoints)")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "call jax.distributed.initialize() (multi-host runs)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  print(f"devices: {jax.device_count()} ({jax.local_device_count()} local, "
        f"{jax.devices()[0].platform}); process {jax.process_index()} of {jax.process_count()}")
  try:
    state, reason = trainer.train(_CONFIG.value, _WORKDIR.value, resume=_RESUME.value)
  except (OSError, ValueError) as e:
    sys.exit(f"error: {e}")
  print(f"stopped at step {int(state.step)} ({reason}); models in {_WORKDIR.value}/best and "
        f"{_WORKDIR.value}/last")


if __name__ == "__main__":
  app.run(main)
