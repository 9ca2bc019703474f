"""Dense-captioning mAP of a model on a split (the original's ``evaluate_model.lua``).

  python -m densecap_jax.evaluation --checkpoint MODEL_DIR --data_h5 data/VG-regions.h5 \
      --data_json data/VG-regions-dicts.json --split test

``--checkpoint`` is a model directory (``densecap_jax.checkpoint``) or a
training directory (its ``best/`` model, else ``last/``). ``eval/evaluate.py``
is the same command. Prints the table and
writes the results as JSON (``--output``, default ``eval_<split>.json``; an
existing file is kept and a numbered name is used instead).
"""

import argparse
import os
import sys

from densecap_jax import checkpoint
from densecap_jax import files
from densecap_jax.data import loader
from densecap_jax.evaluation import metric
from densecap_jax.evaluation import split_eval


def parse_args(argv=None):
  parser = argparse.ArgumentParser(prog="python -m densecap_jax.evaluation", description=__doc__.split("\n\n")[0])
  parser.add_argument("--checkpoint", required=True, help="model or training directory")
  parser.add_argument("--data_h5", required=True, help="preprocessed HDF5 (preprocess.py)")
  parser.add_argument("--data_json", required=True, help="preprocessed JSON (preprocess.py)")
  parser.add_argument("--split", default="val", choices=("train", "val", "test"))
  parser.add_argument("--max_images", type=int, default=-1, help="first N images; -1 = all")
  parser.add_argument("--rpn_nms_thresh", type=float, default=0.7)
  parser.add_argument("--final_nms_thresh", type=float, default=0.3)
  parser.add_argument("--num_proposals", type=int, default=1000)
  parser.add_argument("--batch_size", type=int, default=1, help="images per forward pass")
  parser.add_argument("--output", default="", help="results JSON (default eval_<split>.json)")
  return parser.parse_args(argv)


def free_path(path):
  """``path``, or ``stem.N.ext`` with the smallest N that does not exist yet."""
  stem, ext = os.path.splitext(path)
  n = 0
  while os.path.exists(path):
    n += 1
    path = f"{stem}.{n}{ext}"
  return path


def main(argv=None):
  args = parse_args(argv)
  try:
    params, config, _ = checkpoint.load_model(args.checkpoint)
    data = loader.DenseCapH5(args.data_h5, args.data_json)
    if data.vocab_size != config.vocab_size:
      raise ValueError(f"{args.data_json} has {data.vocab_size} words but the model was "
                       f"trained with {config.vocab_size}")
  except (OSError, ValueError) as e:
    sys.exit(f"error: {e}")
  predict_fn = split_eval.make_predict_fn(config, args.num_proposals)
  results = split_eval.evaluate_split(
      params, data, args.split, predict_fn, config=config, max_images=args.max_images,
      batch_size=args.batch_size, rpn_nms_thresh=args.rpn_nms_thresh,
      final_nms_thresh=args.final_nms_thresh)
  print(metric.format_results(results))
  output = args.output or free_path(f"eval_{args.split}.json")
  files.write_json(output, {"results": results, "opt": vars(args)})
  print(f"results written to {output}")


if __name__ == "__main__":
  main()
