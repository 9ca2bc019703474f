"""Ground truth of one split, for scoring a predictions file (reference §8.3, §9.2).

Two sources give the same boxes and captions:

* :func:`from_h5`: the preprocessed HDF5 + JSON (``data.loader.DenseCapH5``);
  boxes as stored, captions decoded from the label rows (``<UNK>`` literal),
  original sizes from ``original_heights`` / ``original_widths``.
* :func:`from_visual_genome`: Visual Genome's ``region_descriptions.json`` and
  a splits JSON, with ``data.preprocess``'s rules applied in memory: images in
  a split with a region, the tokeniser and length filter, the vocabulary of
  every split's kept regions (words seen fewer than ``min_token_instances``
  times become ``<UNK>``), and the box encoding into the ``image_size`` frame
  (rounded, clamped to the square canvas). No HDF5 is written and no pixel is
  read. The encoding needs each image's original size, which
  ``region_descriptions.json`` does not hold: it comes from Visual Genome's
  ``image_data.json`` (``image_id`` or ``id``, ``width``, ``height``) or from
  the image files' headers (``<image_dir>/<id>.jpg``, stored pixels, no EXIF
  rotation, as preprocessing reads them). With the flags preprocessing used
  (defaults: the original's 720, 15, 15) the result equals :func:`from_h5` of
  its output; ``preprocess --max_images`` has no counterpart here.

Both keep the split's images in the dataset's order (that of
``region_descriptions.json``), which the evaluator's tie-breaking follows.
"""

import dataclasses
import os

import numpy as np
from PIL import Image

from densecap_jax import files
from densecap_jax.data import images as images_lib
from densecap_jax.data import loader
from densecap_jax.data import visual_genome as preprocess
from densecap_jax.data import vocab as vocab_lib


@dataclasses.dataclass(frozen=True)
class GroundTruthImage:
  """One image of the split.

  Attributes:
    key: the image's identifier as :func:`image_key` normalises it ('17').
    filename: its dataset file name ('17.jpg').
    boxes: ``(M, 4)`` float32 xcycwh, 1-based, in the ``image_size`` frame
      (integer values, as the HDF5 stores them).
    captions: ``M`` strings, words joined by single spaces.
    original_size: ``(H0, W0)`` of the original image.
    resized_size: ``(H, W)`` of the image resized into the frame (§1.1).
  """
  key: str
  filename: str
  boxes: np.ndarray
  captions: list
  original_size: tuple
  resized_size: tuple


@dataclasses.dataclass(frozen=True)
class GroundTruth:
  """The scored images of one split, in dataset order.

  Attributes:
    split: ``'train' | 'val' | 'test'``.
    image_size: long side of the frame the boxes are in (``--image_size``).
    images: list of :class:`GroundTruthImage`.
    source: what was read, for messages.
  """
  split: str
  image_size: int
  images: list
  source: str

  def scale(self, image):
    """``image_size / max(H0, W0)``: original-image pixels -> frame pixels (§8.3 step 8)."""
    return float(self.image_size) / max(image.original_size)


def image_key(name):
  """An image identifier normalised for matching predictions to the split.

  ``17``, ``'17'``, ``'17.jpg'``, ``'images/17.jpg'`` and ``'0017.png'`` all
  give ``'17'``; other names give their base name without the extension.

  Raises:
    ValueError: ``name`` is neither an integer nor a non-empty string.
  """
  if isinstance(name, bool) or not isinstance(name, (int, str)):
    raise ValueError(f"an image id must be an integer or a string, got {name!r}")
  if isinstance(name, int):
    return str(name)
  stem = os.path.splitext(os.path.basename(name.strip().replace("\\", "/")))[0]
  if not stem:
    raise ValueError(f"an image id must not be empty, got {name!r}")
  return str(int(stem)) if stem.isdigit() else stem


def from_h5(h5_path, json_path, split, max_images=-1):
  """The split's ground truth from a preprocessed HDF5 + JSON.

  Args:
    h5_path, json_path: the dataset files.
    split: ``'train' | 'val' | 'test'``.
    max_images: only the split's first ``max_images`` images; -1 = all.

  Raises:
    ValueError: unreadable dataset, empty split, or two images with one key.
  """
  data = loader.DenseCapH5(h5_path, json_path)
  indices = data.split_indices(split)
  if max_images >= 0:
    indices = indices[:max_images]
  result = []
  for index in indices:
    boxes, labels = data.regions(index)
    captions = vocab_lib.decode_captions(labels, data.vocab) if len(labels) else []
    result.append(GroundTruthImage(
        image_key(data.filenames[index]), data.filenames[index], boxes.astype(np.float32),
        captions, tuple(int(v) for v in data.original_sizes[index]),
        tuple(int(v) for v in data.image_sizes[index])))
  return _checked(GroundTruth(split, data.slot_size, result, h5_path))


def load_image_data(path):
  """Original sizes from Visual Genome's ``image_data.json``: ``{image id: (H0, W0)}``.

  Raises:
    ValueError: not a list of objects with an integer ``image_id`` (or ``id``)
      and positive integer ``width`` and ``height``.
  """
  data = files.read_json(path, "image data")
  if not isinstance(data, list):
    raise ValueError(f"image data {path}: expected a list of images, got {type(data).__name__}")
  sizes = {}
  for n, entry in enumerate(data):
    image_id = entry.get("image_id", entry.get("id")) if isinstance(entry, dict) else None
    if isinstance(image_id, bool) or not isinstance(image_id, int):
      raise ValueError(f"image data {path}: element {n} has no integer 'image_id'")
    size = (entry.get("height"), entry.get("width"))
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
      raise ValueError(f"image data {path}: image {image_id}: 'width' and 'height' must be "
                       f"positive integers, got {size[1]!r} and {size[0]!r}")
    sizes[image_id] = size
  return sizes


def image_file_size(path):
  """``(H0, W0)`` of an image file as stored (the header only; no EXIF rotation)."""
  if not os.path.isfile(path):
    raise ValueError(f"image not found: {path}")
  try:
    with Image.open(path) as image:
      width, height = image.size
  except (OSError, Image.DecompressionBombError) as e:
    raise ValueError(f"cannot read image {path}: {e}") from None
  return height, width


def from_visual_genome(region_data, split_json, split, *, image_data=None, image_dir=None,
                       image_size=720, max_token_length=15, min_token_instances=15,
                       non_ascii="error", max_images=-1):
  """The split's ground truth from Visual Genome's files, preprocessed in memory.

  Args:
    region_data: ``region_descriptions.json``.
    split_json: the splits JSON (``info/densecap_splits.json``).
    split: ``'train' | 'val' | 'test'``.
    image_data: ``image_data.json``, the source of original sizes; or
    image_dir: the folder of ``<id>.jpg`` images, whose headers give them
      (used when ``image_data`` is not given).
    image_size, max_token_length, min_token_instances, non_ascii: the
      preprocessing flags of the same names (``data.preprocess``).
    max_images: only the split's first ``max_images`` images; -1 = all.

  Raises:
    ValueError: bad input (the messages of ``data.preprocess``), no source of
      original sizes, or an image without one.
  """
  if image_data is None and image_dir is None:
    raise ValueError("the ground truth's boxes go into the resized frame with each image's "
                     "original size, which region_descriptions.json lacks: give --image_data "
                     "(Visual Genome's image_data.json) or --image_dir (the images)")
  if split not in preprocess.SPLIT_CODES:
    raise ValueError(f"split must be one of {list(preprocess.SPLIT_CODES)}, got {split!r}")
  code = preprocess.SPLIT_CODES[split]
  id_to_split = preprocess.load_splits(split_json)
  entries, _ = preprocess.select_images(preprocess.load_region_data(region_data), id_to_split, -1)
  in_split = [e for e in entries if id_to_split[e["id"]] == code]
  if max_images >= 0:
    in_split = in_split[:max_images]
  # Every split's words count towards the vocabulary (§8.3 step 6); with a
  # minimum of 1 every word is kept, so the other splits need no tokenising.
  counted = entries if min_token_instances > 1 else in_split
  kept, _ = preprocess.tokenize_images(counted, id_to_split, max_token_length, non_ascii,
                                       source=f"region data {region_data}")
  vocab, _ = vocab_lib.build_vocab((t for k in kept for t in k.tokens), min_token_instances)
  token_to_idx, _ = vocab_lib.vocab_dicts(vocab)
  decode_vocab = [None] + vocab
  wanted = {e["id"] for e in in_split}
  kept = [k for k in kept if k.image_id in wanted]
  sizes = load_image_data(image_data) if image_data is not None else {}
  result = []
  for k in kept:
    if image_data is not None:
      if k.image_id not in sizes:
        raise ValueError(f"image data {image_data} has no size for image {k.image_id}")
      size = sizes[k.image_id]
    else:
      size = image_file_size(preprocess.image_path(image_dir, k.image_id))
    boxes, _ = preprocess.encode_boxes(k.boxes_xywh, np.tile(size, (len(k.tokens), 1)),
                                       image_size)
    captions = [vocab_lib.decode_sequence(
        vocab_lib.encode_tokens(t, token_to_idx, max_token_length), decode_vocab)
                for t in k.tokens]
    result.append(GroundTruthImage(
        str(k.image_id), f"{k.image_id}.jpg", boxes.astype(np.float32), captions,
        tuple(int(v) for v in size), images_lib.pil_resize_size(size[0], size[1], image_size)))
  return _checked(GroundTruth(split, int(image_size), result, region_data))


def _checked(gt):
  if not gt.images:
    raise ValueError(f"the {gt.split} split of {gt.source} has no images")
  seen = {}
  for image in gt.images:
    if image.key in seen:
      raise ValueError(f"{gt.source}: images {seen[image.key]} and {image.filename} have the same "
                       f"id {image.key!r}")
    seen[image.key] = image.filename
  return gt
