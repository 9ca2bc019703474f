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
or wholly outside the image are clipped to it as ``regions.coords`` says, so
the model's own boxes can be given back. A listed image is looked up by its
path as listed, then by its file name; images without an entry get the
model's detections, as without ``--boxes_json`` (a note on stderr names
them), and ``/given`` says which rows are which.

The HDF5 file (written atomically, only when some image could be read; the
exit status is 0 only when all could), for the N images that could be read,
in input order, and M = ``--boxes_per_image``:

* ``/feats`` float32 ``(N, M, fc_dim)`` region codes;
* ``/boxes`` float32 ``(N, M, 4)`` xywh, 1-based, in the pixels of the image
  as given, upright (``regions.coords``, as every entry point; given boxes
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
import math
import os
import sys
import time

import h5py
import jax
import numpy as np
from tqdm import tqdm

from densecap_jax.commands import flags as cli
from densecap_jax import files
from densecap_jax import predictor as inference
from densecap_jax.commands import predict
from densecap_jax import runtime
from densecap_jax.models import densecap
from densecap_jax.ops import boxes as boxes_lib
from densecap_jax.regions import coords as coords_lib


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      prog=runtime.prog_name("densecap_jax.extract_features"), formatter_class=cli.HelpFormatter,
      description="Boxes and region features (fc7 codes) of images, to an HDF5 file.")
  model = cli.add_model_flags(parser, final_nms_thresh=0.4)
  model.add_argument("--boxes_per_image", type=int, default=100,
                     help="rows per image in the output (detections kept, or given boxes at most)")
  model.add_argument("--pool_final_boxes", type=int, default=0, choices=(0, 1),
                     help="1: codes of the stored boxes; 0: of their proposals, as the original")
  model.add_argument("--batch_size", type=int, default=1, help="images per forward pass")
  model.add_argument("--preprocess", choices=("device", "host"), default="device",
                     help="where images are resized: on the accelerator from the decoded uint8 "
                          "original, or on the host in NumPy (the same model input bit for bit)")
  inputs = parser.add_argument_group("inputs (one of --input_txt, --input_dir)")
  one_input = inputs.add_mutually_exclusive_group()
  one_input.add_argument("--input_txt", default="",
                         help="text file with one image path per line (default: none)")
  one_input.add_argument("--input_dir", default="",
                         help="every image file in a folder (default: none)")
  inputs.add_argument("--max_images", type=int, default=-1, help=predict.MAX_IMAGES_HELP)
  inputs.add_argument("--boxes_json", default="",
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
  predict.check_max_images(args.max_images)
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
    paths = predict.image_files(args.input_dir)
  else:
    raise ValueError("give --input_txt (one image path per line) or --input_dir")
  return paths


def _check_box(box, where):
  """One ``[x, y, w, h]`` of the boxes JSON -> 4 floats; ValueError naming ``where`` otherwise.

  The checks that need no image (4 numbers, finite, positive size) run here,
  before any image is read; clipping to the image as each image is read, by
  ``regions.coords.check_boxes``.
  """
  numbers = (isinstance(box, list) and len(box) == 4
             and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box))
  if not numbers:
    raise ValueError(f"{where}: expected [x, y, w, h] (4 numbers), got {box!r}")
  for name, value in zip(("x", "y", "w", "h"), box):
    if not math.isfinite(value):
      raise ValueError(f"{where}: {name} is {value}")
  if box[2] <= 0 or box[3] <= 0:
    raise ValueError(f"{where}: w and h must be positive, got w={box[2]}, h={box[3]}")
  return [float(v) for v in box]


def read_boxes_json(path, image_paths, boxes_per_image):
  """The given boxes of each listed image, from a ``--boxes_json`` file.

  Args:
    path: JSON file ``{"image path or name": [[x, y, w, h], ...]}`` (1-based
      xywh in the original image's pixels).
    image_paths: the listed images; each is looked up by its path, then by
      its file name.
    boxes_per_image: the most boxes an image may have.

  Returns:
    Per listed image a ``(k, 4)`` float32 xywh array, or ``None`` when the
    file has no entry for it (the image gets detections).

  Raises:
    ValueError: one line naming the file, the image and the field at fault.
  """
  table = files.read_json(path, "--boxes_json")
  if not isinstance(table, dict):
    raise ValueError(f"--boxes_json {path} must hold an object {{image: [[x, y, w, h], ...]}}, "
                     f"got {type(table).__name__}")
  boxes = {}
  for key, entry in table.items():
    if not isinstance(entry, list):
      raise ValueError(f"--boxes_json {path}: {key!r}: expected a list of [x, y, w, h], "
                       f"got {type(entry).__name__}")
    if len(entry) > boxes_per_image:
      raise ValueError(f"--boxes_json {path}: {key!r} has {len(entry)} boxes, more than "
                       f"--boxes_per_image {boxes_per_image}")
    rows = [_check_box(b, f"--boxes_json {path}: {key!r} box {j}") for j, b in enumerate(entry)]
    boxes[key] = np.asarray(rows, np.float32).reshape(-1, 4)
  given = []
  for image_path in image_paths:
    key = image_path if image_path in boxes else os.path.basename(image_path)
    given.append(boxes.get(key))
  return given


def _xywh_rows(boxes, valid):
  """``(M, 4)`` xcycwh boxes -> float32 xywh (§10.2's rule), zero rows where ``valid`` is False."""
  return np.where(valid[:, None], np.asarray(boxes_lib.xcycwh_to_xywh(boxes)), 0).astype(np.float32)


def _padded(rows, length):
  """``(k, ...)`` -> ``(length, ...)`` float32, zero rows after the first ``k``."""
  out = np.zeros((length,) + rows.shape[1:], np.float32)
  out[:len(rows)] = rows
  return out


class FeatureExtractor:
  """Boxes and region codes of prepared images, batched by shape bucket.

  Attributes:
    model: the ``inference.DenseCapPredictor`` (params, config, settings, buckets).
    boxes_per_image: M, rows per image.
  """

  def __init__(self, model, boxes_per_image, pool_final_boxes=False):
    self.model = model
    self.boxes_per_image = boxes_per_image
    config = model.config

    def detect(params, images, image_sizes, rpn_nms_thresh, final_nms_thresh):
      return densecap.detect_with_codes(
          params, images, image_sizes, config, boxes_per_image,
          num_proposals=model.num_proposals, rpn_nms_thresh=rpn_nms_thresh,
          final_nms_thresh=final_nms_thresh, pool_final_boxes=pool_final_boxes)

    self._detect = jax.jit(detect)

  def detections(self, prepared):
    """Rows of the first M detections of each :class:`inference.PreparedImage`.

    Returns:
      One dict per image: ``boxes`` and ``proposal_boxes`` ``(M, 4)`` float32
      xywh in the image's pixels (``regions.coords``), ``resized_boxes`` in
      the resized image's, ``scores`` ``(M,)``, ``feats`` ``(M, fc_dim)``,
      ``image_scale`` and ``num_boxes``; rows from ``num_boxes`` on are zero.
    """
    rows = [None] * len(prepared)
    for chunk, images, sizes in self.model.batches(prepared):
      out = jax.device_get(self._detect(self.model.params, images, sizes,
                                        self.model.rpn_nms_thresh, self.model.final_nms_thresh))
      for k, i in enumerate(chunk):
        valid = out["valid"][k]
        p = prepared[i]
        resized = _xywh_rows(out["boxes"][k], valid)
        rows[i] = {
            "boxes": _image_rows(resized, valid, p),
            "resized_boxes": resized,
            "proposal_boxes": _image_rows(_xywh_rows(out["proposals"][k], valid), valid, p),
            "scores": out["scores"][k],
            "feats": out["codes"][k],
            "image_scale": coords_lib.image_scale(p.original_size, p.size),
            "num_boxes": int(valid.sum()),
        }
    return rows

  def given_boxes(self, prepared, boxes):
    """Rows of given boxes: ``boxes[i]`` ``(k_i, 4)`` xywh in image ``i``'s pixels.

    The boxes are checked, clipped and pooled as ``caption_regions`` does
    (``regions.api.RegionModel``), without captions.

    Returns:
      One dict per image: ``boxes`` ``(M, 4)`` float32 xywh as used (clipped
      to the image), ``proposal_boxes`` the same (the regions pooled),
      ``resized_boxes`` the same in the resized image, ``scores`` ``(M,)``
      logits, ``feats`` ``(M, fc_dim)`` codes of those boxes, ``image_scale``
      and ``num_boxes`` = ``k_i``; rows beyond are zero.
    """
    m = self.boxes_per_image
    regions = self.model.regions
    given = regions.given_boxes(prepared, boxes, "image")
    pooled = regions.region_rows(prepared, [g[1] for g in given], captions=False)
    return [{"boxes": _padded(g[0], m), "proposal_boxes": _padded(g[0], m),
             "resized_boxes": _padded(g[1], m), "scores": _padded(row["scores"], m),
             "feats": _padded(row["codes"], m),
             "image_scale": coords_lib.image_scale(p.original_size, p.size),
             "num_boxes": len(g[0])}
            for p, g, row in zip(prepared, given, pooled)]

  def rows(self, prepared, boxes=None):
    """Rows of each prepared image: of its given boxes, or of its detections.

    Args:
      prepared: ``inference.PreparedImage`` s.
      boxes: ``None`` (all detected), or per image ``(k_i, 4)`` xywh in its
        pixels, or ``None`` for an image to detect.

    Returns:
      Per image, in order, ``given_boxes``' or ``detections``' dict, with
      ``given`` 1 or 0.
    """
    boxes = [None] * len(prepared) if boxes is None else boxes
    detected = [k for k, b in enumerate(boxes) if b is None]
    boxed = [k for k, b in enumerate(boxes) if b is not None]
    out = [None] * len(prepared)
    if detected:
      for k, row in zip(detected, self.detections([prepared[k] for k in detected])):
        out[k] = dict(row, given=0)
    if boxed:
      rows = self.given_boxes([prepared[k] for k in boxed], [boxes[k] for k in boxed])
      for k, row in zip(boxed, rows):
        out[k] = dict(row, given=1)
    return out


def _image_rows(resized, valid, prepared):
  """``(M, 4)`` xywh rows of the resized image -> the image's pixels, zero where not ``valid``."""
  boxes = coords_lib.to_image(resized, prepared.original_size, prepared.size)
  return np.where(valid[:, None], boxes, 0).astype(np.float32)


class _FeatureFile:
  """The output datasets, written row by row (in any order) and cut to the rows written on ``finish``."""

  def __init__(self, h5, capacity, boxes_per_image, fc_dim, with_proposals, with_given, attrs):
    m = boxes_per_image
    shapes = {"feats": (m, fc_dim), "boxes": (m, 4), "resized_boxes": (m, 4), "scores": (m,),
              "image_scale": (), "num_boxes": ()}
    if with_proposals:
      shapes["proposal_boxes"] = (m, 4)
    if with_given:
      shapes["given"] = ()
    self.h5 = h5
    self.datasets = {}
    for name, shape in shapes.items():
      dtype = {"num_boxes": np.int32, "given": np.uint8}.get(name, np.float32)
      self.datasets[name] = h5.create_dataset(
          name, shape=(capacity,) + shape, maxshape=(None,) + shape, dtype=dtype,
          chunks=(1,) + shape if shape else (1024,), fillvalue=0)
    for key, value in attrs.items():
      h5.attrs[key] = value
    self.paths = {}

  def put(self, index, path, row):
    """Writes row ``index``: the image ``path`` and its ``row`` of arrays."""
    for name, dataset in self.datasets.items():
      dataset[index] = row[name]
    self.paths[index] = path

  def finish(self):
    """Cuts the datasets to the rows written (``0 .. n - 1``, all of them) and adds the paths."""
    count = len(self.paths)
    for dataset in self.datasets.values():
      dataset.resize(count, axis=0)
    paths = [self.paths[i] for i in range(count)]
    self.h5.create_dataset("image_paths", data=np.array(paths, dtype=object),
                           dtype=h5py.string_dtype())


def extract(extractor, paths, given, output, attrs):
  """Runs ``extractor`` over ``paths`` and writes the rows to the HDF5 file ``output``.

  Images stream: they are decoded ahead in threads while the model runs
  (``DenseCapPredictor.read``) and go to the model batch by batch as they
  come (``inference.group_batches``); each row is written as soon as its
  batch is done, at the image's place in the input order, so memory holds a
  few batches of images whatever the count.

  Args:
    extractor: a :class:`FeatureExtractor`.
    paths: image paths.
    given: ``None`` (detections) or per path a ``(k, 4)`` xywh array, or
      ``None`` for detections of that image.
    output: the file to create.
    attrs: HDF5 attributes to store.

  Returns:
    ``(rows written, total boxes, failed paths)``.
  """
  failed = []
  num_boxes = 0
  fc_dim = int(extractor.model.config.fc_dim)
  model = extractor.model
  with h5py.File(output, "w") as h5:
    out = _FeatureFile(h5, len(paths), extractor.boxes_per_image, fc_dim,
                       given is None or any(g is None for g in given), given is not None, attrs)
    with tqdm(total=len(paths), desc="extracting", unit="img", disable=len(paths) < 2) as bar:

      def readable():  # ((input index, output row), PreparedImage), in input order
        rows = 0
        for i, (_, prepared) in enumerate(model.read(paths)):
          if isinstance(prepared, ValueError):
            failed.append(paths[i])
            tqdm.write(f"skipped: {prepared}")
            bar.update(1)
            continue
          yield (i, rows), prepared
          rows += 1

      for group in inference.group_batches(readable(), model.buckets, model.batch_size):
        prepared = [p for _, p in group]
        rows = extractor.rows(prepared,
                              None if given is None else [given[i] for (i, _), _ in group])
        for ((i, index), _), row in zip(group, rows):
          out.put(index, paths[i], row)
          num_boxes += row["num_boxes"]
        bar.update(len(group))
    out.finish()
  return len(out.paths), num_boxes, failed


def main(argv=None):
  args = parse_args(argv)
  try:
    check_args(args)
    listed = list_inputs(args)
    paths = listed if args.max_images < 0 else listed[:args.max_images]
    given = predict.read_given_boxes(args, paths, args.boxes_per_image)
  except ValueError as e:
    sys.exit(f"error: {e}")

  model = cli.load_model_from_flags(args, batch_size=args.batch_size, preprocess=args.preprocess)
  extractor = FeatureExtractor(model, args.boxes_per_image, bool(args.pool_final_boxes))
  attrs = {
      "checkpoint": args.checkpoint or inference.bundled_model_path(),
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
      written, num_boxes, failed = extract(extractor, paths, given, tmp_path, attrs)
      if not written:
        raise ValueError(f"no image could be read, nothing written: {', '.join(failed)}")
  except ValueError as e:
    sys.exit(f"error: {e}")
  except OSError as e:
    sys.exit(f"error: cannot write --output_h5 {args.output_h5}: {e}")

  seconds = time.perf_counter() - start
  counted = (f"{written} of {cli.count(len(listed), 'image')} (--max_images)"
             if len(paths) < len(listed) else cli.count(written, "image"))
  print(f"wrote {cli.count(num_boxes, 'box', 'boxes')} of {counted} "
        f"({model.config.fc_dim}-d features) "
        f"to {args.output_h5} in {seconds:.1f} s")
  if failed:
    sys.exit(f"error: {len(failed)} of {cli.count(len(paths), 'image')} could not be read: "
             f"{', '.join(failed)}")


if __name__ == "__main__":
  main()
