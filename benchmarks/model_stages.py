"""Per-stage inference time and FLOPs of the test-time pass (``detection.infer``), one image.

The pass is cut into the five stages of ``detection._detect`` + ``caption_kept``,
each jitted on its own and fed the outputs of the previous one:

1. backbone: VGG-16 convolutions to conv5_3 (``DenseCap.features``);
2. RPN + proposals + NMS: the RPN head, anchors and box transforms
   (``densecap.rpn_boxes``), clipping and NMS down to ``num_proposals``
   (``localization.propose``);
3. RoI pooling: bilinear 7 x 7 pooling of every proposal (``densecap.pool_regions``);
4. fc6-fc7: the recognition network on every proposal (``DenseCap.recognize``:
   fc6, fc7, objectness and box-regression heads);
5. final NMS + captions: box regression applied, NMS at 0.3 on the logits,
   greedy captions of the kept boxes (``detection.caption_kept``).

Each stage is compiled, called ``--warmup`` times, then timed over
``--repeats`` calls with ``block_until_ready`` (the median is reported); the
whole ``infer`` pass (``split_eval.make_predict_fn``) is timed the same way in
the same run. FLOPs are XLA's count from ``compiled.cost_analysis()``. XLA
counts a loop body once and a ``lax.switch`` at its costliest branch, so for
stage 5 the script also prints the analytic FLOPs of the greedy LM on the rows
actually captioned. The two dense stages (backbone, fc6-fc7) are the floor;
the target of the pass is end-to-end <= ``--target`` x (backbone + fc6-fc7).

Defaults: ``vgg16`` with a 540 x 720 image in the 544 x 720 bucket, V = 10,000,
1,000 proposals; ``tiny`` with a 256 x 256 image in the 256 x 256 bucket,
V = 64, 300 proposals. Parameters are random and on the device before timing.

  python benchmarks/model_stages.py                     # both configs
  python benchmarks/model_stages.py --configs vgg16 --repeats 3
"""

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from densecap_jax import configs
from densecap_jax.evaluation import split_eval
from densecap_jax.models import densecap
from densecap_jax.models import detection
import model_flags
from densecap_jax.models import localization as loc_lib
from densecap_jax.ops import boxes as boxes_lib

DEFAULT_CASES = {"tiny": ("256x256", "256x256"), "vgg16": ("544x720", "540x720")}
DEFAULT_VOCAB_SIZES = {"tiny": 64, "vgg16": 10000}
INPUT_STD = 60.0  # spread of BGR pixels minus the VGG mean
STAGE_NAMES = ("backbone", "RPN + proposals + NMS", "RoI pooling", "fc6-fc7 (recognition)",
               "final NMS + captions")
FLOOR_STAGES = (0, 3)  # backbone and fc6-fc7


def parse_size(text, flag):
  """``'544x720'`` -> ``(544, 720)``."""
  try:
    height, width = (int(v) for v in text.lower().split("x"))
  except ValueError:
    raise ValueError(f"{flag} must be HxW, got {text!r}") from None
  if min(height, width) < 1:
    raise ValueError(f"{flag} must be positive, got {text!r}")
  return height, width


def random_image(rng, bucket, image_size):
  """``(1, Hb, Wb, 3)`` float32 input, zero outside ``image_size``; its ``(1, 2)`` int32 size."""
  image = np.zeros((1,) + tuple(bucket) + (3,), np.float32)
  height, width = image_size
  image[0, :height, :width] = rng.normal(0.0, INPUT_STD, (height, width, 3))
  return image, np.asarray([image_size], np.int32)


def stage_functions(config, num_proposals):
  """The five stages of ``detection.infer`` as separate functions (see module docstring).

  Returns:
    tuple of five functions; each takes the outputs of the previous stage
    (after ``params`` where it needs them) and returns a tuple of arrays.
  """
  model = densecap.build_model(config)

  def backbone(params, images, image_sizes):
    return (model.apply({"params": params}, images, image_sizes,
                        method=densecap.DenseCap.features),)

  def proposals(params, features, image_sizes, rpn_nms_thresh):
    rpn = densecap.rpn_boxes(model, params, features, image_sizes, config)
    propose = functools.partial(loc_lib.propose, nms_thresh=rpn_nms_thresh,
                                num_proposals=num_proposals)
    boxes, valid = jax.vmap(propose)(rpn["boxes"], rpn["scores"], rpn["cell_valid"],
                                     image_sizes)
    return boxes, valid, rpn["feature_sizes"]

  def pool(features, boxes, image_sizes, feature_sizes):
    pooled = densecap.pool_regions(features, boxes, image_sizes, feature_sizes,
                                   config.roi_output_size)
    return (pooled,)

  def recognize(params, pooled):
    return model.apply({"params": params}, pooled, method=densecap.DenseCap.recognize)

  def finish(params, boxes, proposal_valid, codes, logits, transforms, final_nms_thresh):
    final_boxes = boxes_lib.apply_box_transform(boxes, transforms)
    take, valid = detection.final_nms(final_boxes, logits, proposal_valid, final_nms_thresh)
    tokens = detection.caption_kept(model, params, take(codes), valid)
    return (jnp.where(valid[..., None], take(final_boxes), 0.0),
            jnp.where(valid, take(logits), 0.0), tokens, valid)

  return backbone, proposals, pool, recognize, finish


def cost_flops(compiled):
  """XLA's FLOP count of a compiled function, or None when it gives none."""
  try:
    cost = compiled.cost_analysis()
  except NotImplementedError:
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


def time_call(fn, args, warmup, repeats):
  """Compiles ``jax.jit(fn)`` on ``args``; -> (outputs, compile s, median s, XLA FLOPs)."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - start
  outputs = jax.block_until_ready(compiled(*args))
  for _ in range(warmup):
    jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return outputs, compile_s, statistics.median(times), cost_flops(compiled)


def caption_flops(config, rows):
  """Analytic FLOPs of greedy sampling of ``rows`` codes (image step + L word steps)."""
  fc, enc, hid = config.fc_dim, config.rnn_encoding_size, config.rnn_size
  lstm_step = 4 * hid * (enc + hid)
  return 2 * rows * (fc * enc + (config.seq_length + 1) * lstm_step
                     + config.seq_length * hid * (config.vocab_size + 1))


def bench_config(name, bucket, image_size, vocab_size, num_proposals, device, args):
  """Times the five stages and the whole pass of one config; -> dict of results."""
  config = configs.get_model_config(name)
  config.vocab_size = vocab_size
  num_proposals = num_proposals or config.num_proposals
  params = jax.device_put(densecap.init_params(config, jax.random.key(args.seed)), device)
  rng = np.random.default_rng(args.seed)
  images, sizes = jax.device_put(random_image(rng, bucket, image_size), device)
  rpn_nms, final_nms = jax.device_put((np.float32(config.rpn_nms_thresh),
                                       np.float32(config.final_nms_thresh)), device)
  backbone, proposals, pool, recognize, finish = stage_functions(config, num_proposals)

  stages = []
  def run(fn, *call_args):
    outputs, compile_s, seconds, flops = time_call(fn, call_args, args.warmup, args.repeats)
    stages.append((compile_s, seconds, flops))
    print(f"  done: {name} {STAGE_NAMES[len(stages) - 1]}", flush=True)
    return outputs

  (features,) = run(backbone, params, images, sizes)
  boxes, proposal_valid, feature_sizes = run(proposals, params, features, sizes, rpn_nms)
  (pooled,) = run(pool, features, boxes, sizes, feature_sizes)
  codes, logits, transforms = run(recognize, params, pooled)
  staged = run(finish, params, boxes, proposal_valid, codes, logits, transforms, final_nms)

  predict = split_eval.make_predict_fn(config, num_proposals)
  whole, compile_s, seconds, flops = time_call(
      predict, (params, images, sizes, rpn_nms, final_nms), args.warmup, args.repeats)
  print(f"  done: {name} whole infer", flush=True)

  valid = np.asarray(staged[3])
  kept = int(np.sum(valid))  # caption_kept packs the kept rows of the batch into one call
  rows = min(s for s in detection.caption_row_sizes(valid.size) if s >= kept)
  same_valid = np.array_equal(np.asarray(staged[3]), np.asarray(whole[3]))
  return {
      "name": name, "bucket": bucket, "image_size": image_size, "vocab_size": vocab_size,
      "num_proposals": num_proposals, "stages": stages, "whole": (compile_s, seconds, flops),
      "valid_proposals": int(np.sum(np.asarray(proposal_valid))), "kept": kept,
      "caption_rows": rows, "caption_flops": caption_flops(config, rows),
      "agree": (same_valid and np.array_equal(np.asarray(staged[2]), np.asarray(whole[2]))),
      "box_diff": float(np.max(np.abs(np.asarray(staged[0]) - np.asarray(whole[0])))),
  }


def gflops(flops):
  return "n/a" if flops is None else f"{flops / 1e9:.2f}"


def gflops_per_s(flops, seconds):
  return "n/a" if flops is None else f"{flops / seconds / 1e9:.1f}"


def print_result(result, target):
  """The stage table of one config and the target check."""
  stages, (whole_compile, whole_s, whole_flops) = result["stages"], result["whole"]
  (bh, bw), (ih, iw) = result["bucket"], result["image_size"]
  print(f"\n{result['name']}: {ih}x{iw} image in the {bh}x{bw} bucket, "
        f"V = {result['vocab_size']}, {result['num_proposals']} proposal slots "
        f"({result['valid_proposals']} filled), {result['kept']} kept after the final NMS "
        f"(captioned as {result['caption_rows']} rows)")
  print(f"{'stage':<24} {'ms':>9} {'% e2e':>6} {'XLA GFLOP':>10} {'GFLOP/s':>8} "
        f"{'compile s':>9}")
  for stage_name, (compile_s, seconds, flops) in zip(STAGE_NAMES, stages):
    print(f"{stage_name:<24} {seconds * 1e3:9.1f} {100 * seconds / whole_s:6.1f} "
          f"{gflops(flops):>10} {gflops_per_s(flops, seconds):>8} {compile_s:9.1f}")
  total_s = sum(s for _, s, _ in stages)
  flops = [f for _, _, f in stages]
  total_flops = None if None in flops else sum(flops)
  print(f"{'sum of stages':<24} {total_s * 1e3:9.1f} {100 * total_s / whole_s:6.1f} "
        f"{gflops(total_flops):>10} {gflops_per_s(total_flops, total_s):>8}")
  print(f"{'whole infer (end-to-end)':<24} {whole_s * 1e3:9.1f} {100.0:6.1f} "
        f"{gflops(whole_flops):>10} {gflops_per_s(whole_flops, whole_s):>8} "
        f"{whole_compile:9.1f}")
  floor_s = sum(stages[i][1] for i in FLOOR_STAGES)
  floor_flops = [stages[i][2] for i in FLOOR_STAGES]
  floor_flops = None if None in floor_flops else sum(floor_flops)
  print(f"{'floor: backbone + fc6-fc7':<24} {floor_s * 1e3:9.1f} {100 * floor_s / whole_s:6.1f} "
        f"{gflops(floor_flops):>10} {gflops_per_s(floor_flops, floor_s):>8}")
  print(f"stage 5, greedy LM on {result['caption_rows']} rows (image step + L word steps), "
        f"analytic: {result['caption_flops'] / 1e9:.2f} GFLOP")
  ratio = whole_s / floor_s
  verdict = "PASS" if ratio <= target else "FAIL"
  print(f"end-to-end / (backbone + fc6-fc7) = {ratio:.2f} (target <= {target:.2f}): {verdict}")
  print(f"staged outputs vs whole infer: "
        f"{'same kept set and tokens' if result['agree'] else 'DIFFERENT kept set or tokens'}, "
        f"boxes within {result['box_diff']:.1e}")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  model_flags.add_common_flags(parser, repeats=3, repeats_help="timed calls per stage",
                               warmup_help="untimed calls after the first")
  for name in configs.MODEL_CONFIGS:
    bucket, image = DEFAULT_CASES[name]
    parser.add_argument(f"--{name}_bucket", default=bucket, help=f"HxW bucket of {name}")
    parser.add_argument(f"--{name}_image", default=image,
                        help=f"HxW true image size inside the {name} bucket")
  parser.add_argument("--target", type=float, default=1.3,
                      help="largest end-to-end / (backbone + fc6-fc7) that passes")
  args = parser.parse_args(argv)
  try:
    model_flags.check_common_flags(args)
    args.cases = {}
    for name in args.configs:
      bucket = parse_size(getattr(args, f"{name}_bucket"), f"--{name}_bucket")
      image = parse_size(getattr(args, f"{name}_image"), f"--{name}_image")
      allowed = tuple(tuple(b) for b in configs.get_model_config(name).buckets)
      if bucket not in allowed:
        raise ValueError(f"--{name}_bucket: {bucket[0]}x{bucket[1]} is not a bucket of the "
                         f"config; expected one of {', '.join(f'{h}x{w}' for h, w in allowed)}")
      if image[0] > bucket[0] or image[1] > bucket[1]:
        raise ValueError(f"--{name}_image {image[0]}x{image[1]} does not fit the bucket "
                         f"{bucket[0]}x{bucket[1]}")
      args.cases[name] = (bucket, image)
  except ValueError as e:
    parser.error(str(e))
  return args


def main(argv=None):
  args = parse_args(argv)
  device = jax.devices()[0]
  results = []
  for name in args.configs:
    bucket, image = args.cases[name]
    vocab_size = args.vocab_size or DEFAULT_VOCAB_SIZES[name]
    results.append(bench_config(name, bucket, image, vocab_size, args.num_proposals, device,
                                args))
  print(f"\nJAX {jax.__version__} on {device.platform}: {device.device_kind} ({device}); "
        f"one image per call, median of {args.repeats} calls after {args.warmup} warm-up")
  for result in results:
    print_result(result, args.target)


if __name__ == "__main__":
  main()
