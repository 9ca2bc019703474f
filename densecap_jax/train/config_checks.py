"""Checks of a training config before anything is read or compiled.

``check_config(config)`` looks at the fields alone; ``check_fits_data(config,
data)`` at the fields against the preprocessed dataset. Both raise a
``ValueError`` with one line that names the field, the value and what is
accepted, so that a wrong option stops the run at once instead of deep inside
optax, the loader or the first compilation.
"""

import math

from densecap_jax import configs as model_configs
from densecap_jax import settings
from densecap_jax.configs import buckets as buckets_lib

LR_SCHEDULES = ("constant", "cosine")
VAL_METRICS = ("map", "detmap")
TRAINABLE_MODULES = ("backbone", "localization", "recognition", "language_model",
                     "word_classifier")  # the top-level modules of models/densecap.py


def _message(field, value, accepted):
  return f"config field {field}={value!r} is not accepted: expected {accepted}"


def _fail(field, value, accepted):
  raise ValueError(_message(field, value, accepted))


def _at_least(config, field, minimum, accepted=None):
  value = config[field]
  if not isinstance(value, (int, float)) or value < minimum:
    _fail(field, value, accepted or f"a number >= {minimum}")


def _probability(config, field, *, include_one=True):
  value = config[field]
  ok = isinstance(value, (int, float)) and 0 <= value and (value <= 1 if include_one else value < 1)
  if not ok:
    _fail(field, value, "a number in [0, 1]" if include_one else "a number in [0, 1)")


def check_config(config):
  """Raises ``ValueError`` (one line, naming the field) for an option no run can use."""
  lr = config.learning_rate
  if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
    _fail("learning_rate", lr, "a positive number (the original: 1e-5)")
  if config.lr_schedule not in LR_SCHEDULES:
    _fail("lr_schedule", config.lr_schedule, f"one of {', '.join(LR_SCHEDULES)}")
  _at_least(config, "warmup_steps", 0)
  _at_least(config, "max_iters", -1, "-1 (run until stopped) or a positive number of steps")
  if config.max_iters == 0:
    _fail("max_iters", 0, "-1 (run until stopped) or a positive number of steps")
  if config.lr_schedule == "cosine" and config.max_iters < 0:
    _fail("max_iters", config.max_iters,
          "a positive number of steps with lr_schedule='cosine' (it decays to 0 at max_iters)")
  if config.max_iters > 0 and config.warmup_steps >= config.max_iters and config.warmup_steps:
    raise ValueError(f"config field max_iters={config.max_iters} is not accepted: expected more "
                     f"than warmup_steps={config.warmup_steps} (or lower warmup_steps)")
  _at_least(config, "per_device_batch_size", 1, "a positive number of images per device")
  for field in ("save_checkpoint_every", "keep_checkpoints", "losses_log_every",
                "max_nonfinite_steps"):
    _at_least(config, field, 1, "a positive integer")
  _probability(config, "optim_beta1", include_one=False)
  _probability(config, "optim_beta2", include_one=False)
  _at_least(config, "optim_epsilon", 0)
  _at_least(config, "weight_decay", 0)
  _at_least(config, "explode_factor", 0, "0 (off) or a positive factor")
  _at_least(config, "finetune_cnn_after", -1, "-1 (never) or a step number")
  unknown = [m for m in config.get("trained_modules", ()) if m not in TRAINABLE_MODULES]
  if unknown:
    _fail("trained_modules", tuple(config.trained_modules),
          f"names among {', '.join(TRAINABLE_MODULES)} (or () for all)")
  _at_least(config, "val_images_use", -1, "-1 (all), 0 (no validation) or a number of images")
  _at_least(config, "debug_max_train_images", -1, "-1 (all) or a positive number of images")
  if "num_workers" in config:
    _at_least(config, "num_workers", 0, "0 (the cores this process may use) or a number of threads")
  if "prefetch_batches" in config:
    _at_least(config, "prefetch_batches", 1, "a positive number of batches")
  if config.debug_max_train_images == 0:
    _fail("debug_max_train_images", 0, "-1 (all) or a positive number of images")
  if config.val_metric not in VAL_METRICS:
    _fail("val_metric", config.val_metric,
          "'map' (dense-captioning mAP, needs Java for METEOR) or 'detmap' (detection mAP only)")
  settings.check_settings(
      num_proposals=config.test_num_proposals, rpn_nms_thresh=config.test_rpn_nms_thresh,
      final_nms_thresh=config.test_final_nms_thresh,
      describe=lambda name, value, expected: _message(f"test_{name}", value, expected))
  model = config.model
  if not 0 <= model.frozen_blocks <= len(model.cnn_widths):
    _fail("model.frozen_blocks", model.frozen_blocks,
          f"0 .. {len(model.cnn_widths)} (conv blocks that never train)")
  _at_least(model, "max_gt_boxes", 1, "a positive number of regions per image")
  _at_least(model, "image_size", 16, "a long side of at least 16 pixels")
  precision = model.get("precision", model_configs.DEFAULT_PRECISION)
  if precision not in model_configs.PRECISIONS:
    _fail("model.precision", precision,
          f"one of {', '.join(model_configs.PRECISIONS)} (float32 is exact, tf32 and bfloat16 "
          f"are faster on GPUs and TPUs)")
  scale = model.get("input_scale", 1.0)
  if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
    _fail("model.input_scale", scale, "a positive number (1.0: the original)")
  skips = model.get("cnn_skip_blocks", ())
  last = len(model.cnn_widths) - 1
  if (not isinstance(skips, (tuple, list)) or
      not all(isinstance(b, int) and 1 <= b <= last for b in skips) or
      list(skips) != sorted(set(skips))):
    _fail("model.cnn_skip_blocks", skips,
          f"increasing block numbers in 1 .. {last} (empty: relu5_3 alone, the original)")
  weight = model.get("word_loss_weight", 0.0)
  if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
    _fail("model.word_loss_weight", weight, "a number >= 0 (0: no bag-of-words head)")


def check_fits_data(config, data, num_devices):
  """Raises ``ValueError`` when the sizes of ``config`` do not fit the dataset ``data``.

  Args:
    config: the training config (its ``model.vocab_size`` already set from ``data``).
    data: a ``loader.DenseCapH5``.
    num_devices: the number of devices of the whole job.
  """
  if data.seq_length != config.model.seq_length:
    raise ValueError(f"config field model.seq_length={config.model.seq_length} does not fit "
                     f"{config.data_h5}: its captions have {data.seq_length} tokens")
  largest = tuple(int(v) for v in data.image_sizes.max(axis=0))
  try:
    buckets_lib.pick_bucket(*largest, config.model.buckets)
  except ValueError:
    raise ValueError(
        f"config field model.image_size={config.model.image_size} does not fit {config.data_h5}: "
        f"it holds images up to {largest[0]}x{largest[1]} pixels (preprocessed with "
        f"--image_size {data.slot_size}); pass --config.model.image_size={data.slot_size} or "
        f"preprocess again with --image_size {config.model.image_size}") from None
  num_train = len(data.split_indices("train"))
  if config.debug_max_train_images > 0:
    num_train = min(num_train, config.debug_max_train_images)
  if num_train == 0:
    raise ValueError(f"{config.data_h5} has no training images")
  global_batch = config.per_device_batch_size * num_devices
  if global_batch > num_train:
    raise ValueError(f"config field per_device_batch_size={config.per_device_batch_size} does "
                     f"not fit {config.data_h5}: {num_devices} devices x "
                     f"{config.per_device_batch_size} = {global_batch} images a step, but the "
                     f"training split has {num_train}; expected at most "
                     f"{max(num_train // num_devices, 1)}")
