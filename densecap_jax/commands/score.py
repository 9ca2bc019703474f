"""The ``score`` command: how well phrases describe the regions of images (``regions.api``).

  python -m densecap_jax.score --input_image photo.jpg --phrase "a red car" --phrase "a dog"
  python -m densecap_jax.score --input_dir photos/ --phrase "a red car" --boxes_json boxes.json \
      --top 3 --output_json scores.json --checkpoint MODEL_DIR

Each phrase is scored given each region, teacher-forced, as
``DenseCapPredictor.score_phrases`` does: the regions are the model's own
detections, or with ``--boxes_json`` (``{"image path or name": [[x, y, w, h],
...]}``, as ``predict`` and ``extract_features`` take it) the boxes given
(clipped to the image as ``ops.boxes`` says; images without an entry
get their detections). Prints, per image and phrase, the ``--top`` regions by
mean log-likelihood (rank, box xywh in the pixels of the upright image as
given, mean and summed log-likelihood, the region's caption). With
``--output_json`` writes, per image, every region's box, caption and
objectness logit (and for given boxes ``clipped`` and ``outside``) and the
``(regions, phrases)`` ``log_likelihood`` and ``mean_log_likelihood``
matrices, with the phrases as scored, their unknown words and
``no_known_content_words``.

Under a phrase's header a line names the words the model does not know and
what was scored instead (``"a man riding a horse": the model does not know
"man", "riding", "horse"; scored as "a a"``). A phrase whose known words are
all function words ("a", "the", "of", ...: ``regions.phrases.FUNCTION_WORDS``)
is not ranked: a ``not ranked:`` line takes its table's place. A phrase with
no known word or more than the model's ``seq_length`` words, an unreadable
image and a NaN, infinite or non-positive box size are one-line errors,
before anything is written. An existing ``--output_json`` is replaced only
with ``--overwrite``.
"""

import argparse
import os
import sys

import numpy as np

from densecap_jax import files
from densecap_jax import predictor
from densecap_jax import runtime
from densecap_jax.commands import flags as cli
from densecap_jax.data import inputs
from densecap_jax.regions import given as given_lib
from densecap_jax.regions import phrases as phrases_lib


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      prog=runtime.prog_name("densecap_jax.score"), formatter_class=cli.HelpFormatter,
      description="Log-likelihoods of phrases given the regions of images.")
  inputs = parser.add_argument_group("inputs (one of --input_image, --input_dir)")
  one_input = inputs.add_mutually_exclusive_group()
  one_input.add_argument("--input_image", default="", help="one image (default: none)")
  one_input.add_argument("--input_dir", default="",
                         help="every image file in a folder, in name order (default: none)")
  inputs.add_argument("--phrase", action="append", default=[],
                      help='a phrase to score, e.g. "a red car"; repeat for more '
                           "(default: none; required)")
  inputs.add_argument("--boxes_json", default="",
                      help='{"image path or name": [[x, y, w, h], ...]} in the pixels of the '
                           "images as given; score these boxes; images without an entry get "
                           "detections (default: the detections)")
  output = parser.add_argument_group("outputs")
  output.add_argument("--top", type=int, default=5, help="regions listed per image and phrase")
  output.add_argument("--output_json", default="",
                      help="if set, write every region's scores there (default: not written)")
  output.add_argument("--overwrite", action="store_true", help="replace an existing --output_json")
  cli.add_model_flags(parser)
  return parser.parse_args(argv)


def list_inputs(args):
  """The image paths of ``--input_image`` or ``--input_dir``; ValueError with a one-line reason."""
  if not (args.input_image or args.input_dir):
    raise ValueError("give one of --input_image or --input_dir")
  if args.input_image:
    if not os.path.isfile(args.input_image):
      raise ValueError(f"--input_image not found: {args.input_image}")
    return [args.input_image]
  return inputs.image_files(args.input_dir)


def check_args(args):
  """Raises ValueError with a one-line reason for flags that cannot work."""
  if not args.phrase:
    raise ValueError('give at least one --phrase, e.g. --phrase "a red car"')
  if args.top < 1:
    raise ValueError(f"--top must be positive, got {args.top}")
  cli.check_model_flags(args)
  if args.output_json:
    if os.path.isdir(args.output_json):
      raise ValueError(f"--output_json is a folder: {args.output_json}")
    if os.path.lexists(args.output_json) and not args.overwrite:
      raise ValueError(f"--output_json {args.output_json} exists; pass --overwrite to replace "
                       f"it, or choose another file")


def score_images(model, paths, encoded, given=None, boxes_json=""):
  """``RegionModel.score_prepared`` of each image, streamed in batches.

  Args:
    model: an ``predictor.DenseCapPredictor``.
    paths: image paths.
    encoded: ``regions.phrases.EncodedPhrases``.
    given: ``None`` to score the detections, or per path ``(k, 4)`` xywh boxes
      in the image's pixels, or ``None`` to score that image's detections
      (``inputs.read_given_boxes``).
    boxes_json: the file of ``given``, for errors.

  Returns:
    Per path, in order, ``score_prepared``'s dict (boxes in the image's pixels).

  Raises:
    ValueError: one line naming an unreadable image, or a bad given box
      (``given_lib.mixed_batch``).
  """
  results = [None] * len(paths)
  for group in model.stream_groups(paths):
    scored = given_lib.mixed_batch(
        model, [p for _, p in group], [j for j, _ in group], paths, given, boxes_json,
        lambda subset: model.regions.score_prepared(subset, encoded),
        lambda subset, checked: model.regions.score_prepared(subset, encoded, checked))
    for (j, _), result in zip(group, scored):
      results[j] = result
  return results


def format_table(path, result, top, phrases=None):
  """The ``top`` regions of each phrase by mean log-likelihood, best first, as text tables.

  Each block is headed by the image and the phrase as given (``phrases``;
  default the phrases as scored), then the phrase's ``regions.phrases.notes``
  lines (unknown words; ``not ranked:`` in place of the table for a phrase of
  function words only).
  """
  blocks = []
  for k, scored in enumerate(result["phrases"]):
    phrase = scored if phrases is None else phrases[k]
    mean = result["mean_log_likelihood"][:, k]
    notes = ["  " + line for line in phrases_lib.notes(
        phrase, scored.split(), result["unknown_words"][k])]
    if result["no_known_content_words"][k]:
      blocks.append("\n".join([f"{path}: {phrase!r} ({runtime.count(len(mean), 'region')})", *notes]))
      continue
    order = np.argsort(-mean, kind="stable")[:top]
    rows = [("rank", "box (x, y, w, h)", "mean", "sum", "caption")]
    for rank, i in enumerate(order, 1):
      box = "[" + ", ".join(f"{v:.1f}" for v in result["boxes"][i]) + "]"
      rows.append((str(rank), box, f"{mean[i]:.3f}", f"{result['log_likelihood'][i, k]:.3f}",
                   result["captions"][i]))
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    lines = [f"{path}: {phrase!r} ({runtime.count(len(mean), 'region')})", *notes]
    lines += ["  ".join([r[0].rjust(widths[0]), r[1].ljust(widths[1]), r[2].rjust(widths[2]),
                         r[3].rjust(widths[3]), r[4]]).rstrip() for r in rows]
    blocks.append("\n".join(lines))
  return "\n\n".join(blocks)


def json_entry(path, result):
  """``score_prepared``'s dict of ``path`` with lists for arrays, for ``--output_json``."""
  return {"image": path, **{key: value.tolist() if isinstance(value, np.ndarray) else value
                            for key, value in result.items()}}


def main(argv=None):
  args = parse_args(argv)
  try:
    check_args(args)
    paths = list_inputs(args)
    given = inputs.read_given_boxes(args, paths)
  except ValueError as e:
    sys.exit(f"error: {e}")
  model = cli.load_model_from_flags(args, announce=False)
  try:
    encoded = model.regions.encode_phrases(args.phrase)
    results = score_images(model, paths, encoded, given, args.boxes_json)
  except ValueError as e:
    sys.exit(f"error: {e}")
  print("\n\n".join(format_table(p, r, args.top, args.phrase) for p, r in zip(paths, results)))
  if args.output_json:
    files.write_json(args.output_json, {
        "images": [json_entry(p, r) for p, r in zip(paths, results)],
        "phrases": args.phrase,
        "source": "boxes_json" if given is not None else "detections",
        "box_format": "xywh",
        "box_coords": "image",
        "checkpoint": args.checkpoint or predictor.bundled_model_path(),
    })
    print(f"scores: {args.output_json}")
