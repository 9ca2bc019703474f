"""Region features to HDF5 (the original's ``extract_features.lua``, reference §10.5).

  python -m densecap_jax.extract_features --input_txt images.txt --output_h5 feats.h5 \
      --checkpoint MODEL_DIR
  python -m densecap_jax.extract_features --input_dir photos/ --output_h5 feats.h5 \
      --boxes_json boxes.json --checkpoint MODEL_DIR

Each image is turned upright by its EXIF orientation, as by ``predict``, the
server and the Python API (``data.images.exif_upright``), and goes through the
test-time preprocessing (§1.2): on the accelerator from the decoded uint8
original with ``--preprocess device`` (the default), in NumPy with ``host``,
the same model input bit for bit either way. Images stream (decoded ahead in
threads, rows written as each batch is done), so memory holds a few batches
of images whatever the count. Without
``--boxes_json`` the model detects regions as ``predict`` does, with a final
NMS at 0.4, and the first ``--boxes_per_image`` detections in score order are
kept together with their 4096-d fc7 codes (post-ReLU; ``fc_dim`` wide for
other configs). As the original, a detection's code is that of its proposal,
the region pooled before box regression moved it to the stored box
(``/proposal_boxes``); ``--pool_final_boxes 1`` pools the stored boxes
instead. With ``--boxes_json`` (``{"image path or name": [[x, y, w, h], ...]}``,
1-based xywh in the pixels of the original, upright image) the codes of exactly those boxes
are computed, as ``caption_regions`` pools them (``regions.api``): boxes partly
or wholly outside the image are clipped to it as ``ops.boxes`` says, so
the model's own boxes can be given back. A listed image is looked up by its
path as listed, then by its file name; images without an entry get the
model's detections, as without ``--boxes_json`` (a note on stderr names
them), and ``/given`` says which rows are which.

The HDF5 file (written atomically, only when some image could be read; the
exit status is 0 only when all could), for the N images that could be read,
in input order, and M = ``--boxes_per_image``:

* ``/feats`` float32 ``(N, M, fc_dim)`` region codes;
* ``/boxes`` float32 ``(N, M, 4)`` xywh, 1-based, in the pixels of the image
  as given, upright (``ops.boxes``, as every entry point; given boxes
  outside the image are clipped to it);
* ``/resized_boxes`` float32 ``(N, M, 4)`` the same boxes in the resized
  image's pixels (long side ``image_size``): the original's ``/boxes``;
* ``/image_scale`` float32 ``(N,)`` image pixels per resized-image pixel
  (``H0 / h``, the factor between the two);
* ``/scores`` float32 ``(N, M)`` objectness logits;
* ``/num_boxes`` int32 ``(N,)`` real rows of each image; rows beyond are zero
  (the original failed on images with fewer than M detections);
* ``/proposal_boxes`` float32 ``(N, M, 4)`` xywh in the image's pixels, the
  detections' proposals (written when some image is detected; the rows of
  given boxes repeat the boxes, the regions their codes were pooled from);
* ``/given`` uint8 ``(N,)``, with ``--boxes_json`` only: 1 where the image's
  rows are its ``--boxes_json`` boxes, 0 where they are detections;
* ``/image_paths`` ``(N,)`` strings, the paths as listed;
* file attributes: the options (``checkpoint``, ``image_size``, ...) and
  ``source`` (``detections`` or ``boxes_json``).
"""

import argparse
import os
import sys
import time


from densecap_jax.commands import flags as cli
from densecap_jax import files
from densecap_jax import predictor
from densecap_jax import features
from densecap_jax import runtime
from densecap_jax.data import inputs


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      prog=runtime.prog_name("densecap_jax.extract_features"), formatter_class=cli.HelpFormatter,
      description="Boxes and region features (fc7 codes) of images, to an HDF5 file.")
  model = cli.add_model_flags(
      parser, final_nms_thresh=0.4,
      final_nms_help="IoU threshold of the final NMS, in [0, 1]; the original "
                     "extract_features.lua's 0.4, whatever the model's")
  model.add_argument("--boxes_per_image", type=int, default=100,
                     help="rows per image in the output (detections kept, or given boxes at most)")
  model.add_argument("--pool_final_boxes", type=int, default=0, choices=(0, 1),
                     help="1: codes of the stored boxes; 0: of their proposals, as the original")
  model.add_argument("--batch_size", type=int, default=1, help="images per forward pass")
  model.add_argument("--preprocess", choices=("device", "host"), default="device",
                     help="where images are resized: on the accelerator from the decoded uint8 "
                          "original, or on the host in NumPy (the same model input bit for bit)")
  input_flags = parser.add_argument_group("inputs (one of --input_txt, --input_dir)")
  one_input = input_flags.add_mutually_exclusive_group()
  one_input.add_argument("--input_txt", default="",
                         help="text file with one image path per line (default: none)")
  one_input.add_argument("--input_dir", default="",
                         help="every image file in a folder (default: none)")
  input_flags.add_argument("--max_images", type=int, default=-1, help=inputs.MAX_IMAGES_HELP)
  input_flags.add_argument("--boxes_json", default="",
                      help='{"image path or name": [[x, y, w, h], ...]} in original-image pixels; '
                           "features of these boxes instead of detections; images without an "
                           "entry get detections (default: detections)")
  parser.add_argument("--output_h5", default="",
                      help="HDF5 file to write (default: none; required)")
  return parser.parse_args(argv)


def check_args(args):
  """Raises ValueError with a one-line reason for options that cannot work."""
  if not args.output_h5:
    raise ValueError("--output_h5 is required")
  inputs.check_max_images(args.max_images)
  cli.check_model_flags(args)
  for flag in ("boxes_per_image", "batch_size"):
    if getattr(args, flag) < 1:
      raise ValueError(f"--{flag} must be positive, got {getattr(args, flag)}")
  if os.path.isdir(args.output_h5):
    raise ValueError(f"--output_h5 is a folder: {args.output_h5}")


def list_inputs(args):
  """All image paths of ``--input_txt`` (blank lines skipped) or ``--input_dir``, in order."""
  if args.input_txt:
    if not os.path.isfile(args.input_txt):
      raise ValueError(f"--input_txt not found: {args.input_txt}")
    try:
      with open(args.input_txt, encoding="utf-8") as f:
        paths = [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as e:
      raise ValueError(f"--input_txt {args.input_txt} is not UTF-8 text (byte {e.start})") from None
    if not paths:
      raise ValueError(f"--input_txt lists no image paths: {args.input_txt}")
  elif args.input_dir:
    paths = inputs.image_files(args.input_dir)
  else:
    raise ValueError("give --input_txt (one image path per line) or --input_dir")
  return paths


def main(argv=None):
  args = parse_args(argv)
  try:
    check_args(args)
    listed = list_inputs(args)
    paths = listed if args.max_images < 0 else listed[:args.max_images]
    given = inputs.read_given_boxes(args, paths, args.boxes_per_image)
  except ValueError as e:
    sys.exit(f"error: {e}")

  model = cli.load_model_from_flags(args, batch_size=args.batch_size, preprocess=args.preprocess)
  extractor = features.FeatureExtractor(model, args.boxes_per_image, bool(args.pool_final_boxes))
  attrs = {
      "checkpoint": args.checkpoint or predictor.bundled_model_path(),
      "image_size": model.image_size,
      "rpn_nms_thresh": model.rpn_nms_thresh,
      "final_nms_thresh": model.final_nms_thresh,
      "num_proposals": model.num_proposals,
      "boxes_per_image": args.boxes_per_image,
      "pool_final_boxes": args.pool_final_boxes,
      "source": "boxes_json" if given is not None else "detections",
      "boxes_json": args.boxes_json,
      "box_format": "xywh",
      "box_coords": "image",
  }

  start = time.perf_counter()
  try:
    with files.atomic_output(args.output_h5) as tmp_path:
      written, num_boxes, failed = features.extract(extractor, paths, given, tmp_path, attrs)
      if not written:
        raise ValueError(f"no image could be read, nothing written: {', '.join(failed)}")
  except ValueError as e:
    sys.exit(f"error: {e}")
  except OSError as e:
    sys.exit(f"error: cannot write --output_h5 {args.output_h5}: {e}")

  seconds = time.perf_counter() - start
  counted = (f"{written} of {runtime.count(len(listed), 'image')} (--max_images)"
             if len(paths) < len(listed) else runtime.count(written, "image"))
  print(f"wrote {runtime.count(num_boxes, 'box', 'boxes')} of {counted} "
        f"({model.config.fc_dim}-d features) "
        f"to {args.output_h5} in {seconds:.1f} s")
  if failed:
    sys.exit(f"error: {len(failed)} of {runtime.count(len(paths), 'image')} could not be read: "
             f"{', '.join(failed)}")


if __name__ == "__main__":
  main()
