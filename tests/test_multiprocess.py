"""Multi-process training on JAX's distributed runtime: real processes on 127.0.0.1, CPU gloo.

2 processes x 2 CPU devices against 1 process x 4 devices with the same
global batch of 4: the same final parameters to float32 rounding; the job's
validation equals a single-process evaluation of its final parameters; a job
killed after a checkpoint and started again ends at the same parameters;
the checkpoint that 2 x 2 wrote resumes on 1 x 4.

Failures of a job end in one ``error:`` line and exit status 1 within the
times the command names (short ones here): a process missing at the start
(``--join_timeout``), a process killed mid-run or stopping alone with an
error (its peer names it after ``--peer_timeout``, with the last checkpoint),
process 0, the coordinator, killed (its peer, aborted by JAX's runtime in
its training child, names it at once through its supervisor).
A SIGTERM to one process stops both after the same step, with a checkpoint,
and exit status 0.

Why rounding and not bit-exact across layouts: the gradient all-reduce over
four devices adds the same four numbers in another order when two of them
arrive through gloo from the other process ((a + b) + (c + d) rather than
((a + b) + c) + d), and float32 addition is not associative. Everything else
(data shards, random numbers per device, the step itself) is identical, so
the runs agree to rounding. The test trains with Adam's epsilon at 1, where
Adam moves like SGD: with the original's 1e-8 the first steps move each
parameter by about ±learning_rate whatever the size of its gradient, which
turns a rounding difference in a near-zero gradient into a difference of a
whole step. Over more steps the discrete choices of training (which anchors
the sampler takes, which boxes NMS keeps) turn rounding into different
choices too, and how soon depends on the CPU's instruction set. So layouts
are compared over ``SAVE_EVERY`` steps: the single-process run against the
job's checkpoint at that step, and, after the checkpoint, the 1 x 4 resume of
2 x 2's checkpoint against 2 x 2's own resume of it. Within one layout the
order is fixed and a resumed job repeats the same computation (bit-identical
resume is asserted in one process by tests/test_train_loop.py and
tests/test_train_trainer.py); across the kill it is held to the same bound.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from densecap_jax import checkpoint
from densecap_jax.data import loader
from densecap_jax.evaluation import split_eval
import small_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64
STEPS = 10
SAVE_EVERY = 5
TIMEOUT = 600


def _can_run_cpu_collectives():
  return hasattr(jax.config, "jax_cpu_collectives_implementation")


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not _can_run_cpu_collectives(),
                       reason="this jaxlib has no CPU collectives (gloo) for several processes"),
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  folder = tmp_path_factory.mktemp("multiprocess")
  return small_dataset.make_small_dataset(folder, 20, seed=3, image_size=SIZE)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir, dataset, *, num_processes, devices_per_process, steps=STEPS, val_images=4,
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
    port = _free_port()
    command += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}"]
  procs = []
  for i in (range(num_processes) if only is None else only):
    extra = [f"--process_id={i}"] if num_processes > 1 else []
    extra += (flags_of or {}).get(i, [])
    log = open(os.path.join(str(workdir) + f".log{i}"), "w")
    procs.append(subprocess.Popen(command + extra, cwd=ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT))
  return procs


def _wait(procs, workdir):
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


def _final_params(workdir):
  return jax.tree.leaves(checkpoint.load_model(os.path.join(workdir, "last"))[0])


def _params_at(workdir, step):
  """The parameters of the training state checkpointed at ``step``."""
  state = checkpoint.local_checkpointer().restore(
      os.path.join(workdir, "checkpoints", str(step), "state"))
  return jax.tree.leaves(state["params"])


def _val(workdir):
  import json  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [(r["step"], r["val_detmap"]) for r in map(json.loads, f) if "val_detmap" in r]


def _assert_same_params(a, b):
  """Equal to float32 rounding, allowing the odd parameter that a discrete choice moved.

  Rounding leaves differences of ~1e-6 in weights of size ~0.1 after 5 steps;
  where it tips a discrete choice of the sampler, a few parameters move by
  ~1e-5. A wrong shard, random stream or all-reduce moves nearly every
  parameter by whole updates (1e-4 .. 1e-2).
  """
  x = np.concatenate([np.ravel(v) for v in a])
  y = np.concatenate([np.ravel(v) for v in b])
  far = np.abs(x - y) > 1e-5 + 1e-4 * np.abs(y)
  assert far.mean() < 1e-3, f"{far.sum()} of {far.size} parameters differ"
  np.testing.assert_allclose(x, y, atol=1e-3)


def _detmap_of(workdir, dataset):
  """The detection mAP of ``workdir/last`` on the job's validation images, in this process."""
  params, config, _ = checkpoint.load_model(os.path.join(workdir, "last"))
  data = loader.DenseCapH5(*dataset)
  results = split_eval.evaluate_split(
      params, data, "val", split_eval.make_predict_fn(config, 30), config=config, max_images=4,
      batch_size=8, meteor_fn=lambda c, r: [0.0] * len(c), progress=False)
  return results["detmap"]


def test_two_processes_train_as_one_with_four_devices(dataset, tmp_path):
  single, multi = tmp_path / "single", tmp_path / "multi"
  _wait(_launch(single, dataset, num_processes=1, devices_per_process=4, steps=SAVE_EVERY,
                val_images=0), single)
  _wait(_launch(multi, dataset, num_processes=2, devices_per_process=2), multi)
  _assert_same_params(_final_params(single), _params_at(multi, SAVE_EVERY))
  # Checkpoints are written once for the whole job, at each checkpoint step.
  assert sorted(os.listdir(multi / "checkpoints")) == ["10", "5"]
  # Validation ran over both processes' devices and equals one process's evaluation.
  assert [s for s, _ in _val(multi)] == [5, 10]
  assert _val(multi)[-1][1] == 100 * _detmap_of(multi, dataset)  # logged in percent

  # Killed after a checkpoint, started again: the run resumes and ends where it would have.
  killed = tmp_path / "killed"
  procs = _launch(killed, dataset, num_processes=2, devices_per_process=2)
  deadline = time.time() + TIMEOUT
  while not (killed / "checkpoints" / "5").is_dir():
    assert time.time() < deadline and all(p.poll() is None for p in procs), "no checkpoint"
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGKILL)
  procs[0].send_signal(signal.SIGKILL)  # it would wait for its peer in the next all-reduce
  for p in procs:
    p.wait()
  assert sorted(d for d in os.listdir(killed / "checkpoints") if d.isdigit()) == ["5"]
  copy = tmp_path / "killed_on_one_process"
  shutil.copytree(killed, copy)
  _wait(_launch(killed, dataset, num_processes=2, devices_per_process=2), killed)
  _assert_same_params(_final_params(multi), _final_params(killed))

  # What 2 x 2 wrote resumes on 1 x 4.
  _wait(_launch(copy, dataset, num_processes=1, devices_per_process=4, val_images=0), copy)
  _assert_same_params(_final_params(killed), _final_params(copy))


def _log(workdir, i):
  with open(str(workdir) + f".log{i}") as f:
    return f.read()


def _wait_until(condition, procs, limit, what):
  deadline = time.time() + limit
  while not condition():
    if time.time() > deadline or any(p.poll() is not None for p in procs):
      for p in procs:
        p.kill()
      raise AssertionError(f"{what} did not happen")
    time.sleep(0.05)


def test_a_process_missing_at_the_start_is_one_error_line_after_the_join_timeout(
    dataset, tmp_path):
  workdir = tmp_path / "alone"
  start = time.time()
  (proc,) = _launch(workdir, dataset, num_processes=2, devices_per_process=1, only=[0],
                    extra_flags=["--join_timeout=6"])
  code = proc.wait(60)
  elapsed = time.time() - start
  out = _log(workdir, 0)
  assert code == 1, out
  assert "waiting for 1 of 2 processes to join (timeout in 6 s)" in out
  lines = out.strip().splitlines()
  assert lines[-1] == ("error: only 1 of 2 processes joined within 6 s; "
                       "start every process of the job"), out
  assert "Check failure" not in out and "Traceback" not in out, out
  assert 6 <= elapsed < 40, elapsed


def _step_dirs(workdir):
  return sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())


def test_a_killed_process_is_named_by_its_peer_with_the_last_checkpoint(dataset, tmp_path):
  workdir = tmp_path / "killed"
  procs = _launch(workdir, dataset, num_processes=2, devices_per_process=1, steps=100000,
                  val_images=0, extra_flags=["--peer_timeout=5"])
  _wait_until(lambda: (workdir / "checkpoints" / str(SAVE_EVERY)).is_dir(), procs, TIMEOUT,
              "a first checkpoint")
  procs[1].send_signal(signal.SIGKILL)
  killed_at = time.time()
  try:
    code = procs[0].wait(60)
  except subprocess.TimeoutExpired:
    procs[0].kill()
    raise AssertionError("the surviving process did not end:\n" + _log(workdir, 0)[-3000:])
  waited = time.time() - killed_at
  out = _log(workdir, 0)
  assert code == 1, out[-3000:]
  last = _step_dirs(workdir)[-1]
  assert out.strip().splitlines()[-1] == (
      f"error: process 1 of 2 is gone; the last checkpoint is step {last}; restart the job"), (
          out[-3000:])
  assert "Check failure" not in out, out[-3000:]
  assert waited < 5 + 20, waited


def test_sigterm_to_one_process_stops_the_whole_job_at_one_checkpoint(dataset, tmp_path):
  workdir = tmp_path / "sigterm"
  steps = 100000
  procs = _launch(workdir, dataset, num_processes=2, devices_per_process=1, steps=steps,
                  val_images=0, extra_flags=["--peer_timeout=20"])
  _wait_until(lambda: (workdir / "checkpoints" / str(SAVE_EVERY)).is_dir(), procs, TIMEOUT,
              "a first checkpoint")
  procs[1].send_signal(signal.SIGTERM)
  signalled_at = time.time()
  codes = []
  for p in procs:
    try:
      codes.append(p.wait(max(60 - (time.time() - signalled_at), 1)))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise AssertionError("the job did not stop:\n" + _log(workdir, 0)[-2000:] +
                           _log(workdir, 1)[-2000:])
  outs = [_log(workdir, i) for i in range(2)]
  assert codes == [0, 0], outs
  saved = [[l for l in out.splitlines() if "SIGTERM received: checkpoint saved at step" in l]
           for out in outs]
  assert len(saved[0]) == 1 and saved[0] == saved[1], saved
  step = int(saved[0][0].split()[-1])
  assert SAVE_EVERY <= step < steps
  assert _step_dirs(workdir)[-1] == step
  for out in outs:
    assert f"stopped at step {step} (SIGTERM)" in out


def test_a_process_that_fails_alone_exits_at_once_and_its_peer_names_it(dataset, tmp_path):
  workdir = tmp_path / "fails"
  missing = tmp_path / "missing.h5"
  procs = _launch(workdir, dataset, num_processes=2, devices_per_process=1, steps=100000,
                  val_images=0, extra_flags=["--peer_timeout=5"],
                  flags_of={1: [f"--config.data_h5={missing}"]})
  started = time.time()
  try:
    codes = [p.wait(max(120 - (time.time() - started), 1)) for p in procs]
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    raise AssertionError("the job did not end:\n" + _log(workdir, 0)[-2000:] +
                         _log(workdir, 1)[-2000:])
  outs = [_log(workdir, i) for i in range(2)]
  assert codes == [1, 1], outs
  assert str(missing) in outs[1].strip().splitlines()[-1], outs[1]
  assert outs[1].strip().splitlines()[-1].startswith("error: "), outs[1]
  assert outs[0].strip().splitlines()[-1] == (
      "error: process 1 of 2 is gone; no checkpoint was written; restart the job"), outs[0]
  for out in outs:
    assert "Check failure" not in out and "Traceback" not in out, out


def test_when_process_0_dies_its_peer_names_the_coordinator_in_one_line(dataset, tmp_path):
  workdir = tmp_path / "coordinator"
  procs = _launch(workdir, dataset, num_processes=2, devices_per_process=1, steps=100000,
                  val_images=0, extra_flags=["--peer_timeout=5"])
  _wait_until(lambda: (workdir / "checkpoints" / str(SAVE_EVERY)).is_dir(), procs, TIMEOUT,
              "a first checkpoint")
  procs[0].send_signal(signal.SIGKILL)  # its training child goes with it
  killed_at = time.time()
  try:
    code = procs[1].wait(60)
  except subprocess.TimeoutExpired:
    procs[1].kill()
    raise AssertionError("the surviving process did not end:\n" + _log(workdir, 1)[-3000:])
  waited = time.time() - killed_at
  out = _log(workdir, 1)
  assert code == 1, out[-3000:]
  last = _step_dirs(workdir)[-1]
  assert out.strip().splitlines()[-1] == (
      f"error: process 0 of 2 (the coordinator) is gone; the last checkpoint is step {last}; "
      "restart the job"), out[-3000:]
  for runtime_text in ("Check failure", "Terminating process", "coordination_service",
                       "Traceback"):
    assert runtime_text not in out, out[-3000:]
  assert waited < 5 + 20, waited
