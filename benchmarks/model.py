"""Inference speed of the jitted test-time pass (``detection.infer``) on ``jax.devices()[0]``.

For each model config, shape bucket and batch size: the compile time (trace,
lower and XLA compile of ``split_eval.make_predict_fn``, the function that
evaluation uses), then the median latency of a whole forward pass (backbone,
RPN, proposal NMS, RoI pooling, recognition, final NMS, greedy captions of the
kept boxes) after ``--warmup`` calls, with ``block_until_ready``, and the
images per second it gives. Parameters are freshly initialised and the images
are random, so the "kept" column (mean detections left after the final NMS,
the ones that are captioned) reports how much captioning work the run did.

Defaults: ``tiny`` at two 256-pixel buckets (192 x 256, 256 x 256) and
V = 64; ``vgg16`` at 544 x 720 (a 3:4 image at 720 pixels) and V = 10,000;
each with its config's ``num_proposals`` (``vgg16``: 1000); batch sizes 1
and 4. Inputs and parameters are on the device before timing, so the figures
leave out host-to-device transfers.

  python benchmarks/model.py                                    # everything
  python benchmarks/model.py --configs vgg16 --vgg16_batch_sizes 1 --repeats 2
"""

import argparse
import statistics
import time

import jax
import numpy as np

from densecap_jax import configs
from densecap_jax.evaluation import split_eval
from densecap_jax.models import densecap
import model_flags

DEFAULT_BUCKETS = {"tiny": "192x256,256x256", "vgg16": "544x720"}
DEFAULT_BATCH_SIZES = {"tiny": "1,4", "vgg16": "1,4"}
DEFAULT_VOCAB_SIZES = {"tiny": 64, "vgg16": 10000}
INPUT_STD = 60.0  # spread of BGR pixels minus the VGG mean


def parse_ints(text, flag):
  """``'1,4'`` -> ``(1, 4)``; positive ints only."""
  try:
    values = tuple(int(v) for v in text.split(","))
  except ValueError:
    raise ValueError(f"{flag} must be comma-separated ints, got {text!r}") from None
  if not values or min(values) < 1:
    raise ValueError(f"{flag} must be positive ints, got {text!r}")
  return values


def parse_buckets(text, flag, allowed):
  """``'544x720,720x720'`` -> ``((544, 720), (720, 720))``, each one of ``allowed``."""
  buckets = []
  for item in text.split(","):
    try:
      height, width = (int(v) for v in item.lower().split("x"))
    except ValueError:
      raise ValueError(f"{flag} must be HxW[,HxW...], got {text!r}") from None
    if (height, width) not in allowed:
      raise ValueError(f"{flag}: {item} is not a bucket of the config; expected one of "
                       f"{', '.join(f'{h}x{w}' for h, w in allowed)}")
    buckets.append((height, width))
  return tuple(buckets)


def model_config(name, vocab_size):
  config = configs.get_model_config(name)
  config.vocab_size = vocab_size
  return config


def random_images(rng, batch_size, bucket):
  """``(B, H, W, 3)`` float32 VGG-style inputs and ``(B, 2)`` int32 sizes filling the bucket."""
  images = rng.normal(0.0, INPUT_STD, (batch_size,) + tuple(bucket) + (3,)).astype(np.float32)
  sizes = np.tile(np.asarray(bucket, np.int32), (batch_size, 1))
  return images, sizes


def bench_case(predict, params, config, bucket, batch_size, device, rng, warmup, repeats):
  """One row: compile seconds, median latency seconds, mean kept detections per image."""
  images, sizes = jax.device_put(random_images(rng, batch_size, bucket), device)
  thresholds = jax.device_put((np.float32(config.rpn_nms_thresh),
                               np.float32(config.final_nms_thresh)), device)
  args = (params, images, sizes) + tuple(thresholds)
  start = time.perf_counter()
  compiled = predict.lower(*args).compile()
  compile_s = time.perf_counter() - start
  for _ in range(warmup):
    outputs = jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    outputs = jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  kept = float(np.mean(np.sum(np.asarray(outputs[3]), axis=1)))
  return compile_s, statistics.median(times), kept


def parameter_count(params):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  model_flags.add_common_flags(parser, repeats=5, repeats_help="timed calls per case",
                               warmup_help="untimed calls after compiling")
  for name in configs.MODEL_CONFIGS:
    parser.add_argument(f"--{name}_buckets", default=DEFAULT_BUCKETS[name],
                        help=f"HxW buckets of the {name} config")
    parser.add_argument(f"--{name}_batch_sizes", default=DEFAULT_BATCH_SIZES[name],
                        help=f"images per call for {name}")
  args = parser.parse_args(argv)
  try:
    model_flags.check_common_flags(args)
    args.cases = {}
    for name in args.configs:
      allowed = configs.get_model_config(name).buckets
      buckets = parse_buckets(getattr(args, f"{name}_buckets"), f"--{name}_buckets", allowed)
      batch_sizes = parse_ints(getattr(args, f"{name}_batch_sizes"), f"--{name}_batch_sizes")
      args.cases[name] = (buckets, batch_sizes)
  except ValueError as e:
    parser.error(str(e))
  return args


def main(argv=None):
  args = parse_args(argv)
  device = jax.devices()[0]
  rng = np.random.default_rng(args.seed)
  rows, notes = [], []
  for name in args.configs:
    vocab_size = args.vocab_size or DEFAULT_VOCAB_SIZES[name]
    config = model_config(name, vocab_size)
    num_proposals = args.num_proposals or config.num_proposals
    params = jax.device_put(densecap.init_params(config, jax.random.key(args.seed)), device)
    notes.append(f"{name}: {parameter_count(params) / 1e6:.1f} M params, V = {vocab_size}, "
                 f"{len(config.anchor_sizes)} anchors, {num_proposals} proposals")
    predict = split_eval.make_predict_fn(config, num_proposals)
    buckets, batch_sizes = args.cases[name]
    for bucket in buckets:
      for batch_size in batch_sizes:
        compile_s, latency_s, kept = bench_case(predict, params, config, bucket, batch_size,
                                                device, rng, args.warmup, args.repeats)
        rows.append((name, f"{bucket[0]}x{bucket[1]}", batch_size, compile_s, latency_s, kept))
        print(f"  done: {name} {bucket[0]}x{bucket[1]} batch {batch_size}", flush=True)
    del params

  print(f"JAX {jax.__version__} on {device.platform}: {device.device_kind} ({device}); "
        f"median of {args.repeats} calls after {args.warmup} warm-up")
  for note in notes:
    print(f"  {note}")
  print(f"{'config':<7} {'bucket':>8} {'batch':>5} {'compile s':>10} {'latency ms':>11} "
        f"{'images/s':>9} {'kept':>7}")
  for name, bucket, batch_size, compile_s, latency_s, kept in rows:
    print(f"{name:<7} {bucket:>8} {batch_size:>5} {compile_s:10.1f} {latency_s * 1e3:11.1f} "
          f"{batch_size / latency_s:9.2f} {kept:7.1f}")


if __name__ == "__main__":
  main()
