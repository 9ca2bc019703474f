"""Pretrains the backbone and fc6 / fc7 as a region classifier, the start DenseCap trains from.

The original starts DenseCap from VGG-16 trained on ImageNet: its conv layers
and fc6 / fc7 already tell objects apart, and the language model learns to
read codes that carry what an object is. A model trained from scratch has no
such start. This stage gives it one on the training split: every labelled
region of an image is classified, for each attribute head (e.g. colour,
shape, texture, size of a synthetic object), from the code DenseCap itself
computes for it:

  images -> ``DenseCap.features`` (every unfrozen block trains through
            relu5_3; appended ``cnn_skip_blocks`` pass no gradient back here,
            whatever ``cnn_skip_gradient`` says for DenseCap training)
         -> bilinear RoI pooling of the regions (``densecap.pool_regions``)
         -> fc6 / fc7 (``DenseCap.recognize``, without dropout)
         -> one linear softmax classifier per head.

The loss is the sum over heads of the mean cross-entropy over the regions
labelled for that head. The classifiers are dropped afterwards; the result is
a whole DenseCap parameter tree (the RPN, the objectness and box heads and
the language model as initialised) written as a model directory that
``config.checkpoint_start_from`` reads.

Work directory::

  WORKDIR/metrics.jsonl, tensorboard/   loss, pretrain_<head>_accuracy (percent), both
                                        over the batches since the last logged step
  WORKDIR/model/                        the pretrained model directory (the stage is done)

Classifying regions makes relu5_3 far larger than training DenseCap does
(RMS ~1.3 against ~0.09 for the tiny model on the synthetic scenes), and the
RPN, initialised for small inputs, then trains poorly on it. With
``feature_rms`` the stage ends by scaling relu5_3 to that RMS without changing
the codes (:func:`rescale_conv5`).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from densecap_jax import model_dir
from densecap_jax.data import device_pixels
from densecap_jax.data import loader as loader_lib
from densecap_jax.models import densecap
from densecap_jax.models import vgg16 as vgg_lib
from densecap_jax.train import metrics_log

MODEL_SUBDIR = "model"


def model_path(workdir):
  """The pretrained model directory of the stage run in ``workdir``."""
  return os.path.join(workdir, MODEL_SUBDIR)


def assemble(data, indices, bucket, region_labels, max_regions, num_heads):
  """One batch of the HDF5 images ``indices`` (``-1`` = padding) in ``bucket = (Hb, Wb)``.

  Args:
    data: ``loader.DenseCapH5``.
    indices: HDF5 image indices.
    bucket: padded ``(Hb, Wb)``.
    region_labels: ``index -> (boxes, labels)``: ``(R, 4)`` float xcycwh
      boxes in the stored image's pixels and ``(R, num_heads)`` int classes
      (``-1`` = not labelled for that head).
    max_regions: regions kept per image (the first ones).
    num_heads: attribute heads.

  Returns:
    dict: ``image`` ``(B, 3, Hb, Wb)`` uint8 BGR, ``image_size`` ``(B, 2)``
    int32, ``boxes`` ``(B, max_regions, 4)`` float32 xcycwh (unit boxes in
    padding), ``labels`` ``(B, max_regions, num_heads)`` int32 (-1 in padding),
    ``valid`` ``(B,)`` bool (False for padding examples).
  """
  size = len(indices)
  batch = {
      "valid": np.asarray(indices) >= 0,
      "image": np.zeros((size, 3) + tuple(bucket), np.uint8),
      "image_size": np.tile(np.asarray(bucket, np.int32), (size, 1)),
      "boxes": np.tile(np.asarray([8, 8, 16, 16], np.float32), (size, max_regions, 1)),
      "labels": np.full((size, max_regions, num_heads), -1, np.int32),
  }
  for k, index in enumerate(indices):
    if index < 0:
      continue
    height, width = data.image_sizes[index]
    batch["image"][k, :, :height, :width] = data.read_image_chw(index)
    batch["image_size"][k] = (height, width)
    boxes, labels = region_labels(index)
    boxes, labels = np.asarray(boxes)[:max_regions], np.asarray(labels)[:max_regions]
    batch["boxes"][k, :len(boxes)] = boxes
    batch["labels"][k, :len(labels)] = labels
  return batch


def initial_params(model_config, seed):
  """The DenseCap params the stage starts from (and leaves as they are outside the trained parts)."""
  return densecap.init_params(model_config, jax.random.split(jax.random.key(seed), 3)[0])


def init_heads(fc_dim, num_classes, rng):
  """One ``{'kernel': (fc_dim, C), 'bias': (C,)}`` linear classifier per head."""
  keys = jax.random.split(rng, len(num_classes))
  return [{"kernel": jax.random.normal(k, (fc_dim, c), jnp.float32) * (1 / np.sqrt(fc_dim)),
           "bias": jnp.zeros((c,), jnp.float32)} for k, c in zip(keys, num_classes)]


def _pretraining_model_config(model_config):
  """``model_config`` with the appended skip blocks' gradient cut (module doc)."""
  config = model_config.copy_and_resolve_references()
  config.cnn_skip_gradient = False
  return config


def make_loss_fn(model_config):
  """``loss_fn(trained, batch) -> (loss, per-head (correct, labelled) counts)``.

  ``trained = {'params': DenseCap params, 'heads': init_heads(...)}``; ``batch``
  as :func:`assemble` gives it. No gradient passes back through the appended
  ``cnn_skip_blocks`` (module doc), whatever ``cnn_skip_gradient`` says.
  """
  model = densecap.build_model(_pretraining_model_config(model_config))

  def loss_fn(trained, batch):
    params = trained["params"]
    images = device_pixels.model_images(batch["image"], batch["image_size"])
    features = model.apply({"params": params}, images, batch["image_size"], True,
                           method=densecap.DenseCap.features)
    pooled = densecap.pool_regions(features, batch["boxes"], batch["image_size"],
                                   vgg_lib.feature_size(batch["image_size"]),
                                   model_config.roi_output_size)
    codes, _, _ = model.apply({"params": params}, pooled, False,
                              method=densecap.DenseCap.recognize)
    total, counts = jnp.float32(0), []
    for head, labels in zip(trained["heads"], jnp.moveaxis(batch["labels"], -1, 0)):
      logits = codes @ head["kernel"] + head["bias"]
      labelled = labels >= 0
      cross_entropy = optax.softmax_cross_entropy_with_integer_labels(
          logits, jnp.maximum(labels, 0))
      num = jnp.sum(labelled)
      total = total + jnp.sum(jnp.where(labelled, cross_entropy, 0)) / jnp.maximum(num, 1)
      correct = jnp.sum(labelled & (jnp.argmax(logits, -1) == labels))
      counts.append((correct, num))
    return total, counts

  return loss_fn


def relu5_3_rms(params, model_config, batches):
  """RMS of relu5_3 over the valid cells of ``batches``' real examples (:func:`assemble`'s dicts)."""
  model = densecap.build_model(model_config)
  channels = model_config.cnn_widths[-1][-1]

  @jax.jit
  def sums(batch):
    images = device_pixels.model_images(batch["image"], batch["image_size"])
    features = model.apply({"params": params}, images, batch["image_size"],
                           method=densecap.DenseCap.features)[..., :channels]
    cells = vgg_lib.feature_size(batch["image_size"])
    valid = batch["valid"]
    features = jnp.where(valid[:, None, None, None], features, 0.0)
    return (jnp.sum(jnp.square(features)),
            jnp.sum(jnp.where(valid, cells[:, 0] * cells[:, 1], 0)) * channels)

  totals = np.sum([np.asarray(jax.device_get(sums(b)), np.float64) for b in batches], axis=0)
  return float(np.sqrt(totals[0] / totals[1]))


def rescale_conv5(params, model_config, scale):
  """``params`` with relu5_3 ``scale`` times larger and the same fc6 output.

  conv5_3's kernel and bias are multiplied by ``scale > 0`` (ReLU commutes
  with a positive factor, so relu5_3 is ``scale`` times itself); bilinear RoI
  pooling is linear, so dividing the fc6 rows that read relu5_3's channels
  (input index ``c * 49 + i * 7 + j`` for ``c`` below relu5_3's width,
  ``models/recognition.py``) by ``scale`` leaves fc6, the codes and
  everything after them as they were, up to float32 rounding.
  """
  block = len(model_config.cnn_widths)
  last = f"conv{block}_{len(model_config.cnn_widths[-1])}"
  rows = model_config.cnn_widths[-1][-1] * int(np.prod(model_config.roi_output_size))
  params = jax.tree.map(np.array, params)  # a copy
  for name in ("kernel", "bias"):
    params["backbone"][last][name] = params["backbone"][last][name] * np.float32(scale)
  fc6 = params["recognition"]["fc6"]["kernel"]
  fc6[:rows] = fc6[:rows] / np.float32(scale)
  return params


SETTINGS = ("steps", "batch_size", "learning_rate", "warmup_steps", "max_regions", "feature_rms")


def settings_kwargs(settings):
  """The keyword arguments of :func:`pretrain` that ``config.pretrain`` holds (``SETTINGS``)."""
  return {name: settings[name] for name in SETTINGS}


def pretrain(model_config, data, region_labels, heads, workdir, *, steps, batch_size=8,
             learning_rate=1e-3, warmup_steps=100, max_regions=8, seed=0, log_every=50,
             feature_rms=0.0, progress=True):
  """Runs the stage in ``workdir`` (skipped when its model directory is there).

  The stage keeps no checkpoint: one stopped before it saved its model
  starts over, its earlier ``metrics.jsonl`` lines dropped.

  Args:
    model_config: the DenseCap model config (``vocab_size`` set).
    data: ``loader.DenseCapH5``; its training split is used, shuffled each epoch.
    region_labels: ``index -> (boxes, labels)`` as :func:`assemble` reads it.
    heads: ``{name: number of classes}`` in the order of the label columns.
    workdir: the stage's work directory (module docstring).
    steps, batch_size, learning_rate, warmup_steps: Adam with a linear warm-up
      and a cosine decay to 0 at ``steps``.
    max_regions: labelled regions kept per image.
    seed: initialisation and shuffling.
    log_every: steps between logged scalars.
    feature_rms: when > 0, relu5_3 is scaled to this RMS over the stage's
      last 8 batches (:func:`rescale_conv5`; the factor is logged as
      ``conv5_scale``); 0 leaves it as trained.

  Returns:
    The pretrained model directory.
  """
  out = model_path(workdir)
  if os.path.isdir(out):
    return out
  if steps <= warmup_steps:
    raise ValueError(f"pretraining steps={steps} must exceed warmup_steps={warmup_steps}")
  os.makedirs(workdir, exist_ok=True)
  names = list(heads)
  heads_rng = jax.random.split(jax.random.key(seed), 3)[1]
  trained = {"params": initial_params(model_config, seed),
             "heads": init_heads(model_config.fc_dim, [heads[n] for n in names], heads_rng)}
  schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, steps)
  tx = optax.adam(schedule)
  opt_state = tx.init(trained)
  loss_fn = make_loss_fn(model_config)

  @jax.jit
  def step_fn(trained, opt_state, batch):
    (loss, counts), grads = jax.value_and_grad(loss_fn, has_aux=True)(trained, batch)
    updates, opt_state = tx.update(grads, opt_state, trained)
    return optax.apply_updates(trained, updates), opt_state, loss, counts

  train_indices = data.split_indices("train")
  buckets = [tuple(b) for b in model_config.buckets]
  schedule_iter = loader_lib.bucketed_schedule(
      data.bucket_ids(train_indices, buckets), batch_size, shuffle=True, seed=seed)
  writer = metrics_log.MetricsWriter(workdir)
  writer.truncate_after(0)  # a stopped attempt saved no model: the stage starts over
  pending = []  # the device's (loss, counts) of the steps since the last logged one
  last_batches = []
  for step in tqdm.trange(1, steps + 1, desc="pretraining", disable=not progress):
    bucket_id, positions = next(schedule_iter)
    indices = np.where(positions >= 0, train_indices[np.maximum(positions, 0)], -1)
    batch = assemble(data, indices, buckets[bucket_id], region_labels, max_regions, len(names))
    trained, opt_state, loss, counts = step_fn(trained, opt_state, batch)
    last_batches = (last_batches + [batch])[-8:]
    pending.append((loss, counts))
    if step % log_every == 0 or step == steps:
      losses, counts = zip(*jax.device_get(pending))  # fetched once a log, not once a step
      sums = np.sum(np.asarray(counts, np.float64), axis=0)  # (heads, 2): correct, labelled
      scalars = {"loss": sum(float(l) for l in losses) / len(losses)}
      scalars.update({f"pretrain_{n}_accuracy": 100 * c / max(t, 1)
                      for n, (c, t) in zip(names, sums)})
      writer.write(step, scalars)
      pending = []
  params = jax.tree.map(np.asarray, trained["params"])
  if feature_rms > 0:
    scale = feature_rms / relu5_3_rms(params, model_config, last_batches)
    params = rescale_conv5(params, model_config, scale)
    writer.write(steps, {"conv5_scale": scale})
  writer.close()
  model_dir.save_model(out, params, model_config, data.vocab)
  return out
