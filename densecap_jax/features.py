"""Region features: boxes, scores, captions and fc7 codes of images, written to HDF5 (reference §10.5)."""

import bisect

import h5py
import jax
import numpy as np
from tqdm import tqdm

from densecap_jax.models import detection
from densecap_jax.ops import boxes as boxes_lib


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
    model: the ``predictor.DenseCapPredictor``: its ``runner`` runs the detections, its
      ``regions`` pool given boxes.
    boxes_per_image: M, rows per image.
  """

  def __init__(self, model, boxes_per_image, pool_final_boxes=False):
    self.model = model
    self.boxes_per_image = boxes_per_image
    runner = model.runner
    config = runner.config

    def detect(params, images, image_sizes, rpn_nms_thresh, final_nms_thresh):
      return detection.detect_with_codes(
          params, images, image_sizes, config, boxes_per_image,
          num_proposals=runner.num_proposals, rpn_nms_thresh=rpn_nms_thresh,
          final_nms_thresh=final_nms_thresh, pool_final_boxes=pool_final_boxes)

    self._detect = runner.jit(detect)

  def detections(self, prepared):
    """Rows of the first M detections of each ``image_stream.PreparedImage``.

    Returns:
      One dict per image: ``boxes`` and ``proposal_boxes`` ``(M, 4)`` float32
      xywh in the image's pixels (``ops.boxes``), ``resized_boxes`` in
      the resized image's, ``scores`` ``(M,)``, ``feats`` ``(M, fc_dim)``,
      ``image_scale`` and ``num_boxes``; rows from ``num_boxes`` on are zero.
    """
    rows = [None] * len(prepared)
    runner = self.model.runner
    for chunk, images, sizes in runner.batches(prepared):
      out = jax.device_get(self._detect(images, sizes, runner.rpn_nms_thresh,
                                        runner.final_nms_thresh))
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
            "image_scale": boxes_lib.image_scale(p.original_size, p.size),
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
             "image_scale": boxes_lib.image_scale(p.original_size, p.size),
             "num_boxes": len(g[0])}
            for p, g, row in zip(prepared, given, pooled)]

  def rows(self, prepared, boxes=None):
    """Rows of each prepared image: of its given boxes, or of its detections.

    Args:
      prepared: ``image_stream.PreparedImage`` s.
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
  boxes = boxes_lib.to_image(resized, prepared.original_size, prepared.size)
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
  come (``image_stream.group_batches``); each row is written as soon as its
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
      for group in model.stream_groups(paths, failed=failed, bar=bar):
        prepared = [p for _, p in group]
        rows = extractor.rows(prepared, None if given is None else [given[i] for i, _ in group])
        skipped = [i for i, _, _ in failed]  # all read before this group: images are read in order
        for (i, _), row in zip(group, rows):
          # the image's row: its place among the readable images
          out.put(i - bisect.bisect_left(skipped, i), paths[i], row)
          num_boxes += row["num_boxes"]
    out.finish()
  return len(out.paths), num_boxes, [path for _, path, _ in failed]
