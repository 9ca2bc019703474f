"""Fixed-shape padded NumPy batches from the preprocessed HDF5 + JSON (reference §7.3, §8.4).

``DenseCapH5`` holds a dataset's index arrays and vocabulary and reads images
on demand; ``make_batches`` turns one split into an iterator of batches.

Batch format (``B`` images, ``R = max_boxes``, ``L`` = label length, bucket
``(Hb, Wb)`` shared by the whole batch):

==============  =======  ==============  =============================================
key             dtype    shape           content
==============  =======  ==============  =============================================
image           float32  (B, Hb, Wb, 3)  BGR, 0-255 scale minus ``VGG_MEAN_BGR``;
                                         0 beyond the true size and for padding
                                         examples (``pixels='float32'``)
                uint8    (B, 3, Hb, Wb)  the stored pixels: BGR, channels first, as
                                         the HDF5 holds them; 0 beyond the true size
                                         (``pixels='uint8'``; ``device_pixels``
                                         turns them into the float32 image on the
                                         device, equal bit for bit)
image_size      int32    (B, 2)          true (H, W) after resizing; (Hb, Wb) for padding
gt_boxes        float32  (B, R, 4)       xcycwh, 1-based, as stored; 0 where masked
gt_labels       int32    (B, R, L)       word ids 1..V, 0-padded, as stored
gt_mask         bool     (B, R)          True for real regions
image_index     int32    (B,)            0-based HDF5 image index; -1 for padding
example_mask    bool     (B,)            False only for padding examples
==============  =======  ==============  =============================================

With ``num_devices`` set every array gets a leading device axis:
``(num_devices, B // num_devices, ...)``.

Training and evaluation take ``pixels='uint8'``: a quarter of the bytes to
assemble on the host and to send to the devices, and no channels-last
transpose on the host (that transpose, not the HDF5 read, is most of the
float32 path's 1.8 ms per 720-pixel image).

Order (§7.3, §14 item 12): the original visits a split's images in HDF5
order, one per step, wrapping around. Here the split is visited in that order
(or, with ``shuffle``, in a seeded permutation drawn afresh for every epoch),
and batches are formed per shape bucket: each image joins the queue of its
bucket and a queue that reaches the global batch size is emitted at once. With
a global batch of 1 the order is exactly the original's; with one bucket it is
the original's order cut into consecutive batches; otherwise an image waits
only for enough images of its bucket. Images still queued when an epoch ends
carry over to the next; a finite pass (``num_epochs``) ends with the
unfilled queues, oldest first, padded with masked examples.

Multi-host: every host computes the same global schedule from the small index
arrays, then takes its slice ``[p * B, (p + 1) * B)`` of each global batch
(``B = batch_size // process_count``), so hosts read disjoint images and all
hosts see the same bucket at every step. Resuming at ``start_step`` replays
the schedule without reading images, so the batches equal those of an
uninterrupted run.

Workers: ``num_workers`` threads assemble the batches, ``prefetch`` ahead of
the consumer (``batch_workers.OrderedWorkers``); the schedule is drawn on the
consumer's thread and the batches come out in its order, so they are the
same whatever the number of workers. Threads suffice: with the images
dataset stored contiguous and uncompressed (as ``preprocess`` writes it) the
pixels are read through a memory map of the file, outside h5py's global
lock, and the copies release the GIL; a chunked or compressed dataset is
read through h5py (one file handle per thread, the reads serialised by its
lock). Worker processes would have to send every batch back through shared
memory for no gain here. Grain (``grain``, the JAX data loader) was
considered and not adopted: its samplers give per-record indices that it
batches in order, while this schedule is a stream with state (per-bucket
queues carried across epochs, so that every batch is of one shape bucket),
which Grain's batching and checkpointed iterator state do not express
without reimplementing it; its multiprocessing workers copy through shared
memory what threads here hand over for free. Measured rates:
``benchmarks/README.md`` (Data).
"""

import logging
import os
import threading

import h5py
import numpy as np

from densecap_jax.configs import buckets as buckets_lib
from densecap_jax import files
from densecap_jax.data import batch_workers
from densecap_jax.data import images
from densecap_jax.data import vocab as vocab_lib

_LOG = logging.getLogger(__name__)

SPLITS = {"train": 0, "val": 1, "test": 2}
OVERFLOW_MODES = ("truncate", "error")
PIXEL_FORMATS = ("float32", "uint8")

_INDEX_DATASETS = {
    "image_heights": (np.int32, 1), "image_widths": (np.int32, 1),
    "original_heights": (np.int32, 1), "original_widths": (np.int32, 1),
    "split": (np.float64, 1), "labels": (np.int32, 2), "lengths": (np.int32, 1),
    "boxes": (np.int32, 2), "img_to_first_box": (np.int32, 1),
    "img_to_last_box": (np.int32, 1), "box_to_img": (np.int32, 1),
}


def split_code(split):
  """``'train' | 'val' | 'test'`` or ``0 | 1 | 2`` -> the HDF5 split code."""
  if split in SPLITS:
    return SPLITS[split]
  if split in SPLITS.values():
    return int(split)
  raise ValueError(f"split must be one of {list(SPLITS)} or 0/1/2, got {split!r}")


CREATE_DATA_HINT = (
    "python -m densecap_jax.data.preprocess writes both files (--h5_output, --json_output) from "
    "Visual Genome, or from the scenes of python -m densecap_jax.data.synthetic (the README's "
    "tiny-model recipe)")


def missing_data_message(h5_path, json_path):
  """One line naming the dataset files that do not exist and the command that writes them, or None."""
  missing = [f"{what} {path}" for what, path in (("dataset HDF5", h5_path),
                                                  ("dataset JSON", json_path))
             if not os.path.isfile(path)]
  if not missing:
    return None
  return f"{' and '.join(missing)} not found; {CREATE_DATA_HINT}"


class DenseCapH5:
  """A preprocessed dataset: index arrays and vocabulary in memory, images read on demand.

  Attributes:
    vocab: ``load_vocab``-style list, ``vocab[i]`` = token of id ``i``, ``vocab[0] = None``.
    image_sizes: ``(N, 2)`` int32 resized ``(H, W)``.
    original_sizes: ``(N, 2)`` int32 original ``(H0, W0)``.
    split: ``(N,)`` int split codes.
    boxes: ``(M, 4)`` int32 xcycwh; ``labels``: ``(M, L)`` int32; ``lengths``: ``(M,)``.
    first_box: ``(N,)`` 0-based first region row of each image; ``num_boxes``: ``(N,)``.
    slot_size: side ``S`` of the ``images`` dataset's ``3 x S x S`` slots.
  """

  def __init__(self, h5_path, json_path):
    self.h5_path = h5_path
    problem = missing_data_message(h5_path, json_path)
    if problem:
      raise ValueError(problem)
    info = files.read_json(json_path, "dataset JSON")
    if not isinstance(info, dict):
      raise ValueError(f"dataset JSON {json_path}: expected an object")
    self.vocab = vocab_lib.vocab_from_idx_to_token(info.get("idx_to_token"), json_path)
    idx_to_filename = info.get("idx_to_filename")
    if not isinstance(idx_to_filename, dict):
      raise ValueError(f"dataset JSON {json_path}: missing field 'idx_to_filename'")
    arrays = self._read_index_arrays(h5_path)
    n = len(arrays["split"])
    self.filenames = [idx_to_filename.get(str(i + 1)) for i in range(n)]
    if None in self.filenames:
      raise ValueError(f"dataset JSON {json_path}: idx_to_filename lacks image "
                       f"{self.filenames.index(None) + 1}")
    self.image_sizes = np.stack([arrays["image_heights"], arrays["image_widths"]], axis=1)
    self.original_sizes = np.stack([arrays["original_heights"], arrays["original_widths"]], axis=1)
    self.split = arrays["split"].astype(np.int64)
    self.boxes = arrays["boxes"]
    self.labels = arrays["labels"]
    self.lengths = arrays["lengths"]
    self.first_box = arrays["img_to_first_box"].astype(np.int64) - 1
    self.num_boxes = arrays["img_to_last_box"].astype(np.int64) - self.first_box
    self._check_consistency(h5_path)
    self._local = threading.local()
    self._map_lock = threading.Lock()
    self._mapped = None  # set on the first read: the memory map, or False for h5py reads

  def _check_consistency(self, h5_path):
    """Rejects index arrays that would read outside the stored arrays."""
    m = len(self.boxes)
    if self.boxes.shape[1:] != (4,):
      raise ValueError(
          f"dataset HDF5 {h5_path}: 'boxes' has shape {self.boxes.shape}, expected (M, 4)")
    if (self.image_sizes < 1).any() or (self.image_sizes > self.slot_size).any():
      raise ValueError(f"dataset HDF5 {h5_path}: image sizes must be in 1..{self.slot_size}")
    last = self.first_box + self.num_boxes
    if (self.first_box < 0).any() or (self.num_boxes < 0).any() or (last > m).any():
      raise ValueError(f"dataset HDF5 {h5_path}: img_to_first_box / img_to_last_box outside 1..{m}")

  def _read_index_arrays(self, h5_path):
    try:
      h5_file = h5py.File(h5_path, "r")
    except (FileNotFoundError, OSError) as e:
      raise ValueError(f"cannot open dataset HDF5 {h5_path}: {e}") from None
    with h5_file:
      arrays = {}
      for name, (dtype, ndim) in _INDEX_DATASETS.items():
        if name not in h5_file:
          raise ValueError(f"dataset HDF5 {h5_path}: missing dataset '{name}'")
        arrays[name] = np.asarray(h5_file[name])
        if arrays[name].ndim != ndim:
          raise ValueError(f"dataset HDF5 {h5_path}: '{name}' has {arrays[name].ndim} dimensions, "
                           f"expected {ndim}")
        arrays[name] = arrays[name].astype(dtype, copy=False)
      if "images" not in h5_file:
        raise ValueError(f"dataset HDF5 {h5_path}: missing dataset 'images'")
      shape = h5_file["images"].shape
    n, m = len(arrays["split"]), len(arrays["boxes"])
    for name, array in arrays.items():
      rows = m if name in ("labels", "lengths", "boxes", "box_to_img") else n
      if len(array) != rows:
        raise ValueError(f"dataset HDF5 {h5_path}: '{name}' has {len(array)} rows, expected {rows}")
    if len(shape) != 4 or shape[0] != n or shape[1] != 3 or shape[2] != shape[3]:
      raise ValueError(
          f"dataset HDF5 {h5_path}: 'images' has shape {shape}, expected ({n}, 3, S, S)")
    self.slot_size = int(shape[2])
    return arrays

  @property
  def num_images(self):
    return len(self.split)

  @property
  def vocab_size(self):
    """``V``: number of word ids (``<UNK>`` included)."""
    return len(self.vocab) - 1

  @property
  def seq_length(self):
    """``L``: length of a label row (``max_token_length`` of the preprocessing)."""
    return self.labels.shape[1]

  def split_indices(self, split):
    """0-based HDF5 indices of a split's images, ascending (the original's order, §7.3)."""
    return np.flatnonzero(self.split == split_code(split))

  def _images_dataset(self):
    h5_file = getattr(self._local, "h5_file", None)
    if h5_file is None:
      h5_file = self._local.h5_file = h5py.File(self.h5_path, "r")
    return h5_file["images"]

  def _pixels(self):
    """The ``(N, 3, S, S)`` uint8 images: a memory map of the file, or the h5py dataset.

    A contiguous, uncompressed dataset (as ``preprocess`` writes it) is
    mapped once and read without h5py (and without its global lock); any
    other layout is read through a per-thread h5py file.
    """
    if self._mapped is None:
      with self._map_lock:
        if self._mapped is None:
          self._mapped = False
          with h5py.File(self.h5_path, "r") as h5_file:
            dataset = h5_file["images"]
            offset = dataset.id.get_offset()
            if (dataset.chunks is None and dataset.compression is None and offset is not None
                and dataset.dtype == np.uint8 and not dataset.external):
              self._mapped = np.memmap(self.h5_path, np.uint8, "r", offset=offset,
                                       shape=dataset.shape)
    return self._images_dataset() if self._mapped is False else self._mapped

  def read_image_chw(self, index):
    """Image ``index`` cropped to its true size, as stored: ``(3, H, W)`` uint8 BGR."""
    height, width = self.image_sizes[index]
    return self._pixels()[index, :, :height, :width]

  def read_image_bgr(self, index):
    """Image ``index`` cropped to its true size: ``(H, W, 3)`` uint8 BGR."""
    return np.asarray(self.read_image_chw(index)).transpose(1, 2, 0)

  def regions(self, index):
    """``(boxes, labels)`` of image ``index``: ``(R, 4)`` int32 xcycwh and ``(R, L)`` int32."""
    rows = slice(self.first_box[index], self.first_box[index] + self.num_boxes[index])
    return self.boxes[rows], self.labels[rows]

  def bucket_ids(self, indices, buckets):
    """Position in ``buckets`` of each image's bucket (``buckets.pick_bucket``)."""
    position = {b: i for i, b in enumerate(buckets)}
    return np.asarray([position[buckets_lib.pick_bucket(h, w, buckets)]
                       for h, w in self.image_sizes[indices]], np.int64)


def epoch_order(num_items, epoch, shuffle, seed):
  """Positions ``0..num_items-1`` in ``epoch``: ascending, or permuted by seed ``(seed, epoch)``."""
  if not shuffle:
    return np.arange(num_items)
  return np.random.default_rng([seed, epoch]).permutation(num_items)


def bucketed_schedule(bucket_ids, global_batch_size, *, shuffle=False, seed=0, num_epochs=None):
  """The global batches of a split as position lists, all of one bucket (see the module docstring).

  Args:
    bucket_ids: ``(n,)`` bucket of each split position.
    global_batch_size: images per global batch.
    shuffle, seed: per-epoch permutation (``epoch_order``).
    num_epochs: ``None`` for an endless stream, else the number of passes;
      the last batches are then padded with ``-1``.

  Yields:
    ``(bucket_id, positions)``: ``positions`` is an int64 array of
    ``global_batch_size`` split positions, ``-1`` for padding.
  """
  if not len(bucket_ids):
    raise ValueError("cannot schedule batches of an empty split")
  waiting = {}  # bucket id -> [(arrival, position)]
  arrival = 0
  epoch = 0
  while num_epochs is None or epoch < num_epochs:
    for position in epoch_order(len(bucket_ids), epoch, shuffle, seed):
      bucket = int(bucket_ids[position])
      waiting.setdefault(bucket, []).append((arrival, int(position)))
      arrival += 1
      if len(waiting[bucket]) == global_batch_size:
        yield bucket, np.asarray([p for _, p in waiting.pop(bucket)], np.int64)
    epoch += 1
  for bucket, items in sorted(waiting.items(), key=lambda kv: kv[1][0][0]):
    positions = [p for _, p in items] + [-1] * (global_batch_size - len(items))
    yield bucket, np.asarray(positions, np.int64)


class BatchIterator:
  """Iterator over padded batches (see ``make_batches``).

  Attributes:
    step: global step of the next batch (``start_step`` + batches returned).
    num_truncated: images in the returned batches whose regions were cut to
      ``max_boxes``.
  """

  def __init__(self, batches, start_step):
    """``batches`` yields ``(batch, number of truncated images in it)``; ``close()`` if it has one."""
    self.step = start_step
    self.num_truncated = 0
    self._source = batches

  def __iter__(self):
    return self

  def __next__(self):
    batch, truncated = next(self._source)
    if truncated and not self.num_truncated:
      _LOG.warning("step %d: %d images have more regions than max_boxes and keep the first "
                   "max_boxes (BatchIterator.num_truncated counts them)", self.step, truncated)
    self.num_truncated += truncated
    self.step += 1
    return batch

  def close(self):
    """Stops the workers, if any."""
    if isinstance(self._source, batch_workers.OrderedWorkers):
      self._source.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _assemble(data, indices, bucket, max_boxes, overflow, pixels="float32"):
  """One batch for the HDF5 ``indices`` (``-1`` = padding) in ``bucket = (Hb, Wb)``.

  Returns:
    ``(batch, number of images whose regions were truncated)``.
  """
  size = len(indices)
  uint8 = pixels == "uint8"
  image_shape = (size, 3) + tuple(bucket) if uint8 else (size,) + tuple(bucket) + (3,)
  batch = {
      "image": np.zeros(image_shape, np.uint8 if uint8 else np.float32),
      "image_size": np.tile(np.asarray(bucket, np.int32), (size, 1)),
      "gt_boxes": np.zeros((size, max_boxes, 4), np.float32),
      "gt_labels": np.zeros((size, max_boxes, data.seq_length), np.int32),
      "gt_mask": np.zeros((size, max_boxes), bool),
      "image_index": np.asarray(indices, np.int32),
      "example_mask": np.asarray(indices) >= 0,
  }
  truncated = 0
  for k, index in enumerate(indices):
    if index < 0:
      continue
    height, width = data.image_sizes[index]
    if uint8:
      batch["image"][k, :, :height, :width] = data.read_image_chw(index)
    else:
      batch["image"][k, :height, :width] = images.bgr_uint8_to_model_input(
          data.read_image_bgr(index))
    batch["image_size"][k] = (height, width)
    boxes, labels = data.regions(index)
    if len(boxes) > max_boxes:
      if overflow == "error":
        raise ValueError(f"image {index} ({data.filenames[index]}) has {len(boxes)} regions, "
                         f"more than max_boxes={max_boxes}")
      truncated += 1
      boxes, labels = boxes[:max_boxes], labels[:max_boxes]
    batch["gt_boxes"][k, :len(boxes)] = boxes
    batch["gt_labels"][k, :len(labels)] = labels
    batch["gt_mask"][k, :len(boxes)] = True
  return batch, truncated


def _with_device_axis(batch, num_devices):
  return {k: v.reshape((num_devices, v.shape[0] // num_devices) + v.shape[1:])
          for k, v in batch.items()}


def make_batches(data, split="train", *, batch_size=1, max_boxes, buckets=None, num_devices=None,
                 process_index=0, process_count=1, shuffle=False, seed=0, start_step=0,
                 num_epochs=None, max_images=-1, overflow="truncate", prefetch=2,
                 num_workers=1, pixels="float32"):
  """Iterator of padded batches of one split (format and order in the module docstring).

  Args:
    data: a ``DenseCapH5``.
    split: ``'train' | 'val' | 'test'`` (or 0 / 1 / 2).
    batch_size: global batch size, over all hosts and devices.
    max_boxes: ``R``, regions per image in a batch.
    buckets: ``(H, W)`` shapes; default ``buckets.make_buckets(data.slot_size)``.
    num_devices: local devices; adds the leading device axis when set.
    process_index, process_count: this host and the number of hosts.
    shuffle: a seeded permutation per epoch instead of HDF5 order.
    seed: shuffle seed.
    start_step: first global step to produce (resume).
    num_epochs: ``None`` = endless (training); else the number of passes,
      the last batches padded with ``example_mask = False`` examples.
    max_images: use only the split's first ``max_images`` images (HDF5
      order, as the original's ``val_images_use``); −1 = all.
    overflow: images with more than ``max_boxes`` regions keep the first
      ``max_boxes`` (``'truncate'``, counted in ``num_truncated``) or raise
      (``'error'``).
    prefetch: batches prepared ahead of the consumer by the workers (at
      least ``num_workers`` are in progress); 0 = none, each batch is
      assembled by the ``next`` call that returns it.
    num_workers: threads assembling batches (when ``prefetch > 0``); the
      batches are the same for any number.
    pixels: ``'float32'`` (the model's input) or ``'uint8'`` (the stored
      pixels, for ``device_pixels.model_images`` on the device).

  Returns:
    A ``BatchIterator``.
  """
  if overflow not in OVERFLOW_MODES:
    raise ValueError(f"overflow must be one of {OVERFLOW_MODES}, got {overflow!r}")
  if pixels not in PIXEL_FORMATS:
    raise ValueError(f"pixels must be one of {PIXEL_FORMATS}, got {pixels!r}")
  if num_workers < 1 or prefetch < 0:
    raise ValueError(f"num_workers must be positive and prefetch not negative, got "
                     f"{num_workers} and {prefetch}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, process_count={process_count})")
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(
        f"batch_size {batch_size} must be a positive multiple of process_count {process_count}")
  local_size = batch_size // process_count
  if num_devices is not None and (num_devices < 1 or local_size % num_devices):
    raise ValueError(f"per-host batch {local_size} is not divisible by num_devices {num_devices}")
  if max_boxes < 1:
    raise ValueError(f"max_boxes must be positive, got {max_boxes}")
  buckets = (tuple(tuple(int(v) for v in b) for b in buckets) if buckets is not None
             else buckets_lib.make_buckets(data.slot_size))
  indices = data.split_indices(split)
  if max_images >= 0:
    indices = indices[:max_images]
  if not len(indices):
    raise ValueError(f"split {split!r} of {data.h5_path} has no images")
  schedule = bucketed_schedule(data.bucket_ids(indices, buckets), batch_size, shuffle=shuffle,
                               seed=seed, num_epochs=num_epochs)

  def tasks():
    """``(bucket, HDF5 indices)`` of this host's share of each step from ``start_step``."""
    for step, (bucket, positions) in enumerate(schedule):
      if step < start_step:
        continue
      local = positions[process_index * local_size:(process_index + 1) * local_size]
      yield buckets[bucket], np.where(local >= 0, indices[np.maximum(local, 0)], -1)

  def assemble(task):
    bucket, hdf5_indices = task
    batch, truncated = _assemble(data, hdf5_indices, bucket, max_boxes, overflow, pixels)
    if num_devices is not None:
      batch = _with_device_axis(batch, num_devices)
    return batch, truncated

  if prefetch == 0:
    return BatchIterator(map(assemble, tasks()), start_step)
  return BatchIterator(batch_workers.OrderedWorkers(tasks(), assemble, num_workers, prefetch),
                       start_step)
