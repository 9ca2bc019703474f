"""Model checkpoints: orbax parameters with the config and vocabulary beside them.

A model directory holds everything predict, eval and fine-tuning need::

  MODEL_DIR/
    params/        orbax StandardCheckpointer tree of the Flax params
    config.json    the model ConfigDict (ml_collections JSON)
    vocab.json     {"idx_to_token": {"1": "a", ...}, "token_to_idx": {...}}
                   (1-based ids, as the original's VG-regions-dicts.json)
    checksums.json sha256 of each parameter array (:func:`tree_checksums`),
                   checked on load; a directory without it loads unchecked

Writes are atomic: the directory is built under a temporary name beside the
target and renamed into place, so a crash never leaves a half-written model
and an existing directory is never overwritten unless asked. The directory
gets the user's umask, as ``os.mkdir`` would give it. Reads fail with
one line naming the directory or file at fault, and so does a write on a
full disk (:func:`quiet_failed_write`).
"""

import contextlib
import errno
import gc
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from densecap_jax import files
from densecap_jax.data import vocab as vocab_lib

PARAMS = "params"
CONFIG = "config.json"
VOCAB = "vocab.json"
CHECKSUMS = "checksums.json"


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
    DiskFullError: the disk filled up (one line naming the directory).
  """
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and not overwrite:
    raise FileExistsError(f"{directory} exists; pass overwrite=True to replace it")
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = files.mkdtemp(parent, f".{os.path.basename(directory)}.")  # the umask's mode, not 0700
  try:
    params = jax.device_get(params)
    with quiet_failed_write(f"model {directory}", parent):
      checkpointer = local_checkpointer()
      checkpointer.save(os.path.join(tmp, PARAMS), params)
      checkpointer.wait_until_finished()
      with open(os.path.join(tmp, CONFIG), "w") as f:
        f.write(config.to_json(indent=2))
      token_to_idx, idx_to_token = vocab_lib.vocab_dicts(vocab[1:])
      with open(os.path.join(tmp, VOCAB), "w") as f:
        json.dump({"idx_to_token": idx_to_token, "token_to_idx": token_to_idx}, f)
      with open(os.path.join(tmp, CHECKSUMS), "w") as f:
        json.dump(tree_checksums(params), f)
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


def first_error_line(error, limit=300):
  """The first line of ``error``'s message, without tensorstore's spec dump."""
  text = str(error).strip()
  text = text.splitlines()[0] if text else type(error).__name__
  text = text.split(" [tensorstore_spec=")[0]
  return text if len(text) <= limit else text[:limit] + "..."


def _ignore_closed_event_loop(hook):
  """``sys.unraisablehook`` that drops the "Event loop is closed" errors of late I/O callbacks."""

  def unraisablehook(unraisable):
    value = unraisable.exc_value
    if not (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"):
      hook(unraisable)

  unraisablehook.filters_closed_event_loop = True
  return unraisablehook


@contextlib.contextmanager
def quiet_failed_read():
  """Hides the asyncio tracebacks orbax leaves behind when a read fails.

  They only repeat the error that is reported in one line: tasks whose
  exceptions asyncio logs, and tensorstore callbacks that fire after orbax
  has closed its event loop (through ``sys.unraisablehook``, possibly later).
  """
  logger = logging.getLogger("asyncio")
  level = logger.level
  logger.setLevel(logging.CRITICAL)
  if not getattr(sys.unraisablehook, "filters_closed_event_loop", False):
    sys.unraisablehook = _ignore_closed_event_loop(sys.unraisablehook)
  try:
    yield
  finally:
    logger.setLevel(level)


class DiskFullError(OSError):
  """A checkpoint or model write ran out of disk space (``errno`` ENOSPC, one-line message)."""

  def __init__(self, message):
    super().__init__(message)
    self.errno = errno.ENOSPC


def _free_space(directory):
  try:
    free = shutil.disk_usage(directory).free
  except OSError:
    return "free space unknown"
  for unit in ("bytes", "KB", "MB", "GB"):
    if free < 1024 or unit == "GB":
      return f"{free:.0f} {unit} free" if unit == "bytes" else f"{free:.1f} {unit} free"
    free /= 1024
  return ""


@contextlib.contextmanager
def quiet_failed_write(what, directory):
  """One line for a full disk while orbax writes ``what`` into ``directory``.

  orbax logs each failed write thread's traceback (absl), and tensorstore
  callbacks that fire after its event loop closed add "Event loop is closed"
  ones; they are hidden for the duration of the write. A full disk becomes
  :class:`DiskFullError` ``no space left on device writing <what> in
  <directory> (<free> free)``; other errors pass through unchanged.
  """
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.CRITICAL)
  try:
    with quiet_failed_read():
      try:
        yield
      except Exception as e:  # pylint: disable=broad-except
        gc.collect()  # unretrieved asyncio task errors are logged now, while hidden
        if files.is_disk_full(e):
          raise DiskFullError(f"no space left on device writing {what} in {directory} "
                              f"({_free_space(directory)}); free space on that disk and run "
                              f"again") from None
        raise
  finally:
    absl_logger.setLevel(level)


def _key_name(entry):
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def named_arrays(tree):
  """``[(name, host NumPy array)]`` of ``tree``'s leaves; names join the keys with ``/``."""
  flat, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))
  return [("/".join(_key_name(k) for k in path), np.asarray(leaf)) for path, leaf in flat]


def _array_digest(array):
  digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
  digest.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
  return digest.hexdigest()


def tree_checksums(tree):
  """``{'algorithm': 'sha256', 'arrays': {name: hex digest}}`` of ``tree``'s arrays.

  Each digest covers the array's dtype, shape and bytes (computed on the host).
  """
  return {"algorithm": "sha256",
          "arrays": {name: _array_digest(a) for name, a in named_arrays(tree)}}


def write_checksums(directory, tree):
  """Writes :func:`tree_checksums` of ``tree`` to ``directory/checksums.json`` atomically."""
  files.write_json(os.path.join(directory, CHECKSUMS), tree_checksums(tree))


def checksum_mismatch(directory, tree):
  """Why ``tree`` does not match ``directory/checksums.json``, or None if it does.

  None too when the directory has no checksums file (written before they
  were kept): such a directory is read unchecked.
  """
  path = os.path.join(directory, CHECKSUMS)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      stored = json.load(f)["arrays"]
    if not isinstance(stored, dict):
      raise TypeError("'arrays' is not an object")
  except (OSError, ValueError, KeyError, TypeError) as e:
    return f"{CHECKSUMS} cannot be read ({first_error_line(e)})"
  actual = {name: _array_digest(a) for name, a in named_arrays(tree)}
  differ = sorted(n for n in set(stored) | set(actual) if stored.get(n) != actual.get(n))
  if not differ:
    return None
  return (f"its arrays do not match {CHECKSUMS}: {differ[0]} differs"
          + (f" and {len(differ) - 1} more" if len(differ) > 1 else "") + "; the files are damaged")


def nonfinite_arrays(tree):
  """Names (as :func:`named_arrays`) of ``tree``'s floating arrays holding NaN or infinity."""
  return [name for name, a in named_arrays(tree)
          if jax.numpy.issubdtype(a.dtype, jax.numpy.inexact) and not np.all(np.isfinite(a))]


def _read_config(path):
  """The model ``ConfigDict`` in ``path``; a one-line ``ValueError`` naming the file if broken."""
  fields = files.read_json(path, "model config")
  if not isinstance(fields, dict):
    raise ValueError(f"model config {path} must hold a JSON object of config fields, not "
                     f"{type(fields).__name__}")
  try:
    return ml_collections.ConfigDict(fields)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"model config {path} is not a valid config: {first_error_line(e)}") from None


def _read_vocab(path):
  """The vocabulary list in ``path``; a one-line ``ValueError`` naming the file if broken."""
  info = files.read_json(path, "model vocabulary")
  idx_to_token = info.get("idx_to_token") if isinstance(info, dict) else None
  return vocab_lib.vocab_from_idx_to_token(idx_to_token, f"model vocabulary {path}")


def _read_params(directory):
  """The params pytree in ``directory/params``; a one-line ``ValueError`` naming ``directory``."""
  try:
    with quiet_failed_read():
      params = local_checkpointer().restore(os.path.join(directory, PARAMS))
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"model directory {directory}: the parameters in {PARAMS}/ cannot be read, "
                     f"they are truncated or corrupt ({first_error_line(e)}); copy or convert the "
                     f"model again") from None
  params = jax.tree.map(np.asarray, params)
  mismatch = checksum_mismatch(directory, params)
  if mismatch:
    raise ValueError(f"model directory {directory}: the parameters in {PARAMS}/ cannot be used, "
                     f"{mismatch}; copy or convert the model again")
  return params


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
    ValueError: with a one-line message naming the file (``config.json``,
      ``vocab.json``) or, for unreadable parameters or parameters that differ
      from ``checksums.json``, the directory at fault.
  """
  directory = resolve_model_dir(directory)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"model directory not found: {directory}")
  for name in (PARAMS, CONFIG, VOCAB):
    if not os.path.exists(os.path.join(directory, name)):
      raise FileNotFoundError(f"{directory} is not a densecap_jax model: {name} is missing")
  config = _read_config(os.path.join(directory, CONFIG))
  vocab = _read_vocab(os.path.join(directory, VOCAB))
  return _read_params(directory), config, vocab

