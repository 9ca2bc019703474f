"""bfloat16 against float32 on XLA:CPU, with and without its oneDNN / YNNPACK library paths.

Two VGG-sized products, each in float32 (``Precision.HIGHEST``), in the
precision policy's bfloat16 (bf16 operands, float32 accumulation and result:
``preferred_element_type=float32``, as ``models/precision.py`` computes) and
in plain bf16 (bf16 result):

* fc6: ``(1000, 25088) @ (25088, 4096)`` (1,000 RoIs through fc6, 205.5 GFLOP);
* conv: a 3 x 3 convolution 512 -> 512 on a 34 x 45 map, batch 1, NHWC / HWIO
  (conv5-sized, 7.2 GFLOP), also as the nine shifted bf16 -> float32 dots
  that the policy runs on CPUs with native bf16 products (``precision.conv3x3_as_dots``);
* fc6-bwd, conv-bwd: the input and weight gradients of fc6 on 256 RoIs (a
  training image's sampled regions, 105 GFLOP) and of the conv, in float32
  and as bf16 training computed them before 2026-12-07 (float32 values
  rounded to bf16 inside the function, float32 cotangents, JAX's transposed
  products; no bf16 -> bf16 row); for fc6 also as the policy computes them
  now (``precision.matmul``: the cotangent rounded to bf16 and both
  gradients as bf16 x bf16 -> float32 products, row "bf16->f32 policy").

Each variant runs in its own Python process with its ``XLA_FLAGS`` (XLA reads
them once, when the CPU client starts, and aborts on a flag it does not know):

* ``default``: no flags (jaxlib 0.10 sends dots and convolutions to YNNPACK);
* ``eigen``: YNNPACK off for dots and convolutions, XLA's own (Eigen) kernels;
* ``onednn-dot``: ``--xla_cpu_use_onednn=true
  --xla_cpu_experimental_onednn_fusion_type=dot`` (oneDNN graph fusions for dots);
* ``onednn-all-dots``: that, with YNNPACK off for dots, so every dot goes to oneDNN;
* ``onednn-custom-call``: ``--xla_cpu_experimental_onednn_custom_call=true``
  (the oneDNN matmul / convolution custom-call rewriter);
* ``torch``: the same products in PyTorch (float32, and bf16 autocast, both
  through its oneDNN kernels; gradients with ``torch.autograd.grad`` after an
  untimed forward), when torch can be imported; skipped otherwise.

Times are medians of ``--repeats`` calls after one warm-up, with
``block_until_ready``. Every result is compared with the ``default`` float32
result of the same inputs as ``|out - ref| / |ref|`` (Frobenius norms):
float32 must stay under 1e-5, bf16 under 1e-2. The "library" column says what
the optimised HLO calls for the product (a oneDNN / YNNPACK / XNNPACK fusion
or custom call, else XLA's own code), and whether the bf16 operands were
converted to float32 first.

  python benchmarks/cpu_bf16.py [--variants default,eigen,...] [--repeats 3]
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

NO_YNN_DOT = "--xla_cpu_experimental_ynn_fusion_type=-individual_dot"
NO_YNN = "--xla_cpu_experimental_ynn_fusion_type=-individual_dot,-individual_convolution"
ONEDNN_DOT = "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot"
VARIANTS = {
    "default": "",
    "eigen": NO_YNN,
    "onednn-dot": ONEDNN_DOT,
    "onednn-all-dots": f"{ONEDNN_DOT} {NO_YNN_DOT}",
    "onednn-custom-call": "--xla_cpu_experimental_onednn_custom_call=true",
    "torch": "",  # PyTorch, when importable: float32 and bf16 autocast
}
FC6 = (1000, 25088, 4096)  # rows, K, N
CONV = (34, 45, 512, 512)  # H, W, C in, C out (3 x 3, SAME)
BWD_ROWS = 256  # RoIs per training image (sampler_batch_size)
TOLERANCE = {"float32": 1e-5, "bf16->f32": 1e-2, "bf16->bf16": 1e-2, "bf16->f32 9 dots": 1e-2,
             "bf16->f32 policy": 1e-2,
             "bf16 autocast": 1e-2}


def cpu_model():
  """The CPU model name in /proc/cpuinfo."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return "unknown CPU"


def product_operand_dtypes(hlo_text):
  """Element types of the operands of the HLO's dots and convolutions.

  Each product sits in a computation of its own (a library fusion) whose
  root it is; the types are those of that computation's parameters.
  """
  dtypes = set()
  for computation in hlo_text.split("\n\n"):
    if re.search(r"ROOT %\S+ = \S+ (dot|convolution)\(", computation):
      dtypes |= set(re.findall(r"= (\w+)\[[^\]]*\]\S* parameter\(", computation))
  return dtypes


def library_of(hlo_text):
  """What the optimised HLO calls for its product, and whether bf16 operands became f32."""
  found = []
  for key, name in (("__onednn_fusion", "oneDNN fusion"), ("__onednn$", "oneDNN custom call"),
                    ("__ynn_fusion", "YNNPACK"), ("__xnn_fusion", "XNNPACK")):
    if key in hlo_text:
      found.append(name)
  text = "+".join(found) or "XLA (Eigen)"
  if "bf16[" in hlo_text:
    dtypes = product_operand_dtypes(hlo_text)
    text += (", bf16 operands" if "bf16" in dtypes
             else ", bf16 operands converted to f32" if dtypes else "")
  return text


def inputs(seed):
  """fc6 operands, conv image and kernel, and the two cotangents, as NumPy float32."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  rows, k, n = FC6
  h, wd, cin, cout = CONV
  x = rng.standard_normal((rows, k), np.float32)
  w = (rng.standard_normal((k, n), np.float32) / np.sqrt(k)).astype(np.float32)
  image = rng.standard_normal((1, h, wd, cin), np.float32)
  kernel = (rng.standard_normal((3, 3, cin, cout), np.float32) / np.sqrt(9 * cin)).astype(
      np.float32)
  g_fc = rng.standard_normal((BWD_ROWS, n), np.float32)
  g_conv = rng.standard_normal((1, h, wd, cout), np.float32)
  return x, w, image, kernel, g_fc, g_conv


def torch_child(out_dir, repeats, seed):
  """The same products in PyTorch (float32 and bf16 autocast, oneDNN), for comparison."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(os.cpu_count() or 1)
  x, w, image, kernel, g_fc, g_conv = (torch.from_numpy(a) for a in inputs(seed))
  image = image.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)  # NCHW
  kernel = kernel.permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)  # OIHW
  g_conv = g_conv.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
  rows, k, n = FC6
  h, wd, cin, cout = CONV
  fc_flops, conv_flops = 2.0 * rows * k * n, 2.0 * h * wd * cin * cout * 9
  nhwc = lambda t: t.permute(0, 2, 3, 1)
  hwio = lambda t: t.permute(2, 3, 1, 0)
  matmul = lambda a, b: a @ b
  conv = lambda a, b: F.conv2d(a, b, padding=1)
  results = []

  def record(op, dtype, seconds, out, flops):
    np.save(os.path.join(out_dir, f"torch-{op}-{dtype.replace('>', '')}.npy"),
            out.float().numpy())
    results.append({"op": op, "dtype": dtype, "seconds": seconds, "flops": flops,
                    "library": f"PyTorch {torch.__version__} (oneDNN)"})
    print(f"  torch: {op} {dtype} {seconds * 1e3:.1f} ms", file=sys.stderr, flush=True)

  for dtype in ("float32", "bf16 autocast"):
    enabled = dtype != "float32"
    for op, fn, a, b, flops, post in (("fc6", matmul, x, w, fc_flops, lambda t: t),
                                      ("conv", conv, image, kernel, conv_flops, nhwc)):
      with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
        out = fn(a, b)
        times = []
        for _ in range(repeats):
          start = time.perf_counter()
          fn(a, b)
          times.append(time.perf_counter() - start)
      record(op, dtype, statistics.median(times), post(out), flops)
    for op, fn, a, b, g, flops, post in (
        ("fc6-bwd", matmul, x[:BWD_ROWS], w, g_fc, 2 * 2.0 * BWD_ROWS * k * n,
         lambda da, db: (da, db)),
        ("conv-bwd", conv, image, kernel, g_conv, 2 * conv_flops,
         lambda da, db: (nhwc(da), hwio(db)))):
      a, b = a.clone().requires_grad_(), b.clone().requires_grad_()
      times = []
      for _ in range(repeats + 1):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
          out = fn(a, b)
        start = time.perf_counter()
        da, db = torch.autograd.grad(out, (a, b), g.to(out.dtype))
        times.append(time.perf_counter() - start)
      da, db = post(da, db)
      record(op, dtype, statistics.median(times[1:]),
             torch.cat([da.reshape(-1), db.reshape(-1)]), flops)
  with open(os.path.join(out_dir, "torch.json"), "w", encoding="utf-8") as f:
    json.dump({"jax": "-", "results": results}, f)


def child(out_dir, variant, repeats, seed):
  """Times the four products in this process; writes outputs and a JSON summary."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top

  from densecap_jax.models import precision  # pylint: disable=g-import-not-at-top

  rows, k, n = FC6
  h, wd, cin, cout = CONV
  x, w, image, kernel, g_fc, g_conv = inputs(seed)
  dims = ("NHWC", "HWIO", "NHWC")

  def fc6_f32(a, b):
    return jnp.matmul(a, b, precision=lax.Precision.HIGHEST)

  def fc6_bf16(a, b):
    return jnp.matmul(a, b, preferred_element_type=jnp.float32)

  def fc6_bf16_out(a, b):
    return jnp.matmul(a, b)

  def conv_f32(a, b):
    return lax.conv_general_dilated(a, b, (1, 1), "SAME", dimension_numbers=dims,
                                    precision=lax.Precision.HIGHEST)

  def conv_bf16(a, b):
    return lax.conv_general_dilated(a, b, (1, 1), "SAME", dimension_numbers=dims,
                                    preferred_element_type=jnp.float32)

  def conv_bf16_out(a, b):
    return lax.conv_general_dilated(a, b, (1, 1), "SAME", dimension_numbers=dims)

  def conv_bf16_dots(a, b):
    return precision.conv3x3_as_dots(a, b, preferred_element_type=jnp.float32)

  bf16 = lambda *arrays: tuple(jnp.asarray(a, jnp.bfloat16) for a in arrays)
  f32 = lambda *arrays: tuple(jnp.asarray(a) for a in arrays)
  fc_flops, conv_flops = 2.0 * rows * k * n, 2.0 * h * wd * cin * cout * 9
  cases = [("fc6", "float32", fc6_f32, f32(x, w), fc_flops),
           ("fc6", "bf16->f32", fc6_bf16, bf16(x, w), fc_flops),
           ("fc6", "bf16->bf16", fc6_bf16_out, bf16(x, w), fc_flops),
           ("conv", "float32", conv_f32, f32(image, kernel), conv_flops),
           ("conv", "bf16->f32", conv_bf16, bf16(image, kernel), conv_flops),
           ("conv", "bf16->bf16", conv_bf16_out, bf16(image, kernel), conv_flops),
           ("conv", "bf16->f32 9 dots", conv_bf16_dots, bf16(image, kernel), conv_flops)]

  # Backward (input and weight gradients) as training takes it: float32 master values
  # rounded to bf16 inside the function, float32 cotangents.
  def grads(forward):
    def fn(a, b, g):
      _, vjp = jax.vjp(forward, a, b)
      return vjp(g)  # (da, db), compared as one vector
    return fn

  def rounded(forward):
    return lambda a, b: forward(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16))

  x_bwd = x[:BWD_ROWS]
  fc_bwd_flops = 2 * 2.0 * BWD_ROWS * k * n
  cases += [("fc6-bwd", "float32", grads(fc6_f32), f32(x_bwd, w, g_fc), fc_bwd_flops),
            ("fc6-bwd", "bf16->f32", grads(rounded(fc6_bf16)), f32(x_bwd, w, g_fc), fc_bwd_flops),
            ("fc6-bwd", "bf16->f32 policy", grads(lambda a, b: precision.matmul(a, b, "bfloat16")),
             f32(x_bwd, w, g_fc), fc_bwd_flops),
            ("conv-bwd", "float32", grads(conv_f32), f32(image, kernel, g_conv), 2 * conv_flops),
            ("conv-bwd", "bf16->f32", grads(rounded(conv_bf16)), f32(image, kernel, g_conv),
             2 * conv_flops)]
  results = []
  for op, dtype, fn, args, flops in cases:
    compiled = jax.jit(fn).lower(*args).compile()
    out = jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(compiled(*args))
      times.append(time.perf_counter() - start)
    out = np.concatenate([np.ravel(np.asarray(leaf, np.float32)) for leaf in jax.tree.leaves(out)])
    np.save(os.path.join(out_dir, f"{variant}-{op}-{dtype.replace('>', '')}.npy"), out)
    results.append({"op": op, "dtype": dtype, "seconds": statistics.median(times),
                    "times": times, "flops": flops,
                    "library": library_of(compiled.as_text())})
    print(f"  {variant}: {op} {dtype} {statistics.median(times) * 1e3:.1f} ms", file=sys.stderr,
          flush=True)
  with open(os.path.join(out_dir, f"{variant}.json"), "w", encoding="utf-8") as f:
    json.dump({"jax": jax.__version__, "results": results}, f)


def run_variant(out_dir, variant, repeats, seed):
  """Runs :func:`child` for ``variant`` in a fresh process; -> its summary, or an error line."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""), VARIANTS[variant]]))
  proc = subprocess.run(
      [sys.executable, os.path.abspath(__file__), "--child", out_dir, "--variants", variant,
       "--repeats", str(repeats), "--seed", str(seed)],
      env=env, capture_output=True, text=True, check=False)
  path = os.path.join(out_dir, f"{variant}.json")
  if proc.returncode != 0 or not os.path.exists(path):
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return None, f"exit {proc.returncode}: {tail[0][:200]}"
  with open(path, encoding="utf-8") as f:
    return json.load(f), None


def relative_error(out_dir, variant, op, dtype):
  import numpy as np  # pylint: disable=g-import-not-at-top
  out = np.load(os.path.join(out_dir, f"{variant}-{op}-{dtype.replace('>', '')}.npy")).astype(
      np.float64)
  ref = np.load(os.path.join(out_dir, f"default-{op}-float32.npy")).astype(np.float64)
  return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variants", default=",".join(VARIANTS),
                      help=f"comma-separated, of {', '.join(VARIANTS)} (default first)")
  parser.add_argument("--repeats", type=int, default=3, help="timed calls per product")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  variants = args.variants.split(",")
  unknown = [v for v in variants if v not in VARIANTS]
  if unknown or args.repeats < 1:
    parser.error(f"unknown variants {unknown}" if unknown else "--repeats must be >= 1")
  if args.child:
    if variants[0] == "torch":
      torch_child(args.child, args.repeats, args.seed)
    else:
      child(args.child, variants[0], args.repeats, args.seed)
    return
  if "default" in variants:
    variants.remove("default")
  variants.insert(0, "default")  # the reference runs first

  from densecap_jax.models import precision  # pylint: disable=g-import-not-at-top
  model, bf16_dots = cpu_model(), precision.host_has_bf16_dots()
  summaries, errors = {}, {}
  with tempfile.TemporaryDirectory() as out_dir:
    for variant in variants:
      summaries[variant], errors[variant] = run_variant(out_dir, variant, args.repeats, args.seed)
      print(f"  done: {variant}" + (f" ({errors[variant]})" if errors[variant] else ""),
            flush=True)
    if summaries["default"] is None:
      sys.exit(f"the default variant failed: {errors['default']}")
    base = {(r["op"], r["dtype"]): r["seconds"] for r in summaries["default"]["results"]}
    rows = []
    for variant in variants:
      if summaries[variant] is None:
        why = ("skipped: torch is not importable" if variant == "torch"
               and "No module named 'torch'" in errors[variant] else f"failed: {errors[variant]}")
        rows.append(f"| {variant} | all | - | {why} | | | | | |")
        continue
      by_case = {(r["op"], r["dtype"]): r for r in summaries[variant]["results"]}
      for (op, dtype), r in by_case.items():
        err = relative_error(out_dir, variant, op, dtype)
        ok = "ok" if err <= TOLERANCE[dtype] else "TOO FAR"
        f32_here = by_case[(op, "float32")]["seconds"]
        rows.append(
            f"| {variant} | {op} | {dtype} | {r['library']} | {r['seconds'] * 1e3:,.1f} | "
            f"{r['flops'] / r['seconds'] / 1e9:,.0f} | {base[(op, 'float32')] / r['seconds']:.2f} | "
            f"{f32_here / r['seconds']:.2f} | {err:.1e} {ok} |")

  jax_version = summaries["default"]["jax"]
  print(f"\nJAX {jax_version} on CPU: {model}, {os.cpu_count()} logical CPUs, "
        f"native bf16 products (amx_bf16 / avx512_bf16) {'yes' if bf16_dots else 'no'}; "
        f"median of {args.repeats} calls after one warm-up")
  print("| variant | op | dtype | library | ms | GFLOP/s | default f32 / this | "
        "same variant's f32 / this | rel. error vs default f32 |")
  print("|---|---|---|---|---:|---:|---:|---:|---|")
  for row in rows:
    print(row)
  print("\nflags: " + "; ".join(f"{v}: {VARIANTS[v] or '(none)'}" for v in variants))


if __name__ == "__main__":
  main()
