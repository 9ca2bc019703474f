"""Training speed: the full pmapped step of ``densecap_jax.train.loop`` on every local device.

For each model config, the training config of the same name
(``train/configs/<name>.py``) gives the optimiser (``optim.from_config``:
the original's Adam, weight decay, frozen and CNN groups), the images per
device and whether the CNN is trained; the step is the one ``trainer.train``
runs (``make_loss_fn`` -> ``make_train_step`` -> ``pmap_train_step``), fed
random batches in the loader's format with a leading device axis (no dataset
needed) from host memory, as the training loop feeds them. The state is
replicated with ``engine.replicate`` as ``loop.train_loop`` does.
The first two steps are reported on their own (they include compilation),
then after ``--warmup`` steps in all, ``--steps`` steps are timed, each
waiting for its metrics as the loop does; steps/s and images/s (all devices)
follow.

Defaults: ``tiny`` at a 192 x 256 bucket, 2 images per device, CNN trained
(the tiny config trains every conv from step 1), V = 64; ``vgg16`` at
544 x 720, 1 image per device (the original), CNN frozen (the original's
default ``finetune_cnn_after = -1``), V = 10,000.

On a CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` splits the
host into two JAX devices so that the data-parallel path (pmap, ``pmean`` of
the gradients) runs; the two devices share the same cores, so this checks
the path, it does not speed anything up.

  python benchmarks/train.py [--configs tiny,vgg16] [--precisions float32,bfloat16] [--steps 10]
  XLA_FLAGS=--xla_force_host_platform_device_count=2 python benchmarks/train.py --configs tiny
"""

import argparse
import os
import statistics
import sys
import time

# The repository root comes first so that ``train`` is the package of training
# configs, not this file.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import jax
import numpy as np

from densecap_jax import configs
from densecap_jax import engine
from densecap_jax.train import trainer
from densecap_jax.train import loop
from densecap_jax.train import optim
from densecap_jax.models import densecap
from densecap_jax.train.configs import tiny as tiny_train_config
from densecap_jax.train.configs import vgg16 as vgg16_train_config

TRAIN_CONFIGS = {"tiny": tiny_train_config, "vgg16": vgg16_train_config}
DEFAULT_BUCKETS = {"tiny": "192x256", "vgg16": "544x720"}
DEFAULT_VOCAB_SIZES = {"tiny": 64, "vgg16": 10000}
INPUT_STD = 60.0  # spread of BGR pixels minus the VGG mean
MIN_BOX_SIDE = 16
NUM_BATCHES = 2  # distinct batches the timed steps cycle through


def train_config(name, vocab_size, per_device_batch_size, finetune_cnn, precision=None):
  """The training config ``name`` with V set, and the overrides asked for.

  ``precision``: the model's precision (``configs.PRECISIONS``); ``None``
  keeps the config's.
  """
  config = TRAIN_CONFIGS[name].get_config()
  config.model = configs.with_precision(config.model, precision)
  config.model.vocab_size = vocab_size
  if per_device_batch_size is not None:
    config.per_device_batch_size = per_device_batch_size
  if finetune_cnn == "on" and config.finetune_cnn_after < 0:
    config.finetune_cnn_after = 0
  elif finetune_cnn == "off":
    config.finetune_cnn_after = -1
  return config


def synthetic_batch(rng, num_devices, per_device, bucket, model_config, num_regions):
  """A random batch in the loader's format with a leading device axis.

  Every image fills the ``bucket = (H, W)``; each has ``num_regions`` regions
  (integer xcycwh boxes inside the image, 1-based; captions of 1..L random word
  ids in 1..V, 0-padded) in ``model_config.max_gt_boxes`` slots.

  Returns:
    dict of NumPy arrays shaped ``(num_devices, per_device, ...)`` (see
    ``densecap_jax.data.loader``).
  """
  size = num_devices * per_device
  height, width = bucket
  slots, length = model_config.max_gt_boxes, model_config.seq_length
  w = np.round(rng.uniform(MIN_BOX_SIDE, width / 2, (size, slots)))
  h = np.round(rng.uniform(MIN_BOX_SIDE, height / 2, (size, slots)))
  xc = np.round(1 + w / 2 + rng.random((size, slots)) * (width - 1 - w))
  yc = np.round(1 + h / 2 + rng.random((size, slots)) * (height - 1 - h))
  mask = np.broadcast_to(np.arange(slots) < num_regions, (size, slots))
  lengths = rng.integers(1, length + 1, (size, slots, 1))
  labels = rng.integers(1, model_config.vocab_size + 1, (size, slots, length))
  labels = np.where((np.arange(length) < lengths) & mask[..., None], labels, 0)
  batch = {
      "image": rng.normal(0.0, INPUT_STD, (size, height, width, 3)).astype(np.float32),
      "image_size": np.tile(np.asarray(bucket, np.int32), (size, 1)),
      "gt_boxes": np.where(mask[..., None], np.stack([xc, yc, w, h], -1), 0).astype(np.float32),
      "gt_labels": labels.astype(np.int32),
      "gt_mask": mask.copy(),
      "image_index": np.arange(size, dtype=np.int32),
      "example_mask": np.ones(size, bool),
  }
  return {k: v.reshape((num_devices, per_device) + v.shape[1:]) for k, v in batch.items()}


def bench_config(config, bucket, num_regions, warmup, steps, seed):
  """Times the pmapped step of one training config.

  Returns:
    dict with ``warmup_s`` (seconds of each warm-up step, compilation
    included), ``step_s`` (median timed step), ``steps_per_s`` (timed steps /
    their total time) and ``finite`` (every step's loss and gradient finite).
  """
  num_devices = jax.local_device_count()
  finetune_cnn = config.finetune_cnn_after >= 0
  tx = optim.from_config(config)
  step_fn = loop.pmap_train_step(
      loop.make_train_step(trainer.make_loss_fn(config.model, finetune_cnn), tx))
  params = densecap.init_params(config.model, jax.random.key(seed))
  state = engine.replicate(loop.init_train_state(params, tx))
  del params
  rng = np.random.default_rng(seed)
  batches = [synthetic_batch(rng, num_devices, config.per_device_batch_size, bucket, config.model,
                             num_regions) for _ in range(NUM_BATCHES)]
  base_rng = jax.random.key(seed)
  finite = True

  def run_step(step):
    nonlocal state, finite
    state, metrics = step_fn(state, batches[step % NUM_BATCHES], base_rng)
    finite &= bool(np.all(jax.device_get(metrics["finite"])))

  def timed_steps(first, count):
    times = []
    for step in range(first, first + count):
      start = time.perf_counter()
      run_step(step)
      times.append(time.perf_counter() - start)
    return times

  warmup_s = timed_steps(0, warmup)
  times = timed_steps(warmup, steps)
  return {"warmup_s": warmup_s, "step_s": statistics.median(times),
          "steps_per_s": steps / sum(times), "finite": finite}


def parse_bucket(text, flag, allowed):
  """``'544x720'`` -> ``(544, 720)``, one of ``allowed``."""
  try:
    height, width = (int(v) for v in text.lower().split("x"))
  except ValueError:
    raise ValueError(f"{flag} must be HxW, got {text!r}") from None
  if (height, width) not in allowed:
    raise ValueError(f"{flag}: {text} is not a bucket of the config; expected one of "
                     f"{', '.join(f'{h}x{w}' for h, w in allowed)}")
  return height, width


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default="tiny,vgg16",
                      help=f"training configs, comma-separated, of {tuple(TRAIN_CONFIGS)}")
  for name in TRAIN_CONFIGS:
    parser.add_argument(f"--{name}_bucket", default=DEFAULT_BUCKETS[name],
                        help=f"HxW bucket of the {name} images")
  parser.add_argument("--steps", type=int, default=10, help="timed steps per config")
  parser.add_argument("--warmup", type=int, default=2,
                      help="untimed steps first (the first compiles); at least 1")
  parser.add_argument("--per_device_batch_size", type=int, default=None,
                      help="images per device for every config (default: the config's)")
  parser.add_argument("--finetune_cnn", choices=("config", "on", "off"), default="config",
                      help="train conv3_1 .. conv5_3: as the config does after "
                           "finetune_cnn_after, always, or never")
  parser.add_argument("--vocab_size", type=int, default=None,
                      help="V for every config (default: tiny 64, vgg16 10000)")
  parser.add_argument("--regions", type=int, default=None,
                      help="ground-truth regions per image (default: half of max_gt_boxes)")
  parser.add_argument("--precisions", default="float32",
                      help=f"model precisions, comma-separated, of {configs.PRECISIONS}")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  try:
    args.configs = tuple(args.configs.split(","))
    args.precisions = tuple(configs.check_precision(p, "--precisions")
                            for p in args.precisions.split(","))
    unknown = [c for c in args.configs if c not in TRAIN_CONFIGS]
    if unknown:
      raise ValueError(f"--configs: unknown {unknown}, expected some of {tuple(TRAIN_CONFIGS)}")
    if args.steps < 1 or args.warmup < 1:
      raise ValueError(f"--steps and --warmup must be at least 1, got {args.steps}, "
                       f"{args.warmup}")
    for flag in ("per_device_batch_size", "vocab_size", "regions"):
      value = getattr(args, flag)
      if value is not None and value < 1:
        raise ValueError(f"--{flag} must be positive, got {value}")
    args.buckets = {
        name: parse_bucket(getattr(args, f"{name}_bucket"), f"--{name}_bucket",
                           configs.get_model_config(name).buckets)
        for name in args.configs}
  except ValueError as e:
    parser.error(str(e))
  return args


def main(argv=None):
  args = parse_args(argv)
  devices = jax.local_devices()
  rows = []
  for name in args.configs:
    for precision in args.precisions:
      config = train_config(name, args.vocab_size or DEFAULT_VOCAB_SIZES[name],
                            args.per_device_batch_size, args.finetune_cnn, precision)
      num_regions = min(args.regions or config.model.max_gt_boxes // 2,
                        config.model.max_gt_boxes)
      result = bench_config(config, args.buckets[name], num_regions, args.warmup, args.steps,
                            args.seed)
      rows.append((name, config, result))
      print(f"  done: {name} {precision}", flush=True)

  print(f"JAX {jax.__version__}: {len(devices)} x {devices[0].platform} "
        f"{devices[0].device_kind}; {args.steps} timed steps after {args.warmup} warm-up")
  print(f"{'config':<7} {'precision':>9} {'bucket':>8} {'img/dev':>7} {'devices':>7} "
        f"{'CNN':>6} {'V':>6} {'step 1 s':>8} {'step 2 s':>8} {'step ms':>9} {'steps/s':>8} "
        f"{'images/s':>9}  finite")
  for name, config, result in rows:
    height, width = args.buckets[name]
    images = config.per_device_batch_size * len(devices)
    cnn = "train" if config.finetune_cnn_after >= 0 else "frozen"
    warmup = [f"{s:8.1f}" for s in result["warmup_s"][:2]] + [f"{'-':>8}"]
    print(f"{name:<7} {config.model.precision:>9} {f'{height}x{width}':>8} "
          f"{config.per_device_batch_size:>7} {len(devices):>7} {cnn:>6} "
          f"{config.model.vocab_size:>6} {warmup[0]} {warmup[1]} "
          f"{result['step_s'] * 1e3:9.1f} {result['steps_per_s']:8.3f} "
          f"{result['steps_per_s'] * images:9.2f}  {'yes' if result['finite'] else 'NO'}")


if __name__ == "__main__":
  main()
