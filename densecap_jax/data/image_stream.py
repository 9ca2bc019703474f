"""The image stream: images decoded ahead in threads and grouped into batches of one shape bucket.

``stream`` is the one loop that predict, extract_features, index, score and the
Python API run images through: read ahead (``read_ahead``, with EXIF and the
test-time resize in the reader, ``DenseCapPredictor.read``), skip or raise on
an unreadable image, advance a progress bar, group into batches
(``group_batches``). Memory holds a few batches of images whatever the count.
"""

import dataclasses
import os

import numpy as np
from tqdm import tqdm

from densecap_jax.configs import buckets as buckets_lib
from densecap_jax.data import batch_workers


# Streaming runs (``group_batches``) hold at most this many batches of images waiting.
MAX_PENDING_BATCHES = 4


@dataclasses.dataclass
class PreparedImage:
  """One image after the test-time preprocessing, or decoded for the device to resize.

  Prepared on the host (``DenseCapPredictor.prepare(image)``), ``model_input``
  and ``display`` are set. Left to the device (``prepare(image,
  on_device=True)``), ``rgb`` and ``resized_size`` are set instead; the
  device resize (``data.device_resize``) makes ``model_input`` there, bit for
  bit the host's, and ``predict_prepared(..., displays=True)`` fills
  ``display``.

  Attributes:
    model_input: ``(h, w, 3)`` float32 BGR minus the VGG mean, or ``None``.
    display: ``(h, w, 3)`` uint8 RGB, the resized image the boxes refer to, or ``None``.
    original_size: ``(H0, W0)`` before resizing.
    rgb: ``(H0, W0, 3)`` uint8 RGB, the decoded upright original (device
      preprocessing only), or ``None``.
    resized_size: ``(h, w)`` after resizing (device preprocessing only), or ``None``.
  """
  model_input: np.ndarray | None
  display: np.ndarray | None
  original_size: tuple
  rgb: np.ndarray | None = None
  resized_size: tuple | None = None

  @property
  def size(self):
    """``(h, w)``, the resized size the boxes refer to."""
    if self.model_input is not None:
      return tuple(self.model_input.shape[:2])
    return tuple(self.resized_size)


def host_batch(prepared, chunk, bucket, batch_size):
  """``(batch_size, Hb, Wb, 3)`` float32: the model inputs of ``chunk``, zero-padded."""
  images = np.zeros((batch_size,) + bucket + (3,), np.float32)
  for k, i in enumerate(chunk):
    h, w = prepared[i].size
    images[k, :h, :w] = prepared[i].model_input
  return images


def bucket_chunks(prepared, buckets, batch_size):
  """``(bucket, on_device, members)`` for each batch: indices of at most ``batch_size`` images.

  Images are grouped by shape bucket, and within it by where they are
  resized (host first seen first), in input order.
  """
  groups = {}
  for i, p in enumerate(prepared):
    bucket = buckets_lib.pick_bucket(*p.size, buckets)
    groups.setdefault((bucket, p.model_input is None), []).append(i)
  for (bucket, on_device), members in groups.items():
    for start in range(0, len(members), batch_size):
      yield bucket, on_device, members[start:start + batch_size]


def model_sizes(prepared, chunk, bucket, batch_size):
  """``(batch_size, 2)`` int32 true sizes of a batch (the bucket's for unused slots)."""
  sizes = np.tile(np.asarray(bucket, np.int32), (batch_size, 1))
  for k, i in enumerate(chunk):
    sizes[k] = prepared[i].size
  return sizes


def read_ahead(fn, items, depth, workers=None):
  """``(item, fn(item))`` for each item, in order, with up to ``depth`` computed ahead in threads.

  Decoding images this way overlaps the device's work on earlier ones
  (Pillow and NumPy release the GIL while they decode and resize), and holds
  at most ``max(depth, workers)`` results besides the one being used, whatever
  the count (``batch_workers.OrderedWorkers``, the loader's workers too).

  Args:
    fn: ``item -> result``; a ``ValueError`` it raises is given in place of
      the result (an unreadable image); other exceptions propagate.
    items: an iterable.
    depth: results computed ahead, at least 1 (and at least ``workers``).
    workers: threads (default: ``min(4, CPUs)``).

  Yields:
    ``(item, result or ValueError)``.
  """
  workers = workers or min(4, os.cpu_count() or 1)

  def item_and_result(item):
    try:
      return item, fn(item)
    except ValueError as e:
      return item, e

  ahead = batch_workers.OrderedWorkers(items, item_and_result, workers, max(int(depth), 1))
  try:
    yield from ahead
  finally:
    ahead.close()


def group_batches(pairs, buckets, batch_size, max_pending=None):
  """Streams ``(key, PreparedImage)`` pairs into groups that each make one batch.

  A group holds images of one shape bucket (and one place of resizing, host
  or device). It is yielded as soon as it holds ``batch_size`` images; when
  ``max_pending`` images wait in all, the largest group goes early, partly
  filled; at the end the rest go, in the order of their first image. So at
  most ``max_pending`` images wait, whatever the count, and images of a
  common size fill whole batches.

  Args:
    pairs: an iterable of ``(key, PreparedImage)`` (the key is the caller's).
    buckets: the model's shape buckets.
    batch_size: images per batch.
    max_pending: the most images waiting (default ``MAX_PENDING_BATCHES``
      batches).

  Yields:
    Lists of ``(key, PreparedImage)``, at most ``batch_size`` long.
  """
  max_pending = max_pending or MAX_PENDING_BATCHES * batch_size
  pending = {}
  count = 0
  for key, prepared in pairs:
    group_key = (buckets_lib.pick_bucket(*prepared.size, buckets), prepared.model_input is None)
    group = pending.setdefault(group_key, [])
    group.append((key, prepared))
    count += 1
    if len(group) >= batch_size or count >= max_pending:
      if len(group) < batch_size:
        group_key = max(pending, key=lambda k: len(pending[k]))
      group = pending.pop(group_key)
      count -= len(group)
      yield group
  yield from pending.values()


def stream(read, items, buckets, batch_size, *, failed=None, bar=None):
  """Images read ahead and grouped into batches of one shape bucket each.

  Args:
    read: ``items -> (item, PreparedImage or ValueError)`` pairs, in order
      (``DenseCapPredictor.read``).
    items: the images (paths, PIL images, arrays), an iterable.
    buckets: the model's shape buckets.
    batch_size: images per batch.
    failed: ``None``: an unreadable image raises its one-line ``ValueError``.
      A list: unreadable images are skipped, each noted on the console
      (``skipped: ...``) and appended as ``(index, item, error)``.
    bar: a tqdm bar advanced by one per image: at once for a skipped image,
      for the others when the loop body has handled their group.

  Yields:
    Lists of ``(index, PreparedImage)``, at most ``batch_size`` long
    (``group_batches``), ``index`` the image's place in ``items``.
  """
  def readable():
    for index, (item, prepared) in enumerate(read(items)):
      if not isinstance(prepared, ValueError):
        yield index, prepared
        continue
      if failed is None:
        raise prepared
      failed.append((index, item, prepared))
      tqdm.write(f"skipped: {prepared}")
      if bar is not None:
        bar.update(1)

  for group in group_batches(readable(), buckets, batch_size):
    yield group
    if bar is not None:
      bar.update(len(group))
