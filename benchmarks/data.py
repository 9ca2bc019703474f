"""Speed of the data pipeline: preprocessing to HDF5, the batch loader and the wait for data.

A synthetic dataset of ``--images`` scenes (``densecap_jax.data.synthetic``,
long side ``--scene_size`` pixels, JPEG, in a temporary folder) is converted by
``preprocess.preprocess`` at each of ``--sizes`` (the images pass dominates:
JPEG decode, resize on ``--num_workers`` threads, HDF5 writes); then
``loader.make_batches`` reads the train split of each HDF5 file (shuffled,
endless, the buckets of that size, 2 batches prefetched) at each of
``--batch_sizes``, with each of ``--workers`` batch workers (0: no workers,
each batch assembled by the ``next`` call that returns it, ``prefetch=0``:
the work of a batch without the hand-over between threads), as float32
batches (the model's input assembled on the host) and as uint8 batches (the
stored pixels, converted on the device by ``device_pixels``). One batch is
taken first (opens the file, starts the workers), then ``--batches`` batches
are timed, the median of ``--repeats`` runs reported; "bytes/image" is what
one image's share of a batch weighs (what crosses to the device). For each
uint8 case, the same images are also copied into fresh batch arrays on as
many plain threads as workers, with nothing else (``bench_copy_ceiling``):
the rate this machine's memory allows, which bounds the uint8 loader. Last,
``--train_steps`` steps of the ``tiny`` training config on the smallest
size's dataset (``trainer.train``, no validation)
report the share of the step time spent waiting for data (the metrics
line's ``data_wait_percent``, steps after the first, which compiles).

  python benchmarks/data.py [--images 200] [--sizes 256,720] [--batch_sizes 1,8] [--workers 0,1,2]
"""

import argparse
import json
import os
import statistics
import tempfile
import threading
import time

import numpy as np

from densecap_jax.configs import buckets as buckets_lib
from densecap_jax.data import loader
from densecap_jax.train import trainer
from densecap_jax.train.configs import tiny
from densecap_jax.data import visual_genome as preprocess
from densecap_jax.data import synthetic_world as synthetic

PIXELS = ("float32", "uint8")


def bench_preprocess(paths, folder, size, num_workers):
  """Seconds to preprocess the dataset at long side ``size``; returns ``(seconds, h5, json)``."""
  h5_path = os.path.join(folder, f"regions-{size}.h5")
  json_path = os.path.join(folder, f"regions-{size}.json")
  start = time.perf_counter()
  preprocess.preprocess(paths["region_data"], paths["image_dir"], paths["split_json"], h5_path,
                        json_path, image_size=size, num_workers=num_workers, progress=False,
                        log=lambda *a: None)
  return time.perf_counter() - start, h5_path, json_path


def bench_loader(data, size, batch_size, pixels, num_workers, num_batches, max_boxes, seed):
  """``(seconds for num_batches batches after the first one, bytes per image, pixel bytes)``."""
  batches = loader.make_batches(data, "train", batch_size=batch_size, max_boxes=max_boxes,
                                buckets=buckets_lib.make_buckets(size), shuffle=True, seed=seed,
                                pixels=pixels, num_workers=max(num_workers, 1),
                                prefetch=2 if num_workers else 0)
  with batches:
    next(batches)
    nbytes = pixel_bytes = 0
    start = time.perf_counter()
    for _ in range(num_batches):
      batch = next(batches)
      nbytes += sum(v.nbytes for v in batch.values())
      pixel_bytes += batch["image"].nbytes
    seconds = time.perf_counter() - start
  images = num_batches * batch_size
  return seconds, nbytes / images, pixel_bytes / images


def bench_copy_ceiling(data, size, batch_size, num_threads, num_batches, seed):
  """Images/s of the plain copies a uint8 batch needs, on ``num_threads`` threads at once.

  Each batch is a fresh ``(B, 3, Hb, Wb)`` uint8 array into which ``B``
  images of one bucket are copied from the file's memory map, as the
  loader's uint8 batches are, with no schedule, regions or hand-over: the
  rate at which this machine's memory moves those bytes, the ceiling of the
  uint8 loader for that many workers.
  """
  indices = data.split_indices("train")
  buckets = buckets_lib.make_buckets(size)
  ids = data.bucket_ids(indices, buckets)
  bucket = int(np.bincount(ids).argmax())
  same = np.random.default_rng(seed).permutation(indices[ids == bucket])
  shape = (batch_size, 3) + tuple(buckets[bucket])

  def copy_batches(first, count):
    for b in range(first, first + count):
      batch = np.empty(shape, np.uint8)
      for k in range(batch_size):
        index = same[(b * batch_size + k) % len(same)]
        height, width = data.image_sizes[index]
        batch[k, :, :height, :width] = data.read_image_chw(index)

  copy_batches(0, 2)  # maps the file
  per_thread = num_batches // num_threads
  threads = [threading.Thread(target=copy_batches, args=(t * per_thread, per_thread))
             for t in range(num_threads)]
  start = time.perf_counter()
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  return per_thread * num_threads * batch_size / (time.perf_counter() - start)


def bench_training_wait(h5_path, json_path, size, num_steps, folder):
  """``(data_wait_percent, steps_per_sec)`` of the ``tiny`` config's steps after the first."""
  config = tiny.get_config()
  config.data_h5, config.data_json = h5_path, json_path
  config.model.image_size = size
  config.model.buckets = ((size, size),)  # one program: every step after the first is timed
  config.max_iters = num_steps + 1
  config.losses_log_every = 1
  config.save_checkpoint_every = num_steps + 1
  config.val_images_use = 0
  config.warmup_steps = 0
  workdir = os.path.join(folder, f"train-{size}")
  trainer.train(config, workdir, resume=False, progress=False)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f if "data_wait" in l][1:]  # the first step compiles
  step_s = sum(1 / r["steps_per_sec"] for r in rows)
  waited = sum(r["data_wait"] for r in rows)
  return 100 * waited / step_s, len(rows) / step_s


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
  parser.add_argument("--workers", default="0,1,2",
                      help="loader batch workers, comma-separated (0: no prefetch)")
  parser.add_argument("--repeats", type=int, default=3,
                      help="runs of each loader and copy case; the median is reported")
  parser.add_argument("--train_steps", type=int, default=40,
                      help="tiny training steps for the data-wait share (0 = skip)")
  parser.add_argument("--max_boxes", type=int, default=256, help="regions per image in a batch")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workdir", default=None,
                      help="folder for the dataset and HDF5 files (default: a temporary one)")
  args = parser.parse_args(argv)
  try:
    args.sizes = parse_ints(args.sizes, "--sizes", minimum=32)
    args.batch_sizes = parse_ints(args.batch_sizes, "--batch_sizes")
    args.workers = parse_ints(args.workers, "--workers", minimum=0)
    if args.train_steps < 0:
      raise ValueError(f"--train_steps must be >= 0, got {args.train_steps}")
    for flag in ("images", "num_workers", "batches", "max_boxes", "repeats"):
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
  preprocess_rows, loader_rows, ceiling_rows, datasets = [], [], [], {}
  for size in args.sizes:
    seconds, h5_path, json_path = bench_preprocess(paths, folder, size, args.num_workers)
    preprocess_rows.append((size, seconds, os.path.getsize(h5_path)))
    datasets[size] = (h5_path, json_path)
    data = loader.DenseCapH5(h5_path, json_path)
    for batch_size in args.batch_sizes:
      for pixels in PIXELS:
        for workers in args.workers:
          runs = [bench_loader(data, size, batch_size, pixels, workers, args.batches,
                               args.max_boxes, args.seed) for _ in range(args.repeats)]
          loader_rows.append((size, batch_size, pixels, workers) + sorted(runs)[len(runs) // 2])
      for workers in [w for w in args.workers if w]:
        ceiling_rows.append((size, batch_size, workers, statistics.median(
            bench_copy_ceiling(data, size, batch_size, workers, args.batches * 4, args.seed)
            for _ in range(args.repeats))))
    print(f"  done: {size} px", flush=True)
  wait = None
  if args.train_steps:
    size = min(args.sizes)
    wait = (size,) + bench_training_wait(*datasets[size], size, args.train_steps, folder)

  print(f"host: {len(os.sched_getaffinity(0))} usable cores; NumPy {np.__version__}; "
        f"{args.images} synthetic scenes of long side {args.scene_size} "
        f"(generated in {generate_s:.1f} s); load average {os.getloadavg()[0]:.2f}")
  print(f"preprocess ({args.num_workers} threads)")
  print(f"{'size':>5} {'seconds':>8} {'images/s':>9} {'HDF5 MB':>8}")
  for size, seconds, nbytes in preprocess_rows:
    print(f"{size:>5} {seconds:8.2f} {args.images / seconds:9.1f} {nbytes / 2**20:8.1f}")
  print(f"loader (train split, shuffled, max_boxes {args.max_boxes}, "
        f"prefetch 2 (0 workers: none), {args.batches} batches, median of {args.repeats} runs)")
  print(f"{'size':>5} {'batch':>5} {'pixels':>7} {'workers':>7} {'images/s':>9} "
        f"{'ms/batch':>9} {'bytes/image':>11} {'of pixels':>10} {'vs 1 worker':>11}")
  one_worker = {}
  for size, batch_size, pixels, workers, seconds, per_image, pixel_bytes in loader_rows:
    rate = args.batches * batch_size / seconds
    key = (size, batch_size, pixels)
    if workers == 1:
      one_worker[key] = rate
    speedup = f"{rate / one_worker[key]:.2f}x" if key in one_worker else "-"
    print(f"{size:>5} {batch_size:>5} {pixels:>7} {workers:>7} {rate:9.1f} "
          f"{1e3 * seconds / args.batches:9.2f} {per_image:11,.0f} {pixel_bytes:10,.0f} "
          f"{speedup:>11}")
  print("memory copy of the uint8 batches' pixels (the uint8 loader's ceiling; "
        "threads = workers)")
  print(f"{'size':>5} {'batch':>5} {'threads':>7} {'images/s':>9} {'vs 1 thread':>11} "
        f"{'uint8 loader / this':>19}")
  loader_rate = {(r[0], r[1], r[2], r[3]): args.batches * r[1] / r[4] for r in loader_rows}
  one_thread = {}
  for size, batch_size, threads, rate in ceiling_rows:
    if threads == 1:
      one_thread[(size, batch_size)] = rate
    base = one_thread.get((size, batch_size))
    speedup = f"{rate / base:.2f}x" if base else "-"
    share = loader_rate.get((size, batch_size, "uint8", threads))
    print(f"{size:>5} {batch_size:>5} {threads:>7} {rate:9.1f} {speedup:>11} "
          f"{share / rate if share else float('nan'):19.2f}")
  if wait is not None:
    print(f"training (tiny config, {wait[0]} px, {args.train_steps} steps after the first): "
          f"{wait[2]:.1f} steps/s, {wait[1]:.2f} % of the step time waiting for data")


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
