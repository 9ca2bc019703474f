"""One command for the GPU figures: the vgg16 test-time pass, the training step and the PyTorch peer.

Prints one markdown table (and notes under it) with, on ``jax.devices()[0]``:

* **inference**: the ``vgg16`` test-time pass (``split_eval.make_predict_fn``,
  random weights, random images filling the 544 x 720 bucket of a 720-pixel
  3:4 image, V = 10,000, 1,000 proposals) at batch 1 / 8 / 32 under each
  precision of the model config's ``precision`` field (``float32``, ``tf32``,
  ``bfloat16``; a precision the config does not know is reported as n/a):
  images/s, ms per image, the five stages of ``model_stages.py`` (backbone,
  RPN + proposals + NMS, RoI pooling, fc6-fc7, final NMS + captions; each
  jitted on its own, ms per image), end-to-end / (backbone + fc6-fc7), and
  end-to-end / the time of its dense FLOPs (VGG-16 convs + fc6 / fc7 on the
  proposals) at the matrix rate of the same precision measured in this run;
* **training**: the pmapped step of ``train.loop`` with the ``vgg16``
  training config's optimiser, CNN frozen and fine-tuned (conv3_1 ..
  conv5_3), ``bfloat16`` and ``float32``, fed random batches already on the
  device (``benchmarks/train.py``'s batches): images/s and step time / the
  time of its dense FLOPs (forward, plus 2x for the backward of every trained
  layer, 1x for the first trained layer on a path: analytic counts);
* **PyTorch**, in a child process on the same device before the JAX part:
  the same stages assembled from what a PyTorch user would pick —
  torchvision's VGG-16 ``features`` (to conv5_3) in channels_last, an RPN
  head, ``torchvision.ops.nms`` per image (0.7, top 1,000), ``roi_align``
  (7 x 7), fc6 / fc7 (torchvision's classifier layers) on the 1,000 RoIs,
  the final NMS (0.3) and an ``nn.LSTM`` greedy decode of the kept boxes —
  in float32 (TF32 off), tf32 (TF32 on) and bf16 autocast; its images/s and
  stage times sit in the same rows, with JAX images/s / PyTorch images/s.
  Without torch (or torchvision) the columns say so and the rest runs.

Programs are traced one by one and compiled ``--compile_threads`` at a time
before anything is timed; timing is sequential. Times are medians of
``--repeats`` calls after ``--warmup`` calls, with ``block_until_ready``
(PyTorch: ``torch.cuda.synchronize``). A case that fails is reported in its
row; cases not reached within ``--time_budget`` seconds say so.

  python3 benchmarks/gpu.py                       # on the GPU machine, ~5-7 minutes
  JAX_PLATFORMS=cpu python benchmarks/gpu.py --small   # the same code at toy sizes on a CPU

``--small``: 128-pixel images (96 x 128 bucket), 50 proposals, V = 1,000,
fc_dim 1,024, batch 1 and 2, 64 sampled regions per training image, one
warm-up and two timed calls; a check that everything runs, not figures.
"""

import argparse
import concurrent.futures
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
  sys.path.insert(1, ROOT)  # densecap_jax from this checkout, installed or not

PRECISIONS = ("float32", "tf32", "bfloat16")
STAGES = ("backbone", "RPN + NMS", "RoI pool", "fc6-fc7", "final NMS + captions")
FLOOR_STAGES = (0, 3)
INPUT_STD = 60.0
FULL = dict(image_size=720, bucket=(544, 720), num_proposals=1000, vocab_size=10000,
            fc_dim=None, batch_sizes="1,8,32", sampler_batch_size=None, regions=30,
            warmup=2, repeats=5, train_steps=5, peak_n=8192, time_budget=420.0,
            timing_reserve=90.0)
SMALL = dict(image_size=128, bucket=(96, 128), num_proposals=50, vocab_size=1000,
             fc_dim=1024, batch_sizes="1,2", sampler_batch_size=64, regions=8,
             warmup=1, repeats=2, train_steps=2, peak_n=1024, time_budget=1800.0,
             timing_reserve=600.0)
TRAIN_CASES = (("frozen CNN", False, "bfloat16"), ("fine-tuned CNN", True, "bfloat16"),
               ("frozen CNN", False, "float32"), ("fine-tuned CNN", True, "float32"))


def median_time(fn, warmup, repeats, sync):
  """Median seconds of ``fn()`` (``sync(result)`` waits for it) after ``warmup`` calls."""
  result = None
  for _ in range(warmup):
    result = sync(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = sync(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times), result


def short_error(exc):
  text = f"{type(exc).__name__}: {exc}".replace("\n", " ").replace("|", "/")
  return text[:160]


# ---------------------------------------------------------------------------
# Analytic dense FLOPs (multiply-adds count 2).


def vgg_conv_flops(widths, height, width, frozen_blocks=None):
  """Forward FLOPs of VGG-16's 3 x 3 convs on one image; with ``frozen_blocks``
  also the backward FLOPs of the trained ones (weight gradient; input gradient
  except for the first trained layer). -> (forward, backward, (Hf, Wf, C))."""
  forward = backward = 0
  h, w, cin = height, width, 3
  first_trained = True
  for block, block_widths in enumerate(widths):
    for cout in block_widths:
      flops = 2 * h * w * cin * cout * 9
      forward += flops
      if frozen_blocks is not None and block >= frozen_blocks:
        backward += flops if first_trained else 2 * flops
        first_trained = False
      cin = cout
    if block < len(widths) - 1:
      h, w = math.ceil(h / 2), math.ceil(w / 2)
  return forward, backward, (h, w, cin)


def inference_dense_flops(config, bucket, num_proposals):
  """Dense FLOPs per image of the floor stages: VGG convs + fc6 / fc7 on the proposals."""
  conv, _, (hf, wf, c) = vgg_conv_flops(config.cnn_widths, *bucket)
  rois = config.roi_output_size[0] * config.roi_output_size[1] * c
  fc = 2 * num_proposals * (rois * config.fc_dim + config.fc_dim * config.fc_dim)
  return conv + fc


def train_dense_flops(config, bucket, finetune):
  """Dense FLOPs of one training image (forward + backward, see the module doc)."""
  frozen = config.frozen_blocks if finetune else len(config.cnn_widths)
  conv_f, conv_b, (hf, wf, c) = vgg_conv_flops(config.cnn_widths, *bucket, frozen_blocks=frozen)
  k = len(config.anchor_sizes)
  rpn_conv = 2 * hf * wf * c * config.rpn_num_filters * 9
  rpn_heads = 2 * hf * wf * config.rpn_num_filters * 6 * k
  rois = config.sampler_batch_size
  fc6 = 2 * rois * config.roi_output_size[0] * config.roi_output_size[1] * c * config.fc_dim
  fc7 = 2 * rois * config.fc_dim * config.fc_dim
  heads = 2 * rois * config.fc_dim * 5
  rows, steps = config.sampler_batch_size // 2, config.seq_length + 2
  hid, enc = config.rnn_size, config.rnn_encoding_size
  lm = 2 * rows * (config.fc_dim * enc + steps * (4 * hid * (enc + hid) + hid * (config.vocab_size + 1)))
  upstream = 2 if finetune else 1  # input gradients of the first layer after the CNN
  forward = conv_f + rpn_conv + rpn_heads + fc6 + fc7 + heads + lm
  backward = (conv_b + upstream * rpn_conv + 2 * rpn_heads + upstream * fc6 + 2 * fc7
              + 2 * heads + 2 * lm)
  return forward + backward


# ---------------------------------------------------------------------------
# PyTorch peer (child process, before JAX touches the device).


def torch_child(spec, emit):
  """Runs the PyTorch assembly of the stages; ``emit(dict)`` gets a header, then one line per case."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except Exception as e:  # pylint: disable=broad-except
    return emit({"skipped": f"torch not importable ({short_error(e)})"})
  try:
    import torchvision  # pylint: disable=g-import-not-at-top
    from torchvision.ops import nms, roi_align  # pylint: disable=g-import-not-at-top
  except Exception as e:  # pylint: disable=broad-except
    return emit({"skipped": f"torchvision not importable ({short_error(e)})"})
  from torch import nn  # pylint: disable=g-import-not-at-top

  cuda = torch.cuda.is_available()
  device = torch.device("cuda" if cuda else "cpu")
  name = torch.cuda.get_device_name(0) if cuda else "CPU"
  torch.backends.cudnn.benchmark = True
  torch.manual_seed(spec["seed"])
  height, width = spec["bucket"]
  num_proposals, vocab, seq_length = spec["num_proposals"], spec["vocab_size"], spec["seq_length"]
  fc_dim, k = spec["fc_dim"], len(spec["anchor_sizes"])

  def sync(x=None):
    if cuda:
      torch.cuda.synchronize()
    return x

  vgg = torchvision.models.vgg16(weights=None)
  features = vgg.features[:30].to(device).eval().to(memory_format=torch.channels_last)
  if fc_dim == 4096:
    fc6, fc7 = vgg.classifier[0], vgg.classifier[3]
  else:
    fc6, fc7 = nn.Linear(512 * 7 * 7, fc_dim), nn.Linear(fc_dim, fc_dim)
  head = nn.ModuleDict({
      "rpn_conv": nn.Conv2d(512, spec["rpn_num_filters"], 3, padding=1),
      "rpn_box": nn.Conv2d(spec["rpn_num_filters"], 4 * k, 1),
      "rpn_score": nn.Conv2d(spec["rpn_num_filters"], 2 * k, 1),
      "fc6": fc6, "fc7": fc7, "objectness": nn.Linear(fc_dim, 1), "box_reg": nn.Linear(fc_dim, 4),
      "image_encoder": nn.Linear(fc_dim, spec["rnn_encoding_size"]),
      "embed": nn.Embedding(vocab + 2, spec["rnn_encoding_size"]),
      "lstm": nn.LSTM(spec["rnn_encoding_size"], spec["rnn_size"]),
      "output_proj": nn.Linear(spec["rnn_size"], vocab + 1),
  }).to(device).eval()
  head["rpn_conv"].to(memory_format=torch.channels_last)
  del vgg

  hf, wf = height // 16, width // 16
  x0, y0, sx, sy = spec["field_centers"]
  ys, xs = torch.meshgrid(torch.arange(hf, dtype=torch.float32) * sy + y0,
                          torch.arange(wf, dtype=torch.float32) * sx + x0, indexing="ij")
  sizes = torch.tensor(spec["anchor_sizes"], dtype=torch.float32)
  anchors = torch.stack([xs[..., None].expand(hf, wf, k), ys[..., None].expand(hf, wf, k),
                         sizes[:, 0].expand(hf, wf, k), sizes[:, 1].expand(hf, wf, k)],
                        -1).reshape(-1, 4).to(device)  # (Hf * Wf * k, 4) xcycwh

  def decode(boxes, deltas):
    """xcycwh boxes moved by (dx, dy, dw, dh) -> x1y1x2y2."""
    xc = boxes[..., 0] + deltas[..., 0] * boxes[..., 2]
    yc = boxes[..., 1] + deltas[..., 1] * boxes[..., 3]
    w = boxes[..., 2] * torch.exp(deltas[..., 2].clamp(max=4.0))
    h = boxes[..., 3] * torch.exp(deltas[..., 3].clamp(max=4.0))
    return torch.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], -1)

  def to_xcycwh(b):
    return torch.stack([(b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2,
                        b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]], -1)

  def stage_backbone(images):
    return features(images)

  def stage_proposals(feats):
    batch = feats.shape[0]
    hidden = torch.relu(head["rpn_conv"](feats))
    deltas = head["rpn_box"](hidden).permute(0, 2, 3, 1).reshape(batch, -1, 4).float()
    scores = head["rpn_score"](hidden).permute(0, 2, 3, 1).reshape(batch, -1, 2).float()
    prob = scores.softmax(-1)[..., 0]
    boxes = decode(anchors[None], deltas)
    boxes = torch.stack([boxes[..., 0].clamp(1, width), boxes[..., 1].clamp(1, height),
                         boxes[..., 2].clamp(1, width), boxes[..., 3].clamp(1, height)], -1)
    picked = []
    for i in range(batch):
      keep = nms(boxes[i], prob[i], spec["rpn_nms_thresh"])[:num_proposals]
      if keep.numel() < num_proposals:  # pad to a fixed count
        keep = torch.cat([keep, keep[:1].expand(num_proposals - keep.numel())])
      picked.append(boxes[i, keep])
    return torch.stack(picked)  # (B, P, 4) x1y1x2y2

  def stage_pool(feats, proposals):
    batch = proposals.shape[0]
    index = torch.arange(batch, device=device, dtype=proposals.dtype).repeat_interleave(
        num_proposals)[:, None]
    rois = torch.cat([index, proposals.reshape(-1, 4)], 1)
    return roi_align(feats, rois, (7, 7), spatial_scale=1 / 16, sampling_ratio=2)

  def stage_recognize(pooled):
    codes = torch.relu(head["fc7"](torch.relu(head["fc6"](pooled.flatten(1)))))
    return codes, head["objectness"](codes)[:, 0].float(), head["box_reg"](codes).float()

  def stage_finish(proposals, codes, logits, deltas):
    batch = proposals.shape[0]
    final = decode(to_xcycwh(proposals.reshape(-1, 4)), deltas).reshape(batch, -1, 4)
    logits = logits.reshape(batch, -1)
    kept = [nms(final[i], logits[i], spec["final_nms_thresh"]) + i * num_proposals
            for i in range(batch)]
    counts = [int(x.numel()) for x in kept]
    rows = codes[torch.cat(kept)]
    if not lstm_fp32:
      try:
        return greedy(rows), counts
      except RuntimeError as e:  # e.g. no bf16 RNN kernel: decode in float32 instead
        lstm_fp32.append(short_error(e))
    with torch.autocast(device.type, enabled=False):
      return greedy(rows.float()), counts

  def greedy(rows):
    state = None
    image = torch.relu(head["image_encoder"](rows))[None]
    _, state = head["lstm"](image, state)
    token = torch.full((rows.shape[0],), vocab + 1, dtype=torch.long, device=device)
    tokens = []
    for _ in range(seq_length):
      hidden, state = head["lstm"](head["embed"](token)[None], state)
      token = head["output_proj"](hidden[0]).argmax(-1) + 1
      tokens.append(token)
    return torch.stack(tokens, 1)

  def whole(images):
    feats = stage_backbone(images)
    proposals = stage_proposals(feats)
    pooled = stage_pool(feats, proposals)
    codes, logits, deltas = stage_recognize(pooled)
    return stage_finish(proposals, codes, logits, deltas)

  emit({"device": name, "torch": torch.__version__, "torchvision": torchvision.__version__})
  lstm_fp32 = []  # set when the LSTM cannot run under the precision's autocast
  for precision in spec["precisions"]:
    lstm_fp32.clear()
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    for batch in spec["batch_sizes"]:
      key = f"{precision}/{batch}"
      try:
        images = (torch.randn(batch, 3, height, width, device=device) * INPUT_STD).to(
            memory_format=torch.channels_last)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                                  enabled=precision == "bfloat16")
        with torch.inference_mode(), autocast:
          e2e, (_, counts) = median_time(lambda: whole(images), spec["warmup"], spec["repeats"],
                                         sync)
          stage_s = []
          t, feats = median_time(lambda: stage_backbone(images), 0, spec["repeats"], sync)
          stage_s.append(t)
          t, proposals = median_time(lambda: stage_proposals(feats), 0, spec["repeats"], sync)
          stage_s.append(t)
          t, pooled = median_time(lambda: stage_pool(feats, proposals), 0, spec["repeats"], sync)
          stage_s.append(t)
          t, (codes, logits, deltas) = median_time(lambda: stage_recognize(pooled), 0,
                                                   spec["repeats"], sync)
          stage_s.append(t)
          t, _ = median_time(lambda: stage_finish(proposals, codes, logits, deltas), 0,
                             spec["repeats"], sync)
          stage_s.append(t)
        emit({"key": key, "seconds": e2e, "stages": stage_s, "kept": statistics.mean(counts),
              "lstm_fp32": lstm_fp32[0] if lstm_fp32 else None})
        images = feats = proposals = pooled = codes = logits = deltas = None  # free the device
      except Exception as e:  # pylint: disable=broad-except
        emit({"key": key, "error": short_error(e)})
      if cuda:
        torch.cuda.empty_cache()
      print(f"  done: PyTorch {key}", file=sys.stderr, flush=True)
  return None


def run_torch(spec, timeout):
  """The PyTorch peer in a child process (isolated from JAX's CUDA libraries).

  Returns ``{"skipped": why}``, or the child's header with ``results``
  (``"precision/batch"`` -> its line) and, when it stopped early, ``stopped``.
  """
  cmd = [sys.executable, os.path.abspath(__file__), "--torch_child", json.dumps(spec)]
  stopped = None
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
  except subprocess.TimeoutExpired as e:
    stdout, stderr, code = e.stdout or "", e.stderr or "", None
    stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
    stderr = stderr.decode() if isinstance(stderr, bytes) else stderr
    stopped = f"the PyTorch part ran past {timeout:.0f} s and was stopped"
  lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
  if code:
    sys.stderr.write(stderr[-4000:])
    tail = (stderr.strip().splitlines() or ["no output"])[-1]
    stopped = f"the PyTorch child failed (exit {code}: {tail[:160]})"
  if not lines:
    return {"skipped": stopped or "the PyTorch child printed nothing"}
  if "skipped" in lines[0]:
    return lines[0]
  result = dict(lines[0], results={line.pop("key"): line for line in lines[1:] if "key" in line})
  if stopped:
    result["stopped"] = stopped
  return result


# ---------------------------------------------------------------------------
# JAX part.


def load_bench_train():
  """``benchmarks/train.py`` as a module (it puts the repository root first on sys.path)."""
  saved = list(sys.path)
  try:
    spec = importlib.util.spec_from_file_location("densecap_bench_train",
                                                  os.path.join(HERE, "train.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  finally:
    sys.path[:] = saved
  return module


class Programs:
  """Traces on the calling thread, compiles on a pool, hands out compiled programs."""

  def __init__(self, threads):
    self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, threads))
    self.compile_seconds = 0.0
    self.count = 0

  def submit(self, lowered):
    self.count += 1
    def compile_it():
      start = time.perf_counter()
      compiled = lowered.compile()
      self.compile_seconds += time.perf_counter() - start
      return compiled
    return self.pool.submit(compile_it)

  def close(self, wait):
    self.pool.shutdown(wait=wait, cancel_futures=True)


def out_shapes(jax, lowered, fn, args):
  """ShapeDtypeStructs of a lowered function's outputs."""
  try:
    return jax.tree.map(lambda o: jax.ShapeDtypeStruct(o.shape, o.dtype), lowered.out_info)
  except Exception:  # pylint: disable=broad-except
    return jax.eval_shape(fn, *args)


def jax_part(args, sizes, deadline):
  """Traces, compiles and times every JAX case; -> (rows, notes, compiles still running)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top

  from densecap_jax import configs  # pylint: disable=g-import-not-at-top
  from densecap_jax.configs import buckets as buckets_lib  # pylint: disable=g-import-not-at-top
  from densecap_jax.evaluation import split_eval  # pylint: disable=g-import-not-at-top
  from densecap_jax.models import densecap  # pylint: disable=g-import-not-at-top
  import model_stages  # pylint: disable=g-import-not-at-top
  try:
    from densecap_jax.models import precision as precision_lib  # pylint: disable=g-import-not-at-top
  except ImportError:
    precision_lib = None

  device = jax.devices()[0]
  bucket = tuple(sizes["bucket"])
  batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
  notes = [f"JAX {jax.__version__} on {device.platform}: {device.device_kind}; "
           f"{len(jax.local_devices())} local device(s)"]
  rng = np.random.default_rng(args.seed)

  def model_config(precision=None, config=None):
    """The vgg16 model config (or ``config``, changed in place) at this run's sizes."""
    config = configs.get_model_config("vgg16") if config is None else config
    config.vocab_size = sizes["vocab_size"]
    config.num_proposals = sizes["num_proposals"]
    if config.image_size != sizes["image_size"]:
      config.image_size = sizes["image_size"]
      config.buckets = buckets_lib.make_buckets(sizes["image_size"])
    if sizes["fc_dim"]:
      config.fc_dim = sizes["fc_dim"]
    if sizes["sampler_batch_size"]:
      config.sampler_batch_size = sizes["sampler_batch_size"]
    if precision is not None:
      config.precision = precision
    return config

  base = model_config()
  known = tuple(getattr(configs, "PRECISIONS", ())) if "precision" in base else ()
  unsupported = {p: ("n/a: the model config has no precision field" if not known else
                     f"n/a: not in configs.PRECISIONS {known}") for p in PRECISIONS
                 if p not in known}
  precisions = args.precisions.split(",")

  # Matrix rates of this device per precision (the dense-FLOP time's denominator).
  peak = {}
  n = sizes["peak_n"] if device.platform != "cpu" else min(sizes["peak_n"], 2048)
  a = jax.device_put(rng.standard_normal((n, n), np.float32), device)
  b = jax.device_put(rng.standard_normal((n, n), np.float32), device)
  matmuls = {
      "float32": lambda x, y: jnp.matmul(x, y, precision=lax.Precision.HIGHEST),
      "tf32": lambda x, y: jnp.matmul(x, y, precision=lax.Precision.HIGH),
      "bfloat16": lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32),
  }
  for name, fn in matmuls.items():
    operands = (a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)) if name == "bfloat16" else (a, b)
    compiled = jax.jit(fn).lower(*operands).compile()
    seconds, _ = median_time(lambda: compiled(*operands), 3, 10, jax.block_until_ready)
    peak[name] = 2 * n ** 3 / seconds
  notes.append(f"matrix rate measured in this run ({n}^3 matmul, median of 10): " + ", ".join(
      f"{p} {peak[p] / 1e12:.3g} TFLOP/s" for p in PRECISIONS))
  del a, b

  params = jax.device_put(densecap.init_params(base, jax.random.key(args.seed)), device)
  cast_params = {}
  dense_inference = inference_dense_flops(base, bucket, sizes["num_proposals"])
  notes.append(f"inference dense FLOPs per image (VGG-16 convs + fc6/fc7 on "
               f"{sizes['num_proposals']} proposals): {dense_inference / 1e9:.1f} GFLOP")
  programs = Programs(args.compile_threads)

  def prepare_inference(case):
    precision, batch = case["precision"], case["batch"]
    config = model_config(precision)
    if precision not in cast_params:
      cast = getattr(precision_lib, "cast_for_inference", None)
      cast_params[precision] = cast(params, precision) if cast else params
    case_params = cast_params[precision]
    images = jax.device_put(
        rng.normal(0.0, INPUT_STD, (batch,) + bucket + (3,)).astype(np.float32), device)
    image_sizes = jax.device_put(np.tile(np.asarray(bucket, np.int32), (batch, 1)), device)
    thresholds = tuple(jax.device_put((np.float32(config.rpn_nms_thresh),
                                       np.float32(config.final_nms_thresh)), device))
    predict = split_eval.make_predict_fn(config, sizes["num_proposals"])
    case["args"] = (case_params, images, image_sizes) + thresholds
    case["futures"] = [programs.submit(predict.lower(*case["args"]))]
    if batch in args.stage_batches:
      backbone, proposals, pool, recognize, finish = model_stages.stage_functions(
          config, sizes["num_proposals"])
      stage_args = [(case_params, images, image_sizes)]
      l1 = jax.jit(backbone).lower(*stage_args[0])
      (feat,) = out_shapes(jax, l1, backbone, stage_args[0])
      stage_args.append((case_params, feat, image_sizes, thresholds[0]))
      l2 = jax.jit(proposals).lower(*stage_args[1])
      boxes, valid, feature_sizes = out_shapes(jax, l2, proposals, stage_args[1])
      stage_args.append((feat, boxes, image_sizes, feature_sizes))
      l3 = jax.jit(pool).lower(*stage_args[2])
      (pooled,) = out_shapes(jax, l3, pool, stage_args[2])
      stage_args.append((case_params, pooled))
      l4 = jax.jit(recognize).lower(*stage_args[3])
      codes, logits, transforms = out_shapes(jax, l4, recognize, stage_args[3])
      l5 = jax.jit(finish).lower(case_params, boxes, valid, codes, logits, transforms,
                                 thresholds[1])
      case["futures"] += [programs.submit(l) for l in (l1, l2, l3, l4, l5)]

  def time_inference(case, row, compiled):
    batch = case["batch"]
    case_params, images, image_sizes, rpn_t, final_t = case["args"]
    timed = lambda fn: median_time(fn, args.warmup, args.repeats, jax.block_until_ready)
    whole_s, whole_out = timed(lambda: compiled[0](*case["args"]))
    row.update(seconds=whole_s, images_per_s=batch / whole_s,
               kept=float(np.mean(np.sum(np.asarray(whole_out[3]), axis=1))),
               dense_ratio=(whole_s / batch) / (dense_inference / peak[case["precision"]]))
    if len(compiled) == 1:
      return
    backbone, proposals, pool, recognize, finish = compiled[1:]
    stages = []
    t, (feat,) = timed(lambda: backbone(case_params, images, image_sizes))
    stages.append(t)
    t, (boxes, valid, fsizes) = timed(lambda: proposals(case_params, feat, image_sizes, rpn_t))
    stages.append(t)
    t, (pooled,) = timed(lambda: pool(feat, boxes, image_sizes, fsizes))
    stages.append(t)
    t, (codes, logits, transforms) = timed(lambda: recognize(case_params, pooled))
    stages.append(t)
    t, staged = timed(lambda: finish(case_params, boxes, valid, codes, logits, transforms,
                                     final_t))
    stages.append(t)
    row["stages"] = stages
    row["floor_ratio"] = whole_s / (stages[FLOOR_STAGES[0]] + stages[FLOOR_STAGES[1]])
    row["agree"] = bool(np.array_equal(np.asarray(staged[3]), np.asarray(whole_out[3]))
                        and np.array_equal(np.asarray(staged[2]), np.asarray(whole_out[2])))

  train_api = {}

  def prepare_training(case):
    if not train_api:
      train_api["bench"] = load_bench_train()
      from densecap_jax import engine  # pylint: disable=g-import-not-at-top
      from densecap_jax.train import loop, optim, trainer  # pylint: disable=g-import-not-at-top
      train_api.update(engine=engine, loop=loop, optim=optim, trainer=trainer)
    bench, loop, trainer = train_api["bench"], train_api["loop"], train_api["trainer"]
    finetune, precision = case["finetune"], case["precision"]
    config = bench.train_config("vgg16", sizes["vocab_size"], None, "on" if finetune else "off")
    model_config(precision, config.model)
    tx = train_api["optim"].from_config(config)
    step_fn = loop.pmap_train_step(
        loop.make_train_step(trainer.make_loss_fn(config.model, finetune), tx))
    state = train_api["engine"].replicate(loop.init_train_state(
        densecap.init_params(config.model, jax.random.key(args.seed)), tx))
    num_devices = jax.local_device_count()
    batches = [bench.synthetic_batch(rng, num_devices, config.per_device_batch_size, bucket,
                                     config.model, sizes["regions"]) for _ in range(2)]
    prefetch = getattr(train_api["engine"], "prefetch_to_devices", None)
    if prefetch is not None:  # on the device before timing, as the training loop feeds them
      batches = list(prefetch(iter(batches), size=len(batches)))
    case.update(state=state, batches=batches, rng=jax.random.key(args.seed), step_fn=step_fn,
                images=config.per_device_batch_size * num_devices,
                dense=train_dense_flops(config.model, bucket, finetune))
    try:
      case["futures"] = [programs.submit(step_fn.lower(state, batches[0], case["rng"]))]
    except Exception:  # pylint: disable=broad-except
      traceback.print_exc()
      case["futures"] = []  # compiled at the first call instead

  def time_training(case, row, compiled):
    step = compiled[0] if compiled else case["step_fn"]
    state, batches, base_rng = case["state"], case["batches"], case["rng"]
    metrics = None
    for i in range(max(1, args.warmup)):
      state, metrics = step(state, batches[i % 2], base_rng)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for i in range(args.train_steps):
      state, metrics = step(state, batches[i % 2], base_rng)
    jax.block_until_ready(state)
    step_s = (time.perf_counter() - start) / args.train_steps
    images = case["images"]
    row.update(seconds=step_s, images_per_s=images / step_s,
               finite=bool(np.all(np.asarray(jax.device_get(metrics["finite"])))),
               dense_ratio=step_s / (case["dense"] * images / peak[case["precision"]]),
               precompiled=bool(compiled))

  # Cases in priority order: bfloat16 first, each precision's training after its inference.
  jobs = []
  for precision in sorted(precisions, key=lambda p: (p != "bfloat16", p != "float32")):
    for batch in batch_sizes:
      jobs.append({"kind": "inference", "precision": precision, "batch": batch})
    if args.train:
      jobs += [{"kind": "training", "name": name, "finetune": finetune, "precision": p}
               for name, finetune, p in TRAIN_CASES if p == precision]
  prepare = {"inference": prepare_inference, "training": prepare_training}
  run = {"inference": time_inference, "training": time_training}
  for job in jobs:
    if job["precision"] in unsupported:
      job["note"] = unsupported[job["precision"]]
    elif time.time() > deadline:
      job["note"] = "not reached within --time_budget"
    else:
      try:
        prepare[job["kind"]](job)
      except Exception as e:  # pylint: disable=broad-except
        job["note"] = "error: " + short_error(e)
        traceback.print_exc()
    print(f"  traced: {job['kind']} {job['precision']} {job.get('batch', job.get('name'))}",
          file=sys.stderr, flush=True)

  # Let every program compile before timing (compiling uses the device too), keeping
  # time to time them.
  futures = [f for job in jobs for f in job.get("futures", ())]
  concurrent.futures.wait(futures, timeout=max(0.0, deadline - args.timing_reserve - time.time()))
  still = sum(not f.done() for f in futures)
  if still:
    notes.append(f"{still} program(s) were still compiling when timing began")

  rows = []
  for job in jobs:
    batch = job.get("batch", job.get("images", "-"))
    case = "vgg16 test-time pass" if job["kind"] == "inference" else f"vgg16 step, {job['name']}"
    row = {"part": job["kind"], "case": case, "precision": job["precision"], "batch": batch}
    rows.append(row)
    if "note" in job:
      row["note"] = job["note"]
      continue
    try:
      compiled = []
      for future in job["futures"]:
        remaining = deadline - time.time()
        if remaining <= 0 and not future.done():
          raise TimeoutError("not compiled within --time_budget")
        compiled.append(future.result(timeout=max(remaining, 0.01)))
      run[job["kind"]](job, row, compiled)
    except concurrent.futures.TimeoutError:
      row["note"] = "not compiled within --time_budget"
    except Exception as e:  # pylint: disable=broad-except
      row["note"] = "error: " + short_error(e)
      traceback.print_exc()
    for key in ("args", "futures", "state", "batches", "step_fn"):
      job.pop(key, None)
    print(f"  timed: {job['kind']} {job['precision']} {batch}", file=sys.stderr, flush=True)

  pending = any(not f.done() for f in futures)
  programs.close(wait=not pending)
  notes.append(f"compiling: {programs.compile_seconds:.0f} s over {programs.count} programs on "
               f"{args.compile_threads} thread(s), before timing")
  trained = [r for r in rows if "precompiled" in r and not r["precompiled"]]
  if trained:
    notes.append(f"{len(trained)} training step(s) compiled at their first call (lowering failed)")
  dense = {job["name"]: job["dense"] for job in jobs if "dense" in job}
  if dense:
    notes.append("training dense FLOPs per image: " + ", ".join(
        f"{name} {flops / 1e9:.0f} GFLOP" for name, flops in dense.items()))
  order = {p: i for i, p in enumerate(PRECISIONS)}
  cases = {f"vgg16 step, {name}": i for i, (name, _, _) in enumerate(TRAIN_CASES)}
  rows.sort(key=lambda r: (r["part"] != "inference", order.get(r["precision"], 9),
                           cases.get(r["case"], 0), r["batch"] if isinstance(r["batch"], int) else 0))
  return rows, notes, pending


# ---------------------------------------------------------------------------
# The table.


def fmt(value, spec):
  return "-" if value is None else format(value, spec)


def stage_text(stages, batch):
  if not stages:
    return "-"
  return " / ".join(f"{s * 1e3 / batch:.2f}" for s in stages)


def table(rows, torch_result):
  torch_rows = torch_result.get("results", {})
  lines = [
      "| part | case | precision | batch | images/s | ms / image | stages, ms / image "
      "(" + " / ".join(STAGES) + ") | e2e ÷ (backbone + fc6-fc7) | ÷ dense FLOP time | "
      "PyTorch images/s | PyTorch stages, ms / image | JAX ÷ PyTorch (images/s) |",
      "|---|---|---|---:|---:|---:|---|---:|---:|---:|---|---:|"]
  for row in rows:
    batch = row["batch"]
    if "note" in row:
      lines.append(f"| {row['part']} | {row['case']} | {row['precision']} | {batch} | "
                   f"{row['note']} | | | | | | | |")
      continue
    per_image = row["seconds"] * 1e3 / batch
    peer = torch_rows.get(f"{row['precision']}/{batch}") if row["part"] == "inference" else None
    if peer is None:
      peer_cols = ("-", "-", "-") if row["part"] == "training" or not torch_rows else (
          "not run", "-", "-")
    elif "error" in peer:
      peer_cols = (f"error: {peer['error']}", "-", "-")
    else:
      peer_ips = batch / peer["seconds"]
      peer_cols = (f"{peer_ips:,.1f}", stage_text(peer["stages"], batch),
                   f"{row['images_per_s'] / peer_ips:.2f}")
    if not torch_rows and row["part"] == "inference":
      peer_cols = ("skipped (notes)", "-", "-")
    lines.append(
        f"| {row['part']} | {row['case']} | {row['precision']} | {batch} | "
        f"{row['images_per_s']:,.1f} | {per_image:,.2f} | "
        f"{stage_text(row.get('stages'), batch) if row['part'] == 'inference' else '-'} | "
        f"{fmt(row.get('floor_ratio'), '.2f')} | {fmt(row.get('dense_ratio'), '.2f')} | "
        f"{peer_cols[0]} | {peer_cols[1]} | {peer_cols[2]} |")
  return "\n".join(lines)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--small", action="store_true",
                      help="toy sizes for a CPU check (128 px, 50 proposals, batch 1,2)")
  parser.add_argument("--batch_sizes", default=None, help="inference batch sizes (default 1,8,32)")
  parser.add_argument("--stage_batches", default=None,
                      help="batch sizes that get the stage breakdown (default: every one)")
  parser.add_argument("--precisions", default=",".join(PRECISIONS),
                      help=f"comma-separated, of {', '.join(PRECISIONS)}")
  parser.add_argument("--warmup", type=int, default=None, help="untimed calls (default 2)")
  parser.add_argument("--repeats", type=int, default=None, help="timed calls (default 5)")
  parser.add_argument("--train_steps", type=int, default=None, help="timed training steps")
  parser.add_argument("--no_train", dest="train", action="store_false",
                      help="leave out the training step")
  parser.add_argument("--no_torch", dest="torch", action="store_false",
                      help="leave out the PyTorch peer")
  parser.add_argument("--compile_threads", type=int, default=None,
                      help="programs compiled at a time (default: min(8, CPUs))")
  parser.add_argument("--time_budget", type=float, default=None,
                      help="seconds after which cases not yet timed are skipped (default 450)")
  parser.add_argument("--timing_reserve", type=float, default=None,
                      help="seconds of the budget kept for timing after compiling (default 90)")
  parser.add_argument("--out", default=None, help="also write the results as JSON here")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--torch_child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  sizes = dict(SMALL if args.small else FULL)
  args.batch_sizes = args.batch_sizes or sizes["batch_sizes"]
  for name in ("warmup", "repeats", "train_steps", "time_budget", "timing_reserve"):
    if getattr(args, name) is None:
      setattr(args, name, sizes[name])
  if args.compile_threads is None:
    args.compile_threads = max(1, min(8, os.cpu_count() or 1))
  try:
    batches = tuple(int(b) for b in args.batch_sizes.split(","))
    stage_batches = (tuple(int(b) for b in args.stage_batches.split(","))
                     if args.stage_batches else batches)
  except ValueError:
    parser.error("--batch_sizes and --stage_batches are comma-separated ints")
  if min(batches) < 1 or args.repeats < 1 or args.warmup < 0 or args.train_steps < 1:
    parser.error("batch sizes, --repeats and --train_steps must be >= 1, --warmup >= 0")
  unknown = [p for p in args.precisions.split(",") if p not in PRECISIONS]
  if unknown:
    parser.error(f"--precisions: unknown {unknown}, expected some of {PRECISIONS}")
  args.stage_batches = stage_batches
  return args, sizes


def main(argv=None):
  args, sizes = parse_args(argv)
  if args.torch_child:
    torch_child(json.loads(args.torch_child), lambda line: print(json.dumps(line), flush=True))
    return
  start = time.time()
  deadline = start + args.time_budget
  try:
    from densecap_jax import configs  # pylint: disable=g-import-not-at-top
    model = configs.get_model_config("vgg16")
  except ImportError as e:
    sys.exit(f"cannot import the model configs ({e}); on a machine without ml_collections "
             f"carry its wheel (benchmarks/README.md, 'GPU')")

  torch_result = {"skipped": "--no_torch"}
  if args.torch:
    spec = dict(seed=args.seed, bucket=sizes["bucket"], num_proposals=sizes["num_proposals"],
                vocab_size=sizes["vocab_size"], seq_length=model.seq_length,
                fc_dim=sizes["fc_dim"] or model.fc_dim, anchor_sizes=model.anchor_sizes,
                field_centers=model.field_centers, rpn_num_filters=model.rpn_num_filters,
                rnn_size=model.rnn_size, rnn_encoding_size=model.rnn_encoding_size,
                rpn_nms_thresh=model.rpn_nms_thresh, final_nms_thresh=model.final_nms_thresh,
                precisions=[p for p in args.precisions.split(",")],
                batch_sizes=[int(b) for b in args.batch_sizes.split(",")],
                warmup=args.warmup, repeats=args.repeats)
    torch_result = run_torch(spec, timeout=max(60.0, args.time_budget / 3))
    print(f"  done: PyTorch part ({time.time() - start:.0f} s)", file=sys.stderr, flush=True)

  rows, notes, pending = jax_part(args, sizes, deadline)
  if "device" in torch_result:
    notes.append(f"PyTorch {torch_result['torch']}, torchvision {torch_result['torchvision']} "
                 f"on {torch_result['device']}; mean kept boxes captioned per image: " + ", ".join(
                     f"{k} {v['kept']:.0f}" for k, v in torch_result["results"].items()
                     if "kept" in v))
    if "stopped" in torch_result:
      notes.append(f"PyTorch: {torch_result['stopped']}")
    fallbacks = {k: v["lstm_fp32"] for k, v in torch_result["results"].items()
                 if v.get("lstm_fp32")}
    if fallbacks:
      notes.append("PyTorch LSTM decoded in float32 (its autocast failed) in " + ", ".join(
          f"{k} ({why})" for k, why in fallbacks.items()))
  else:
    notes.append(f"PyTorch: {torch_result.get('skipped')}")
  kept = [f"{r['precision']}/{r['batch']} {r['kept']:.0f}" for r in rows if "kept" in r]
  if kept:
    notes.append("JAX mean kept boxes per image: " + ", ".join(kept))
  checks = [r for r in rows if "agree" in r]
  if checks:
    notes.append("staged outputs vs whole pass: " + (
        "same kept sets and tokens in every case" if all(r["agree"] for r in checks) else
        "DIFFERENT in " + ", ".join(f"{r['precision']}/{r['batch']}" for r in checks
                                    if not r["agree"])))
  finite = [r for r in rows if "finite" in r]
  if finite:
    notes.append("training steps finite: " + ("yes" if all(r["finite"] for r in finite) else "NO"))
  mode = "--small (toy sizes: not figures)" if args.small else "full size"
  notes.append(f"{mode}: {sizes['bucket'][0]}x{sizes['bucket'][1]} bucket, "
               f"{sizes['num_proposals']} proposals, V = {sizes['vocab_size']}; medians of "
               f"{args.repeats} after {args.warmup} warm-up"
               + (f"; {args.train_steps} timed training steps" if args.train else "")
               + f"; wall time {time.time() - start:.0f} s")

  print()
  print(table(rows, torch_result))
  print()
  for note in notes:
    print(f"- {note}")
  sys.stdout.flush()
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump({"rows": rows, "notes": notes, "torch": torch_result}, f, indent=1, default=str)
  if pending:  # compile threads still running: do not wait for them
    os._exit(0)  # pylint: disable=protected-access


if __name__ == "__main__":
  main()
