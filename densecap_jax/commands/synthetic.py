"""``python -m densecap_jax.data.synthetic``: render the synthetic dataset (``data.synthetic_world``)."""

import argparse
import sys

from densecap_jax import runtime
from densecap_jax.data import synthetic_world


def main(argv=None):
  parser = argparse.ArgumentParser(
      prog=runtime.prog_name("densecap_jax.data.synthetic"),
      formatter_class=argparse.ArgumentDefaultsHelpFormatter,
      description="Writes synthetic dense-captioning scenes in the Visual Genome format: "
                  "OUT/images/<id>.jpg, OUT/region_descriptions.json, OUT/image_data.json and "
                  "OUT/densecap_splits.json, the inputs of python -m densecap_jax.data.preprocess.")
  parser.add_argument("--out", required=True, default=argparse.SUPPRESS,
                      help="output folder (required)")
  parser.add_argument("--num_images", type=int, default=500, help="scenes to render")
  parser.add_argument("--seed", type=int, default=0,
                      help="random seed; the same seed writes the same dataset")
  parser.add_argument("--image_size", type=int, default=320,
                      help="maximum long side; each scene's long side is in [0.8 x, x]")
  parser.add_argument("--val_fraction", type=float, default=0.1,
                      help="fraction of the images in the val split")
  parser.add_argument("--test_fraction", type=float, default=0.1,
                      help="fraction of the images in the test split")
  parser.add_argument("--jpeg_quality", type=int, default=90,
                      help="JPEG quality (Pillow's 0-100 scale)")
  args = parser.parse_args(argv)
  try:
    paths = synthetic_world.generate_dataset(args.out, args.num_images, args.seed, image_size=args.image_size,
                             val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                             jpeg_quality=args.jpeg_quality)
  except ValueError as e:
    sys.exit(f"synthetic: error: {e}")
  print(f"wrote {args.num_images} image{'' if args.num_images == 1 else 's'} to "
        f"{paths['image_dir']}")

