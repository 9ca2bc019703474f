"""Trains DenseCap: ``python -m densecap_jax.train --config tiny --workdir runs/tiny``.

``--config`` is a config file (``train/configs/tiny.py`` in a checkout) or the
name of one shipped in ``densecap_jax/train/configs`` (``tiny``, ``vgg16``);
``train/train.py`` is the same command.

Any config field can be overridden on the command line, e.g.
``--config.learning_rate=1e-4 --config.model.box_reg_decay=0``. Started
again with the same ``--workdir``, a run resumes from its newest checkpoint
(``--resume``, the default) and continues exactly as if it had not stopped;
``--noresume`` refuses a ``--workdir`` that already has checkpoints.
A multi-process job (several hosts of a GPU cluster or a TPU pod, or several
processes on one machine) passes ``--distributed`` on every process, with
``--coordinator_address``, ``--num_processes`` and ``--process_id`` where
the cluster is not detected from the environment; each process reads its own
shard of the training images. Every process must join within ``--join_timeout``
seconds (default 300), and a process whose heartbeat stops for
``--peer_timeout`` seconds (default 60) is reported gone by the others; both
end the job with one ``error:`` line and exit status 1 (see
``densecap_jax.train.distributed``). Each process of such a job runs the
training in a child process and supervises it, so that when process 0 (which
hosts JAX's coordination service) dies, the others end with one line too,
``error: process 0 of N (the coordinator) is gone; the last checkpoint is
step S; restart the job``, and exit status 1, where JAX would abort them from
C++ (see ``densecap_jax.train.supervisor``). A SIGTERM or SIGINT to any one
process stops every process after the same step, with a checkpoint, and exit
status 0.
"""

import contextlib
import os
import sys

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from densecap_jax import runtime
from densecap_jax.commands import flags as command_flags
from densecap_jax.train import distributed
from densecap_jax.train import loop
from densecap_jax.train import supervisor
from densecap_jax.train import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, models and logs")
_RESUME = flags.DEFINE_bool("resume", True,
                             "continue from the newest checkpoint in --workdir (--noresume: "
                             "refuse a --workdir that has checkpoints)")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "multi-process run: jax.distributed.initialize() with the cluster "
    "detected from the environment (SLURM, Cloud TPU, Open MPI) for what the three flags "
    "below leave unset")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0's coordinator (implies --distributed)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "processes of the job (implies --distributed)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "this process, 0 .. num_processes - 1 (implies --distributed)")
_JOIN_TIMEOUT = flags.DEFINE_float(
    "join_timeout", 300, "seconds to wait for every process of a multi-process job to join; "
    "then one error line and exit status 1")
_PEER_TIMEOUT = flags.DEFINE_float(
    "peer_timeout", 60, "seconds without heartbeat after which the other processes of a "
    "multi-process job report a process gone (one error line naming the last checkpoint, "
    "exit status 1); when process 0, the coordinator, is gone, the others end with one such "
    "line at once")
flags.mark_flags_as_required(["config", "workdir"])
runtime.define_absl_flags()


def multi_process_requested():
  """True when the flags ask for a job of several processes (or leave its size to the cluster)."""
  explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if not _DISTRIBUTED.value and all(v is None for v in explicit):
    return False
  return _NUM_PROCESSES.value is None or _NUM_PROCESSES.value > 1


def initialize_distributed():
  """Joins the multi-process job the flags (or the cluster environment) describe, if any.

  Returns True for a multi-process job. Every process must join within
  ``--join_timeout`` seconds, else one error line and exit status 1.
  """
  explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if not _DISTRIBUTED.value and all(v is None for v in explicit):
    return False
  for flag in (_JOIN_TIMEOUT, _PEER_TIMEOUT):
    if not flag.value > 0:
      raise ValueError(f"--{flag.name} must be a positive number of seconds, got {flag.value}")
  # Collectives between processes on CPU go through gloo (no effect on GPU / TPU).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  # Connect the devices while all processes are here: the first training step's
  # all-reduce would otherwise wait for a peer still compiling, and give up after 30 s.
  distributed.join(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                   process_id=_PROCESS_ID.value, join_timeout=_JOIN_TIMEOUT.value,
                   peer_timeout=_PEER_TIMEOUT.value, connect_devices=loop.connect_devices)
  return True


def main(argv):
  del argv
  if multi_process_requested():
    if not supervisor.is_child():
      sys.exit(supervisor.supervise(process_id=_PROCESS_ID.value,
                                    num_processes=_NUM_PROCESSES.value,
                                    checkpoint_dir=os.path.join(_WORKDIR.value, "checkpoints")))
    supervisor.use_parent_stderr()
    supervisor.watch_parent()
  runtime.setup_from_absl()
  try:
    multi = initialize_distributed()
  except (RuntimeError, ValueError) as e:
    sys.exit(f"error: cannot join the multi-process job: {' '.join(str(e).split())}")
  is_chief = jax.process_index() == 0
  print(f"devices: {jax.device_count()} ({jax.local_device_count()} local, "
        f"{jax.devices()[0].platform}); process {jax.process_index()} of {jax.process_count()}")
  watch = contextlib.nullcontext()
  if multi:
    watch = distributed.PeerWatch(_PEER_TIMEOUT.value,
                                  os.path.join(_WORKDIR.value, "checkpoints"))
  with watch:
    try:
      state, reason = trainer.train(_CONFIG.value, _WORKDIR.value, resume=_RESUME.value,
                                    progress=is_chief)
    except (OSError, ValueError, loop.CheckpointError, loop.ValidationError,
            loop.NonFiniteLossError) as e:
      if multi:  # at once: the runtime's exit would wait for peers blocked in an all-reduce
        if distributed.is_collective_failure(e):  # raised through a checkpoint save, say
          watch.wait_for_verdict()
        distributed.fail(str(e))
      sys.exit(f"error: {e}")
    except jax.errors.JaxRuntimeError as e:
      if not multi:
        raise
      watch.wait_for_verdict()  # a collective failed: a peer is gone, which one?
      distributed.fail(f"a collective between processes failed: "
                       f"{' '.join(str(e).split())[:300]}")
  print(f"stopped at step {int(state.step)} ({reason}); models in {_WORKDIR.value}/best and "
        f"{_WORKDIR.value}/last")


def run():
  """The train command. Its flags are made key flags of the script that starts it
  (``densecap-train``, ``train/train.py``, ``python -m densecap_jax.train``), so
  absl's ``--help`` lists them whichever it is."""
  for flag in flags.FLAGS.get_flags_for_module(__name__):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(main, argv=command_flags.resolve_config_names(sys.argv),
          flags_parser=command_flags.parse_config_flags)
