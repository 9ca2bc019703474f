"""How long the web demo server takes to start: ready, first answers, every program compiled.

Starts ``python -m densecap_jax.serve`` on 127.0.0.1 in a child process, once
with an empty compilation cache (``DENSECAP_JAX_CACHE_DIR`` = a new temporary
folder: "cold") and once more with the cache that start filled ("cached"),
for each ``--warm_up`` mode asked. For each start, timed from the moment the
process is spawned:

* **ready**: ``GET /healthz`` first answers 200 (polled every 50 ms);
* **1st answer**: a landscape photo (scikit-image's coffee, 600 x 400, as a
  JPEG) sent to ``POST /api/caption`` as soon as the server is ready, answered;
* **2nd size**: then a portrait photo (the rocket photo turned upright, 427 x
  640, another shape bucket) answered;
* **all programs**: ``/healthz`` reports every detection program ready
  (``programs.ready == programs.total``; for ``--warm_up start``: ready).

Both answers are checked (status 200, as many boxes as captions). The table
also gives the programs compiled / loaded from the cache as the server's
``warmed up:`` line says, and the 1-minute load average (``/proc/loadavg``)
before the start: other work on the machine slows every column.

  python benchmarks/serve_start.py [--checkpoint DIR] [--warm_up background,start]
"""

import argparse
import http.client
import io
import json
import os
import platform
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from PIL import Image

START_TIMEOUT_S = 1800
POLL_S = 0.05


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", default="", help="model directory (default: the bundled)")
  parser.add_argument("--warm_up", default="background",
                      help="comma-separated --warm_up modes of the server, each started cold "
                           "then cached (background, first_use, start)")
  parser.add_argument("--max_batch", type=int, default=4)
  return parser.parse_args(argv)


def photos():
  """``[(name, JPEG bytes)]``: a landscape photo and a portrait one (scikit-image's data)."""
  from skimage import data  # pylint: disable=g-import-not-at-top
  out = []
  for name, rgb in (("coffee 600x400", data.coffee()),
                    ("rocket 427x640", np.ascontiguousarray(np.rot90(data.rocket())))):
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=90)
    out.append((name, buffer.getvalue()))
  return out


class Server:
  """The server in a child process, its output lines collected in a thread."""

  def __init__(self, args, cache_dir, warm_up):
    env = dict(os.environ, DENSECAP_JAX_CACHE_DIR=cache_dir)
    command = [sys.executable, "-m", "densecap_jax.serve", "--port", "0",
               "--max_batch", str(args.max_batch), "--warm_up", warm_up]
    if args.checkpoint:
      command += ["--checkpoint", args.checkpoint]
    self.spawned = time.perf_counter()
    self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, env=env)
    self.lines = []
    self.port = None
    self._listening = queue.Queue()
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self):
    for line in self.proc.stdout:
      self.lines.append(line)
      found = re.match(r"listening: https?://[^:/\s]+:(\d+)/", line)
      if found:
        self._listening.put(int(found.group(1)))
    self._listening.put(None)

  def elapsed(self):
    return time.perf_counter() - self.spawned

  def wait_listening(self):
    self.port = self._listening.get(timeout=START_TIMEOUT_S)
    if self.port is None:
      raise RuntimeError("the server exited:\n" + "".join(self.lines))

  def request(self, method, path, body=None, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=START_TIMEOUT_S)
    try:
      connection.request(method, path, body=body, headers=headers or {})
      response = connection.getresponse()
      return response.status, json.loads(response.read())
    finally:
      connection.close()

  def poll(self, condition):
    """Seconds since spawned when ``condition(status, health)`` first holds."""
    while self.elapsed() < START_TIMEOUT_S:
      if self.proc.poll() is not None:
        raise RuntimeError("the server exited:\n" + "".join(self.lines))
      try:
        status, health = self.request("GET", "/healthz")
        if condition(status, health):
          return self.elapsed()
      except OSError:
        pass
      time.sleep(POLL_S)
    raise RuntimeError("timed out")

  def caption(self, jpeg):
    """Seconds since spawned when the answer for ``jpeg`` is in; checks it."""
    status, answer = self.request("POST", "/api/caption", jpeg, {"Content-Type": "image/jpeg"})
    if status != 200 or len(answer["boxes"]) != len(answer["captions"]) or not answer["boxes"]:
      raise RuntimeError(f"bad answer {status}: {str(answer)[:200]}")
    return self.elapsed()

  def stop(self):
    if self.proc.poll() is None:
      self.proc.terminate()
      try:
        self.proc.wait(30)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()


def load_average():
  with open("/proc/loadavg", encoding="ascii") as f:
    return float(f.read().split()[0])


def one_start(args, cache_dir, warm_up, images):
  """The row of one server start."""
  load = load_average()
  server = Server(args, cache_dir, warm_up)
  try:
    server.wait_listening()
    ready = server.poll(lambda status, health: status == 200)
    first = server.caption(images[0][1])
    second = server.caption(images[1][1])
    done = server.poll(lambda status, health: status == 200 and (
        health["programs"]["ready"] == health["programs"]["total"]))
    _, health = server.request("GET", "/healthz")
    deadline = time.monotonic() + 5
    while (warm_up == "background" and time.monotonic() < deadline
           and not any(line.startswith("warmed up:") for line in server.lines)):
      time.sleep(POLL_S)
    warmed = [line for line in server.lines if line.startswith(("warmed up:", "ready:"))]
  finally:
    server.stop()
  programs = health["programs"]
  return {"ready": ready, "first": first, "second": second, "done": done, "load": load,
          "programs": f"{programs['total']} ({programs['in_cache']} in cache)",
          "log": warmed[-1].strip() if warmed else ""}


def main(argv=None):
  args = parse_args(argv)
  images = photos()
  cpu = "?"
  try:
    cpu = re.search(r"Model name:\s*(.+)", subprocess.run(
        ["lscpu"], capture_output=True, text=True, check=False).stdout).group(1).strip()
  except (OSError, AttributeError):
    pass
  print(f"machine: {cpu}, {os.cpu_count()} CPUs; Python {platform.python_version()}; "
        f"model {args.checkpoint or 'bundled'}; --max_batch {args.max_batch}")
  print(f"requests: {images[0][0]}, then {images[1][0]}; times in seconds since spawned")
  rows = []
  for warm_up in args.warm_up.split(","):
    with tempfile.TemporaryDirectory(prefix="serve_start_cache_") as cache_dir:
      for cache in ("cold", "cached"):
        row = one_start(args, cache_dir, warm_up, images)
        rows.append((warm_up, cache, row))
        print(f"  {warm_up} {cache}: {row['log']}", flush=True)
  print()
  print("| --warm_up | cache | ready s | 1st answer s | 2nd size answered s | "
        "all programs s | programs | load avg |")
  print("|---|---|---:|---:|---:|---:|---|---:|")
  for warm_up, cache, row in rows:
    print(f"| {warm_up} | {cache} | {row['ready']:.1f} | {row['first']:.1f} | "
          f"{row['second']:.1f} | {row['done']:.1f} | {row['programs']} | {row['load']:.2f} |")


if __name__ == "__main__":
  main()
