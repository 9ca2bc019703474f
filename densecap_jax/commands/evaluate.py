"""Dense-captioning mAP of a model on a split, or of any model's predictions file.

  python -m densecap_jax.evaluation --checkpoint MODEL_DIR --data_h5 data/VG-regions.h5 \
      --data_json data/VG-regions-dicts.json --split test
  python -m densecap_jax.evaluation --predictions results.json --split test \
      --region_data data/visual-genome/region_descriptions.json \
      --split_json info/densecap_splits.json --image_data data/visual-genome/image_data.json

With ``--checkpoint`` (the original's ``evaluate_model.lua``) the model runs
over the split's images of ``--data_h5``; ``--checkpoint`` is a model
directory (``densecap_jax.checkpoint``) or a training directory (its
``best/`` model, else ``last/``). With ``--predictions`` no model runs: the
file (the original's ``results.json``, a COCO-style list of detections or
JSON Lines; ``evaluation.predictions``) is checked and scored against the
split's ground truth, read from ``--data_h5`` / ``--data_json`` or from
Visual Genome's ``--region_data`` and ``--split_json`` preprocessed in memory
(``evaluation.ground_truth``). Warnings go to stderr; a hard format error
exits with status 1 and one ``error:`` line. Java and METEOR are checked
before any scoring starts. ``eval/evaluate.py`` is the same command. Prints
the table; the results (every AP, the counts, the flags and, for a file, the
checks) are written as JSON only when ``--output`` names a file.
"""

import argparse
import sys

from densecap_jax import configs
from densecap_jax import engine
from densecap_jax import files
from densecap_jax import model_dir
from densecap_jax import predictor
from densecap_jax import pretrained
from densecap_jax import runtime
from densecap_jax import settings
from densecap_jax.commands import flags as cli
from densecap_jax.data import loader
from densecap_jax.evaluation import ground_truth
from densecap_jax.evaluation import meteor
from densecap_jax.evaluation import metric
from densecap_jax.evaluation import predictions as predictions_lib
from densecap_jax.evaluation import predictions_eval
from densecap_jax.evaluation import split_eval


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
  """Shows each flag's default, except the empty ones (unset strings and switches)."""

  def _get_help_string(self, action):
    if action.default in ("", None, False):
      return action.help
    return super()._get_help_string(action)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(prog=runtime.prog_name("densecap_jax.evaluation"),
                                   description=__doc__.split("\n\n")[0],
                                   formatter_class=_HelpFormatter)
  what = parser.add_argument_group("what to score (one of)")
  what.add_argument("--checkpoint", default="",
                    help="model or training directory to run, or a model name: "
                         f"{', '.join(pretrained.NAMES)} (README: \"Models by name\")")
  what.add_argument("--predictions", default="",
                    help="predictions file to score without a model (results.json, COCO-style "
                         "list or JSON Lines)")
  data = parser.add_argument_group(
      "ground truth: --data_h5 and --data_json, or (with --predictions) --region_data and "
      "--split_json with --image_data or --image_dir")
  data.add_argument("--data_h5", default="", help="preprocessed HDF5 (data.preprocess)")
  data.add_argument("--data_json", default="", help="preprocessed JSON (data.preprocess)")
  data.add_argument("--region_data", default="", help="Visual Genome region_descriptions.json")
  data.add_argument("--split_json", default="", help="splits JSON (info/densecap_splits.json)")
  data.add_argument("--image_data", default="",
                    help="Visual Genome image_data.json: original image sizes")
  data.add_argument("--image_dir", default="",
                    help="folder of <id>.jpg images whose headers give the original sizes "
                         "(when --image_data is not given)")
  data.add_argument("--image_size", type=int, default=720,
                    help="with --region_data: preprocessing's --image_size (the frame's long side)")
  data.add_argument("--max_token_length", type=int, default=15,
                    help="with --region_data: preprocessing's --max_token_length")
  data.add_argument("--min_token_instances", type=int, default=15,
                    help="with --region_data: preprocessing's --min_token_instances")
  data.add_argument("--non_ascii", default="error", choices=("error", "drop"),
                    help="with --region_data: preprocessing's --non_ascii")
  parser.add_argument("--split", default="val", choices=("train", "val", "test"),
                      help="the split to score")
  parser.add_argument("--max_images", type=int, default=-1,
                      help="score the split's first N images; -1 = all")
  model = parser.add_argument_group("model (--checkpoint)")
  model.add_argument("--rpn_nms_thresh", type=float, default=None,
                     help=f"NMS IoU of the proposals {cli.model_default('rpn_nms_thresh')}")
  model.add_argument("--final_nms_thresh", type=float, default=None,
                     help=f"NMS IoU of the final boxes {cli.model_default('final_nms_thresh')}")
  model.add_argument("--num_proposals", type=int, default=None,
                     help=f"proposals kept after the RPN NMS (evaluate_model.lua ignored its "
                          f"flag and kept 1000) {cli.model_default('num_proposals')}")
  model.add_argument("--batch_size", type=int, default=1, help="images per forward pass")
  model.add_argument("--precision", default=None, choices=configs.PRECISIONS,
                     help="how convs and matrix products compute: float32 (exact), tf32 or "
                          "bfloat16 (see the README) (default: the model's, float32 for "
                          "converted models)")
  preds = parser.add_argument_group("predictions file (--predictions)")
  preds.add_argument("--format", default="auto", choices=predictions_lib.FORMATS,
                     help="file layout; auto tells them apart by content")
  preds.add_argument("--boxes_in", default="auto", choices=predictions_eval.BOXES_IN,
                     help="pixels the boxes are in; auto: resized for results.json-style image "
                          "entries, original for COCO-style detections")
  preds.add_argument("--box_format", default="xywh", choices=predictions_lib.BOX_FORMATS,
                     help="the four numbers of a box; x1y1x2y2 corners are inclusive "
                          "(w = x2 - x1 + 1)")
  preds.add_argument("--predictions_image_size", type=int, default=0,
                     help="long side of the resized frame of the file's boxes; 0: the "
                          "results.json's opt.image_size, else the ground truth's")
  preds.add_argument("--only_images_in_file", action="store_true",
                     help="score only the split's images the file has (default: an image "
                          "without predictions detects nothing)")
  preds.add_argument("--per_image", action="store_true",
                     help="each image's own mAP and recall in the JSON; the lowest printed")
  preds.add_argument("--clean", action="store_true",
                     help="the clean variant (DenseCaptioningEvaluator(quirks=False)) instead of "
                          "the original's quirks")
  parser.add_argument("--output", default="",
                      help="write the results as JSON to this file (default: nothing is "
                           "written, the table is printed)")
  runtime.add_runtime_flags(parser)
  args = parser.parse_args(argv)
  _check_args(parser, args)
  return args


def _check_args(parser, args):
  """Rejects combinations of flags that cannot work, with argparse's one-line error."""
  if bool(args.checkpoint) == bool(args.predictions):
    parser.error("give --checkpoint (run a model over the split) or --predictions (score a "
                 "file), one of them")
  h5 = bool(args.data_h5 or args.data_json)
  vg = bool(args.region_data or args.split_json)
  if args.checkpoint:
    if vg or not (args.data_h5 and args.data_json):
      parser.error("--checkpoint runs the model over the images of --data_h5: give --data_h5 "
                   "and --data_json (--region_data is for --predictions)")
    used = [f for f in ("per_image", "only_images_in_file", "clean") if getattr(args, f)]
    if used:
      parser.error(f"--{used[0]} applies to --predictions only")
    try:
      settings.check_settings(num_proposals=args.num_proposals,
                              rpn_nms_thresh=args.rpn_nms_thresh,
                              final_nms_thresh=args.final_nms_thresh, prefix="--")
    except ValueError as e:
      parser.error(str(e))
    return
  if h5 == vg:
    parser.error("give the ground truth as --data_h5 and --data_json, or as --region_data and "
                 "--split_json (one of them)")
  if h5 and not (args.data_h5 and args.data_json):
    parser.error("--data_h5 and --data_json go together")
  if vg and not (args.region_data and args.split_json):
    parser.error("--region_data and --split_json go together")
  if vg and not (args.image_data or args.image_dir):
    parser.error("--region_data needs the original image sizes, which region_descriptions.json "
                 "lacks: give --image_data (Visual Genome's image_data.json) or --image_dir")


def load_ground_truth(args):
  """The split's ``ground_truth.GroundTruth`` from the flags' source."""
  if args.data_h5:
    return ground_truth.from_h5(args.data_h5, args.data_json, args.split, args.max_images)
  return ground_truth.from_visual_genome(
      args.region_data, args.split_json, args.split, image_data=args.image_data or None,
      image_dir=args.image_dir or None, image_size=args.image_size,
      max_token_length=args.max_token_length, min_token_instances=args.min_token_instances,
      non_ascii=args.non_ascii, max_images=args.max_images)


def score_predictions(args, meteor_fn=None):
  """``--predictions``: reads, checks and scores the file.

  Returns:
    ``(results, prepared, rows)``: the evaluator's dict, the
    ``predictions_eval.Prepared`` (warnings, summary) and the per-image rows (or
    ``None``). The warnings are printed to stderr before METEOR runs.

  Raises:
    ValueError: bad ground truth or a hard format error (one line).
  """
  gt = load_ground_truth(args)
  read = predictions_lib.read_predictions(args.predictions, args.format, args.box_format)
  prepared = predictions_eval.prepare(read, gt, boxes_in=args.boxes_in,
                                      predictions_image_size=args.predictions_image_size or None,
                                      only_images_in_file=args.only_images_in_file)
  for warning in prepared.warnings:
    print(f"warning: {warning}", file=sys.stderr)
  results, rows = predictions_eval.evaluate(prepared, meteor_fn=meteor_fn, quirks=not args.clean,
                                            per_image=args.per_image)
  return results, prepared, rows


def main(argv=None, meteor_fn=None):
  """The command; ``meteor_fn`` replaces the Java METEOR (tests), skipping its check."""
  args = parse_args(argv)
  output = {"opt": vars(args)}
  if args.predictions:
    try:
      if meteor_fn is None:
        meteor.check_available()
      results, prepared, rows = score_predictions(args, meteor_fn)
    except (ValueError, meteor.MeteorError) as e:
      sys.exit(f"error: {e}")
    output["checks"] = dict(prepared.summary, warnings=prepared.warnings)
    if rows is not None:
      output["per_image"] = rows
  else:
    results = _evaluate_model(args, meteor_fn)
    rows = None
  print(metric.format_results(results))
  if rows:
    print(predictions_eval.format_per_image(rows))
  if args.output:
    files.write_json(args.output, dict(results=results, **output))
    print(f"results written to {args.output}")


def _evaluate_model(args, meteor_fn):
  """``--checkpoint``: the model over the split (``split_eval.evaluate_split``)."""
  runtime.setup_from_args(args)
  try:
    params, config, _ = model_dir.load_model(predictor.model_path(args.checkpoint))
    params, config = engine.inference_params(params, config, args.precision)
    data = loader.DenseCapH5(args.data_h5, args.data_json)
    if data.vocab_size != config.vocab_size:
      raise ValueError(f"{args.data_json} has {data.vocab_size} words but the model was "
                       f"trained with {config.vocab_size}")
    if meteor_fn is None:
      meteor.check_available()  # Before the model runs, so that a missing Java stops here.
  except (OSError, ValueError, meteor.MeteorError) as e:
    sys.exit(f"error: {e}")
  for name in ("num_proposals", "rpn_nms_thresh", "final_nms_thresh"):  # the model's unless given
    if getattr(args, name) is None:
      setattr(args, name, config[name])  # also recorded in --output's opt
  predict_fn = split_eval.make_predict_fn(config, args.num_proposals)
  num_buckets = len({tuple(b) for b in config.buckets})
  runtime.announce_compiles(num_buckets, key=("evaluate", config.to_json(), args.num_proposals,
                                              args.batch_size), upto=True,
                            detail="one per shape bucket used", record_at_exit=True)
  return split_eval.evaluate_split(
      params, data, args.split, predict_fn, config=config, max_images=args.max_images,
      batch_size=args.batch_size, rpn_nms_thresh=args.rpn_nms_thresh,
      final_nms_thresh=args.final_nms_thresh, meteor_fn=meteor_fn)


if __name__ == "__main__":
  main()
