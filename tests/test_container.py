"""The web server's container image, built from the Dockerfile and run for real.

``make test-container`` runs these (``DENSECAP_JAX_CONTAINER_TEST=1``): a base
image from Debian packages, ``buildah bud`` of the Dockerfile, ``podman run``;
the page's health, one caption request checked against the predictor
outside the container, the health check, SIGTERM, the cache volume and a
mounted model. They are skipped, with the reason, where containers cannot run.
"""

import io
import json
import os
import shutil
import subprocess
import sys
import urllib.request
import uuid

import numpy as np
import pytest
from PIL import Image

from multiprocess_jobs import free_port
import small_model
from test_serve import assert_same_answer
from test_serve import expected_answer
from test_serve import multipart

from densecap_jax import predictor as predictor_lib
from tools import container

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if os.environ.get("DENSECAP_JAX_CONTAINER_TEST") != "1":
  pytest.skip("builds and runs a container image (minutes): make test-container runs it",
              allow_module_level=True)
if (reason := container.cannot_run()) is not None:
  pytest.skip(reason, allow_module_level=True)

TAG = "localhost/densecap-jax:test"
EXAMPLE = os.path.join(predictor_lib.bundled_examples_path(),
                       sorted(os.listdir(predictor_lib.bundled_examples_path()))[0])



@pytest.fixture(scope="module")
def image():
  container.build_base()
  if (why := container.cannot_start()) is not None:
    pytest.skip(why)
  container.build_image(TAG)
  return TAG


@pytest.fixture
def served(image):
  """Starts containers of the image; each is stopped (SIGTERM) and removed at the end."""
  names = []

  def start(**kwargs):
    name = f"densecap-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    names.append(name)
    container.start(image, name, port, **kwargs)
    return name, port

  yield start
  for name in names:
    container.remove(name)


def _post_caption(port, path):
  with open(path, "rb") as f:
    body, content_type = multipart({"image": (os.path.basename(path), f.read())})
  request = urllib.request.Request(f"http://127.0.0.1:{port}/api/caption", data=body,
                                   headers={"Content-Type": content_type})
  with urllib.request.urlopen(request, timeout=300) as response:
    return json.loads(response.read())


def test_dockerfile_passes_hadolint():
  hadolint = shutil.which("hadolint") or os.path.join(os.path.dirname(sys.executable), "hadolint")
  done = subprocess.run([hadolint, os.path.join(ROOT, "Dockerfile")], capture_output=True,
                        text=True)
  assert done.returncode == 0, done.stdout + done.stderr


def test_container_serves_captions_and_stops_on_sigterm(served):
  volume = f"densecap-cache-{uuid.uuid4().hex[:8]}"
  try:
    name, port = served(volume=volume)
    _, health = container.wait_healthy(port)
    assert health["status"] == "ok" and health["model"] == "tiny_synthetic"

    answer = _post_caption(port, EXAMPLE)
    model = predictor_lib.load_model()
    expected = expected_answer(model, np.asarray(Image.open(EXAMPLE).convert("RGB")))
    assert_same_answer(answer, expected)  # as the server outside a container answers

    check = container.run(["podman", "healthcheck", "run", name], check=False)
    assert check.returncode == 0, check.stdout + check.stderr

    code, logs = container.stop(name)
    assert code == 0, logs[-2000:]
    assert "shutdown: SIGTERM received" in logs

    # the compiled programs are on the volume, for the next container to load
    listing = container.run(["podman", "run", "--rm", "-v", f"{volume}:/cache", "--entrypoint",
                             "ls", TAG, "/cache/densecap_jax/jax"])
    assert any(line.startswith("jit_") for line in listing.stdout.split()), listing.stdout
  finally:
    container.run(["podman", "volume", "rm", "-f", volume], check=False)


def test_container_serves_a_mounted_model_named_by_environment(served, tmp_path):
  vocab = [None, "a", "red", "circle"]
  model_dir = small_model.save_random_tiny_model(tmp_path / "mine", vocab, image_size=64)
  os.chmod(tmp_path, 0o755)
  for folder, dirs, files in os.walk(model_dir):
    for entry in dirs + files:
      os.chmod(os.path.join(folder, entry), 0o755)
  name, port = served(env={"DENSECAP_JAX_MODEL": "/models/mine"},
                      mounts=[(model_dir, "/models/mine")])
  _, health = container.wait_healthy(port)
  assert health["model"] == "mine" and health["image_size"] == 64
  buffer = io.BytesIO()
  Image.new("RGB", (80, 60), (200, 30, 30)).save(buffer, "PNG")
  path = tmp_path / "red.png"
  path.write_bytes(buffer.getvalue())
  answer = _post_caption(port, str(path))
  assert len(answer["boxes"]) == len(answer["captions"]) == len(answer["scores"])
  code, logs = container.stop(name)
  assert code == 0, logs[-2000:]
