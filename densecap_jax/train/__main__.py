"""Trains DenseCap: ``python -m densecap_jax.train --config tiny --workdir runs/tiny``.

``--config`` is a config file (``train/configs/tiny.py`` in a checkout) or the
name of one shipped in ``densecap_jax/train/configs`` (``tiny``, ``vgg16``);
``train/train.py`` is the same command.

Any config field can be overridden on the command line, e.g.
``--config.learning_rate=1e-4 --config.model.box_reg_decay=0``. Started
again with the same ``--workdir``, a run resumes from its newest checkpoint
(``--resume``, the default) and continues exactly as if it had not stopped;
``--noresume`` refuses a ``--workdir`` that already has checkpoints.
On a multi-host TPU pod or GPU cluster pass ``--distributed`` on every host.
"""

import os
import sys

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from densecap_jax.train import trainer

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


CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def resolve_config_names(argv):
  """``argv`` with ``--config NAME`` (a config shipped in the package) turned into its file path."""
  argv = list(argv)
  for i, arg in enumerate(argv):
    for prefix in ("--config=", "-config="):
      if arg.startswith(prefix):
        argv[i] = prefix + _config_path(arg[len(prefix):])
    if arg in ("--config", "-config") and i + 1 < len(argv):
      argv[i + 1] = _config_path(argv[i + 1])
  return argv


def _config_path(value):
  path, _, override = value.partition(":")
  packaged = os.path.join(CONFIGS_DIR, f"{path}.py")
  if not os.path.exists(path) and os.sep not in path and os.path.exists(packaged):
    path = packaged
  return path + (":" + override if override else "")


def run():
  app.run(main, argv=resolve_config_names(sys.argv))


if __name__ == "__main__":
  run()
