"""``python -m densecap_jax.convert --input FILE --output DIR [--format ...]``.

Prints every parameter of the written model with its shape and where it came
from, then writes the model directory. Exits with status 1 and a one-line
``error: ...`` on any problem; never overwrites an existing directory.
"""

import argparse
import sys

import numpy as np

from densecap_jax import model_dir
from densecap_jax import convert as convert_lib
from densecap_jax import runtime
from densecap_jax.convert import mapping


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog=runtime.prog_name("densecap_jax.convert"),
      description="Convert the original DenseCap .t7 checkpoint, or ImageNet VGG-16 weights "
                  "(Caffe .caffemodel, torchvision .pth), to a densecap_jax model directory.")
  parser.add_argument("--input", required=True, help="the .t7, .caffemodel or .pth file")
  parser.add_argument("--output", required=True, help="model directory to create (must not exist)")
  parser.add_argument("--format", choices=convert_lib.FORMATS,
                      help="input format (default: detected from the file's first bytes)")
  parser.add_argument("--vocab", help="ImageNet weights only: the training data's JSON with "
                                      "idx_to_token (e.g. data/VG-regions-dicts.json)")
  parser.add_argument("--seed", type=int, default=0,
                      help="ImageNet weights only: seed of the freshly initialised parts")
  return parser.parse_args(argv)


def report_lines(conversion):
  """``name  shape  <- source`` for every parameter, then the notes."""
  flat = mapping.flatten(conversion.params)
  width = max(len(name) for name in flat)
  lines = []
  for name in sorted(flat):
    shape = str(tuple(np.shape(flat[name])))
    lines.append(f"  {name:<{width}}  {shape:<22} <- {conversion.sources[name]}")
  lines += [f"note: {note}" for note in conversion.notes]
  return lines


def main(argv=None):
  args = parse_args(argv)
  try:
    convert_lib.output_is_free(args.output)
    file_format = args.format or convert_lib.detect_format(args.input)
    print(f"reading {args.input} ({convert_lib.describe(file_format)})")
    conversion = convert_lib.convert(args.input, file_format, args.vocab, args.seed)
    print("\n".join(report_lines(conversion)))
    model_dir.save_model(args.output, conversion.params, conversion.config, conversion.vocab)
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {args.output}: config {conversion.config.name!r}, "
        f"{len(mapping.flatten(conversion.params))} tensors, vocabulary of "
        f"{len(conversion.vocab) - 1} words")
  return 0


if __name__ == "__main__":
  sys.exit(main())
