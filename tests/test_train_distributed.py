"""The multi-process helpers in one process: stop agreement, heartbeats, last checkpoint.

The real multi-process behaviour (processes on 127.0.0.1) is in
tests/test_multiprocess.py.
"""

import os
import threading
import time

import jax
import pytest

from densecap_jax import engine
from densecap_jax.train import distributed


def test_stop_agreement_reports_a_signal_lag_steps_after_it_arrives():
  agreement = distributed.StopAgreement(engine.BATCH_AXIS, lag=2)
  requests = [None, None, "SIGTERM", "SIGTERM", "SIGTERM", "SIGTERM"]
  agreed = [agreement.after_step(r) for r in requests]
  # Step i reads the request of step i - 2: the signal of step 3 is agreed at step 5.
  assert agreed == [None, None, None, None, "SIGTERM", "SIGTERM"]


def test_stop_agreement_takes_the_largest_signal_number():
  agreement = distributed.StopAgreement(engine.BATCH_AXIS, lag=0)
  assert agreement.after_step("SIGINT") == "SIGINT"  # 2
  assert agreement.after_step(None) is None
  assert agreement.after_step("SIGTERM") == "SIGTERM"  # 15


def test_last_checkpoint_step_is_the_largest_finished_step_folder(tmp_path):
  assert distributed.last_checkpoint_step(str(tmp_path / "missing")) is None
  for name in ["5", "10", "15.orbax-checkpoint-tmp-3", "2.unreadable"]:
    os.mkdir(tmp_path / name)
  assert distributed.last_checkpoint_step(str(tmp_path)) == 10


class _Store:
  """The key-value calls of jax's distributed client, in a dict."""

  def __init__(self):
    self.values = {}
    self.lock = threading.Lock()

  def key_value_set(self, key, value, allow_overwrite=False):
    with self.lock:
      assert allow_overwrite or key not in self.values
      self.values[key] = value

  def key_value_dir_get(self, prefix):
    with self.lock:
      return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]


@pytest.fixture
def failures(monkeypatch):
  messages = []
  monkeypatch.setattr(distributed, "fail", messages.append)  # instead of ending the process
  return messages


def _beat_forever(store, process, stop):
  count = 0
  while not stop.wait(0.02):
    count += 1
    store.key_value_set(f"densecap/alive/{process}", str(count), allow_overwrite=True)


def test_a_peer_whose_heartbeat_stops_is_named_with_the_last_checkpoint(tmp_path, failures):
  os.mkdir(tmp_path / "5")
  store, stop_peer1 = _Store(), threading.Event()
  threading.Thread(target=_beat_forever, args=(store, 1, stop_peer1), daemon=True).start()
  # Process 2 never beats; process 1 beats for 0.3 s, then stops.
  watch = distributed.PeerWatch(0.2, str(tmp_path), interval=0.02, client=store, process_id=0,
                                num_processes=3)
  store.key_value_set("densecap/alive/2", "1")
  store.key_value_set("densecap/done/2", "1")  # process 2 has finished: not watched
  with watch:
    time.sleep(0.5)
    assert not failures  # process 1 still beating
    stop_peer1.set()
    deadline = time.time() + 5
    while not failures and time.time() < deadline:
      time.sleep(0.02)
  assert failures == ["process 1 of 3 is gone; the last checkpoint is step 5; restart the job"]
  assert store.values["densecap/alive/0"] != "0"  # this process beat too


def test_a_finished_process_is_marked_done_and_a_failed_one_is_not(tmp_path, failures):
  store = _Store()
  with distributed.PeerWatch(5, str(tmp_path), interval=0.02, client=store, process_id=1,
                             num_processes=2):
    pass
  assert store.values["densecap/done/1"] == "1"
  store = _Store()
  with pytest.raises(SystemExit):
    with distributed.PeerWatch(5, str(tmp_path), interval=0.02, client=store, process_id=1,
                               num_processes=2):
      raise SystemExit("error: something")
  assert "densecap/done/1" not in store.values
  assert not failures


def test_collective_failures_are_told_apart_from_local_errors():
  gloo = ("UNKNOWN: Gloo all-reduce failed: [external/gloo/gloo/transport/tcp/pair.cc:547] "
          "Connection closed by peer [127.0.0.1]:43735")
  assert distributed.is_collective_failure(ValueError(gloo))
  try:  # wrapped by whatever saved the checkpoint
    try:
      raise jax.errors.JaxRuntimeError("INTERNAL: something between processes")
    except RuntimeError as inner:
      raise OSError("checkpoint 5 could not be written") from inner
  except OSError as outer:
    assert distributed.is_collective_failure(outer)
  assert not distributed.is_collective_failure(FileNotFoundError("data/regions.h5"))
  assert not distributed.is_collective_failure(ValueError("max_iters must be positive"))
