"""Data-parallel training: the pmapped step, orbax checkpoints with exact resume, the loop.

The step is one pure function ``train_step(state, batch, base_rng)`` that is
pmapped in one place (:func:`pmap_train_step`); gradients, loss and metrics
are averaged over devices with ``lax.pmean``. Each device draws its randomness
from ``fold_in(fold_in(base_rng, step), device)``, and the data order is a
function of the step, so a run resumed from a checkpoint repeats exactly what
an uninterrupted run does. Scalars go to ``metrics_log.MetricsWriter``.
"""

import os
import shutil
import signal
import sys
import time
from typing import Any, Callable, Iterator

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm import tqdm

from densecap_jax import engine
from densecap_jax import model_dir
from densecap_jax import runtime
from densecap_jax.train import distributed
# loop.MetricsWriter: the name the loop's callers use.
from densecap_jax.train.metrics_log import MetricsWriter  # pylint: disable=unused-import

class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any


def init_train_state(params, tx):
  """A step-0 ``TrainState`` for ``params`` and the optax transformation ``tx``."""
  return TrainState(step=jnp.zeros([], jnp.int32), params=params, opt_state=tx.init(params))


def _all_finite(tree):
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_train_step(loss_fn, tx, axis_name=engine.BATCH_AXIS):
  """The per-device training step.

  Args:
    loss_fn: ``(params, batch, rng) -> (loss, metrics dict)`` on one device's batch.
    tx: the optax transformation.
    axis_name: the device axis the step is mapped over.

  Returns:
    ``train_step(state, batch, base_rng) -> (state, metrics)``. A non-finite
    loss or gradient leaves params and optimiser state unchanged (the step
    count still advances) and is reported as ``metrics['finite'] = False``.

    What the skip costs: one reduction over the gradients (``isfinite``),
    which must finish before any output is chosen. The ``where`` itself
    fuses into the optimiser's elementwise update: in the compiled step each
    new parameter and moment is one loop fusion that reads the gradient and
    the old values and writes the chosen one (checked in the CPU HLO, 2026-12;
    not yet on a GPU), so no parameter or slot is read or written a second
    time for it.
  """

  def train_step(state, batch, base_rng):
    rng = jax.random.fold_in(jax.random.fold_in(base_rng, state.step),
                             jax.lax.axis_index(axis_name))
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
    if jax.lax.axis_size(axis_name) > 1:  # on one device the mean is the values themselves
      grads, loss, metrics = jax.lax.pmean((grads, loss, metrics), axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & _all_finite(grads)

    def keep_if_finite(new, old):
      return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

    new_state = TrainState(step=state.step + 1,
                           params=keep_if_finite(params, state.params),
                           opt_state=keep_if_finite(opt_state, state.opt_state))
    return new_state, dict(metrics, loss=loss, finite=finite)

  return train_step


def pmap_train_step(train_step, axis_name=engine.BATCH_AXIS):
  """``train_step`` mapped over the local devices: state and batch carry a leading device axis."""
  return jax.pmap(train_step, axis_name=axis_name, in_axes=(0, 0, None), donate_argnums=(0,))


def connect_devices(axis_name=engine.BATCH_AXIS):
  """Runs one all-reduce over every device of the job, as the pmapped step runs its own.

  The collectives between processes (gloo on CPU) set up their connections
  on first use; done here, right after ``jax.distributed.initialize``, no
  process waits long for a peer that is still compiling the training step.
  """
  ones = np.ones((jax.local_device_count(),), np.float32)
  total = jax.pmap(lambda x: jax.lax.psum(x, axis_name), axis_name=axis_name)(ones)
  return float(engine.unreplicate(total))


class CheckpointError(RuntimeError):
  """No checkpoint of a run can be read."""


class ValidationError(RuntimeError):
  """Validation inside training failed; the checkpoint of that step is already written."""


class Checkpoints:
  """Full training state every N steps with orbax, keeping the last ``max_to_keep``.

  orbax writes each step into a temporary directory and renames it when
  complete, so a killed run leaves the previous checkpoints intact; each step
  then gets ``checksums.json`` (sha256 of every array), checked on restore.
  """

  def __init__(self, directory, max_to_keep=3):
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def save(self, state, meta):
    """Saves a host (unreplicated) ``state`` and a JSON-able ``meta`` dict at ``state.step``.

    Once orbax has committed the step, the first process writes the sha256 of
    each array of ``state`` to ``N/checksums.json``.

    Raises:
      model_dir.DiskFullError: the disk filled up (one line naming the step
        and folder; the partial step is removed).
    """
    step = int(state.step)
    if step in self._manager.all_steps():
      return
    state = jax.device_get(state)
    try:
      with model_dir.quiet_failed_write(f"checkpoint {step}", self.directory):
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
        self._manager.wait_until_finished()
        if jax.process_index() == 0:
          model_dir.write_checksums(os.path.join(self.directory, str(step)), state)
    except model_dir.DiskFullError:
      for name in os.listdir(self.directory):
        if name.startswith(f"{step}.orbax-checkpoint-tmp"):
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
      raise

  def latest_step(self):
    return self._manager.latest_step()

  def restore_latest(self, template):
    """``(state, meta)`` of the newest readable checkpoint with ``template``'s structure, or None.

    A checkpoint that cannot be read (a truncated or missing file), or whose
    arrays differ from its ``checksums.json`` (damaged bytes; a checkpoint
    without that file is read unchecked), is passed over with a one-line
    warning for the next older one; once an older one
    has been read, the unreadable ones are renamed ``N.unreadable`` (kept on
    disk, out of the way of the steps saved from now on).

    Raises:
      CheckpointError: checkpoints exist but none can be read (nothing is
        renamed then: the cause may be this run's config rather than the files).
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, jax.device_get(template))
    unreadable = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        with model_dir.quiet_failed_read():
          restored = self._manager.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        mismatch = model_dir.checksum_mismatch(os.path.join(self.directory, str(step)),
                                               restored.state)
        if mismatch:
          raise ValueError(mismatch)
      except Exception as e:  # pylint: disable=broad-except
        reason = model_dir.first_error_line(e)
        unreadable.append((step, reason))
        print(f"warning: checkpoint {os.path.join(self.directory, str(step))} cannot be read "
              f"({reason}); trying the previous one", file=sys.stderr)
        continue
      for bad, _ in unreadable:
        path = os.path.join(self.directory, str(bad))
        try:
          os.replace(path, path + ".unreadable")
        except FileNotFoundError:
          pass  # another process of the job, reading the same folder, renamed it first
        print(f"warning: unreadable checkpoint step {bad} renamed to {path}.unreadable; "
              f"resuming from step {step}", file=sys.stderr)
      if unreadable:
        self._manager.reload()
      return restored.state, restored.meta
    if unreadable:
      steps = ", ".join(str(s) for s, _ in unreadable)
      raise CheckpointError(
          f"no checkpoint in {self.directory} can be read (steps {steps}; newest: "
          f"{unreadable[0][1]}); if the files are damaged, move them away or train in a new "
          f"--workdir")
    return None

  def close(self):
    self._manager.close()


class StopRequest:
  """Turns SIGTERM and SIGINT into a flag the loop checks after each step."""

  def __init__(self):
    self.signal = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class NonFiniteLossError(RuntimeError):
  pass


def batch_shapes(batch):
  """The shapes of a batch's arrays: a step with shapes not seen before compiles a program."""
  return tuple(np.shape(x) for x in jax.tree.leaves(batch))


def run_validation(step, params, eval_fn, writer, on_eval=None):
  """Runs ``eval_fn(params)`` at ``step``, logs its scalars and hands them to ``on_eval``.

  Raises:
    ValidationError: anything raised inside, in one line that names the step.
  """
  try:
    results = eval_fn(params)
    writer.write(step, results)
    tqdm.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in results.items()))
    if on_eval is not None:
      on_eval(step, params, results)
  except Exception as e:  # pylint: disable=broad-except
    reason = model_dir.first_error_line(e)
    raise ValidationError(f"validation at step {step} failed ({type(e).__name__}: {reason}); "
                          f"the checkpoint of step {step} is saved, and a run started again "
                          f"resumes from it and validates first") from e
  return results


def train_loop(*, state, step_fn: Callable, batches: Iterator, base_rng, num_steps: int,
               checkpoints: Checkpoints, checkpoint_every: int, writer: MetricsWriter,
               log_every: int = 10, eval_fn: Callable | None = None, eval_every: int = 0,
               on_eval: Callable | None = None, max_nonfinite_steps: int = 10,
               explode_factor: float = 0.0, meta: dict | None = None, progress: bool = True,
               step_fn_from: dict | None = None, on_save: Callable | None = None,
               prefetch: int = 2):
  """Runs the pmapped ``step_fn`` from ``state.step`` to ``num_steps``.

  Args:
    state: host ``TrainState`` (unreplicated), at the step to start from.
    step_fn: the pmapped step (:func:`pmap_train_step`).
    batches: yields batches with a leading local-device axis, starting at
      ``state.step`` (the loader's ``start_step``).
    base_rng: the run's base PRNG key.
    num_steps: total number of steps of the run.
    checkpoints: where the state goes every ``checkpoint_every`` steps, before
      each validation, at the end, and when a SIGTERM/SIGINT arrives (in a
      job of several processes, a signal to any one of them stops all after
      the same step, a few steps later: :class:`distributed.StopAgreement`).
    checkpoint_every: steps between checkpoints.
    writer: metrics sink; training scalars averaged over ``log_every`` steps,
      with ``steps_per_sec``, ``data_wait`` (seconds per step the loop waited
      for its next batch) and ``data_wait_percent`` (that wait's share of the
      interval's time: above a few percent, the input is the limit).
    eval_fn: ``params -> dict of scalars`` run every ``eval_every`` steps and
      at the end, after that step's checkpoint is written;
      ``on_eval(step, params, results)`` sees each result. Anything raised in
      either becomes a :class:`ValidationError`.
    max_nonfinite_steps: abort after this many non-finite steps in a row.
    explode_factor: if > 0, stop when the loss exceeds this times the first
      step's loss (the original's "exploding" check, factor 100).
    meta: extra JSON-able fields stored with each checkpoint.
    progress: show a progress bar.
    step_fn_from: ``{first_step: step_fn}``: use another pmapped step from
      that step on (e.g. one that also trains the CNN).
    on_save: ``on_save(state)`` after each checkpoint, with the host state.
    prefetch: batches placed on the devices ahead of the step that takes
      them (copies overlap the running step).

  The progress bar reads ``compiling`` while a step compiles its program (the
  first step, and the first of each other step function or batch shape) and
  restarts its clock after it, and after each validation, so that its rate
  and remaining time are those of the training steps alone.

  Returns:
    ``(state, reason)``: the host state and why the loop ended
    (``'done'``, ``'exploded'`` or the signal name).
  """
  meta = dict(meta or {})
  start = int(state.step)
  if start >= num_steps:
    return state, "done"
  replicated = engine.replicate(state)
  nonfinite, first_loss, sums, count = 0, None, {}, 0
  reason = "done"
  bar = tqdm(total=num_steps, initial=start, disable=not progress, unit="step", dynamic_ncols=True)
  last_time = time.perf_counter()

  def host_state():
    return engine.unreplicate(replicated)

  def save():
    state = host_state()
    checkpoints.save(state, meta)
    if on_save is not None:
      on_save(state)

  switches = sorted((step_fn_from or {}).items())
  programs = set()  # (step function, batch shapes) already compiled

  def step_fn_at(step):
    current = step_fn
    for first, fn in switches:
      if step >= first:
        current = fn
    return current

  exploded_at = None

  def take_metrics(pending):
    """Host-side bookkeeping of the steps since the last sync, in order."""
    nonlocal nonfinite, first_loss, count, exploded_at
    for at, device_metrics in pending:
      metrics = engine.unreplicate(device_metrics)
      loss = float(metrics["loss"])
      if not bool(metrics["finite"]):
        nonfinite += 1
        tqdm.write(f"step {at}: non-finite loss ({loss}); update skipped "
                   f"({nonfinite} in a row)")
        writer.write(at, {"nonfinite_step": 1.0})
        if nonfinite >= max_nonfinite_steps:
          raise NonFiniteLossError(
              f"{nonfinite} non-finite steps in a row up to step {at}; stopping")
        continue
      nonfinite = 0
      first_loss = loss if first_loss is None else first_loss
      for k, v in metrics.items():
        if k != "finite":
          sums[k] = sums.get(k, 0.0) + float(v)
      count += 1
      if (exploded_at is None and explode_factor > 0 and
          loss > explode_factor * first_loss):
        tqdm.write(f"step {at}: loss {loss:.4g} > {explode_factor} x first loss "
                   f"{first_loss:.4g}; stopping")
        exploded_at = at

  agreement = distributed.StopAgreement(engine.BATCH_AXIS) if jax.process_count() > 1 else None
  with StopRequest() as stop:
    step = start
    pending = []  # (step, metrics still on the devices) since the last sync
    device_batches = engine.prefetch_to_devices(batches, size=prefetch)
    waited, steps_waited = 0.0, 0  # time spent in next(device_batches) since the last log
    while step < num_steps:
      fn = step_fn_at(step)
      wait_start = time.perf_counter()
      batch = next(device_batches)
      waited += time.perf_counter() - wait_start
      steps_waited += 1
      program = (id(fn), batch_shapes(batch))
      compiling = program not in programs
      if compiling:
        programs.add(program)
        bar.set_description("compiling")
      replicated, metrics = fn(replicated, batch, base_rng)  # returns once compiled
      step += 1
      pending.append((step, metrics))
      if compiling:
        bar.set_description("", refresh=False)
        runtime.restart_rate(bar, step)
      else:
        bar.update(1)
      log_due = step % log_every == 0 or step == num_steps
      eval_due = bool(eval_fn is not None and eval_every and (step % eval_every == 0 or
                                                               step == num_steps))
      save_due = eval_due or step % checkpoint_every == 0 or step == num_steps
      stop_signal = stop.signal if agreement is None else agreement.after_step(stop.signal)
      if not (log_due or save_due or stop_signal is not None):
        continue  # metrics stay on the devices: no host round trip on most steps
      take_metrics(pending)
      pending = []
      if count and log_due:
        now = time.perf_counter()
        scalars = {k: v / count for k, v in sums.items()}
        scalars["steps_per_sec"] = count / max(now - last_time, 1e-9)
        scalars["steps_averaged"] = count  # fewer than log_every after a resume mid-interval
        scalars["data_wait"] = waited / max(steps_waited, 1)
        scalars["data_wait_percent"] = 100 * waited / max(now - last_time, 1e-9)
        writer.write(step, scalars)
        bar.set_postfix(loss=f"{scalars['loss']:.4g}")
        sums, count, last_time = {}, 0, now
        waited, steps_waited = 0.0, 0
      if save_due:
        save()  # before validation, so that a failing validation loses no step
      if eval_due:
        run_validation(step, host_state().params, eval_fn, writer, on_eval)
        runtime.restart_rate(bar, step)
      if exploded_at is not None:
        reason = "exploded"
        save()
        break
      if stop_signal is not None:
        reason = stop_signal
        save()
        tqdm.write(f"{stop_signal} received: checkpoint saved at step {step}")
        break
  bar.close()
  return host_state(), reason

