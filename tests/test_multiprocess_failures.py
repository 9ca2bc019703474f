"""How a multi-process training job fails: real processes on 127.0.0.1, CPU gloo.

Failures end in one ``error:`` line and exit status 1 within the times the
command names (short ones here): a process missing at the start
(``--join_timeout``), a process killed mid-run or stopping alone with an
error (its peer names it after ``--peer_timeout``, with the last checkpoint),
process 0, the coordinator, killed (its peer, aborted by JAX's runtime in
its training child, names it at once through its supervisor). A SIGTERM to
one process stops both after the same step, with a checkpoint, and exit
status 0. The jobs are tests/multiprocess_jobs.py's.
"""

import signal
import subprocess
import time

import pytest

import multiprocess_jobs as jobs

pytestmark = jobs.MARKS


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return jobs.make_dataset(tmp_path_factory)


def test_a_process_missing_at_the_start_is_one_error_line_after_the_join_timeout(
    dataset, tmp_path):
  workdir = tmp_path / "alone"
  start = time.time()
  (proc,) = jobs.launch(workdir, dataset, num_processes=2, devices_per_process=1, only=[0],
                         extra_flags=["--join_timeout=6"])
  code = proc.wait(60)
  elapsed = time.time() - start
  out = jobs.log(workdir, 0)
  assert code == 1, out
  assert "waiting for 1 of 2 processes to join (timeout in 6 s)" in out
  lines = out.strip().splitlines()
  assert lines[-1] == ("error: only 1 of 2 processes joined within 6 s; "
                       "start every process of the job"), out
  assert "Check failure" not in out and "Traceback" not in out, out
  assert 6 <= elapsed < 40, elapsed


def _kill_one(workdir, dataset, killed):
  """Kills process ``killed`` of a 2-process job after its first checkpoint.

  Returns the survivor's ``(exit status, output, seconds it took to end, newest step on disk)``.
  """
  survivor = 1 - killed
  procs = jobs.launch(workdir, dataset, num_processes=2, devices_per_process=1, steps=100000,
                      val_images=0, extra_flags=["--peer_timeout=5"])
  jobs.wait_until(lambda: (workdir / "checkpoints" / str(jobs.SAVE_EVERY)).is_dir(), procs,
                  jobs.TIMEOUT, "a first checkpoint")
  procs[killed].send_signal(signal.SIGKILL)  # a supervised process's training child goes too
  killed_at = time.time()
  try:
    code = procs[survivor].wait(60)
  except subprocess.TimeoutExpired:
    procs[survivor].kill()
    raise AssertionError("the surviving process did not end:\n" +
                         jobs.log(workdir, survivor)[-3000:])
  return (code, jobs.log(workdir, survivor), time.time() - killed_at,
          jobs.step_dirs(workdir)[-1])


def test_a_killed_process_is_named_by_its_peer_with_the_last_checkpoint(dataset, tmp_path):
  code, out, waited, last = _kill_one(tmp_path / "killed", dataset, killed=1)
  assert code == 1, out[-3000:]
  assert out.strip().splitlines()[-1] == (
      f"error: process 1 of 2 is gone; the last checkpoint is step {last}; restart the job"), (
          out[-3000:])
  assert "Check failure" not in out, out[-3000:]
  assert waited < 5 + 20, waited


def test_sigterm_to_one_process_stops_the_whole_job_at_one_checkpoint(dataset, tmp_path):
  workdir = tmp_path / "sigterm"
  steps = 100000
  procs = jobs.launch(workdir, dataset, num_processes=2, devices_per_process=1, steps=steps,
                       val_images=0, extra_flags=["--peer_timeout=20"])
  jobs.wait_until(lambda: (workdir / "checkpoints" / str(jobs.SAVE_EVERY)).is_dir(), procs,
                  jobs.TIMEOUT, "a first checkpoint")
  procs[1].send_signal(signal.SIGTERM)
  codes, outs = jobs.finish(procs, workdir, 60, "the job did not stop")
  assert codes == [0, 0], outs
  saved = [[l for l in out.splitlines() if "SIGTERM received: checkpoint saved at step" in l]
           for out in outs]
  assert len(saved[0]) == 1 and saved[0] == saved[1], saved
  step = int(saved[0][0].split()[-1])
  assert jobs.SAVE_EVERY <= step < steps
  assert jobs.step_dirs(workdir)[-1] == step
  for out in outs:
    assert f"stopped at step {step} (SIGTERM)" in out


def test_a_process_that_fails_alone_exits_at_once_and_its_peer_names_it(dataset, tmp_path):
  workdir = tmp_path / "fails"
  missing = tmp_path / "missing.h5"
  procs = jobs.launch(workdir, dataset, num_processes=2, devices_per_process=1, steps=100000,
                       val_images=0, extra_flags=["--peer_timeout=5"],
                       flags_of={1: [f"--config.data_h5={missing}"]})
  codes, outs = jobs.finish(procs, workdir, 120, "the job did not end")
  assert codes == [1, 1], outs
  assert str(missing) in outs[1].strip().splitlines()[-1], outs[1]
  assert outs[1].strip().splitlines()[-1].startswith("error: "), outs[1]
  assert outs[0].strip().splitlines()[-1] == (
      "error: process 1 of 2 is gone; no checkpoint was written; restart the job"), outs[0]
  for out in outs:
    assert "Check failure" not in out and "Traceback" not in out, out


def test_when_process_0_dies_its_peer_names_the_coordinator_in_one_line(dataset, tmp_path):
  code, out, waited, last = _kill_one(tmp_path / "coordinator", dataset, killed=0)
  assert code == 1, out[-3000:]
  assert out.strip().splitlines()[-1] == (
      f"error: process 0 of 2 (the coordinator) is gone; the last checkpoint is step {last}; "
      "restart the job"), out[-3000:]
  for runtime_text in ("Check failure", "Terminating process", "coordination_service",
                       "Traceback"):
    assert runtime_text not in out, out[-3000:]
  assert waited < 5 + 20, waited
