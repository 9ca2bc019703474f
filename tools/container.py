"""Builds and runs the web server's container image with podman and buildah.

Used by ``tests/test_container.py`` (``make test-container``) and
``benchmarks/container.py``. No registry is needed: the base image is made
from Debian packages (``mmdebstrap``: ``python3``, ``python3-venv``,
``ca-certificates``) and imported with ``podman import``; ``buildah bud``
builds the repository's ``Dockerfile`` on it with the host's pip
configuration and CA certificates mounted, so pip reaches the package index
as the host does.

podman runs with ``runc``, the ``cgroupfs`` cgroup manager and no default
ulimits (``containers.conf`` written here, passed as ``CONTAINERS_CONF``),
which machines with a hybrid cgroup layout need; ``buildah --isolation
chroot`` needs none of it.
"""

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_IMAGE = "localhost/densecap-base:bookworm"
TOOLS = ("podman", "buildah", "mmdebstrap")
CONTAINERS_CONF = """\
[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


@functools.lru_cache(maxsize=None)
def _containers_conf():
  """This module's podman settings, written once per process; the file's path."""
  path = os.path.join(tempfile.gettempdir(), "densecap_jax-containers.conf")
  with open(path, "w") as f:
    f.write(CONTAINERS_CONF)
  return path


def environment():
  """``os.environ`` with ``CONTAINERS_CONF`` pointing at this module's podman settings."""
  return dict(os.environ, CONTAINERS_CONF=_containers_conf())


def missing_tools():
  """The container tools not on ``PATH``."""
  return [t for t in TOOLS if shutil.which(t) is None]


def run(args, *, check=True, timeout=900, **kwargs):
  """Runs a command with the podman settings; output captured as text."""
  done = subprocess.run(args, env=environment(), capture_output=True, text=True, timeout=timeout,
                        **kwargs)
  if check and done.returncode != 0:
    raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): "
                       f"{(done.stderr or done.stdout)[-3000:]}")
  return done


def cannot_run():
  """Why containers cannot run on this machine, or ``None`` when podman works."""
  if missing_tools():
    return f"{', '.join(missing_tools())} not installed (make test-container installs them as root)"
  done = run(["podman", "info", "--format", "json"], check=False, timeout=120)
  if done.returncode != 0:
    return f"podman cannot run here: {done.stderr.strip().splitlines()[-1:]}"
  return None


def build_base(name=BASE_IMAGE):
  """Imports a Debian base image with Python from Debian packages, unless present. Seconds taken."""
  if run(["podman", "image", "exists", name], check=False).returncode == 0:
    return 0.0
  start = time.monotonic()
  with tempfile.TemporaryDirectory() as tmp:
    tar = os.path.join(tmp, "base.tar")
    run(["mmdebstrap", "--variant=apt", "--include=python3,python3-venv,ca-certificates",
         "bookworm", tar], timeout=1200)
    run(["podman", "import", tar, name])
  return time.monotonic() - start


def cannot_start(base=BASE_IMAGE):
  """Why a container of ``base`` cannot start with a published port here, or ``None``."""
  done = run(["podman", "run", "--rm", "-p", "127.0.0.1::8000", base, "python3", "-c", "pass"],
             check=False, timeout=300)
  if done.returncode != 0:
    return f"podman cannot start a container here: {(done.stderr or done.stdout).strip()[-300:]}"
  return None


# pip settings that reach the package index, copied from the host's (its
# files and PIP_* variables) into the build; paths of the host (find-links,
# constraints) stay out.
PIP_KEYS = ("index-url", "extra-index-url", "trusted-host", "cert", "client-cert", "proxy",
            "timeout", "default-timeout", "retries")


def host_pip_conf():
  """The host's pip settings for reaching the index, as a pip.conf text; the files they name."""
  listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                          text=True).stdout
  settings = {}
  for line in listed.splitlines():
    name, _, value = line.partition("=")
    key = name.rsplit(".", 1)[-1]
    if key in PIP_KEYS and value:
      settings[key] = value.strip("'\"")
  files = [v for k, v in settings.items() if k in ("cert", "client-cert") and os.path.exists(v)]
  if "extra-index-url" in settings:  # local file:// indexes of the host are not in the build
    urls = [u for u in settings["extra-index-url"].split() if not u.startswith("file:")]
    settings["extra-index-url"] = " ".join(urls)
  text = "[global]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items() if v)
  return text, files


def build_image(tag, *, base=BASE_IMAGE, extra=()):
  """``buildah bud`` of the repository's Dockerfile on ``base``. Seconds taken."""
  text, files = host_pip_conf()
  with tempfile.TemporaryDirectory() as tmp:
    conf = os.path.join(tmp, "pip.conf")
    with open(conf, "w") as f:
      f.write(text)
    mounts = ["-v", f"{conf}:/etc/pip.conf:ro"]
    certs = "/etc/ssl/certs"  # the host's CA store, where the index's certificate chains
    paths = ([certs] if os.path.isdir(certs) else []) + [
        f for f in files if not f.startswith(certs + os.sep)]
    for path in paths:
      mounts += ["-v", f"{path}:{path}:ro"]
    start = time.monotonic()
    run(["buildah", "bud", "--format", "docker", "--isolation", "chroot", "--network", "host",
         "--layers", "--build-arg", f"BASE_IMAGE={base}", *mounts, *extra, "-t", tag, ROOT],
        timeout=1800)
    return time.monotonic() - start


def image_size(tag):
  """The image's size in bytes."""
  return int(json.loads(run(["podman", "image", "inspect", tag]).stdout)[0]["Size"])


def start(tag, name, port, *, volume=None, env=None, mounts=()):
  """Starts a container of ``tag`` detached, its port 8000 published on ``port``."""
  args = ["podman", "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000"]
  if volume:
    args += ["-v", f"{volume}:/cache"]
  for key, value in (env or {}).items():
    args += ["-e", f"{key}={value}"]
  for source, target in mounts:
    args += ["-v", f"{source}:{target}:ro"]
  run(args + [tag])


def wait_healthy(port, timeout=300):
  """Seconds until ``/healthz`` answers 200; its JSON. TimeoutError after ``timeout``."""
  start_time = time.monotonic()
  while time.monotonic() - start_time < timeout:
    try:
      with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        if response.status == 200:
          return time.monotonic() - start_time, json.loads(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
      pass
    time.sleep(0.5)
  raise TimeoutError(f"no /healthz on port {port} after {timeout} s")


def stop(name, timeout=30):
  """SIGTERM (``podman stop``); the container's exit code and its log."""
  run(["podman", "stop", "-t", str(timeout), name], timeout=timeout + 60)
  code = int(run(["podman", "inspect", name, "--format", "{{.State.ExitCode}}"]).stdout.strip())
  logs = run(["podman", "logs", name])
  return code, logs.stdout + logs.stderr


def remove(name):
  run(["podman", "rm", "-f", name], check=False)
