"""Multi-process training jobs for tests: real processes on 127.0.0.1, CPU gloo.

``launch`` starts ``python -m densecap_jax.train`` as the processes of one
job on a tiny config (``SIZE``-pixel images, a checkpoint every
``SAVE_EVERY`` steps), each writing its output to ``WORKDIR.logI``; ``wait``,
``wait_until``, ``log`` and ``step_dirs`` follow it. Used by
tests/test_multiprocess.py (what a job computes) and
tests/test_multiprocess_failures.py (how a job fails), two files so that the
test runner's two workers run them side by side.
"""

import os
import socket
import subprocess
import sys
import time

import jax
import pytest

import small_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64
STEPS = 10
SAVE_EVERY = 5
TIMEOUT = 600


def can_run_cpu_collectives():
  return hasattr(jax.config, "jax_cpu_collectives_implementation")


# The test modules' pytestmark.
MARKS = [
    pytest.mark.slow,
    pytest.mark.skipif(not can_run_cpu_collectives(),
                       reason="this jaxlib has no CPU collectives (gloo) for several processes"),
]


def make_dataset(tmp_path_factory):
  """``(h5, json)`` of a small dataset for the jobs (a module fixture calls it)."""
  folder = tmp_path_factory.mktemp("multiprocess")
  return small_dataset.make_small_dataset(folder, 20, seed=3, image_size=SIZE)


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(workdir, dataset, *, num_processes, devices_per_process, steps=STEPS, val_images=4,
            only=None, extra_flags=(), flags_of=None):
  """Starts the training command as ``num_processes`` processes; returns the Popens.

  ``only``: the process ids to start (default all); ``extra_flags`` go to each,
  ``flags_of[i]`` to process ``i`` alone.
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
  command = [sys.executable, "-m", "densecap_jax.train", "--config", "tiny",
             f"--workdir={workdir}", f"--config.data_h5={dataset[0]}",
             f"--config.data_json={dataset[1]}", f"--config.model.image_size={SIZE}",
             f"--config.model.buckets=(({SIZE}, {SIZE}),)", "--config.model.sampler_batch_size=32",
             f"--config.per_device_batch_size={4 // (num_processes * devices_per_process)}",
             "--config.lr_schedule=constant", "--config.warmup_steps=0",
             "--config.learning_rate=0.05", "--config.optim_epsilon=1.0",
             f"--config.save_checkpoint_every={SAVE_EVERY}", "--config.keep_checkpoints=5",
             "--config.losses_log_every=5", f"--config.val_images_use={val_images}",
             "--config.val_metric=detmap", "--config.test_num_proposals=30",
             f"--config.max_iters={steps}", *extra_flags]
  if num_processes > 1:
    port = free_port()
    command += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}"]
  procs = []
  for i in (range(num_processes) if only is None else only):
    extra = [f"--process_id={i}"] if num_processes > 1 else []
    extra += (flags_of or {}).get(i, [])
    log = open(os.path.join(str(workdir) + f".log{i}"), "w")
    procs.append(subprocess.Popen(command + extra, cwd=ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT))
  return procs


def wait(procs, workdir):
  deadline = time.time() + TIMEOUT
  for i, proc in enumerate(procs):
    try:
      code = proc.wait(max(deadline - time.time(), 1))
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
      code = "timeout"
    if code != 0:
      with open(str(workdir) + f".log{i}") as f:
        raise AssertionError(f"process {i} ended with {code}:\n{f.read()[-3000:]}")


def log(workdir, i):
  with open(str(workdir) + f".log{i}") as f:
    return f.read()


def wait_until(condition, procs, limit, what):
  deadline = time.time() + limit
  while not condition():
    if time.time() > deadline or any(p.poll() is not None for p in procs):
      for p in procs:
        p.kill()
      raise AssertionError(f"{what} did not happen")
    time.sleep(0.05)


def step_dirs(workdir):
  return sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())


def finish(procs, workdir, limit, what):
  """Waits up to ``limit`` seconds in all for every process; ``(exit statuses, outputs)``.

  Kills them all and fails, with both logs, when ``what`` (e.g. "the job did
  not stop") has not come true in time.
  """
  started = time.time()
  try:
    codes = [p.wait(max(limit - (time.time() - started), 1)) for p in procs]
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    raise AssertionError(f"{what}:\n" + "".join(log(workdir, i)[-2000:]
                                                for i in range(len(procs)))) from None
  return codes, [log(workdir, i) for i in range(len(procs))]
