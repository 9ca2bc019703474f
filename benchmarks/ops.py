"""Speed of the jitted box kernels against plain NumPy, on ``jax.devices()[0]``.

Cases, sized like one 540 x 720 image through VGG-16 (a 34 x 45 conv5_3 map):

* NMS of the 18,360 RPN boxes (34 * 45 * 12 anchors, jittered) at IoU 0.7,
  stopping at 1,000 picks, against the original's greedy algorithm in NumPy.
* The final NMS of a batch of 32 images in one call: 1,000 proposals each
  (the 1,000 picks of such a set, moved by a few pixels as the box
  regression does, scored by random logits) at IoU 0.3, no count limit;
  NumPy runs its greedy loop image by image.
* Bilinear RoI pooling of 256 boxes to 7 x 7 from a 34 x 45 x 512 map, forward
  and forward + backward (features and boxes gradients for the forward +
  backward JAX row; the NumPy row scatters the feature gradient only),
  against a vectorised NumPy version.

Times are medians over ``--repeats`` runs after one warm-up call (which
compiles the JAX kernels), with ``block_until_ready``. Each row also checks
that both implementations agree; the NMS rows also give the sequential
``lax.while_loop`` trips of the JAX call (``nms_with_trips``). The JAX side
runs on whatever ``jax.devices()[0]`` is (set ``JAX_PLATFORMS`` to choose);
the device is printed with the table.

  python benchmarks/ops.py [--repeats 10] [--seed 0]
"""

import argparse
import statistics
import time

import jax
import numpy as np

from densecap_jax.ops.anchors import VGG16_ANCHOR_SIZES, VGG16_FIELD_CENTERS, make_anchors
from densecap_jax.ops.nms import nms, nms_with_trips
from densecap_jax.ops.roi_pool import bilinear_roi_pool

IMAGE_SIZE = (540, 720)  # (H, W)
FEATURE_SHAPE = (34, 45, 512)
NMS_THRESHOLD = 0.7
NMS_PICKS = 1000
FINAL_NMS_THRESHOLD = 0.3
FINAL_NMS_BATCH = 32
ROI_BOXES = 256


def nms_numpy(boxes, scores, threshold, max_boxes):
  """The original's greedy NMS (``box_utils.nms``, reference §3.4) in NumPy.

  Args:
    boxes: ``(N, 4)`` x1y1x2y2, inclusive pixel convention.
    scores: ``(N,)``.
    threshold: boxes with IoU > threshold against a pick are dropped.
    max_boxes: stop after this many picks.

  Returns:
    ``(P,)`` int 0-based picked indices, decreasing score.
  """
  x1, y1, x2, y2 = boxes.T
  area = (x2 - x1 + 1) * (y2 - y1 + 1)
  remaining = np.argsort(scores, kind="stable")
  picks = []
  while remaining.size and len(picks) < max_boxes:
    last, remaining = remaining[-1], remaining[:-1]
    picks.append(last)
    inter_w = np.maximum(0, np.minimum(x2[last], x2[remaining])
                         - np.maximum(x1[last], x1[remaining]) + 1)
    inter_h = np.maximum(0, np.minimum(y2[last], y2[remaining])
                         - np.maximum(y1[last], y1[remaining]) + 1)
    inter = inter_w * inter_h
    iou = inter / (area[last] + area[remaining] - inter)
    remaining = remaining[iou <= threshold]
  return np.array(picks, np.int64)


def _roi_corners(boxes, image_size, feature_hw, output_size=(7, 7)):
  """Yields ``(rows, cols, weights)`` for the four bilinear corners (§3.7).

  ``rows`` ``(B, out_h, 1)``, ``cols`` ``(B, 1, out_w)`` clipped into the map,
  ``weights`` ``(B, out_h, out_w)`` with 0 for corners outside the map.
  """
  height, width = image_size
  feat_h, feat_w = feature_hw
  out_h, out_w = output_size
  u = -1 + 2 * np.arange(out_h) / (out_h - 1)
  v = -1 + 2 * np.arange(out_w) / (out_w - 1)
  xc, yc, w, h = (boxes[:, k:k + 1] for k in range(4))
  y_n = h / height * u + (2 * yc - height - 1) / (height - 1)
  x_n = w / width * v + (2 * xc - width - 1) / (width - 1)
  fy = (y_n + 1) * (feat_h - 1) / 2
  fx = (x_n + 1) * (feat_w - 1) / 2
  y0, x0 = np.floor(fy), np.floor(fx)
  ay, ax = fy - y0, fx - x0
  for dy, wy in ((0, 1 - ay), (1, ay)):
    for dx, wx in ((0, 1 - ax), (1, ax)):
      rows, cols = (y0 + dy).astype(np.int64), (x0 + dx).astype(np.int64)
      inside = (((rows >= 0) & (rows < feat_h))[:, :, None]
                & ((cols >= 0) & (cols < feat_w))[:, None, :])
      weight = np.where(inside, wy[:, :, None] * wx[:, None, :], 0.0).astype(np.float32)
      yield (np.clip(rows, 0, feat_h - 1)[:, :, None],
             np.clip(cols, 0, feat_w - 1)[:, None, :], weight)


def roi_pool_numpy(features, boxes, image_size):
  """Vectorised NumPy bilinear RoI pooling: ``(B, 7, 7, C)`` float32."""
  out = 0
  for rows, cols, weight in _roi_corners(boxes, image_size, features.shape[:2]):
    out = out + weight[..., None] * features[rows, cols]
  return out


def roi_pool_grad_numpy(features, boxes, image_size, out_grad):
  """Forward, then the feature gradient of ``sum(out * out_grad)`` by scatter-add."""
  roi_pool_numpy(features, boxes, image_size)
  grad = np.zeros_like(features)
  for rows, cols, weight in _roi_corners(boxes, image_size, features.shape[:2]):
    rows, cols = np.broadcast_arrays(rows, cols)
    np.add.at(grad, (rows, cols), weight[..., None] * out_grad)
  return grad


def median_seconds(fn, repeats):
  """Median wall time of ``fn()`` over ``repeats`` calls after one warm-up."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def nms_inputs(rng):
  """18,360 jittered anchors of a 34 x 45 map as x1y1x2y2 in the image, distinct scores."""
  feat_h, feat_w, _ = FEATURE_SHAPE
  anchors = np.asarray(make_anchors(feat_h, feat_w, VGG16_ANCHOR_SIZES,
                                    *VGG16_FIELD_CENTERS)).reshape(-1, 4)
  n = len(anchors)
  centres = anchors[:, :2] + rng.normal(0, 8, (n, 2))
  sizes = anchors[:, 2:] * np.exp(rng.normal(0, 0.2, (n, 2)))
  height, width = IMAGE_SIZE
  low = np.array([1, 1, 1, 1])
  high = np.array([width, height, width, height])
  boxes = np.clip(np.concatenate([centres - (sizes - 1) / 2, centres + (sizes - 1) / 2], 1),
                  low, high)
  scores = rng.permutation(n) / n  # distinct: the original's tie order is undefined (§15)
  return boxes.astype(np.float32), scores.astype(np.float32)


def roi_inputs(rng):
  """A 34 x 45 x 512 map and 256 xcycwh boxes inside the 540 x 720 image."""
  height, width = IMAGE_SIZE
  features = rng.normal(size=FEATURE_SHAPE).astype(np.float32)
  w = rng.uniform(20, width / 2, ROI_BOXES)
  h = rng.uniform(20, height / 2, ROI_BOXES)
  xc = rng.uniform(1, width, ROI_BOXES)
  yc = rng.uniform(1, height, ROI_BOXES)
  return features, np.stack([xc, yc, w, h], -1).astype(np.float32)


def final_nms_inputs(rng):
  """``FINAL_NMS_BATCH`` images of 1,000 proposals: the RPN NMS picks of ``nms_inputs``,
  moved by a few pixels, and random logits; -> ``(B, 1000, 4)`` boxes, ``(B, 1000)`` scores."""
  boxes, scores = [], []
  for _ in range(FINAL_NMS_BATCH):
    rpn_boxes, rpn_scores = nms_inputs(rng)
    picks, _ = nms(rpn_boxes, rpn_scores, NMS_THRESHOLD, NMS_PICKS)
    proposals = rpn_boxes[np.asarray(picks)]
    boxes.append(proposals + rng.normal(0, 4, proposals.shape))
    scores.append(rng.normal(0, 2, len(proposals)))
  return np.stack(boxes).astype(np.float32), np.stack(scores).astype(np.float32)


def bench_nms(rng, device, repeats):
  boxes, scores = nms_inputs(rng)
  boxes_d, scores_d = jax.device_put((boxes, scores), device)
  run = lambda: nms(boxes_d, scores_d, NMS_THRESHOLD, NMS_PICKS)
  indices, count, trips = nms_with_trips(boxes_d, scores_d, NMS_THRESHOLD, NMS_PICKS)
  expected = nms_numpy(boxes, scores, NMS_THRESHOLD, NMS_PICKS)
  agree = np.array_equal(np.asarray(indices)[:int(count)], expected)
  name = f"NMS {len(boxes):,} boxes -> {int(count):,} picks"
  return (name, median_seconds(run, repeats),
          median_seconds(lambda: nms_numpy(boxes, scores, NMS_THRESHOLD, NMS_PICKS), repeats),
          f"{'same picks' if agree else 'PICKS DIFFER'}, {int(trips)} loop trips")


def bench_final_nms(rng, device, repeats):
  boxes, scores = final_nms_inputs(rng)
  batch, num = scores.shape
  boxes_d, scores_d = jax.device_put((boxes, scores), device)
  run = lambda: nms(boxes_d, scores_d, FINAL_NMS_THRESHOLD, num, block_size=num)
  indices, count, trips = nms_with_trips(boxes_d, scores_d, FINAL_NMS_THRESHOLD, num,
                                         block_size=num)
  run_numpy = lambda: [nms_numpy(b, s, FINAL_NMS_THRESHOLD, num) for b, s in zip(boxes, scores)]
  agree = all(np.array_equal(np.asarray(i)[:int(c)], e)
              for i, c, e in zip(indices, count, run_numpy()))
  name = f"  final NMS, {batch} x {num:,} boxes at {FINAL_NMS_THRESHOLD}"
  return (name, median_seconds(run, repeats), median_seconds(run_numpy, repeats),
          f"{'same picks' if agree else 'PICKS DIFFER'}, {int(trips)} loop trips")


def bench_roi_pool(rng, device, repeats):
  features, boxes = roi_inputs(rng)
  features_d, boxes_d = jax.device_put((features, boxes), device)
  run = lambda: bilinear_roi_pool(features_d, boxes_d, IMAGE_SIZE)
  error = np.max(np.abs(np.asarray(run()) - roi_pool_numpy(features, boxes, IMAGE_SIZE)))
  shape = "x".join(map(str, FEATURE_SHAPE))
  return (f"RoI pool {ROI_BOXES} boxes 7x7 from {shape}", median_seconds(run, repeats),
          median_seconds(lambda: roi_pool_numpy(features, boxes, IMAGE_SIZE), repeats),
          f"max |diff| {error:.1e}")


def bench_roi_pool_grad(rng, device, repeats):
  features, boxes = roi_inputs(rng)
  out_grad = rng.normal(size=(ROI_BOXES, 7, 7, FEATURE_SHAPE[2])).astype(np.float32)
  features_d, boxes_d, out_grad_d = jax.device_put((features, boxes, out_grad), device)

  @jax.jit
  def grads(features, boxes, out_grad):
    _, vjp = jax.vjp(lambda f, b: bilinear_roi_pool(f, b, IMAGE_SIZE), features, boxes)
    return vjp(out_grad)

  run = lambda: grads(features_d, boxes_d, out_grad_d)
  expected = roi_pool_grad_numpy(features, boxes, IMAGE_SIZE, out_grad)
  error = np.max(np.abs(np.asarray(run()[0]) - expected))
  return ("  forward + backward", median_seconds(run, repeats),
          median_seconds(lambda: roi_pool_grad_numpy(features, boxes, IMAGE_SIZE, out_grad),
                         repeats),
          f"max |diff| {error:.1e}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=10, help="timed runs per case")
  parser.add_argument("--seed", type=int, default=0, help="seed for the random inputs")
  args = parser.parse_args()
  if args.repeats < 1:
    parser.error(f"--repeats must be at least 1, got {args.repeats}")
  device = jax.devices()[0]
  rng = np.random.default_rng(args.seed)
  final_rng = np.random.default_rng([args.seed, 1])  # the other rows' inputs as before
  rows = [bench(final_rng if bench is bench_final_nms else rng, device, args.repeats)
          for bench in (bench_nms, bench_final_nms, bench_roi_pool, bench_roi_pool_grad)]
  print(f"JAX {jax.__version__} on {device.platform}: {device.device_kind} ({device}); "
        f"NumPy {np.__version__}; median of {args.repeats} runs")
  print(f"{'case':<40} {'jax ms':>9} {'numpy ms':>9} {'numpy/jax':>10}  check")
  for name, jax_s, numpy_s, check in rows:
    print(f"{name:<40} {jax_s * 1e3:9.2f} {numpy_s * 1e3:9.2f} {numpy_s / jax_s:10.1f}  {check}")


if __name__ == "__main__":
  main()
