"""The ``index`` command: index a photo folder for ``search`` (``search.builder``).

  python -m densecap_jax.index --input_dir photos/ --output photos.index
  python -m densecap_jax.index --input_dir photos/ --output photos.index   # again: only changes

Stores per image its first ``--max_boxes`` detections (boxes in the image's
pixels, captions, objectness logits) and their fc7 codes, in shards of
``--shard_size`` images committed as they finish: a second run indexes only
new or changed files (size or modification time differs) and drops the
entries of deleted ones; a run that was killed continues where it stopped.
The format is described in ``densecap_jax/search/builder.py``. The model flags
(and ``--max_boxes``, ``--codes_dtype``) must be those the index was built
with. An existing index built with another model is refused before the model
is loaded: when ``--checkpoint`` names another folder than the manifest's,
the fingerprint of its files is compared first (``stored_model_fingerprint``).
Only one run writes an index at a time: a second run on the same
``--output`` fails at once naming the PID of the first (or, with ``--wait``,
waits for it). Every shard is checked against the sizes, counts and
checksums the manifest records for it; the images of a damaged shard are
indexed again, and a line says so.
The exit status is 0 only when every image could be read.
"""

import argparse
import os
import sys
import time
import types

from densecap_jax import engine
from densecap_jax import model_dir
from densecap_jax import predictor as predictor_lib
from densecap_jax import runtime
from densecap_jax.commands import flags as cli
from densecap_jax.data import inputs
from densecap_jax.search import builder as index_lib


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      prog=runtime.prog_name("densecap_jax.index"), formatter_class=cli.HelpFormatter,
      description="Index the images of a folder (detections, captions, fc7 codes) for search.")
  parser.add_argument("--input_dir", default="", help="folder of images (default: none; required)")
  parser.add_argument("--output", default="",
                      help="index folder to create or bring up to date (default: none; required)")
  model = cli.add_model_flags(parser)
  model.add_argument("--batch_size", type=int, default=1, help="images per forward pass")
  storage = parser.add_argument_group("storage")
  storage.add_argument("--max_boxes", type=int, default=50,
                       help="detections stored per image at most, in score order")
  storage.add_argument("--codes_dtype", choices=index_lib.CODES_DTYPES, default="float32",
                       help="how codes are stored; float16 halves the index, its search scores "
                            "differ slightly")
  storage.add_argument("--shard_size", type=int, default=256,
                       help="images per shard (each is committed when done)")
  parser.add_argument("--wait", action="store_true",
                      help="when another run is writing --output, wait for it to finish "
                           "(default: fail at once)")
  return parser.parse_args(argv)


def check_args(args):
  """Raises ValueError with a one-line reason for flags that cannot work.

  Returns:
    The manifest of the existing index ``--output``, or ``None`` when it is new.
  """
  if not args.input_dir:
    raise ValueError("--input_dir is required")
  if not args.output:
    raise ValueError("--output is required")
  inputs.image_files(args.input_dir)
  for flag in ("batch_size", "max_boxes", "shard_size"):
    if getattr(args, flag) < 1:
      raise ValueError(f"--{flag} must be positive, got {getattr(args, flag)}")
  cli.check_model_flags(args)
  return index_lib.check_output(args.output, probe_lock=not args.wait)


def stored_model_fingerprint(path, precision=None):
  """``index.model_fingerprint`` of the model directory ``path``, read without a predictor.

  The parameters are cast as ``predictor.DenseCapPredictor`` casts them for
  ``precision`` (default the model's), so this equals ``model_fingerprint(
  load_model(path, precision=precision))``; nothing is put on a device or
  compiled. Raises ``OSError`` or ``ValueError`` for an unreadable directory.
  """
  params, config, vocab = model_dir.load_model(path)
  params, _ = engine.inference_params(params, config, precision)
  loaded = types.SimpleNamespace(params=params, vocab=vocab)
  return index_lib.model_fingerprint(loaded)


def check_same_model(args, manifest, bundled_path):
  """Refuses an index built with another model than ``--checkpoint``, before it is loaded.

  When the manifest names the same model folder, ``build_index`` checks the
  fingerprint once the model is loaded; otherwise the fingerprint of the
  folder's files is compared here.

  Args:
    args: the parsed flags; manifest: the index's (``None``: a new index).
    bundled_path: the folder of the bundled model (no ``--checkpoint``).

  Raises:
    ValueError: one line: another model, or an unreadable ``--checkpoint``.
  """
  if manifest is None:
    return
  path = args.checkpoint or bundled_path
  built = manifest["model"].get("checkpoint") or ""
  if built and os.path.realpath(built) == os.path.realpath(path):
    return
  try:
    fingerprint = stored_model_fingerprint(
        predictor_lib.model_path(path, models_url=args.models_url), args.precision)
  except OSError as e:
    raise ValueError(str(e)) from None
  index_lib.check_model(manifest, fingerprint, f"index {args.output}")


def main(argv=None):
  args = parse_args(argv)
  try:
    manifest = check_args(args)
  except ValueError as e:
    sys.exit(f"error: {e}")
  try:
    check_same_model(args, manifest, predictor_lib.bundled_model_path())
  except ValueError as e:
    sys.exit(f"error: {e}")
  model = cli.load_model_from_flags(args, batch_size=args.batch_size)
  start = time.perf_counter()
  try:
    stats = index_lib.build_index(
        model, args.input_dir, args.output,
        checkpoint=args.checkpoint or predictor_lib.bundled_model_path(), max_boxes=args.max_boxes,
        shard_size=args.shard_size, codes_dtype=args.codes_dtype, wait=args.wait)
  except ValueError as e:
    sys.exit(f"error: {e}")
  except OSError as e:
    sys.exit(f"error: cannot write the index {args.output}: {e}")
  seconds = time.perf_counter() - start
  for line in stats["damaged"]:
    print(f"repaired: {line}")
  print(f"indexed {runtime.count(len(stats['indexed']), 'image')}, kept {stats['kept']}, dropped "
        f"{len(stats['dropped'])} (deleted or changed) in {seconds:.1f} s; {args.output}: "
        f"{runtime.count(stats['images'], 'image')}, {runtime.count(stats['regions'], 'region')}")
  if stats["failed"]:
    sys.exit(f"error: {runtime.count(len(stats['failed']), 'image')} could not be read: "
             f"{'; '.join(stats['failed'])}")
