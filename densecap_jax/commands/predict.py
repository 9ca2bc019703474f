"""Captioned boxes for images, a folder or a data split (the original's ``run_model.lua``).

  python -m densecap_jax.predict --input_image photo.jpg
  python -m densecap_jax.predict --input_dir photos/ --output_dir drawn/
  python -m densecap_jax.predict --input_split test --splits_json info/densecap_splits.json \
      --vg_img_root_dir data/visual-genome/images --checkpoint MODEL_DIR
  python -m densecap_jax.predict --input_dir photos/ --boxes_json boxes.json

Writes ``results.json`` (reference §10.2: xywh boxes in the resized image,
objectness logits, captions, image name, options), the resized images and
the results viewer (``view_results.html``, opens from disk) to
``--output_vis_dir``, and with ``--output_dir`` the images with the top boxes
and captions drawn in: on each image at its own size, upright, the captions
on labels kept inside the picture (``vis.draw_labelled``), or with
``--draw_on resized`` on the resized image as the original draws them
(``vis.draw_results``). Without ``--checkpoint`` the small demo model bundled
with the package is used; its defaults (image size, proposals) come from its
config, and for the ``vgg16`` model they are the original's 720 and 1000.

With ``--boxes_json`` (``{"image path or name": [[x, y, w, h], ...]}``, as
``extract_features`` takes it: 1-based xywh in the pixels of the upright image
as given) the given boxes are captioned instead of detections, in the order
given (``RegionModel.caption_prepared``): each ``results.json`` entry has those
boxes in the resized image, as the schema says, their objectness logits as
``scores``, their captions and ``caption_log_probs`` (the log-probability of
each caption). Images without an entry get the model's detections, as
without ``--boxes_json`` (a note on stderr names them), so one run may mix the
two: their entries have no ``caption_log_probs``. A box partly or wholly
outside its image is clipped to it as ``ops.boxes`` says (every box the
model returns can be given back); a NaN, infinite or non-positive size is a
one-line error naming the image and the box.

Photos are captioned upright: their EXIF orientation is applied, as by the
server and the Python API (``data.images.exif_upright``), and boxes refer to
the upright image.

Images stream: threads decode them ahead while the model runs, each batch
goes to the model as soon as it is full, and each image's pictures are
written when its batch is done, so memory holds a few batches of images
whatever the folder size. With ``--preprocess device`` (the default) the
decoded uint8 original is resized on the accelerator
(``data.device_resize``), with ``host`` in NumPy; both give the same model
input bit for bit, hence the same results.

An image's pictures (and its ``img_name``) take its file's base name, made
safe and unique (``output_names``): two inputs of the same name, or a name
with control characters or over 200 bytes, never replace one another or
write outside the output folders.

Nothing is replaced without ``--overwrite``: an existing ``results.json``, or
an image of the same name in either output folder, stops the command before
the model loads. Nothing is written when no image could be read. The exit
status is 0 only when every image was captioned; otherwise the unreadable
files are listed.
"""

import argparse
import json
import os
import sys
import time

from tqdm import tqdm

from densecap_jax import files
from densecap_jax import predictor
from densecap_jax import runtime
from densecap_jax import vis
from densecap_jax.commands import flags as cli
from densecap_jax.data import images as images_lib
from densecap_jax.data import inputs
from densecap_jax.ops import boxes as boxes_lib
from densecap_jax.regions import given as given_lib


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      prog=runtime.prog_name("densecap_jax.predict"), formatter_class=cli.HelpFormatter,
      description="Dense captioning of images: boxes, scores and captions.")
  input_flags = parser.add_argument_group("inputs (one of --input_image, --input_dir, --input_split)")
  one_input = input_flags.add_mutually_exclusive_group()
  one_input.add_argument("--input_image", default="", help="one image (default: none)")
  one_input.add_argument("--input_dir", default="",
                         help="every image file in a folder, in name order (default: none)")
  one_input.add_argument("--input_split", default="", choices=("", "train", "val", "test"),
                         help="a split of --splits_json, images <vg_img_root_dir>/<id>.jpg "
                              "(default: none)")
  input_flags.add_argument("--splits_json", default="info/densecap_splits.json",
                      help="JSON {split: [image ids]} for --input_split")
  input_flags.add_argument("--vg_img_root_dir", default="",
                      help="folder of the Visual Genome images for --input_split "
                           "(default: the current folder)")
  input_flags.add_argument("--max_images", type=int, default=100, help=inputs.MAX_IMAGES_HELP)
  input_flags.add_argument("--boxes_json", default="",
                      help='{"image path or name": [[x, y, w, h], ...]} in the pixels of the '
                           "images as given; caption these boxes instead of detections; images "
                           "without an entry get detections (default: detections)")
  model = cli.add_model_flags(parser)
  model.add_argument("--batch_size", type=int, default=1, help="images per forward pass")
  model.add_argument("--preprocess", choices=("device", "host"), default="device",
                     help="where images are resized: on the accelerator from the decoded uint8 "
                          "original, or on the host in NumPy (the same model input bit for bit)")
  model.add_argument("--max_detections", type=int, default=-1,
                     help="keep at most this many detections per image in results.json; "
                          "-1 = all (given --boxes_json boxes are all kept)")
  output = parser.add_argument_group("outputs")
  output.add_argument("--output_dir", default="",
                      help="if set, write the images with boxes and captions drawn in, named "
                           "as the inputs (made unique, control characters as _, at most 200 "
                           "bytes) (default: not written)")
  output.add_argument("--draw_on", choices=("image", "resized"), default="image",
                      help="image: draw on each image at its own size, upright, with captions "
                           "on labels of the box colour, wrapped at spaces and kept inside; "
                           "resized: the original's drawing, on the resized image the model saw")
  output.add_argument("--num_to_draw", type=int, default=10, help="boxes drawn per image")
  output.add_argument("--text_size", type=int, default=2,
                      help="caption text size of drawings: lines 8 x this many pixels high on "
                           "the resized image; with --draw_on image, on the image scaled to a "
                           "720-pixel long side (at least 12 pixels)")
  output.add_argument("--box_width", type=int, default=2,
                      help="box line half-width of drawings, in pixels of the resized image; "
                           "with --draw_on image, of the image scaled to a 720-pixel long side")
  output.add_argument("--output_vis", type=int, default=1, choices=(0, 1),
                      help="write results.json, the resized images and the viewer")
  output.add_argument("--output_vis_dir", default="vis/data",
                      help="folder of results.json, the resized images and the viewer")
  output.add_argument("--overwrite", action="store_true",
                      help="replace an existing results.json and images of the same names in "
                           "the output folders")
  return parser.parse_args(argv)


def list_inputs(args):
  """All image paths the inputs name, in order (before ``--max_images``).

  Raises:
    ValueError: a one-line reason.
  """
  if args.input_image:
    if not os.path.isfile(args.input_image):
      raise ValueError(f"--input_image not found: {args.input_image}")
    return [args.input_image]
  if args.input_dir:
    paths = inputs.image_files(args.input_dir)
  elif args.input_split:
    splits = files.read_json(args.splits_json, "--splits_json")
    if not isinstance(splits, dict) or args.input_split not in splits:
      raise ValueError(f"--splits_json {args.splits_json} has no {args.input_split!r} list")
    paths = [os.path.join(args.vg_img_root_dir, f"{i}.jpg") for i in splits[args.input_split]]
  else:
    raise ValueError("give one of --input_image, --input_dir or --input_split")
  return paths


def check_args(args):
  """Raises ValueError with a one-line reason for flags that cannot work."""
  inputs.check_max_images(args.max_images)
  cli.check_model_flags(args)
  if args.batch_size < 1:
    raise ValueError(f"--batch_size must be positive, got {args.batch_size}")
  if args.max_detections < -1:
    raise ValueError(f"--max_detections must be non-negative, or -1 for all, "
                     f"got {args.max_detections}")


def output_names(paths):
  """The file name of each of ``paths`` in the output folders, in order (also its ``img_name``).

  The path's base name, made safe and unique by ``files.contained_name``:
  control characters become ``_``, a name over 200 bytes is cut keeping its
  extension, and a name already given (``--input_split`` entries
  ``"a/1"`` and ``"b/1"``, or the same image twice) gets ``-2``, ``-3``, ...
  before its extension; so no image replaces another and none is written
  outside its folder.
  """
  used = set()
  return [files.contained_name(os.path.basename(p), used) for p in paths]


def check_outputs(args, paths):
  """Refuses outputs that would replace files, before anything is loaded.

  Output folders that hold input images are always refused; an existing
  ``results.json`` or an output image of the same name as one to be written
  is refused unless ``--overwrite``.
  """
  input_dirs = {os.path.realpath(os.path.dirname(os.path.abspath(p))) for p in paths}
  folders = (("--output_vis_dir", args.output_vis_dir if args.output_vis else ""),
             ("--output_dir", args.output_dir))
  for flag, folder in folders:
    if folder and os.path.realpath(os.path.abspath(folder)) in input_dirs:
      raise ValueError(f"{flag} {folder} holds input images, which would be overwritten; "
                       f"choose another folder")
  if (args.output_vis and args.output_dir and os.path.realpath(os.path.abspath(args.output_dir))
      == os.path.realpath(os.path.abspath(args.output_vis_dir))):
    raise ValueError(f"--output_dir and --output_vis_dir are the same folder {args.output_dir}: "
                     f"the drawings would replace the resized images; choose two folders")
  if args.overwrite:
    return
  results = os.path.join(args.output_vis_dir, "results.json")
  if args.output_vis and os.path.exists(results):
    raise ValueError(f"{results} exists (from another run); pass --overwrite to replace it, "
                     f"or choose another --output_vis_dir")
  names = output_names(paths)
  for flag, folder in folders:
    existing = [n for n in names if folder and os.path.lexists(os.path.join(folder, n))]
    if existing:
      raise ValueError(f"{flag} {folder} already holds {len(existing)} of the images to write "
                       f"({', '.join(existing[:3])}{', ...' if len(existing) > 3 else ''}); "
                       f"pass --overwrite to replace them, or choose another folder")


def caption_images(model, paths, args, given=None):
  """Captions ``paths`` as they stream in, writing each image's pictures as soon as it is done.

  Images are decoded ahead in threads while the model runs
  (``DenseCapPredictor.read``) and go to the model batch by batch as they
  come (``image_stream.group_batches``); the resized image (``--output_vis_dir``)
  and the drawn one (``--output_dir``) of each are written when its batch is
  done, so memory holds a few batches of images whatever the count.

  Args:
    model: an ``predictor.DenseCapPredictor``.
    paths: image paths.
    args: the parsed flags.
    given: ``None`` to caption detections, or per path ``(k, 4)`` xywh boxes in
      the image's pixels to caption, or ``None`` for detections of that image
      (``read_given_boxes``).

  Returns:
    ``(entries, failed)``: the ``results.json`` entry of each readable image
    (``boxes`` ``(N, 4)`` and ``scores`` ``(N,)`` float32 arrays, ``captions``
    and ``img_name``, the file name of its pictures, ``output_names``; for
    given boxes also ``caption_log_probs`` ``(N,)``), in input order, and the
    unreadable paths.

  Raises:
    ValueError: a bad given box (``check_given_boxes``).
  """

  names = output_names(paths)
  max_detections = None if args.max_detections < 0 else args.max_detections
  drawing = bool(args.output_vis or args.output_dir)
  entries, failed = {}, []
  with tqdm(total=len(paths), desc="captioning", unit="img", disable=len(paths) < 2) as bar:
    for group in model.stream_groups(paths, failed=failed, bar=bar):
      outputs = given_lib.caption_group(model, [p for _, p in group], [j for j, _ in group],
                                        paths, given, args.boxes_json, max_detections, drawing)
      for (j, p), r in zip(group, outputs):
        name = names[j]
        # NumPy rows (20 bytes a box), made lists only as results.json is written.
        entries[j] = {"boxes": r["boxes"], "scores": r["scores"], "captions": r["captions"],
                      **({"caption_log_probs": r["caption_log_probs"]}
                         if "caption_log_probs" in r else {}),
                      "img_name": name}
        if args.output_vis:
          vis.save_image_atomic(p.display, files.inside(args.output_vis_dir, name))
        if args.output_dir:
          vis.save_image_atomic(draw(p, r, paths[j], args), files.inside(args.output_dir, name))
  return [entries[j] for j in sorted(entries)], [path for _, path, _ in failed]


def draw(prepared, result, path, args):
  """The ``--output_dir`` picture of one image: ``--draw_on`` says on which image and how.

  ``image``: ``vis.draw_labelled`` on the upright image at its own size
  (``prepared.rgb``, or decoded again from ``path`` when it was resized on the
  host), with the boxes scaled to it (``ops.boxes.to_image``);
  ``resized``: ``vis.draw_results`` on the resized image (``prepared.display``),
  as the original's ``vis_utils.densecap_draw``.
  """
  options = dict(num_to_draw=args.num_to_draw, box_width=args.box_width, text_size=args.text_size)
  if args.draw_on == "resized":
    return vis.draw_results(prepared.display, result["boxes"], result["captions"], **options)
  rgb = prepared.rgb if prepared.rgb is not None else images_lib.user_rgb(path)
  boxes = boxes_lib.to_image(result["boxes"], prepared.original_size, prepared.size)
  return vis.draw_labelled(rgb, boxes, result["captions"], **options)


def main(argv=None):
  args = parse_args(argv)
  try:
    check_args(args)
    listed = list_inputs(args)
    paths = listed if args.max_images < 0 else listed[:args.max_images]
    check_outputs(args, paths)
    given = inputs.read_given_boxes(args, paths)
  except ValueError as e:
    sys.exit(f"error: {e}")


  model = cli.load_model_from_flags(args, batch_size=args.batch_size, preprocess=args.preprocess)

  start = time.perf_counter()
  try:
    results, failed = caption_images(model, paths, args, given)
  except ValueError as e:
    sys.exit(f"error: {e}")
  if not results:
    sys.exit(f"error: no image could be read, nothing written: {', '.join(failed)}")
  opt = dict(vars(args), image_size=model.image_size, num_proposals=model.num_proposals,
             rpn_nms_thresh=model.rpn_nms_thresh, final_nms_thresh=model.final_nms_thresh,
             checkpoint=args.checkpoint or predictor.bundled_model_path())
  if args.output_vis:
    page = vis.write_viewer(args.output_vis_dir, {"results": results, "opt": opt})

  seconds = time.perf_counter() - start
  num_boxes = sum(len(r["captions"]) for r in results)
  counted = (f"{len(results)} of {runtime.count(len(listed), 'image')} (--max_images)"
             if len(paths) < len(listed) else runtime.count(len(results), "image"))
  print(f"captioned {counted}, {runtime.count(num_boxes, 'box', 'boxes')}, in {seconds:.1f} s")
  if args.output_vis:
    print(f"results: {os.path.join(args.output_vis_dir, 'results.json')}; "
          f"viewer: {page}")
  if args.output_dir:
    print(f"drawn images: {args.output_dir}")
  if len(results) == 1:
    print(json.dumps({"img_name": results[0]["img_name"], "captions": results[0]["captions"][:5]}))
  if failed:
    sys.exit(f"error: {len(failed)} of {runtime.count(len(paths), 'image')} could not be read: "
             f"{', '.join(failed)}")


if __name__ == "__main__":
  main()
