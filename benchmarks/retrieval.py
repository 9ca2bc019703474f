"""Collection search: retrieval quality on synthetic scenes and query time on a large index.

1. **Quality** (the paper's protocol, §4.3): the bundled model's synthetic
   dataset is rendered again (``synthetic.generate_dataset``, 3000 scenes,
   seed 0, as ``tools/make_bundled_model.py`` does), the first ``--images``
   images of its test split are indexed (``search.build_index``), and
   4 random ground-truth captions of each image are the queries. For each
   ranking: Recall@1/5/10 and the median rank of the image the caption came
   from, and the share of queries whose best box in that image has IoU >= 0.5
   with the caption's ground-truth box. Rankings: the LM (mean log-likelihood
   of the query per token, max over an image's regions) over all regions,
   the LM over the ``--candidates`` regions of the caption-text stage, the
   caption-text similarity alone, and a random one.
2. **Speed**: an index of ``--speed_images`` images made by replicating the
   real detections of the indexed test images with their codes perturbed
   (multiplied by ``1 + 0.1 N(0, 1)``, then ReLU), written in the index
   format -- the CNN is not run that many times. Time to open the index, per
   query with the candidate stage + LM (``--candidates``), and with the
   exhaustive LM.

  python benchmarks/retrieval.py [--images 100] [--speed_images 10000] [--candidates 5000]

Prints markdown tables.
"""

import argparse
import copy
import os
import statistics
import tempfile
import time

import numpy as np

from densecap_jax import files
from densecap_jax import predictor
from densecap_jax.data import synthetic_world as synthetic
from densecap_jax.search import builder as index_lib
from densecap_jax.search import ranking as search_lib
from densecap_jax.search import reader

QUERIES_PER_IMAGE = 4


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", type=int, default=100, help="test images indexed")
  parser.add_argument("--speed_images", type=int, default=10000, help="images of the speed index")
  parser.add_argument("--candidates", type=int, default=search_lib.DEFAULT_CANDIDATES,
                      help="regions of the candidate stage (speed)")
  parser.add_argument("--quality_candidates", type=int, default=500,
                      help="regions of the candidate stage (quality, of a small index)")
  parser.add_argument("--speed_queries", type=int, default=20)
  parser.add_argument("--exhaustive_queries", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0)
  return parser.parse_args(argv)


def iou_xywh(a, b):
  """IoU of two xywh boxes (1-based, inclusive pixels)."""
  ax2, ay2 = a[0] + a[2] - 1, a[1] + a[3] - 1
  bx2, by2 = b[0] + b[2] - 1, b[1] + b[3] - 1
  w = min(ax2, bx2) - max(a[0], b[0]) + 1
  h = min(ay2, by2) - max(a[1], b[1]) + 1
  if w <= 0 or h <= 0:
    return 0.0
  inter = w * h
  return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def quality_index(folder, num_images):
  """Renders the bundled model's dataset, links ``num_images`` test images into a folder.

  Returns:
    ``(image folder, {name: [(phrase, box), ...]})``.
  """
  paths = synthetic.generate_dataset(os.path.join(folder, "vg"), 3000, seed=0, progress=False)
  test_ids = files.read_json(paths["split_json"])["test"][:num_images]
  photos = os.path.join(folder, "photos")
  os.makedirs(photos)
  regions = {}
  for image_id in test_ids:
    name = f"{image_id}.jpg"
    os.symlink(os.path.join(paths["image_dir"], name), os.path.join(photos, name))
    regions[name] = list(synthetic.make_scene(0, image_id).regions)
  return photos, regions


def rank_images(image_of_region, scores, num_images):
  """``(order of images, best row per image)``: images by their best region, best first."""
  images, rows = search_lib.best_per_image(image_of_region, scores, num_images)
  best = np.full(num_images, -1)
  best[images] = rows
  return list(images), best


def evaluate(model, index, regions, candidates, seed):
  """Recall@k, median rank and box IoU >= 0.5 of each ranking, as table rows."""
  rng = np.random.default_rng(seed)
  vocab_size = int(model.config.vocab_size)
  image_of_region = index.image_of_region
  boxes = index.concatenated("boxes")
  number = {name: i for i, name in enumerate(index.image_names)}
  objectness = index.concatenated("scores")
  results = {name: {"ranks": [], "hits": []} for name in
             ("LM, all regions", f"LM, {candidates} candidates", "caption text", "random")}
  for name in index.image_names:
    picks = rng.choice(len(regions[name]), QUERIES_PER_IMAGE, replace=False)
    for k in picks:
      phrase, gt_box = regions[name][k]
      encoded = model.regions.encode_phrases([phrase])
      rows, _, means = search_lib.lm_scores(model, index, encoded)
      similarity = search_lib.caption_similarity(index, encoded.labels[0], vocab_size)
      text = similarity + 1e-6 / (1 + np.exp(-objectness))
      cand = search_lib.candidate_rows(index, encoded.labels[0], vocab_size, candidates)
      rankings = {
          "LM, all regions": (image_of_region, means, np.arange(len(means))),
          f"LM, {candidates} candidates": (image_of_region[cand], means[cand], cand),
          "caption text": (image_of_region, text, np.arange(len(text))),
          "random": (image_of_region, rng.random(len(means)), np.arange(len(means))),
      }
      for label, (images_of, scores, row_of) in rankings.items():
        order, best = rank_images(images_of, scores, index.num_images)
        target = number[name]
        rank = order.index(target) + 1 if target in order else index.num_images
        results[label]["ranks"].append(rank)
        box_ok = best[target] >= 0 and iou_xywh(boxes[row_of[best[target]]], gt_box) >= 0.5
        results[label]["hits"].append(bool(box_ok))
  rows = []
  for label, r in results.items():
    ranks = np.asarray(r["ranks"])
    rows.append((label, *(f"{np.mean(ranks <= k):.3f}" for k in (1, 5, 10)),
                 f"{np.median(ranks):g}", f"{np.mean(r['hits']):.3f}"))
  return rows, len(results["random"]["ranks"])


def speed_index(source, output, num_images, seed):
  """Writes an index of ``num_images`` images replicating ``source``'s, codes perturbed."""
  rng = np.random.default_rng(seed)
  manifest = copy.deepcopy(source.manifest)
  manifest.update(shards=[], next_shard=0, images=0, regions=0)
  os.makedirs(os.path.join(output, reader.SHARDS))
  per_image = [(s, i) for s in source.shards for i in range(s.num_images)]
  shards = []
  shard_size = 256
  for start in range(0, num_images, shard_size):
    chosen = [per_image[(start + j) % len(per_image)] for j in range(min(shard_size,
                                                                           num_images - start))]
    images = {k: [] for k in ("names", "file_sizes", "mtimes_ns", "widths", "heights")}
    images["region_start"] = [0]
    captions, parts = [], {k: [] for k in reader.ARRAYS}
    for j, (shard, i) in enumerate(chosen):
      columns = shard.images
      lo, hi = columns["region_start"][i], columns["region_start"][i + 1]
      images["names"].append(f"{start + j:05d}_{columns['names'][i]}")
      for key in ("file_sizes", "mtimes_ns", "widths", "heights"):
        images[key].append(columns[key][i])
      images["region_start"].append(images["region_start"][-1] + hi - lo)
      captions.extend(shard.captions[lo:hi])
      for key in reader.ARRAYS:
        parts[key].append(np.asarray(shard.array(key)[lo:hi]))
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    codes = arrays["codes"].astype(np.float32)
    arrays["codes"] = np.maximum(codes * (1 + 0.1 * rng.standard_normal(codes.shape)), 0).astype(
        arrays["codes"].dtype)
    shards.append(index_lib.write_shard(output, manifest, images, captions, arrays))
  index_lib.commit(output, manifest, shards)


def speed(model, path, regions, candidates, num_queries, exhaustive_queries, seed):
  """Rows of the speed table: (what, seconds)."""
  rng = np.random.default_rng(seed)
  phrases = [p for r in regions.values() for p, _ in r]
  queries = [phrases[i] for i in rng.choice(len(phrases), num_queries, replace=False)]
  fingerprint = index_lib.model_fingerprint(model)
  start = time.perf_counter()
  index = reader.open_index(path)
  opened = time.perf_counter() - start
  start = time.perf_counter()
  search_lib.search(model, index, queries[0], candidates=candidates, fingerprint=fingerprint)
  first = time.perf_counter() - start
  times = []
  for query in queries:
    start = time.perf_counter()
    search_lib.search(model, index, query, candidates=candidates, fingerprint=fingerprint)
    times.append(time.perf_counter() - start)
  exhaustive = []
  for query in queries[:exhaustive_queries]:
    start = time.perf_counter()
    search_lib.search(model, index, query, candidates=0, fingerprint=fingerprint)
    exhaustive.append(time.perf_counter() - start)
  return index, [
      ("open the index (manifest, shard tables, memory-mapped arrays)", opened),
      ("first query (loads tokens and objectness, caption statistics)", first),
      (f"query, {candidates} candidates + LM (median of {len(times)})", statistics.median(times)),
      (f"query, exhaustive LM over all regions (median of {len(exhaustive)})",
       statistics.median(exhaustive)),
  ]


def quality(model, folder, num_images, candidates, seed):
  """The quality protocol in ``folder``: index ``num_images`` test scenes, rank the queries.

  Returns:
    ``(index, {name: [(phrase, box), ...]}, rows of evaluate, number of queries, seconds to
    build the index)``.
  """
  photos, regions = quality_index(folder, num_images)
  path = os.path.join(folder, "test.index")
  start = time.perf_counter()
  index_lib.build_index(model, photos, path, progress=False)
  built = time.perf_counter() - start
  index = reader.open_index(path)
  rows, num_queries = evaluate(model, index, regions, candidates, seed)
  return index, regions, rows, num_queries, built


def main(argv=None):
  args = parse_args(argv)
  model = predictor.load_model(batch_size=4)
  with tempfile.TemporaryDirectory() as folder:
    index, regions, rows, num_queries, built = quality(model, folder, args.images,
                                                      args.quality_candidates, args.seed)
    print(f"Quality: {index.num_images} test images ({index.num_regions} regions, indexed in "
          f"{built:.0f} s with compiling), {num_queries} queries ({QUERIES_PER_IMAGE} ground-truth "
          f"captions per image)\n")
    print("| ranking | R@1 | R@5 | R@10 | median rank | best box IoU >= 0.5 |")
    print("|---|---|---|---|---|---|")
    for row in rows:
      print("| " + " | ".join(row) + " |")
    speed_path = os.path.join(folder, "speed.index")
    speed_index(index, speed_path, args.speed_images, args.seed)
    big, timings = speed(model, speed_path, regions, args.candidates, args.speed_queries,
                         args.exhaustive_queries, args.seed)
    print(f"\nSpeed: {big.num_images} images, {big.num_regions} regions (the real detections of "
          f"the {index.num_images} test images replicated, codes perturbed; the CNN was not run "
          f"{big.num_images} times)\n")
    print("| step | seconds |")
    print("|---|---|")
    for label, seconds in timings:
      print(f"| {label} | {seconds:.3f} |")


if __name__ == "__main__":
  main()
