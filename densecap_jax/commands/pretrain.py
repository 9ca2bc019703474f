"""Pretrains the backbone and fc6 / fc7 as a region-attribute classifier, the start of training.

``python -m densecap_jax.train.pretrain --config tiny --labels data/synthetic/vg/objects.json
--workdir runs/pretrain`` classifies the labelled regions of the training
split of ``config.data_h5`` / ``config.data_json`` by the attributes of the
``--labels`` file (``densecap_jax/data/region_labels.py`` describes it; the
synthetic dataset writes one, ``objects.json``), as
``densecap_jax/train/region_pretraining.py`` describes, and writes the
pretrained model to ``WORKDIR/model``; training then starts from it with
``--config.checkpoint_start_from=WORKDIR/model``.

``--config`` and its ``--config.field`` overrides are the train command's
(``python -m densecap_jax.train``); the stage reads ``config.model``,
``config.seed``, the data files and its own settings ``config.pretrain``
(``steps``, ``batch_size``, ``learning_rate``, ``warmup_steps``,
``max_regions``, ``feature_rms``, see ``train/configs/common.py``), e.g.
``--config.pretrain.steps=500``. A ``--workdir`` that already holds the model
is left as it is.
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from densecap_jax import runtime
from densecap_jax.commands import flags as command_flags
from densecap_jax.data import loader
from densecap_jax.data import region_labels as region_labels_lib
from densecap_jax.train import config_checks
from densecap_jax.train import region_pretraining

_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file",
                                          lock_config=True)
_LABELS = flags.DEFINE_string("labels", None, "the regions' attribute labels (objects.json)")
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for the logs and the pretrained model")
flags.mark_flags_as_required(["config", "labels", "workdir"])
runtime.define_absl_flags()


def check_pretrain_config(settings):
  """Raises ``ValueError`` (one line, naming the field) for ``config.pretrain`` values no run
  can use."""
  for field in ("steps", "batch_size", "max_regions"):
    value = settings[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"config field pretrain.{field}={value!r} is not accepted: expected a "
                       f"positive integer")
  warmup = settings.warmup_steps
  if isinstance(warmup, bool) or not isinstance(warmup, int) or not 0 <= warmup < settings.steps:
    raise ValueError(f"config field pretrain.warmup_steps={warmup!r} is not accepted: expected an "
                     f"integer in [0, pretrain.steps={settings.steps})")
  rms = settings.feature_rms
  if isinstance(rms, bool) or not isinstance(rms, (int, float)) or not rms >= 0:
    raise ValueError(f"config field pretrain.feature_rms={rms!r} is not accepted: expected a "
                     f"number >= 0 (0: relu5_3 as trained)")
  rate = settings.learning_rate
  if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
    raise ValueError(f"config field pretrain.learning_rate={rate!r} is not accepted: expected a "
                     f"positive number")


def pretrain(config, labels_path, workdir, progress=True):
  """Runs the stage for the training ``config``; returns the pretrained model directory."""
  check_pretrain_config(config.pretrain)
  data = loader.DenseCapH5(config.data_h5, config.data_json)
  config = config.copy_and_resolve_references()
  config.model.vocab_size = data.vocab_size
  config_checks.check_config(config)
  config_checks.check_fits_data(config, data, 1)
  heads, labels = region_labels_lib.load_region_labels(labels_path, data, data.slot_size)
  return region_pretraining.pretrain(
      config.model, data, labels, heads, workdir, seed=config.seed, progress=progress,
      **region_pretraining.settings_kwargs(config.pretrain))


def main(argv):
  del argv
  runtime.setup_from_absl()
  try:
    out = pretrain(_CONFIG.value, _LABELS.value, _WORKDIR.value)
  except (OSError, ValueError) as e:
    sys.exit(f"error: {' '.join(str(e).split())}")
  print(f"pretrained model: {out}\nnext: train from it with --config.checkpoint_start_from={out}")


def run():
  """The pretrain command (``densecap-pretrain``, ``python -m densecap_jax.train.pretrain``)."""
  for flag in flags.FLAGS.get_flags_for_module(__name__):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(main, argv=command_flags.resolve_config_names(sys.argv),
          flags_parser=command_flags.parse_config_flags)
