"""``python -m densecap_jax.data.preprocess``: Visual Genome regions -> DenseCap HDF5 + JSON.

The work is ``data.visual_genome.preprocess`` (reference §8).
"""

import argparse
import sys

from densecap_jax import runtime
from densecap_jax.data import visual_genome
from densecap_jax.data import vocab as vocab_lib


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      prog=runtime.prog_name("densecap_jax.data.preprocess"),
      formatter_class=argparse.ArgumentDefaultsHelpFormatter,
      description="Visual Genome region descriptions -> DenseCap HDF5 + JSON (reference §8).")
  parser.add_argument("--region_data", default="data/visual-genome/region_descriptions.json",
                      help="input JSON file with regions and captions")
  parser.add_argument("--image_dir", default="data/visual-genome/images",
                      help="directory containing all images, named <id>.jpg")
  parser.add_argument("--split_json", default="info/densecap_splits.json",
                      help="JSON file of splits")
  parser.add_argument("--json_output", default="data/VG-regions-dicts.json",
                      help="output JSON file")
  parser.add_argument("--h5_output", default="data/VG-regions.h5", help="output HDF5 file")
  parser.add_argument("--image_size", default=720, type=int,
                      help="size of the longest edge of preprocessed images: the model "
                           "config's image_size (vgg16 720, tiny 256)")
  parser.add_argument("--max_token_length", default=15, type=int,
                      help="drop captions with more words; 0 drops every caption (reference §8.3)")
  parser.add_argument("--min_token_instances", default=15, type=int,
                      help="words seen fewer times are mapped to <UNK>")
  parser.add_argument("--num_workers", default=5, type=int,
                      help="threads that read and resize images")
  parser.add_argument("--max_images", default=-1, type=int,
                      help="keep only this many images when positive")
  parser.add_argument("--non_ascii", default="error", choices=vocab_lib.NON_ASCII_MODES,
                      help="a non-ASCII character the original's table does not replace: stop "
                           "(the original crashed) or delete it")
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  try:
    visual_genome.preprocess(args.region_data, args.image_dir, args.split_json, args.h5_output, args.json_output,
               image_size=args.image_size, max_token_length=args.max_token_length,
               min_token_instances=args.min_token_instances, num_workers=args.num_workers,
               max_images=args.max_images, non_ascii=args.non_ascii)
  except ValueError as e:
    sys.exit(f"preprocess: error: {e}")

