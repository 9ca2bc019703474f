"""The web server's container image: build time, size, start to a healthy /healthz, one request.

Builds the Dockerfile's image with buildah on a Debian base made by
mmdebstrap (``tools/container.py``; the base is reused when present, its
build time is given when it was made), then:

* **cold start**: a container with an empty ``/cache`` volume, from
  ``podman run`` to ``/healthz`` answering 200 (the server is ready once the
  parameters are loaded), and to the answer of a first caption request (its
  program compiled);
* **warm start**: the same volume again (its compiled programs are kept), in a
  new container after the first stopped: the first answer loads the program;
* **caption**: one ``POST /api/caption`` of a bundled example, timed in the
  warm container after a first request of the same shape (so both sides
  have the program compiled), against the same request to
  ``python -m densecap_jax.serve`` started outside the container on this
  machine.

The 1-minute load average before the run is printed: other work slows every
column.

  python benchmarks/container.py
"""

import json
import os
import platform
import subprocess
import sys
import time
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from densecap_jax import predictor as predictor_lib  # pylint: disable=g-import-not-at-top
from multiprocess_jobs import free_port  # pylint: disable=g-import-not-at-top
from test_serve import multipart  # pylint: disable=g-import-not-at-top
from tools import container  # pylint: disable=g-import-not-at-top

TAG = "localhost/densecap-jax:bench"



def _caption_seconds(port, path, repeats=3):
  """Best of ``repeats`` timed requests, after one untimed (the program compiled)."""
  with open(path, "rb") as f:
    body, content_type = multipart({"image": (os.path.basename(path), f.read())})
  times = []
  for i in range(repeats + 1):
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/caption", data=body,
                                     headers={"Content-Type": content_type})
    start = time.monotonic()
    with urllib.request.urlopen(request, timeout=600) as response:
      answer = json.loads(response.read())
    if i:
      times.append(time.monotonic() - start)
    assert len(answer["boxes"]) == len(answer["captions"])
  return min(times) if times else None


def main():
  why = container.cannot_run()
  if why:
    sys.exit(f"error: {why}")
  with open("/proc/loadavg") as f:
    load = f.read().split()[0]
  base_seconds = container.build_base()
  build_seconds = container.build_image(TAG, extra=("--no-cache",))  # every layer built
  size = container.image_size(TAG)
  example = os.path.join(predictor_lib.bundled_examples_path(),
                         sorted(os.listdir(predictor_lib.bundled_examples_path()))[0])
  volume = f"densecap-bench-{uuid.uuid4().hex[:8]}"
  rows = []
  try:
    for kind in ("cold", "warm"):
      name, port = f"densecap-bench-{uuid.uuid4().hex[:8]}", free_port()
      start = time.monotonic()
      container.start(TAG, name, port, volume=volume)
      container.wait_healthy(port)
      rows.append((f"{kind} start to healthy /healthz", time.monotonic() - start))
      _caption_seconds(port, example, repeats=0)  # compiles, or loads from the volume's cache
      rows.append((f"{kind} start to the first caption answer", time.monotonic() - start))
      if kind == "warm":
        rows.append(("caption request, in the container", _caption_seconds(port, example)))
      container.stop(name)
      container.remove(name)
  finally:
    container.run(["podman", "volume", "rm", "-f", volume], check=False)
  port = free_port()
  server = subprocess.Popen([sys.executable, "-m", "densecap_jax.serve", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    container.wait_healthy(port)
    rows.append(("caption request, outside (python -m densecap_jax.serve)",
                 _caption_seconds(port, example)))
  finally:
    server.terminate()
    server.wait(30)
  print(f"# {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, load {load}; python benchmarks/container.py")
  print("| measure | value |")
  print("|---|---|")
  if base_seconds:
    print(f"| base image (mmdebstrap + podman import) | {base_seconds:.0f} s |")
  print(f"| image build (buildah bud) | {build_seconds:.0f} s |")
  print(f"| image size | {size / 1e9:.2f} GB |")
  for label, seconds in rows:
    print(f"| {label} | {seconds:.2f} s |")


if __name__ == "__main__":
  main()
