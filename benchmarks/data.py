"""Speed of the data pipeline: preprocessing to HDF5 and the batch loader.

A synthetic dataset of ``--images`` scenes (``densecap_jax.data.synthetic``,
long side ``--scene_size`` pixels, JPEG, in a temporary folder) is converted by
``preprocess.preprocess`` at each of ``--sizes`` (the images pass dominates:
JPEG decode, resize on ``--num_workers`` threads, HDF5 writes); then
``loader.make_batches`` reads the train split of each HDF5 file (shuffled,
endless, the buckets of that size) at each of ``--batch_sizes``, with the
prefetch thread off (0) and on (2 batches ahead). One batch is taken first
(opens the file, starts the thread), then ``--batches`` batches are timed.
``--step_ms`` stands for the training step: the consumer sleeps that long
after each batch, as it waits for the device, which the prefetch thread can
overlap; 0 measures the loader alone.

  python benchmarks/data.py [--images 200] [--sizes 256,720] [--batch_sizes 1,8]
"""

import argparse
import os
import tempfile
import time

import numpy as np

from densecap_jax.configs import buckets as buckets_lib
from densecap_jax.data import loader
from densecap_jax.data import visual_genome as preprocess
from densecap_jax.data import synthetic_world as synthetic

PREFETCH = (0, 2)


def bench_preprocess(paths, folder, size, num_workers):
  """Seconds to preprocess the dataset at long side ``size``; returns ``(seconds, h5, json)``."""
  h5_path = os.path.join(folder, f"regions-{size}.h5")
  json_path = os.path.join(folder, f"regions-{size}.json")
  start = time.perf_counter()
  preprocess.preprocess(paths["region_data"], paths["image_dir"], paths["split_json"], h5_path,
                        json_path, image_size=size, num_workers=num_workers, progress=False,
                        log=lambda *a: None)
  return time.perf_counter() - start, h5_path, json_path


def bench_loader(data, size, batch_size, prefetch, num_batches, step_ms, max_boxes, seed):
  """Seconds for ``num_batches`` batches after the first one."""
  batches = loader.make_batches(data, "train", batch_size=batch_size, max_boxes=max_boxes,
                                buckets=buckets_lib.make_buckets(size), shuffle=True, seed=seed,
                                prefetch=prefetch)
  with batches:
    next(batches)
    start = time.perf_counter()
    for _ in range(num_batches):
      next(batches)
      if step_ms:
        time.sleep(step_ms / 1e3)
    return time.perf_counter() - start


def parse_ints(text, flag, minimum=1):
  try:
    values = tuple(int(v) for v in text.split(","))
  except ValueError:
    raise ValueError(f"{flag} must be comma-separated ints, got {text!r}") from None
  if min(values) < minimum:
    raise ValueError(f"{flag} must be ints >= {minimum}, got {text!r}")
  return values


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=200, help="synthetic scenes")
  parser.add_argument("--scene_size", type=int, default=800,
                      help="long side of the synthetic JPEGs (Visual Genome's are about 800)")
  parser.add_argument("--sizes", default="256,720", help="preprocessing long sides")
  parser.add_argument("--num_workers", type=int, default=5,
                      help="preprocessing threads (the preprocess default)")
  parser.add_argument("--batch_sizes", default="1,8", help="loader batch sizes")
  parser.add_argument("--batches", type=int, default=50, help="timed batches per loader case")
  parser.add_argument("--step_ms", default="0,50",
                      help="simulated training step after each batch, ms, comma-separated")
  parser.add_argument("--max_boxes", type=int, default=256, help="regions per image in a batch")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workdir", default=None,
                      help="folder for the dataset and HDF5 files (default: a temporary one)")
  args = parser.parse_args(argv)
  try:
    args.sizes = parse_ints(args.sizes, "--sizes", minimum=32)
    args.batch_sizes = parse_ints(args.batch_sizes, "--batch_sizes")
    args.step_ms = parse_ints(args.step_ms, "--step_ms", minimum=0)
    for flag in ("images", "num_workers", "batches", "max_boxes"):
      if getattr(args, flag) < 1:
        raise ValueError(f"--{flag} must be positive, got {getattr(args, flag)}")
    if args.images < 5:
      raise ValueError(f"--images must be at least 5 (train, val and test splits), "
                       f"got {args.images}")
    if args.scene_size < 32:
      raise ValueError(f"--scene_size must be at least 32, got {args.scene_size}")
  except ValueError as e:
    parser.error(str(e))
  return args


def run(args, folder):
  start = time.perf_counter()
  paths = synthetic.generate_dataset(os.path.join(folder, "scenes"), args.images, args.seed,
                                     image_size=args.scene_size, progress=False)
  generate_s = time.perf_counter() - start
  preprocess_rows, loader_rows = [], []
  for size in args.sizes:
    seconds, h5_path, json_path = bench_preprocess(paths, folder, size, args.num_workers)
    preprocess_rows.append((size, seconds, os.path.getsize(h5_path)))
    data = loader.DenseCapH5(h5_path, json_path)
    for batch_size in args.batch_sizes:
      for step_ms in args.step_ms:
        for prefetch in PREFETCH:
          seconds = bench_loader(data, size, batch_size, prefetch, args.batches, step_ms,
                                 args.max_boxes, args.seed)
          loader_rows.append((size, batch_size, step_ms, prefetch, seconds))
    print(f"  done: {size} px", flush=True)

  print(f"host: {os.cpu_count()} cores; NumPy {np.__version__}; {args.images} synthetic scenes "
        f"of long side {args.scene_size} (generated in {generate_s:.1f} s)")
  print(f"preprocess ({args.num_workers} threads)")
  print(f"{'size':>5} {'seconds':>8} {'images/s':>9} {'HDF5 MB':>8}")
  for size, seconds, nbytes in preprocess_rows:
    print(f"{size:>5} {seconds:8.2f} {args.images / seconds:9.1f} {nbytes / 2**20:8.1f}")
  print(f"loader (train split, shuffled, max_boxes {args.max_boxes}, {args.batches} batches)")
  print(f"{'size':>5} {'batch':>5} {'step ms':>7} {'prefetch':>8} {'batches/s':>10} "
        f"{'images/s':>9} {'ms/batch':>9}")
  for size, batch_size, step_ms, prefetch, seconds in loader_rows:
    rate = args.batches / seconds
    print(f"{size:>5} {batch_size:>5} {step_ms:>7} {prefetch:>8} {rate:10.1f} "
          f"{rate * batch_size:9.1f} {1e3 / rate:9.1f}")


def main(argv=None):
  args = parse_args(argv)
  if args.workdir:
    os.makedirs(args.workdir, exist_ok=True)
    run(args, args.workdir)
  else:
    with tempfile.TemporaryDirectory(prefix="densecap-bench-") as folder:
      run(args, folder)


if __name__ == "__main__":
  main()
