"""Throughput and latency of the web demo server (``python -m densecap_jax.serve``).

Starts the server in a child process on 127.0.0.1 (once per ``--max_batch``
value; JAX's persistent compilation cache in a temporary folder spares the
second start the programs the first compiled), then measures from this process
over HTTP keep-alive connections:

* **uploads**: 640 x 480 JPEGs (synthetic scenes of shapes) sent as the raw
  body by 1 and by 8 concurrent clients, each client sending its next request
  as soon as it has the answer: requests per second and the p50 / p95
  latency (request sent to answer read).
* **live**: what the page's live mode does: one client, frames downscaled to
  the model's image size (256 x 192 for a 256-pixel model), one in flight at
  a time: frames per second.

The "batch" column is the mean number of requests per model call in that run,
from the server's ``/healthz`` counters. Every answer is checked: status 200,
as many boxes as captions, and the same answer for the same image in every
upload run (batched or not): equal captions, boxes within ``BOX_TOLERANCE_PX``.

Default model: the bundled demo model if present, else a randomly initialised
``tiny`` model (same shapes, so the same cost per image).

  python benchmarks/serve.py [--checkpoint DIR] [--max_batch 1,4] [--requests 64]
"""

import argparse
import concurrent.futures
import http.client
import io
import json
import os
import queue
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from PIL import Image, ImageDraw

UPLOAD_SIZE = (640, 480)  # (width, height), a webcam frame
START_TIMEOUT_S = 1800
BOX_TOLERANCE_PX = 0.05


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", default="",
                      help="model directory; default: the bundled model, else a random tiny one")
  parser.add_argument("--max_batch", default="1,4",
                      help="comma-separated --max_batch values, one server start each")
  parser.add_argument("--batch_wait_ms", type=float, default=5.0)
  parser.add_argument("--requests", type=int, default=64,
                      help="requests per measured run (after 4 warm-up requests)")
  parser.add_argument("--clients", default="1,8", help="comma-separated concurrent clients")
  parser.add_argument("--images", type=int, default=8, help="distinct upload images")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  args.max_batch = tuple(int(v) for v in args.max_batch.split(","))
  args.clients = tuple(int(v) for v in args.clients.split(","))
  return args


def scene(rng, width, height):
  """A synthetic photo-like scene: a colour gradient with a few filled shapes, as RGB."""
  top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
  ramp = np.linspace(0, 1, height)[:, None, None]
  pixels = (top * (1 - ramp) + bottom * ramp).astype(np.uint8)
  image = Image.fromarray(np.broadcast_to(pixels, (height, width, 3)).copy())
  draw = ImageDraw.Draw(image)
  for _ in range(4):
    x0, y0 = rng.integers(0, width - 60), rng.integers(0, height - 60)
    x1, y1 = x0 + rng.integers(40, width // 2), y0 + rng.integers(40, height // 2)
    color = tuple(int(c) for c in rng.integers(0, 256, 3))
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=color)
  return image


def jpeg(image, size=None):
  if size:
    image = image.resize(size, Image.BILINEAR)
  buffer = io.BytesIO()
  image.save(buffer, format="JPEG", quality=90)
  return buffer.getvalue()


def model_dir(args, workdir):
  """``(path, description)`` of the model to serve."""
  from densecap_jax import predictor  # pylint: disable=g-import-not-at-top
  if args.checkpoint:
    return args.checkpoint, args.checkpoint
  bundled = predictor.bundled_model_path()
  if os.path.isdir(bundled):
    return bundled, "the bundled model"
  import jax  # pylint: disable=g-import-not-at-top
  from densecap_jax import configs  # pylint: disable=g-import-not-at-top
  from densecap_jax import model_dir as model_dir_lib  # pylint: disable=g-import-not-at-top
  from densecap_jax.models import densecap  # pylint: disable=g-import-not-at-top
  vocab = [None] + [f"word{i}" for i in range(64)]
  config = configs.get_model_config("tiny")
  config.vocab_size = len(vocab) - 1
  path = os.path.join(workdir, "tiny_random")
  model_dir_lib.save_model(path, densecap.init_params(config, jax.random.key(args.seed)), config,
                        vocab)
  return path, "a random tiny model (the bundled model is not built)"


class Server:
  """The server in a child process, up once ``ready`` returns."""

  def __init__(self, checkpoint_dir, cache_dir, max_batch, batch_wait_ms):
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    self.started = time.perf_counter()
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "densecap_jax.serve", "--checkpoint", checkpoint_dir,
         "--port", "0", "--max_batch", str(max_batch), "--batch_wait_ms", str(batch_wait_ms),
         "--warm_up", "start"],  # every program compiled before measuring
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    self.lines = queue.Queue()
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self):
    for line in self.proc.stdout:
      self.lines.put(line)

  def ready(self):
    """``(host, port, seconds from start, the ready line)``."""
    output = []
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and self.proc.poll() is None:
      try:
        line = self.lines.get(timeout=1)
      except queue.Empty:
        continue
      output.append(line)
      found = re.match(r"ready: https?://([^:/]+):(\d+)/", line)
      if found:
        return found.group(1), int(found.group(2)), time.perf_counter() - self.started, line
    self.stop()
    raise RuntimeError("the server did not start:\n" + "".join(output))

  def stop(self):
    if self.proc.poll() is None:
      self.proc.terminate()
      self.proc.wait(30)


def get_json(host, port, path):
  connection = http.client.HTTPConnection(host, port, timeout=60)
  try:
    connection.request("GET", path)
    return json.loads(connection.getresponse().read())
  finally:
    connection.close()


def client(host, port, bodies, answers):
  """Posts ``bodies`` ``[(image index, bytes)]`` in turn on one connection; returns latencies."""
  connection = http.client.HTTPConnection(host, port, timeout=120)
  latencies = []
  try:
    for index, body in bodies:
      start = time.perf_counter()
      connection.request("POST", "/api/caption", body=body, headers={"Content-Type": "image/jpeg"})
      response = connection.getresponse()
      data = response.read()
      latencies.append(time.perf_counter() - start)
      answer = json.loads(data)
      if response.status != 200 or len(answer["boxes"]) != len(answer["captions"]):
        raise RuntimeError(f"bad answer {response.status}: {data[:200]!r}")
      answers.append((index, answer))
  finally:
    connection.close()
  return latencies


def run(host, port, images, clients, requests, answers):
  """``(requests/s, p50 s, p95 s, mean batch)`` of ``requests`` posts by ``clients`` clients."""
  before = get_json(host, port, "/healthz")["batches"]
  jobs = [(i % len(images), images[i % len(images)]) for i in range(requests)]
  shares = [jobs[c::clients] for c in range(clients)]
  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(clients) as pool:
    latencies = sum(pool.map(lambda share: client(host, port, share, answers), shares), [])
  seconds = time.perf_counter() - start
  after = get_json(host, port, "/healthz")["batches"]
  batch = (after["requests"] - before["requests"]) / max(1, after["batches"] - before["batches"])
  p95 = float(np.percentile(latencies, 95))
  return requests / seconds, statistics.median(latencies), p95, batch


def check_answers(answers):
  """Largest box difference between answers for the same image; raises on a mismatch."""
  first, largest = {}, 0.0
  for key, answer in answers:
    if key not in first:
      first[key] = answer
      continue
    if answer["captions"] != first[key]["captions"]:
      raise RuntimeError(f"image {key}: different captions in different runs")
    boxes, reference = np.asarray(answer["boxes"]), np.asarray(first[key]["boxes"])
    largest = max(largest, float(np.abs(boxes - reference).max(initial=0.0)))
  if largest > BOX_TOLERANCE_PX:
    raise RuntimeError(f"boxes for the same image differ by up to {largest} px between runs")
  return largest


def main(argv=None):
  args = parse_args(argv)
  rng = np.random.default_rng(args.seed)
  scenes = [scene(rng, *UPLOAD_SIZE) for _ in range(args.images)]
  uploads = [jpeg(s) for s in scenes]
  rows, starts, answers = [], [], []
  with tempfile.TemporaryDirectory() as workdir:
    checkpoint_dir, description = model_dir(args, workdir)
    cache_dir = os.path.join(workdir, "jax_cache")
    for max_batch in args.max_batch:
      server = Server(checkpoint_dir, cache_dir, max_batch, args.batch_wait_ms)
      try:
        host, port, start_s, line = server.ready()
        starts.append(f"--max_batch {max_batch}: ready after {start_s:.1f} s ({line.strip()})")
        health = get_json(host, port, "/healthz")
        size = health["image_size"]
        scale = size / max(UPLOAD_SIZE)
        frames = [jpeg(s, (round(UPLOAD_SIZE[0] * scale), round(UPLOAD_SIZE[1] * scale)))
                  for s in scenes]
        warm = []
        run(host, port, uploads, 1, 4, warm)  # first requests: thread pools, connections
        for clients in args.clients:
          measured = run(host, port, uploads, clients, args.requests, answers)
          rows.append((max_batch, f"upload {UPLOAD_SIZE[0]}x{UPLOAD_SIZE[1]}", clients) + measured)
          print(f"  done: --max_batch {max_batch}, {clients} clients", flush=True)
        frame_size = f"{round(UPLOAD_SIZE[0] * scale)}x{round(UPLOAD_SIZE[1] * scale)}"
        measured = run(host, port, frames, 1, args.requests, [])
        rows.append((max_batch, f"live frames {frame_size}", 1) + measured)
      finally:
        server.stop()
  largest = check_answers(answers)

  print(f"server on {health['device']}; model: {description} ({health['config']} config, "
        f"{size}-pixel images, {len(health['buckets'])} buckets); {os.cpu_count()} CPUs")
  for start in starts:
    print(f"  {start}")
  print(f"{args.requests} requests per run; batch wait {args.batch_wait_ms} ms")
  print("| max_batch | requests | clients | requests/s | p50 ms | p95 ms | batch |")
  print("|---:|---|---:|---:|---:|---:|---:|")
  for max_batch, what, clients, rate, p50, p95, batch in rows:
    print(f"| {max_batch} | {what} | {clients} | {rate:.1f} | {p50 * 1e3:.0f} | {p95 * 1e3:.0f} | "
          f"{batch:.2f} |")
  print(f"check: every answer 200 with matching boxes and captions; same captions for the same "
        f"image in every run, boxes within {largest:.1e} px")


if __name__ == "__main__":
  main()
