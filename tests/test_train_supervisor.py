"""The supervisor of a multi-process job's process: its stderr filter, its verdict, its exit status.

The runtime's text below is what JAX's distributed runtime wrote to stderr in
a process whose coordinator (process 0) was killed (jaxlib on CPU, shortened
stack). The end-to-end case, two real training processes and process 0
killed, is in tests/test_multiprocess.py.
"""

import io
import os
import signal
import subprocess
import sys
import textwrap
import time

from densecap_jax.train import supervisor

WARNING = (
    b"W1206 18:18:43.498133    4527 preemption_sync_manager.cc:147] Failed to retrieve "
    b"preemption notice from coordination service: UNAVAILABLE: Socket closed\n"
    b"Additional GRPC error information from remote target coordination_service while "
    b"calling /xla.coordination.CoordinationService/GetKeyValue:\n"
    b":UNKNOWN:Error received from peer  {grpc_message:\"Socket closed\", grpc_status:14}.\n")
ERROR = (b"E1206 18:16:18.870835    3755 coordination_service_agent.cc:289] Polled an error "
         b"from coordination service (this can be an error from this or another task).\n")
FATAL = (
    b"F1206 18:16:18.870897    3755 client.h:80] Terminating process because the JAX "
    b"distributed service detected fatal errors. This most likely indicates that another task "
    b"died; see the other task logs for more details. absl::Status: UNAVAILABLE: Failed to "
    b"send RPC to coordination service. Either the leader task was preempted/died/restarted "
    b"unexpectedly or this task is experiencing network issues.\n"
    b"Additional GRPC error information from remote target coordination_service while "
    b"calling /xla.coordination.CoordinationService/PollForError:\n"
    b":UNKNOWN:Error received from peer  {grpc_message:\"Socket closed\", grpc_status:14}\n"
    b"*** Check failure stack trace: ***\n"
    b"    @     0x7f1e49a40634  absl::lts_20260107::log_internal::LogMessage::SendToLog()\n"
    b"    @     0x7f1e45b040ee  xla::CoordinationServiceAgent::SetError()\n"
    b"    @     0x7f1e50ea71f5  (unknown)\n")
PROGRESS = b"\r 12%|#2        | 12/100 [00:03<00:22,  3.9step/s]"


def _feed_in_pieces(filt, data, size, now=0.0):
  for i in range(0, len(data), size):
    filt.feed(data[i:i + size], now)


def test_the_fatal_report_and_the_runtime_lines_before_it_are_dropped():
  for size in (1, 7, 64, 100000):
    out = io.BytesIO()
    filt = supervisor.StderrFilter(out)
    _feed_in_pieces(filt, b"loading data\n" + PROGRESS + b"\n" + WARNING + ERROR + FATAL, size)
    filt.close()
    assert out.getvalue() == b"loading data\n" + PROGRESS + b"\n", size
    assert filt.fatal and filt.report == FATAL.split(b"\n")[0] + b"\n"


def test_a_progress_bar_update_passes_before_its_line_ends():
  out = io.BytesIO()
  filt = supervisor.StderrFilter(out)
  filt.feed(PROGRESS, 0.0)
  assert out.getvalue() == PROGRESS
  filt.feed(b"\r 13%", 0.1)
  assert out.getvalue() == PROGRESS + b"\r 13%"


def test_runtime_lines_without_a_fatal_report_are_shown_after_the_hold():
  out = io.BytesIO()
  filt = supervisor.StderrFilter(out, hold_s=2.0)
  filt.feed(WARNING + b"step 7\n", 10.0)
  assert out.getvalue() == b""  # held: a fatal report may follow
  filt.tick(11.9)
  assert out.getvalue() == b""
  filt.tick(12.0)
  assert out.getvalue() == WARNING + b"step 7\n"
  filt.feed(ERROR, 13.0)
  filt.close()  # the end: what is held is shown
  assert out.getvalue() == WARNING + b"step 7\n" + ERROR and not filt.fatal


def test_the_verdict_names_the_coordinator_and_the_newest_checkpoint(tmp_path):
  for name in ("5", "10", "15.orbax-checkpoint-tmp-3", "best"):
    (tmp_path / name).mkdir()
  report = FATAL.split(b"\n")[0]
  assert supervisor.gone_message(report, process_id=1, num_processes=2,
                                 checkpoint_dir=str(tmp_path)) == (
      "error: process 0 of 2 (the coordinator) is gone; the last checkpoint is step 10; "
      "restart the job")
  assert supervisor.gone_message(report, process_id=3, num_processes=4,
                                 checkpoint_dir=str(tmp_path / "none")) == (
      "error: process 0 of 4 (the coordinator) is gone; no checkpoint was written; "
      "restart the job")


def _supervise_in_subprocess(child_code, tmp_path, send=None, merged=False):
  """Runs supervise() in a fresh process with ``child_code`` as its child; (status, out, err).

  ``merged``: stdout and stderr go to one pipe (``out``).
  """
  tmp_path.mkdir(parents=True, exist_ok=True)
  child = tmp_path / "child.py"
  child.write_text(textwrap.dedent(child_code))
  (tmp_path / "checkpoints" / "20").mkdir(parents=True)
  code = textwrap.dedent(f"""
      import sys
      from densecap_jax.train import supervisor
      sys.exit(supervisor.supervise(process_id=1, num_processes=2,
                                    checkpoint_dir={str(tmp_path / 'checkpoints')!r},
                                    command=[sys.executable, {str(child)!r}]))
      """)
  proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT if merged else subprocess.PIPE, env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                              sys.path)))
  if send is not None:  # once the child says it is ready
    deadline = time.time() + 60
    while not (tmp_path / "ready").exists() and time.time() < deadline:
      time.sleep(0.05)
    proc.send_signal(send)
  out, err = proc.communicate(timeout=60)
  return proc.returncode, out, err


def test_a_child_aborted_by_the_runtime_becomes_one_line_and_status_1(tmp_path):
  code, out, err = _supervise_in_subprocess(f"""
      import os, sys
      assert os.environ["{supervisor.CHILD_ENV}"] == "1"
      print("training", flush=True)
      sys.stderr.buffer.write({WARNING + ERROR!r}); sys.stderr.flush()
      sys.stderr.buffer.write({FATAL!r}); sys.stderr.flush()
      os.abort()
      """, tmp_path)
  assert code == 1
  assert out == b"training\n"
  assert err.decode().strip().splitlines() == [
      "error: process 0 of 2 (the coordinator) is gone; the last checkpoint is step 20; "
      "restart the job"]


def test_other_endings_keep_the_childs_status_and_output(tmp_path):
  code, out, err = _supervise_in_subprocess("""
      import sys
      print("out", flush=True)
      sys.stderr.write("error: something else\\n")
      sys.exit(3)
      """, tmp_path / "a")
  assert (code, out, err) == (3, b"out\n", b"error: something else\n")
  # An abort without the runtime's report is not the coordinator's death.
  code, _, err = _supervise_in_subprocess("import os; os.abort()", tmp_path / "b")
  assert code == 128 + signal.SIGABRT and b"coordinator" not in err


def test_sigterm_to_the_supervisor_reaches_the_child(tmp_path):
  code, out, _ = _supervise_in_subprocess(f"""
      import signal, sys, time
      signal.signal(signal.SIGTERM, lambda *a: (print("child got SIGTERM", flush=True),
                                                sys.exit(0)))
      open({str(tmp_path / "ready")!r}, "w").close()
      time.sleep(30)
      sys.exit(5)
      """, tmp_path, send=signal.SIGTERM)
  assert code == 0 and out == b"child got SIGTERM\n"


def test_the_childs_python_stderr_keeps_its_order_with_stdout(tmp_path):
  code, out, _ = _supervise_in_subprocess("""
      import os, sys
      from densecap_jax.train import supervisor
      supervisor.use_parent_stderr()
      for i in range(200):
        sys.stderr.write(f"\\r bar {i}"); sys.stderr.flush()
        sys.stdout.write(f"message {i}\\n"); sys.stdout.flush()
      os.write(2, b"native\\n")
      """, tmp_path, merged=True)
  assert code == 0
  assert out == b"".join(b"\r bar %d" % i + b"message %d\n" % i for i in range(200)) + (
      b"native\n")
