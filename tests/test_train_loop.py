"""Tests for densecap_jax.train.loop on a toy regression (tests/toy_training.py)."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tensorboardX.proto import event_pb2
import tqdm

from densecap_jax import engine
from densecap_jax.train import loop
import disk_faults
import toy_training as toy

HERE = os.path.dirname(__file__)


def _deterministic_loss(params, batch, rng):
  del rng
  pred = batch["x"] @ params["w"] + params["b"]
  return jnp.mean((pred - batch["y"])**2), {}


def _one_step(num_devices, batch):
  tx = optax.sgd(0.1)
  state = loop.init_train_state(toy.init_params(), tx)
  step_fn = jax.pmap(loop.make_train_step(_deterministic_loss, tx), axis_name=engine.BATCH_AXIS,
                     in_axes=(0, 0, None), devices=jax.local_devices()[:num_devices])
  replicated = flax.jax_utils.replicate(state, devices=jax.local_devices()[:num_devices])
  new, metrics = step_fn(replicated, batch, jax.random.key(0))
  return engine.unreplicate(new), jax.device_get(metrics)


def test_pmap_step_equals_single_device_step_on_global_batch():
  assert jax.local_device_count() == 8
  batch = toy.batch_at(0, 8)  # (8 devices, 2, DIM): a global batch of 16
  eight, m8 = _one_step(8, batch)
  single = jax.tree.map(lambda x: x.reshape((1, -1) + x.shape[2:]), batch)
  one, m1 = _one_step(1, single)
  np.testing.assert_allclose(eight.params["w"], one.params["w"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(eight.params["b"], one.params["b"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m8["loss"][0], m1["loss"][0], rtol=1e-5)
  # And both equal plain gradient descent on the global batch.
  x, y = single["x"][0], single["y"][0]
  grad_w = 2 * x.T @ (x @ np.zeros(toy.DIM) - y) / len(y)
  np.testing.assert_allclose(one.params["w"], -0.1 * grad_w, rtol=1e-5)


def test_the_step_averages_over_devices_only_when_there_are_several():
  tx = optax.sgd(0.1)
  state = loop.init_train_state(toy.init_params(), tx)
  step = loop.make_train_step(_deterministic_loss, tx)
  batch = jax.tree.map(lambda x: x[0], toy.batch_at(0, 1))
  programs = {n: str(jax.make_jaxpr(step, axis_env=[(engine.BATCH_AXIS, n)])(
      state, batch, jax.random.key(0))) for n in (1, 2)}
  assert "psum" not in programs[1]  # one device: its values are the mean
  assert "psum" in programs[2]


def test_nonfinite_step_skips_update():
  batch = toy.batch_at(0, 1)
  batch["y"][0, 0] = np.nan
  before = toy.init_params()
  after, metrics = _one_step(1, batch)
  assert not bool(metrics["finite"][0])
  np.testing.assert_array_equal(after.params["w"], before["w"])
  assert int(after.step) == 1


def test_nonfinite_steps_abort(tmp_path):
  tx = optax.sgd(0.1)
  state = loop.init_train_state(toy.init_params(), tx)

  def nan_batches():
    while True:
      b = toy.batch_at(0, jax.local_device_count())
      b["y"][:] = np.nan
      yield b

  with pytest.raises(loop.NonFiniteLossError, match="3 non-finite steps in a row"):
    loop.train_loop(
        state=state, step_fn=loop.pmap_train_step(loop.make_train_step(toy.loss_fn, tx)),
        batches=nan_batches(), base_rng=jax.random.key(0), num_steps=10,
        checkpoints=loop.Checkpoints(tmp_path / "ck"), checkpoint_every=100,
        writer=loop.MetricsWriter(str(tmp_path), tensorboard=False), max_nonfinite_steps=3,
        progress=False)


def test_resume_is_bit_identical(tmp_path):
  full, reason = toy.run(str(tmp_path / "full"), 6)
  assert reason == "done"
  toy.run(str(tmp_path / "split"), 3, checkpoint_every=3)
  resumed, _ = toy.run(str(tmp_path / "split"), 6, checkpoint_every=3)
  assert int(resumed.step) == 6
  np.testing.assert_array_equal(resumed.params["w"], full.params["w"])
  np.testing.assert_array_equal(resumed.params["b"], full.params["b"])
  # The log has one line per step, none repeated.
  with open(tmp_path / "split" / "metrics.jsonl") as f:
    steps = [json.loads(l)["step"] for l in f]
  assert steps == [1, 2, 3, 4, 5, 6]


def _spawn(workdir, steps, delay):
  env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("XLA_FLAGS", None)
  return subprocess.Popen([sys.executable, os.path.join(HERE, "toy_training.py"), str(workdir),
                           str(steps), str(delay)], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _wait_for_checkpoint(workdir, proc, timeout=120):
  deadline = time.time() + timeout
  ck = os.path.join(workdir, "checkpoints")
  while time.time() < deadline:
    if os.path.isdir(ck) and any(d.isdigit() and int(d) >= 4 for d in os.listdir(ck)):
      return
    if proc.poll() is not None:
      raise AssertionError(proc.stdout.read())
    time.sleep(0.05)
  raise AssertionError("no checkpoint appeared")


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted(tmp_path):
  steps = 12
  reference = _spawn(tmp_path / "ref", steps, 0.0)
  assert reference.wait(timeout=300) == 0, reference.stdout.read()
  victim = _spawn(tmp_path / "run", steps, 0.2)
  _wait_for_checkpoint(tmp_path / "run", victim)
  victim.send_signal(signal.SIGKILL)
  victim.wait()
  assert not os.path.exists(tmp_path / "run" / "final.npy")
  resumed = _spawn(tmp_path / "run", steps, 0.0)
  out = resumed.communicate(timeout=300)[0]
  assert resumed.returncode == 0, out
  np.testing.assert_array_equal(np.load(tmp_path / "run" / "final.npy"),
                                np.load(tmp_path / "ref" / "final.npy"))


@pytest.mark.slow
def test_sigterm_writes_checkpoint_and_exits_cleanly(tmp_path):
  proc = _spawn(tmp_path, 1000, 0.2)
  _wait_for_checkpoint(tmp_path, proc)
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=120)[0]
  assert proc.returncode == 0, out
  assert "stopped: SIGTERM" in out
  stopped_at = int(out.rsplit("at step", 1)[1])
  checkpoints = [int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()]
  assert max(checkpoints) == stopped_at


def test_metrics_writer_jsonl_and_tensorboard(tmp_path):
  writer = loop.MetricsWriter(str(tmp_path))
  writer.write(1, {"loss": 2.0})
  writer.write(2, {"loss": np.float32(1.5)})
  writer.truncate_after(1)
  writer.close()
  with open(tmp_path / "metrics.jsonl") as f:
    assert [json.loads(l) for l in f] == [{"step": 1, "loss": 2.0}]
  assert any(n.startswith("events.out.tfevents") for n in os.listdir(tmp_path / "tensorboard"))


def test_metrics_writer_converts_fractions_of_percent_keys_once(tmp_path):
  # Lines written before the validation mAP was logged in percent (no unit).
  with open(tmp_path / "metrics.jsonl", "w") as f:
    for row in ({"step": 5, "loss": 2.5}, {"step": 5, "val_map": 0.0125, "val_detmap": 0.25},
                {"step": 10, "val_detmap": 0.5}):
      f.write(json.dumps(row) + "\n")
  writer = loop.MetricsWriter(str(tmp_path), tensorboard=False,
                              percent_keys=("val_map", "val_detmap"))
  assert writer.percent_from_fractions() == 2
  writer.write(15, {"val_map": 3.5, "val_detmap": 40.0})
  writer.write(16, {"loss": 1.0})
  assert writer.percent_from_fractions() == 0  # converted lines and new ones carry the unit
  with open(tmp_path / "metrics.jsonl") as f:
    assert [json.loads(l) for l in f] == [
        {"step": 5, "loss": 2.5},
        {"step": 5, "val_map": 1.25, "val_detmap": 25.0, "unit": "percent"},
        {"step": 10, "val_detmap": 50.0, "unit": "percent"},
        {"step": 15, "val_map": 3.5, "val_detmap": 40.0, "unit": "percent"},
        {"step": 16, "loss": 1.0}]


def test_step_fn_switch_and_save_hook(tmp_path):
  tx = optax.sgd(0.1)
  state = loop.init_train_state(toy.init_params(), tx)
  learn = loop.pmap_train_step(loop.make_train_step(_deterministic_loss, tx))
  frozen = loop.pmap_train_step(loop.make_train_step(
      lambda p, b, r: (0.0 * _deterministic_loss(p, b, r)[0], {}), tx))
  saved = []

  def run(num_steps, **kwargs):
    return loop.train_loop(
        state=state, step_fn=learn, batches=toy.batches_from(0, jax.local_device_count()),
        base_rng=jax.random.key(0), num_steps=num_steps,
        checkpoints=loop.Checkpoints(tmp_path / f"ck{num_steps}"), checkpoint_every=2,
        writer=loop.MetricsWriter(str(tmp_path), tensorboard=False), progress=False,
        **kwargs)[0]

  two = run(2)
  four = run(4, step_fn_from={2: frozen}, on_save=lambda s: saved.append(int(s.step)))
  np.testing.assert_array_equal(four.params["w"], two.params["w"])
  assert not np.allclose(two.params["w"], 0)
  assert saved == [2, 4]


def _seconds(text):
  """tqdm's ``[H:]MM:SS`` -> seconds."""
  total = 0
  for part in text.split(":"):
    total = 60 * total + int(part)
  return total


def _train_on_a_fake_clock(tmp_path, monkeypatch, capsys, **kwargs):
  """Six toy steps timed by a fake clock: the first takes 1000 s (compiling), the others 2 s.

  Returns the progress bar's ``format_dict`` when it closed, the remaining
  times it printed (seconds) and everything it printed.
  """
  clock = [0.0]
  monkeypatch.setattr(tqdm.std, "time", lambda: clock[0])
  monkeypatch.setattr(tqdm.tqdm, "monitor_interval", 0)
  finals = []

  class Recording(tqdm.tqdm):

    def close(self):
      if not self.disable:  # once: __del__ closes again
        finals.append(dict(self.format_dict))
      super().close()

  monkeypatch.setattr(loop, "tqdm", Recording)
  tx = optax.sgd(0.1)
  real_step = loop.pmap_train_step(loop.make_train_step(_deterministic_loss, tx))
  calls = []

  def step_fn(state, batch, rng):
    clock[0] += 2.0 if calls else 1000.0
    calls.append(clock[0])
    return real_step(state, batch, rng)

  def eval_fn(params):
    del params
    clock[0] += 500.0
    return {"val_map": 1.0}

  if kwargs.pop("validate", False):
    kwargs.update(eval_fn=eval_fn, eval_every=3)
  capsys.readouterr()
  loop.train_loop(
      state=loop.init_train_state(toy.init_params(), tx), step_fn=step_fn,
      batches=toy.batches_from(0, jax.local_device_count()), base_rng=jax.random.key(0),
      num_steps=6, checkpoints=loop.Checkpoints(tmp_path / "c"), checkpoint_every=100,
      writer=loop.MetricsWriter(str(tmp_path), tensorboard=False), log_every=100, **kwargs)
  err = capsys.readouterr().err
  assert len(calls) == 6 and len(finals) == 1
  return finals[0], [_seconds(t) for t in re.findall(r"<([\d:]+),", err)], err


def test_progress_rate_leaves_out_the_compiling_first_step(tmp_path, monkeypatch, capsys):
  # Counted in, the first step alone would estimate 5 x 1000 s for the other
  # five; left out, the bar runs at 0.5 step/s, 10 s in all.
  final, remaining, err = _train_on_a_fake_clock(tmp_path, monkeypatch, capsys)
  assert final["n"] == 6 and final["initial"] == 1
  assert final["elapsed"] == 10.0 and final["rate"] == pytest.approx(0.5)
  assert "compiling: " in err
  assert remaining and max(remaining) <= 8, err  # 4 steps of 2 s after the second


def test_progress_rate_leaves_out_validation(tmp_path, monkeypatch, capsys):
  # A 500 s validation after step 3: the estimates printed at steps 5 and 6
  # come from the 2 s steps alone (counted in, step 4's 502 s would show).
  _, remaining, err = _train_on_a_fake_clock(tmp_path, monkeypatch, capsys, validate=True)
  with open(tmp_path / "metrics.jsonl") as f:
    assert [r["step"] for r in map(json.loads, f) if "val_map" in r] == [3, 6]
  assert remaining and max(remaining) <= 8, err


def test_step_compiles_once(record_compiles, tmp_path):
  tx = optax.sgd(0.1)
  state = loop.init_train_state(toy.init_params(), tx)
  step = loop.pmap_train_step(loop.make_train_step(_deterministic_loss, tx))
  with record_compiles() as compiled:
    loop.train_loop(
        state=state, step_fn=step, batches=toy.batches_from(0, jax.local_device_count()),
        base_rng=jax.random.key(0), num_steps=4, checkpoints=loop.Checkpoints(tmp_path / "c"),
        checkpoint_every=100, writer=loop.MetricsWriter(str(tmp_path), tensorboard=False),
        progress=False)
  # jax.pmap runs as jit(_fun) over shard_map; a second entry would be a recompilation.
  assert compiled.count("jit(_fun)") == 1, compiled


def _truncate_state_files(step_dir):
  for root, _, names in os.walk(os.path.join(step_dir, "state", "d")):
    for name in names:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(10)


def test_unreadable_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capfd):
  full, _ = toy.run(str(tmp_path / "full"), 8)
  workdir = tmp_path / "run"
  toy.run(str(workdir), 6)  # keeps checkpoints 4 and 6
  _truncate_state_files(workdir / "checkpoints" / "6")
  capfd.readouterr()
  resumed, _ = toy.run(str(workdir), 8)
  err = capfd.readouterr().err
  assert "checkpoint" in err and "6 cannot be read" in err and "resuming from step 4" in err
  assert "Traceback" not in err and "Event loop is closed" not in err
  assert (workdir / "checkpoints" / "6.unreadable").is_dir()  # kept on disk
  np.testing.assert_array_equal(resumed.params["w"], full.params["w"])
  assert sorted(os.listdir(workdir / "checkpoints")) == ["6", "6.unreadable", "8"]


def test_no_readable_checkpoint_is_one_clear_error(tmp_path):
  workdir = tmp_path / "run"
  toy.run(str(workdir), 4)
  for step in ("2", "4"):
    _truncate_state_files(workdir / "checkpoints" / step)
  with pytest.raises(loop.CheckpointError, match="no checkpoint in .* can be read") as error:
    toy.run(str(workdir), 6)
  assert "\n" not in str(error.value)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]  # nothing renamed


def test_checkpoint_is_written_before_validation_and_failures_name_the_step(tmp_path):
  tx = optax.sgd(0.1)
  state = loop.init_train_state(toy.init_params(), tx)

  def failing_eval(params):
    del params
    raise RuntimeError("METEOR failed: the METEOR process ended unexpectedly")

  with pytest.raises(loop.ValidationError, match="validation at step 3 failed") as error:
    loop.train_loop(
        state=state, step_fn=loop.pmap_train_step(loop.make_train_step(toy.loss_fn, tx)),
        batches=toy.batches_from(0, jax.local_device_count()), base_rng=jax.random.key(0),
        num_steps=10, checkpoints=loop.Checkpoints(tmp_path / "ck"), checkpoint_every=100,
        writer=loop.MetricsWriter(str(tmp_path), tensorboard=False), eval_fn=failing_eval,
        eval_every=3, progress=False)
  assert "METEOR process ended unexpectedly" in str(error.value)
  assert sorted(os.listdir(tmp_path / "ck")) == ["3"]


def test_metrics_line_after_a_mid_interval_resume_says_how_many_steps_it_averages(tmp_path):
  tx = optax.sgd(0.01)

  def run(num_steps):
    checkpoints = loop.Checkpoints(tmp_path / "ck")
    writer = loop.MetricsWriter(str(tmp_path), tensorboard=False)
    state = loop.init_train_state(toy.init_params(), tx)
    restored = checkpoints.restore_latest(state)
    if restored is not None:
      state = restored[0]
      writer.truncate_after(int(state.step))
    loop.train_loop(
        state=state, step_fn=loop.pmap_train_step(loop.make_train_step(toy.loss_fn, tx)),
        batches=toy.batches_from(int(state.step), jax.local_device_count()),
        base_rng=jax.random.key(0), num_steps=num_steps, checkpoints=checkpoints,
        checkpoint_every=3, writer=writer, log_every=4, progress=False)
    checkpoints.close()

  run(3)
  run(8)
  with open(tmp_path / "metrics.jsonl") as f:
    rows = [json.loads(l) for l in f]
  assert [(r["step"], r["steps_averaged"]) for r in rows] == [(3, 3), (4, 1), (8, 4)]


def _large_state(seed):
  tx = optax.adam(0.1)
  rng = np.random.default_rng(seed)
  params = {"w": rng.standard_normal((300, 100)).astype(np.float32),
            "b": rng.standard_normal(3).astype(np.float32)}
  return loop.init_train_state(params, tx)


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capfd):
  directory = tmp_path / "ck"
  checkpoints = loop.Checkpoints(directory)
  older = _large_state(0).replace(step=np.int32(2))
  newer = _large_state(1).replace(step=np.int32(4))
  checkpoints.save(older, {"run": 1})
  checkpoints.save(newer, {"run": 1})
  checkpoints.close()
  with open(directory / "4" / "checksums.json") as f:
    stored = json.load(f)
  w = np.asarray(newer.params["w"])
  assert stored["arrays"]["params/w"] == hashlib.sha256(b"<f4(300, 100)" + w.tobytes()).hexdigest()
  assert set(stored["arrays"]) == {"step", "params/w", "params/b", "opt_state/0/count",
                                   "opt_state/0/mu/w", "opt_state/0/mu/b", "opt_state/0/nu/w",
                                   "opt_state/0/nu/b"}
  disk_faults.flip_bytes_of_largest_file(directory / "4")
  capfd.readouterr()
  checkpoints = loop.Checkpoints(directory)
  state, meta = checkpoints.restore_latest(_large_state(2))
  checkpoints.close()
  err = capfd.readouterr().err
  assert int(state.step) == 2 and meta == {"run": 1}
  for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(older)):
    np.testing.assert_array_equal(got, want)
  assert (f"warning: checkpoint {directory / '4'} cannot be read (its arrays do not match "
          f"checksums.json: params/w differs; the files are damaged); trying the previous one"
          in err), err
  assert "resuming from step 2" in err and "Traceback" not in err
  assert sorted(os.listdir(directory)) == ["2", "4.unreadable"]


def test_a_checkpoint_without_checksums_restores_unchecked(tmp_path):
  directory = tmp_path / "ck"
  checkpoints = loop.Checkpoints(directory)
  checkpoints.save(_large_state(0).replace(step=np.int32(2)), {})
  checkpoints.close()
  os.remove(directory / "2" / "checksums.json")
  checkpoints = loop.Checkpoints(directory)
  state, _ = checkpoints.restore_latest(_large_state(2))
  checkpoints.close()
  np.testing.assert_array_equal(state.params["w"], _large_state(0).params["w"])


FULL_DISK_RUN = """
import sys
import pytest
import disk_faults
import toy_training as toy
with pytest.MonkeyPatch.context() as monkeypatch:
  disk_faults.no_space_left(monkeypatch)
  try:
    toy.run(sys.argv[1], 4)
  except OSError as e:
    sys.exit(f"error: {e}")
"""


def test_a_full_disk_while_saving_a_checkpoint_is_one_line(tmp_path):
  env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""),
             XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", FULL_DISK_RUN, str(tmp_path / "run")], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
  directory = tmp_path / "run" / "checkpoints"
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert re.fullmatch(rf"error: no space left on device writing checkpoint 2 in {directory} "
                      r"\([0-9.]+ (bytes|KB|MB|GB) free\); free space on that disk and run again",
                      lines[0]), lines[0]
  assert os.listdir(directory) == []  # the partial step is removed


def _tensorboard_scalars(folder):
  """``{tag: [(step, value)]}`` of the TensorBoard event files in ``folder``."""
  scalars = {}
  for name in sorted(os.listdir(folder)):
    with open(os.path.join(folder, name), "rb") as f:
      data = f.read()
    at = 0
    while at < len(data):  # TFRecord: length (8), its crc (4), the record, its crc (4)
      length = int.from_bytes(data[at:at + 8], "little")
      event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
      at += 16 + length
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_metrics_line_and_tensorboard_report_the_wait_for_data(tmp_path):
  tx = optax.sgd(0.01)

  def run(folder, delay):
    writer = loop.MetricsWriter(str(folder))
    loop.train_loop(
        state=loop.init_train_state(toy.init_params(), tx),
        step_fn=loop.pmap_train_step(loop.make_train_step(toy.loss_fn, tx)),
        batches=toy.batches_from(0, jax.local_device_count(), delay=delay),
        base_rng=jax.random.key(0), num_steps=6, checkpoints=loop.Checkpoints(folder / "ck"),
        checkpoint_every=100, writer=writer, log_every=3, progress=False, prefetch=1)
    writer.close()
    with open(folder / "metrics.jsonl") as f:
      return [json.loads(l) for l in f], _tensorboard_scalars(folder / "tensorboard")

  slow, slow_tb = run(tmp_path / "slow", 0.25)  # a loader far slower than the step
  fast, _ = run(tmp_path / "fast", 0.0)
  assert [r["step"] for r in slow] == [3, 6]
  # Steps 4-6: each waits about 0.25 s for its batch, most of the interval's time.
  assert 0.2 <= slow[1]["data_wait"] <= 1.0 and slow[1]["data_wait_percent"] > 60
  assert fast[1]["data_wait"] < 0.05 and fast[1]["data_wait_percent"] < slow[1]["data_wait_percent"]
  assert [s for s, _ in slow_tb["data_wait"]] == [3, 6]
  assert slow_tb["data_wait_percent"][1][1] == pytest.approx(slow[1]["data_wait_percent"],
                                                             rel=1e-6)
