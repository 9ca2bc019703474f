"""Trains DenseCap from a training config (``train/configs``) in a work directory.

Work directory layout::

  WORKDIR/
    config.json        the training config of the run
    checkpoints/N/     full training state at step N (orbax; the last few kept), with
                       checksums.json (sha256 of each array) checked on resume
    best/              model directory of the best validation mAP (predict / eval)
    last/              model directory of the newest checkpoint
                       (neither is ever written from parameters holding NaN or infinity)
    metrics.jsonl      training and validation scalars, one JSON object a line
                       (val_map and val_detmap in percent, as the evaluation prints them;
                       with val_attribute_words also val_<attribute>_accuracy in percent,
                       see attribute_scalars)
    tensorboard/       the same as TensorBoard event files

A run started again in the same directory resumes from its newest checkpoint
and continues exactly as if it had not stopped. All local accelerators train
data-parallel (one ``jax.pmap``); with several hosts each reads its own shard.
"""

import json
import os
import sys

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from densecap_jax import model_dir
from densecap_jax import files
from densecap_jax import runtime
from densecap_jax.convert import mapping as convert_mapping
from densecap_jax.data import device_pixels
from densecap_jax.data import loader as loader_lib
from densecap_jax.evaluation import attribute_accuracy
from densecap_jax.evaluation import meteor as meteor_lib
from densecap_jax.evaluation import split_eval
from densecap_jax.models import densecap
from densecap_jax.models import training
from densecap_jax.train import config_checks
from densecap_jax.train import loop
from densecap_jax.train import optim

BEST_METRICS = "val_metrics.json"  # beside best/'s model: the step and score it was chosen by
VALIDATION_KEYS = ("val_map", "val_detmap")  # logged in percent


def validation_scalars(results, val_metric):
  """The logged validation scalars of an evaluator's results, in percent as the original prints.

  Args:
    results: ``DenseCaptioningEvaluator.evaluate()``'s dict (fractions in [0, 1]).
    val_metric: ``'map'`` (both mAPs) or ``'detmap'`` (the detection mAP alone).

  Returns:
    ``{'val_map': 100 * map, 'val_detmap': 100 * detmap}`` (without
    ``val_map`` for ``'detmap'``).
  """
  scalars = {"val_map": 100 * results["map"], "val_detmap": 100 * results["detmap"]}
  if val_metric == "detmap":
    del scalars["val_map"]
  return scalars


def attribute_measure(config):
  """The ``AttributeAccuracy`` of ``config.val_attribute_words``, or None when it is empty.

  Raises:
    ValueError: the words or ``val_attribute_joint`` are not accepted (one line).
  """
  words = config.get("val_attribute_words", None)
  if not words:
    return None
  try:
    return attribute_accuracy.AttributeAccuracy(
        {name: dict(w) if hasattr(w, "keys") else tuple(w) for name, w in dict(words).items()},
        required=tuple(config.get("val_attribute_joint", ())))
  except ValueError as e:
    raise ValueError(f"config fields val_attribute_words / val_attribute_joint: {e}") from None


def attribute_scalars(measure, predictions):
  """The logged attribute scalars of validation predictions, in percent.

  Args:
    measure: a fresh ``attribute_accuracy.AttributeAccuracy`` (:func:`attribute_measure`).
    predictions: ``evaluate_split(..., return_predictions=True)``'s per-image tuples.

  Returns:
    ``val_<joint>_accuracy`` (e.g. ``val_colour_shape_accuracy``: matched
    objects whose caption names every joint attribute right), then
    ``val_<attribute>_accuracy`` for each attribute, and
    ``val_attribute_matched``: the share of eligible objects a detection
    matched.
  """
  for prediction in predictions:
    measure.add_result(*prediction)
  results = measure.evaluate()
  joint = attribute_accuracy.joint_name(measure.required)
  scalars = {f"val_{joint}_accuracy": 100 * results[joint]}
  scalars.update((f"val_{name}_accuracy", 100 * results[name]) for name in measure.words)
  scalars["val_attribute_matched"] = 100 * results["matched_share"]
  return scalars


def cnn_finetune_start(config):
  """``finetune_cnn_after``, or -1 when ``trained_modules`` leaves the backbone fixed.

  A fixed backbone needs no gradient, so no step program computes one.
  """
  trained = config.get("trained_modules", ())
  return -1 if trained and "backbone" not in trained else config.finetune_cnn_after


def loader_workers(config):
  """Threads that assemble the batches: ``config.num_workers``, or the usable cores for 0."""
  workers = config.get("num_workers", 0)
  if workers > 0:
    return workers
  return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else
             os.cpu_count() or 1)


def make_loss_fn(model_config, finetune_cnn):
  """``(params, batch, rng) -> (total_loss, metrics)`` for ``loop.make_train_step``."""

  def loss_fn(params, batch, rng):
    batch = device_pixels.model_batch(batch)  # the loader's uint8 pixels -> the float32 input
    total, losses, aux = training.train_forward(params, batch, rng, model_config,
                                                finetune_cnn=finetune_cnn)
    return total, dict(losses, num_pos=jnp.mean(aux["num_pos"].astype(jnp.float32)))

  return loss_fn


def _initial_params(config, data):
  if config.checkpoint_start_from:
    params, model_config, vocab = model_dir.load_model(config.checkpoint_start_from)
    if vocab != data.vocab:
      raise ValueError(f"{config.checkpoint_start_from} was trained with another vocabulary "
                       f"than {config.data_json}")
    if model_config.name != config.model.name:
      raise ValueError(f"{config.checkpoint_start_from} is a {model_config.name!r} model, the "
                       f"config asks for {config.model.name!r}")
    try:
      convert_mapping.check_params(params, config.model, allow_extra=True)
    except ValueError as e:
      raise ValueError(f"{config.checkpoint_start_from} does not fit the config's model: {e}") \
          from None
    return params
  return densecap.init_params(config.model, jax.random.key(config.seed))


def _write_config(workdir, config):
  path = os.path.join(workdir, "config.json")
  text = config.to_json(indent=2)
  if os.path.exists(path):
    with open(path) as f:
      if json.load(f) != json.loads(text):
        print(f"note: {path} differs from this run's config; the run's config is kept beside it "
              f"as config.resumed.json")
        path = os.path.join(workdir, "config.resumed.json")
      else:
        return
  with files.atomic_output(path) as tmp:
    with open(tmp, "w") as f:
      f.write(text)


def train(config: ml_collections.ConfigDict, workdir: str, *, resume=True, progress=True):
  """Trains in ``workdir``; returns ``(host TrainState, why it stopped)``.

  With ``resume`` a run continues from the newest checkpoint in ``workdir``;
  without it, a ``workdir`` that already holds checkpoints is refused rather
  than overwritten. The persistent compilation cache is on
  (``runtime.use_compilation_cache``) unless the process chose otherwise.
  """
  config_checks.check_config(config)
  runtime.use_compilation_cache()
  data = loader_lib.DenseCapH5(config.data_h5, config.data_json)
  with config.unlocked():
    config.model.vocab_size = data.vocab_size
  config_checks.check_fits_data(config, data, jax.device_count())
  os.makedirs(workdir, exist_ok=True)
  checkpoints = loop.Checkpoints(os.path.join(workdir, "checkpoints"),
                                     max_to_keep=config.keep_checkpoints)
  if not resume and checkpoints.latest_step() is not None:
    raise ValueError(f"{workdir} already holds checkpoints (newest: step "
                     f"{checkpoints.latest_step()}); resume it or choose a new --workdir")
  is_chief = jax.process_index() == 0
  if is_chief:
    _write_config(workdir, config)

  has_val = len(data.split_indices("val")) > 0 and config.val_images_use != 0
  if has_val and config.val_metric == "map":
    try:
      meteor_lib.check_available()
    except meteor_lib.MeteorError as e:
      raise ValueError(f"{e}. Validation scores captions with METEOR: install Java, or pass "
                       f"--config.val_metric=detmap to validate with detection mAP only, or "
                       f"--config.val_images_use=0 to train without validation") from None
  elif has_val:
    print("note: validating with detection mAP only (val_metric=detmap); best/ keeps the model "
          "of the best val_detmap")

  attribute_measure(config)  # a bad word list stops the run before its first step

  tx = optim.from_config(config)
  state = loop.init_train_state(_initial_params(config, data), tx)
  writer = loop.MetricsWriter(workdir, percent_keys=VALIDATION_KEYS) if is_chief else (
      _NullWriter())
  restored = checkpoints.restore_latest(state)
  if restored is not None:
    state, _ = restored
    writer.truncate_after(int(state.step))
    print(f"resuming from step {int(state.step)} of {workdir}")
    converted = writer.percent_from_fractions()
    if converted:
      print(f"note: {converted} validation lines of {writer.path} held the mAP as a fraction; "
            f"rewritten in percent (TensorBoard's earlier points stay fractions)")

  num_devices = jax.local_device_count()
  global_batch = config.per_device_batch_size * jax.device_count()
  batches = loader_lib.make_batches(
      data, "train", batch_size=global_batch, max_boxes=config.model.max_gt_boxes,
      buckets=config.model.buckets, num_devices=num_devices,
      process_index=jax.process_index(), process_count=jax.process_count(),
      shuffle=config.shuffle, seed=config.seed, start_step=int(state.step),
      max_images=config.debug_max_train_images, pixels="uint8",
      num_workers=loader_workers(config), prefetch=config.get("prefetch_batches", 2))

  def step_fn(finetune_cnn):
    return loop.pmap_train_step(
        loop.make_train_step(make_loss_fn(config.model, finetune_cnn), tx))

  step_fn_from = {}
  finetune_start = cnn_finetune_start(config)
  if finetune_start >= 0:
    # The CNN gets gradient for iterations > finetune_cnn_after (reference §7.1).
    step_fn_from[finetune_start + 1] = step_fn(True)

  meteor = None
  predict_fn = split_eval.make_predict_fn(config.model, config.test_num_proposals)
  best_key = f"val_{config.val_metric}"
  best = _read_best(workdir, rewrite=is_chief)

  def evaluate(params):
    nonlocal meteor
    if meteor is None and config.val_metric == "map":
      meteor = meteor_lib.Meteor()
    measure = attribute_measure(config)
    results = split_eval.evaluate_split(
        params, data, "val", predict_fn, config=config.model, max_images=config.val_images_use,
        batch_size=global_batch, num_workers=loader_workers(config),
        rpn_nms_thresh=config.test_rpn_nms_thresh,
        final_nms_thresh=config.test_final_nms_thresh,
        meteor_fn=meteor if meteor is not None else _no_meteor, progress=progress,
        return_predictions=measure is not None)
    if measure is None:
      return validation_scalars(results, config.val_metric)
    results, predictions = results
    return {**validation_scalars(results, config.val_metric),
            **attribute_scalars(measure, predictions)}

  def on_eval(step, params, results):
    nonlocal best
    if best is None or results[best_key] > best[best_key]:
      if not save_finite_model(os.path.join(workdir, "best"), params, config.model, data.vocab,
                               step, write=is_chief):
        return
      best = {"step": step, best_key: results[best_key], "unit": "percent"}
      if is_chief:
        files.write_json(os.path.join(workdir, "best", BEST_METRICS), best)

  def on_save(host_state):
    save_finite_model(os.path.join(workdir, "last"), host_state.params, config.model, data.vocab,
                      int(host_state.step), write=is_chief)

  start = int(state.step)
  if has_val and config.eval_first_iteration and start == 0:
    loop.run_validation(0, state.params, evaluate, writer, on_eval)
  if has_val and start > 0 and (start % config.save_checkpoint_every == 0 or
                                start == config.max_iters) and _not_validated(writer, start,
                                                                              best_key):
    print(f"validating step {start} (the run stopped before its validation)")
    loop.run_validation(start, state.params, evaluate, writer, on_eval)
  num_steps = config.max_iters if config.max_iters > 0 else 2**31 - 1
  if is_chief and start < num_steps:
    num_buckets = len({tuple(b) for b in config.model.buckets})
    runtime.announce_compiles(
        (1 + len(step_fn_from)) * num_buckets + (num_buckets if has_val else 0),
        key=("train", config.model.to_json(), config.per_device_batch_size,
             finetune_start >= 0, config.test_num_proposals, jax.device_count()),
        upto=True,
        detail="training steps and validation, per shape bucket", record_at_exit=True)
  try:
    state, reason = loop.train_loop(
        state=state, step_fn=step_fn(False), step_fn_from=step_fn_from, batches=batches,
        base_rng=jax.random.key(config.seed), num_steps=num_steps, checkpoints=checkpoints,
        checkpoint_every=config.save_checkpoint_every, writer=writer,
        log_every=config.losses_log_every, eval_fn=evaluate if has_val else None,
        eval_every=config.save_checkpoint_every, on_eval=on_eval,
        max_nonfinite_steps=config.max_nonfinite_steps, explode_factor=config.explode_factor,
        progress=progress, on_save=on_save, prefetch=config.get("prefetch_batches", 2))
  finally:
    batches.close()
    checkpoints.close()
    writer.close()
    if meteor is not None:
      meteor.close()
  return state, reason


def save_finite_model(directory, params, model_config, vocab, step, *, write=True):
  """Replaces the model ``directory`` (``best/``, ``last/``) with ``params`` if all are finite.

  Parameters holding NaN or infinity never replace a model: the directory is
  left as it is and one line on stderr names the step and the first such
  array. ``write=False`` (the processes other than the first) only checks.

  Returns:
    Whether the parameters are finite (and, with ``write``, were saved).
  """
  bad = model_dir.nonfinite_arrays(params)
  if bad:
    if write:
      print(f"warning: {directory} not written from step {step}: {len(bad)} parameter arrays hold "
            f"NaN or infinity (first: {bad[0]}); the previous model there is kept",
            file=sys.stderr)
    return False
  if write:
    model_dir.save_model(directory, params, model_config, vocab, overwrite=True)
  return True


def _not_validated(writer, step, key):
  """Whether ``step`` has no validation line yet: the first process decides for all."""
  missing = np.int32(not writer.has(step, key))
  if jax.process_count() > 1:
    missing = multihost_utils.broadcast_one_to_all(missing)
  return bool(missing)


def _no_meteor(candidates, references):
  """Stands in for METEOR when only the detection mAP is wanted (it ignores captions)."""
  del references
  return [0.0] * len(candidates)


def _read_best(workdir, rewrite=True):
  """``{'step', 'val_<metric>', 'unit'}`` of the run's ``best/`` model (percent), or None.

  A file without ``unit`` holds the score as a fraction (written before the
  mAP was kept in percent): it is read as 100 times that, and with
  ``rewrite`` the file is rewritten so.
  """
  path = os.path.join(workdir, "best", BEST_METRICS)
  if not os.path.exists(path):
    return None
  best = files.read_json(path, "best model metrics")
  if best.get("unit") != "percent":
    best = {k: 100 * v if k in VALIDATION_KEYS else v for k, v in best.items()}
    best["unit"] = "percent"
    if rewrite:
      files.write_json(path, best)
  return best


class _NullWriter:
  """Metrics sink of the hosts other than the first."""

  def write(self, step, scalars):
    del step, scalars

  def has(self, step, key):
    del step, key
    return True

  def percent_from_fractions(self):
    return 0

  def truncate_after(self, step):
    del step

  def close(self):
    pass

