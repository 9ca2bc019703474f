"""Benchmark of the dense-captioning evaluator and of METEOR through the jar.

Evaluator: ``--images`` synthetic images of ``--detections`` detections and
``--gt`` ground-truth regions (some near-duplicates, so merging happens),
METEOR injected as random numbers; times ``add_result`` over all images and
``evaluate()``. METEOR: starts the METEOR 1.5 jar once and scores
``--meteor_pairs`` random caption pairs in one batch.

  python benchmarks/evaluation.py                       # 5000 x 1000, 5000 pairs
  python benchmarks/evaluation.py --images 500 --meteor_pairs 0
"""

import argparse
import os
import platform
import shutil
import subprocess
import time

import numpy as np

from densecap_jax.evaluation.metric import DenseCaptioningEvaluator
from densecap_jax.evaluation.meteor import Meteor

WORDS = ("a man woman red blue car tree sky white cloud dog cat sitting on the in of with "
         "building window grass street sign black large small").split()
NUM_TEMPLATES = 64
ONE_BY_ONE = 200  # pairs scored one request at a time, as the original bridge


def random_captions(rng, count):
  lengths = rng.integers(2, 8, count)
  return [" ".join(rng.choice(WORDS, n)) for n in lengths]


def synthetic_image(rng, num_detections, num_gt, captions):
  """One image's xcycwh GT and detections around it, captions from a pool."""
  gt = np.concatenate([rng.uniform(50, 700, (num_gt, 2)), rng.uniform(20, 300, (num_gt, 2))], 1)
  gt[1::4] = gt[0::4][:len(gt[1::4])] * rng.uniform(0.97, 1.03, (len(gt[1::4]), 4))
  near = num_detections // 2
  dets = np.concatenate([
      gt[rng.integers(0, num_gt, near)] * rng.uniform(0.8, 1.2, (near, 4)),
      np.concatenate([rng.uniform(0, 800, (num_detections - near, 2)),
                      rng.uniform(10, 400, (num_detections - near, 2))], 1)])
  pick = lambda n: [captions[i] for i in rng.integers(0, len(captions), n)]
  return dets.astype(np.float32), pick(num_detections), gt.astype(np.float32), pick(num_gt)


def bench_evaluator(num_images, num_detections, num_gt, seed=0):
  rng = np.random.default_rng(seed)
  captions = random_captions(rng, 2000)
  templates = [synthetic_image(rng, num_detections, num_gt, captions)
               for _ in range(NUM_TEMPLATES)]
  scores = rng.normal(size=(num_images, num_detections)).astype(np.float32)
  scored_pairs = []

  def random_meteor(candidates, references):
    scored_pairs.append(len(candidates))
    return rng.random(len(references))

  evaluator = DenseCaptioningEvaluator(meteor_fn=random_meteor)
  start = time.perf_counter()
  for i in range(num_images):
    boxes, caps, gt_boxes, gt_caps = templates[i % NUM_TEMPLATES]
    evaluator.add_result(scores[i], boxes, caps, gt_boxes, gt_caps)
  added = time.perf_counter() - start
  start = time.perf_counter()
  results = evaluator.evaluate()
  evaluated = time.perf_counter() - start
  return added, evaluated, results, sum(scored_pairs)


def bench_meteor(num_pairs, seed=0):
  rng = np.random.default_rng(seed)
  candidates = random_captions(rng, num_pairs)
  references = [random_captions(rng, int(k)) for k in rng.integers(1, 4, num_pairs)]
  start = time.perf_counter()
  with Meteor() as meteor:
    meteor.score(candidates[:1], references[:1])
    started = time.perf_counter() - start
    start = time.perf_counter()
    meteor.score(candidates, references)
    scored = time.perf_counter() - start
    start = time.perf_counter()
    for pair in zip(candidates[:ONE_BY_ONE], references[:ONE_BY_ONE]):
      meteor.score(*([item] for item in pair))
    one_by_one = time.perf_counter() - start
  return started, scored, one_by_one


def host_description():
  """CPU model, core count, NumPy and Java versions."""
  cpu = platform.processor() or "unknown CPU"
  if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    cpu = names[0] if names else cpu
  java = "no java"
  if shutil.which("java"):
    version = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
    java = version.stderr.splitlines()[0] if version.stderr else "java"
  return f"host: {cpu}, {os.cpu_count()} cores; NumPy {np.__version__}; {java}"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=5000)
  parser.add_argument("--detections", type=int, default=1000)
  parser.add_argument("--gt", type=int, default=40, help="ground-truth regions per image")
  parser.add_argument("--meteor_pairs", type=int, default=5000, help="0 skips the jar")
  args = parser.parse_args()

  added, evaluated, results, pairs = bench_evaluator(args.images, args.detections, args.gt)
  size = f"{args.images} img x {args.detections} det, {args.gt} GT"
  rows = [
      ("evaluator", size, "add_result total", f"{added:.1f} s"),
      ("evaluator", size, "add_result per image", f"{1e3 * added / args.images:.2f} ms"),
      ("evaluator", size, "evaluate() (35 APs)", f"{evaluated:.1f} s"),
      ("evaluator", size, "pairs sent to METEOR",
       f"{pairs} of {results['num_detections']} records"),
  ]
  if args.meteor_pairs and shutil.which("java"):
    started, scored, one_by_one = bench_meteor(args.meteor_pairs)
    rate = args.meteor_pairs / scored
    rows += [
        ("METEOR jar", "JVM + paraphrase table", "start-up", f"{started:.1f} s"),
        ("METEOR jar", f"{args.meteor_pairs} pairs, 1 batch", "throughput", f"{rate:.0f} pairs/s"),
        ("METEOR jar", f"{min(ONE_BY_ONE, args.meteor_pairs)} pairs, 1 per request", "throughput",
         f"{min(ONE_BY_ONE, args.meteor_pairs) / one_by_one:.0f} pairs/s"),
        ("METEOR jar", f"the {pairs} pairs above", "estimated scoring", f"{pairs / rate:.0f} s"),
    ]
  print(host_description())
  widths = [max(len(r[i]) for r in rows) for i in range(4)]
  for row in rows:
    print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))


if __name__ == "__main__":
  main()
