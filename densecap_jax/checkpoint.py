"""Model checkpoints: orbax parameters with the config and vocabulary beside them.

A model directory holds everything predict, eval and fine-tuning need::

  MODEL_DIR/
    params/        orbax StandardCheckpointer tree of the Flax params
    config.json    the model ConfigDict (ml_collections JSON)
    vocab.json     {"idx_to_token": {"1": "a", ...}, "token_to_idx": {...}}
                   (1-based ids, as the original's VG-regions-dicts.json)

Writes are atomic: the directory is built under a temporary name beside the
target and renamed into place, so a crash never leaves a half-written model
and an existing directory is never overwritten unless asked.
"""

import json
import os
import shutil
import tempfile

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from densecap_jax.data import vocab as vocab_lib

PARAMS = "params"
CONFIG = "config.json"
VOCAB = "vocab.json"


def local_checkpointer():
  """An orbax checkpointer that this process uses alone.

  A model directory belongs to one process (in a multi-process job only the
  first writes ``best/`` and ``last/``; each reads a model on its own), so
  it must not wait at barriers for the other processes.
  """
  me = jax.process_index()
  return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
      primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"model{me}"))


def save_model(directory, params, config, vocab, *, overwrite=False):
  """Writes ``params``, ``config`` and the vocabulary to ``directory`` atomically.

  Args:
    directory: target model directory; must not exist unless ``overwrite``.
    params: Flax params pytree.
    config: ``ml_collections.ConfigDict`` of the model.
    vocab: the vocabulary as ``data.vocab.load_vocab`` gives it: ``vocab[i]``
      is the token of id ``i`` for ``i = 1..V``, ``vocab[0]`` is unused.
    overwrite: replace an existing model directory (the old one is removed only
      after the new one is complete).

  Raises:
    FileExistsError: ``directory`` exists and ``overwrite`` is False.
  """
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and not overwrite:
    raise FileExistsError(f"{directory} exists; pass overwrite=True to replace it")
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.", dir=parent)
  try:
    checkpointer = local_checkpointer()
    checkpointer.save(os.path.join(tmp, PARAMS), jax.device_get(params))
    checkpointer.wait_until_finished()
    with open(os.path.join(tmp, CONFIG), "w") as f:
      f.write(config.to_json(indent=2))
    token_to_idx, idx_to_token = vocab_lib.vocab_dicts(vocab[1:])
    with open(os.path.join(tmp, VOCAB), "w") as f:
      json.dump({"idx_to_token": idx_to_token, "token_to_idx": token_to_idx}, f)
    if os.path.exists(directory):
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.old.", dir=parent)
      os.rmdir(old)
      os.replace(directory, old)
      os.replace(tmp, directory)
      shutil.rmtree(old)
    else:
      os.replace(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def resolve_model_dir(directory):
  """The model directory for ``directory``: itself, or a training directory's ``best/``, else ``last/``."""
  directory = os.path.abspath(directory)
  if not os.path.exists(os.path.join(directory, PARAMS)):
    for name in ("best", "last"):
      if os.path.exists(os.path.join(directory, name, PARAMS)):
        return os.path.join(directory, name)
  return directory


def load_model(directory):
  """Reads a model directory written by :func:`save_model` (or a training directory's best/last).

  Returns:
    ``(params, config, vocab)``: params as a pytree of NumPy arrays, the
    ``ConfigDict``, and the vocabulary list (``vocab[i]`` = token of id ``i``).

  Raises:
    FileNotFoundError: with a one-line message naming what is missing.
  """
  directory = resolve_model_dir(directory)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"model directory not found: {directory}")
  for name in (PARAMS, CONFIG, VOCAB):
    if not os.path.exists(os.path.join(directory, name)):
      raise FileNotFoundError(f"{directory} is not a densecap_jax model: {name} is missing")
  params = local_checkpointer().restore(os.path.join(directory, PARAMS))
  params = jax.tree.map(np.asarray, params)
  with open(os.path.join(directory, CONFIG)) as f:
    config = ml_collections.ConfigDict(json.load(f))
  return params, config, vocab_lib.load_vocab(os.path.join(directory, VOCAB))

