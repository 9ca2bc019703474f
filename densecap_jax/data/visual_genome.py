"""Visual Genome regions -> the original's HDF5 + JSON pair (reference §8).

Usage::

  python -m densecap_jax.data.preprocess \
      --region_data data/visual-genome/region_descriptions.json \
      --image_dir data/visual-genome/images \
      --split_json info/densecap_splits.json \
      --h5_output data/VG-regions.h5 --json_output data/VG-regions-dicts.json

Steps (§8.3): keep images that are in a split and have a region (then
``--max_images``); tokenise and length-filter every phrase; count the
vocabulary over all splits; resize and write the images; encode captions,
boxes and the index arrays. Everything that can reject the input runs before
the long image pass; the results are those of the original's order. The
outputs have the datasets, dtypes, shapes and 1-based conventions of §8.4 and
the JSON of §8.5; both are written to temporary files and moved into place
only when complete. Images are read and resized on ``--num_workers`` threads
and written one by one, so memory does not grow with the dataset.

Differences from ``preprocess.py``, all on inputs the original crashed on or
left undefined: vocabulary ids are in sorted order (``vocab.py``); an image
left with no region, a duplicate image id, an id in two splits, a missing or
unreadable image, a malformed field or a negative box size stop with a
one-line message instead of an assertion or a hung worker; grey, palette,
RGBA, CMYK and 16-bit images are converted to RGB (``images.load_rgb``).
The original's ``--tokens_type chars`` read a field that does not exist
(§8.3) and is not offered.
"""

import collections
import concurrent.futures
import dataclasses
import math
import os

import h5py
import numpy as np
import tqdm

from densecap_jax import files
from densecap_jax.data import images
from densecap_jax.data import vocab as vocab_lib

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
_REGION_NUMBER_FIELDS = ("x", "y", "width", "height")


@dataclasses.dataclass
class KeptImage:
  """One image that goes into the HDF5, with its kept regions in input order."""
  image_id: int
  split: int
  tokens: list  # list of token lists
  boxes_xywh: np.ndarray  # (R, 4) float64, input x, y (1-based), width, height


def _is_number(value):
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value):
  return isinstance(value, int) and not isinstance(value, bool)


def load_splits(path):
  """Reads the splits JSON (§8.2) as ``{image_id: split code}`` (0 train, 1 val, 2 test).

  Raises:
    ValueError: not an object of ``train`` / ``val`` / ``test`` id lists, a
      non-integer id, or an id listed in two splits.
  """
  data = files.read_json(path, "split JSON")
  if not isinstance(data, dict):
    raise ValueError(f"split JSON {path}: expected an object of train / val / test id lists")
  id_to_split = {}
  for name, ids in data.items():
    if name not in SPLIT_CODES:
      raise ValueError(f"split JSON {path}: unknown split {name!r}, expected {sorted(SPLIT_CODES)}")
    if not isinstance(ids, list) or not all(_is_int(i) for i in ids):
      raise ValueError(f"split JSON {path}: split {name!r} must be a list of integer image ids")
    for image_id in ids:
      if image_id in id_to_split:
        raise ValueError(f"split JSON {path}: image id {image_id} is in more than one split")
      id_to_split[image_id] = SPLIT_CODES[name]
  return id_to_split


def load_region_data(path):
  """Reads ``region_descriptions.json`` (§8.1) and checks its top-level shape.

  Returns:
    The list of image entries; each has an integer ``id`` and a ``regions`` list.
  """
  data = files.read_json(path, "region data")
  if not isinstance(data, list):
    raise ValueError(f"region data {path}: expected a list of images, got {type(data).__name__}")
  seen = set()
  for n, entry in enumerate(data):
    if not isinstance(entry, dict) or not _is_int(entry.get("id")):
      raise ValueError(f"region data {path}: element {n} has no integer field 'id'")
    if not isinstance(entry.get("regions"), list):
      raise ValueError(f"region data {path}: image {entry['id']}: field 'regions' must be a list")
    if entry["id"] in seen:
      raise ValueError(f"region data {path}: image id {entry['id']} appears twice")
    seen.add(entry["id"])
  return data


def _checked_region(region, where):
  if not isinstance(region, dict):
    raise ValueError(f"{where}: expected an object")
  if not isinstance(region.get("phrase"), str):
    raise ValueError(f"{where}: field 'phrase' must be a string, got {region.get('phrase')!r}")
  for field in _REGION_NUMBER_FIELDS:
    if not _is_number(region.get(field)):
      raise ValueError(
          f"{where}: field {field!r} must be a finite number, got {region.get(field)!r}")
  for field in ("width", "height"):
    if region[field] < 0:
      raise ValueError(f"{where}: field {field!r} must not be negative, got {region[field]!r}")
  return region


def select_images(data, id_to_split, max_images):
  """§8.3 step 1: images in some split with at least one region, input order, then ``max_images``.

  Returns:
    ``(selected entries, counts)`` with the counts of skipped images.
  """
  in_split = [e for e in data if e["id"] in id_to_split]
  selected = [e for e in in_split if e["regions"]]
  counts = {
      "images_in_input": len(data),
      "images_not_in_a_split": len(data) - len(in_split),
      "images_without_regions": len(in_split) - len(selected),
      "split_ids_without_region_data": len(set(id_to_split) - {e["id"] for e in data}),
  }
  if max_images > 0:
    counts["images_beyond_max_images"] = max(0, len(selected) - max_images)
    selected = selected[:max_images]
  return selected, counts


def tokenize_images(entries, id_to_split, max_token_length, non_ascii, source="region data"):
  """§8.3 steps 4-5: tokenise every phrase and keep the regions that pass the length filter.

  Returns:
    ``(kept images, counts)``.

  Raises:
    ValueError: a malformed region, a non-ASCII phrase (``non_ascii='error'``),
      or an image left with no region.
  """
  kept_images = []
  counts = collections.Counter()
  for entry in entries:
    tokens_kept, boxes = [], []
    for j, region in enumerate(entry["regions"]):
      where = f"{source}: image {entry['id']}, region {j}"
      region = _checked_region(region, where)
      try:
        tokens = vocab_lib.tokenize_phrase(region["phrase"], non_ascii=non_ascii)
      except ValueError as e:
        raise ValueError(f"{where}: {e}; --non_ascii drop deletes such characters") from None
      if not vocab_lib.keep_by_length(tokens, max_token_length):
        counts["regions_dropped_by_length"] += 1
        continue
      if not tokens:
        counts["regions_with_empty_caption"] += 1
      tokens_kept.append(tokens)
      boxes.append([region[f] for f in _REGION_NUMBER_FIELDS])
    if not tokens_kept:
      hint = " (0 drops every region, reference §8.3)" if max_token_length <= 0 else ""
      raise ValueError(
          f"image {entry['id']} has no region left after the length filter "
          f"max_token_length={max_token_length}{hint}: all {len(entry['regions'])} regions dropped")
    kept_images.append(KeptImage(entry["id"], id_to_split[entry["id"]], tokens_kept,
                                 np.asarray(boxes, np.float64)))
  counts["regions_kept"] = sum(len(k.tokens) for k in kept_images)
  return kept_images, dict(counts)


def round_half_away_from_zero(values):
  """Python-2 ``round``: nearest integer, halves away from zero; float64 in, float64 out."""
  values = np.asarray(values, np.float64)
  magnitude = np.abs(values)
  floor = np.floor(magnitude)
  return np.copysign(np.where(magnitude - floor >= 0.5, floor + 1, floor), values)


def encode_boxes(boxes_xywh, original_sizes, image_size):
  """§8.3 step 8: input boxes -> int32 xcycwh in resized-image pixels.

  With ``s = image_size / max(H0, W0)``: ``x = round(s (x - 1) + 1)``,
  ``y = round(s (y - 1) + 1)``, ``w = round(s w)``, ``h = round(s h)``
  (halves away from zero); ``x, y >= 1``; ``x, y <= image_size - 1``;
  ``w <= image_size - x``, ``h <= image_size - y`` (the clamps use the
  square canvas, not the resized image); then ``(x + floor(w/2),
  y + floor(h/2), w, h)``.

  Args:
    boxes_xywh: ``(M, 4)`` float64 input boxes, 1-based upper-left corner.
    original_sizes: ``(M, 2)`` original ``(H0, W0)`` of each box's image.
    image_size: the canvas side (``--image_size``).

  Returns:
    ``(boxes, clamped)``: ``(M, 4)`` int32 xcycwh and the ``(4,)`` counts of
    boxes whose x, y, w, h were clamped by the upper bounds (the original's
    "bad x,y,w,h" report).

  Raises:
    ValueError: a box with negative width or height after the clamps.
  """
  boxes_xywh = np.asarray(boxes_xywh, np.float64).reshape(-1, 4)
  sizes = np.asarray(original_sizes, np.float64).reshape(-1, 2)
  scale = float(image_size) / np.max(sizes, axis=1)
  x = round_half_away_from_zero(scale * (boxes_xywh[:, 0] - 1) + 1)
  y = round_half_away_from_zero(scale * (boxes_xywh[:, 1] - 1) + 1)
  w = round_half_away_from_zero(scale * boxes_xywh[:, 2])
  h = round_half_away_from_zero(scale * boxes_xywh[:, 3])
  x = np.maximum(x, 1)
  y = np.maximum(y, 1)
  x_bad = x > image_size - 1
  y_bad = y > image_size - 1
  x = np.where(x_bad, image_size - 1, x)
  y = np.where(y_bad, image_size - 1, y)
  w_bad = x + w > image_size
  h_bad = y + h > image_size
  w = np.where(w_bad, image_size - x, w)
  h = np.where(h_bad, image_size - y, h)
  negative = np.flatnonzero((w < 0) | (h < 0))
  if negative.size:
    raise ValueError(f"{negative.size} boxes have a negative width or height, the first is box "
                     f"{negative[0]} (x, y, w, h = {boxes_xywh[negative[0]].tolist()})")
  boxes = np.stack([x + np.floor(w / 2), y + np.floor(h / 2), w, h], axis=1).astype(np.int32)
  clamped = np.array([x_bad.sum(), y_bad.sum(), w_bad.sum(), h_bad.sum()], np.int64)
  return boxes, clamped


def image_path(image_dir, image_id):
  """``<image_dir>/<id>.jpg`` (§8.1)."""
  return os.path.join(image_dir, f"{image_id}.jpg")


def _read_and_resize(path, image_size):
  """Loads one image and resizes it; returns ``(original (H0, W0), (3, h, w) uint8 BGR)``."""
  rgb = images.load_rgb(path)
  try:
    resized = images.resize_long_side_pil(rgb, image_size)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None
  return rgb.shape[:2], np.ascontiguousarray(resized[:, :, ::-1].transpose(2, 0, 1))


def _ordered_parallel_map(fn, items, num_workers):
  """``map(fn, items)`` on ``num_workers`` threads, in order, ``2 * num_workers`` in flight."""
  items = list(items)
  window = 2 * num_workers
  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    pending = collections.deque(pool.submit(fn, item) for item in items[:window])
    try:
      for i in range(len(items)):
        result = pending.popleft().result()
        if i + window < len(items):
          pending.append(pool.submit(fn, items[i + window]))
        yield result
    finally:
      for future in pending:
        future.cancel()


def write_images(h5_file, paths, image_size, num_workers, progress=True):
  """§8.3 step 2: the ``images`` dataset and the four size datasets.

  Each image is resized on one of ``num_workers`` threads and written into its
  zero-padded ``3 x S x S`` BGR slot as soon as it is ready, in input order.

  Returns:
    ``(N, 2)`` int32 original ``(H0, W0)`` sizes.
  """
  n = len(paths)
  dset = h5_file.create_dataset("images", (n, 3, image_size, image_size), dtype=np.uint8)
  original = np.zeros((n, 2), np.int32)
  resized = np.zeros((n, 2), np.int32)
  slot = np.zeros((3, image_size, image_size), np.uint8)
  results = _ordered_parallel_map(lambda p: _read_and_resize(p, image_size), paths, num_workers)
  results = tqdm.tqdm(results, total=n, desc="images", disable=not progress)
  for i, (size0, chw) in enumerate(results):
    original[i] = size0
    resized[i] = chw.shape[1:]
    slot[:] = 0
    slot[:, :chw.shape[1], :chw.shape[2]] = chw
    dset[i] = slot
  h5_file.create_dataset("image_heights", data=resized[:, 0])
  h5_file.create_dataset("image_widths", data=resized[:, 1])
  h5_file.create_dataset("original_heights", data=original[:, 0])
  h5_file.create_dataset("original_widths", data=original[:, 1])
  return original


def write_annotations(h5_file, kept, token_to_idx, max_token_length, original_sizes, image_size):
  """§8.3 steps 3, 7, 8 and the index arrays of §8.4.

  Returns:
    Dict of box counts: clamped x, y, w, h and zero-area boxes.
  """
  h5_file.create_dataset("split", data=np.asarray([k.split for k in kept], np.float64))
  labels = np.asarray([vocab_lib.encode_tokens(t, token_to_idx, max_token_length)
                       for k in kept for t in k.tokens], np.int32).reshape(-1, max_token_length)
  lengths = np.asarray([len(t) for k in kept for t in k.tokens], np.int32)
  h5_file.create_dataset("labels", data=labels)
  h5_file.create_dataset("lengths", data=lengths)
  per_image = np.asarray([len(k.tokens) for k in kept], np.int32)
  box_to_img = np.repeat(np.arange(1, len(kept) + 1, dtype=np.int32), per_image)
  boxes, clamped = encode_boxes(np.concatenate([k.boxes_xywh for k in kept]),
                                original_sizes[box_to_img - 1], image_size)
  h5_file.create_dataset("boxes", data=boxes)
  last = np.cumsum(per_image, dtype=np.int32)
  h5_file.create_dataset("img_to_first_box", data=last - per_image + 1)
  h5_file.create_dataset("img_to_last_box", data=last)
  h5_file.create_dataset("box_to_img", data=box_to_img)
  return {"boxes_clamped_x_y_w_h": clamped.tolist(),
          "boxes_with_zero_area": int(np.sum((boxes[:, 2] == 0) | (boxes[:, 3] == 0)))}


def preprocess(region_data, image_dir, split_json, h5_output, json_output, *, image_size=720,
               max_token_length=15, min_token_instances=15, num_workers=5, max_images=-1,
               non_ascii="error", progress=True, log=print):
  """Runs the whole conversion; see the module docstring.

  Args:
    region_data: path of ``region_descriptions.json``.
    image_dir: folder of ``<id>.jpg`` images.
    split_json: path of the splits JSON.
    h5_output, json_output: output paths (written atomically).
    image_size: long side of the resized images and side of the HDF5 slots.
    max_token_length: keep captions of at most this many words; also the
      label row length L.
    min_token_instances: minimum count for a word to get its own id.
    num_workers: threads that read and resize images.
    max_images: keep only the first this many selected images when > 0.
    non_ascii: ``'error'`` or ``'drop'``, see ``vocab.tokenize_phrase``.
    progress: show a progress bar while writing images.
    log: called with each line of the report.

  Returns:
    Dict of counts (images and regions kept and skipped, vocabulary size,
    clamped boxes).

  Raises:
    ValueError: bad flags or bad input, with a one-line message.
  """
  if image_size < 2:
    raise ValueError(f"--image_size must be at least 2, got {image_size}")
  if num_workers < 1:
    raise ValueError(f"--num_workers must be at least 1, got {num_workers}")
  if not os.path.isdir(image_dir):
    raise ValueError(f"image directory not found: {image_dir}")
  data = load_region_data(region_data)
  id_to_split = load_splits(split_json)
  entries, counts = select_images(data, id_to_split, max_images)
  if not entries:
    raise ValueError("no image is left after keeping those in a split with at least one region")
  kept, region_counts = tokenize_images(entries, id_to_split, max_token_length, non_ascii)
  counts.update(region_counts)
  vocab, token_counts = vocab_lib.build_vocab((t for k in kept for t in k.tokens),
                                              min_token_instances)
  token_to_idx, idx_to_token = vocab_lib.vocab_dicts(vocab)
  counts["images_kept"] = len(kept)
  counts["vocab_size"] = len(vocab)
  counts["distinct_tokens"] = len(token_counts)

  paths = [image_path(image_dir, k.image_id) for k in kept]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise ValueError(f"{len(missing)} of {len(paths)} images are missing, e.g. {missing[0]}")

  log(f"{counts['images_in_input']} images in the region data; keeping {len(kept)}")
  with files.atomic_output(h5_output) as h5_tmp:
    with h5py.File(h5_tmp, "w") as h5_file:
      original_sizes = write_images(h5_file, paths, image_size, num_workers, progress)
      box_counts = write_annotations(h5_file, kept, token_to_idx, max_token_length, original_sizes,
                                  image_size)
    filenames = [f"{k.image_id}.jpg" for k in kept]
    files.write_json(json_output, {
        "token_to_idx": token_to_idx,
        "idx_to_token": idx_to_token,
        "filename_to_idx": {f: i + 1 for i, f in enumerate(filenames)},
        "idx_to_filename": {str(i + 1): f for i, f in enumerate(filenames)},
    })
  counts.update(box_counts)
  for key, value in counts.items():
    log(f"  {key}: {value}")
  return counts
