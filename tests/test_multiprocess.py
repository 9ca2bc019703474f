"""Multi-process training on JAX's distributed runtime: real processes on 127.0.0.1, CPU gloo.

2 processes x 2 CPU devices against 1 process x 4 devices with the same
global batch of 4: the same final parameters to float32 rounding; the job's
validation equals a single-process evaluation of its final parameters; a job
killed after a checkpoint and started again ends at the same parameters;
the checkpoint that 2 x 2 wrote resumes on 1 x 4. How jobs fail is tested in
tests/test_multiprocess_failures.py; both use tests/multiprocess_jobs.py.

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
import time

import jax
import numpy as np
import pytest

from densecap_jax import model_dir
from densecap_jax.data import loader
from densecap_jax.evaluation import split_eval
import multiprocess_jobs as jobs

pytestmark = jobs.MARKS


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return jobs.make_dataset(tmp_path_factory)


def _final_params(workdir):
  return jax.tree.leaves(model_dir.load_model(os.path.join(workdir, "last"))[0])


def _params_at(workdir, step):
  """The parameters of the training state checkpointed at ``step``."""
  state = model_dir.local_checkpointer().restore(
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
  params, config, _ = model_dir.load_model(os.path.join(workdir, "last"))
  data = loader.DenseCapH5(*dataset)
  results = split_eval.evaluate_split(
      params, data, "val", split_eval.make_predict_fn(config, 30), config=config, max_images=4,
      batch_size=8, meteor_fn=lambda c, r: [0.0] * len(c), progress=False)
  return results["detmap"]


def test_two_processes_train_as_one_with_four_devices(dataset, tmp_path):
  single, multi = tmp_path / "single", tmp_path / "multi"
  jobs.wait(jobs.launch(single, dataset, num_processes=1, devices_per_process=4,
                        steps=jobs.SAVE_EVERY, val_images=0), single)
  jobs.wait(jobs.launch(multi, dataset, num_processes=2, devices_per_process=2), multi)
  _assert_same_params(_final_params(single), _params_at(multi, jobs.SAVE_EVERY))
  # Checkpoints are written once for the whole job, at each checkpoint step.
  assert sorted(os.listdir(multi / "checkpoints")) == ["10", "5"]
  # Validation ran over both processes' devices and equals one process's evaluation.
  assert [s for s, _ in _val(multi)] == [5, 10]
  assert _val(multi)[-1][1] == 100 * _detmap_of(multi, dataset)  # logged in percent

  # Killed after a checkpoint, started again: the run resumes and ends where it would have.
  killed = tmp_path / "killed"
  procs = jobs.launch(killed, dataset, num_processes=2, devices_per_process=2)
  deadline = time.time() + jobs.TIMEOUT
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
  jobs.wait(jobs.launch(killed, dataset, num_processes=2, devices_per_process=2), killed)
  _assert_same_params(_final_params(multi), _final_params(killed))

  # What 2 x 2 wrote resumes on 1 x 4.
  jobs.wait(jobs.launch(copy, dataset, num_processes=1, devices_per_process=4, val_images=0),
            copy)
  _assert_same_params(_final_params(killed), _final_params(copy))
