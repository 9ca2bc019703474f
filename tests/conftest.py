"""Test set-up: eight host CPU devices so multi-device code runs on any machine.

Commands run by tests (in this process or as subprocesses), and the tests
themselves, keep compiled programs in a temporary folder removed at exit,
never in the user's cache.
"""

import atexit
import contextlib
import logging
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "DENSECAP_JAX_CACHE_DIR" not in os.environ:
  _CACHE_DIR = tempfile.mkdtemp(prefix="densecap_jax-test-cache-")
  atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
  os.environ["DENSECAP_JAX_CACHE_DIR"] = _CACHE_DIR

import jax  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

from densecap_jax import runtime  # pylint: disable=g-import-not-at-top

# Tests in this process use the same cache as the commands they run: a program
# that several test files compile (the bundled model's passes, say) is
# compiled once per test run.
runtime.setup()


class _CompileRecorder(logging.Handler):

  def __init__(self):
    super().__init__()
    self.names = []

  def emit(self, record):
    message = record.getMessage()
    if message.startswith("Compiling "):
      self.names.append(message.split(" ")[1])


@contextlib.contextmanager
def _record_compiles():
  recorder = _CompileRecorder()
  logger = logging.getLogger("jax")
  logger.addHandler(recorder)
  try:
    with jax.log_compiles():
      yield recorder.names
  finally:
    logger.removeHandler(recorder)


@pytest.fixture
def record_compiles():
  """``with record_compiles() as names:`` lists the programs compiled inside, e.g. ``jit(nms)``."""
  return _record_compiles
