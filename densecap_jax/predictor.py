"""Captioned boxes for your own images: ``load_model(path=None).predict(images)``.

  import densecap_jax
  model = densecap_jax.load_model()            # the bundled demo model
  results = model.predict([PIL.Image.open("photo.jpg")])
  results[0]["boxes"], results[0]["scores"], results[0]["captions"]

Images are taken upright: a path or a PIL image is turned by its EXIF
orientation (``data.images.exif_upright``), as ``predict``,
``extract_features`` and the server do. Boxes are xywh, 1-based, in the
pixels of the upright image as given (``regions.coords``; ``coords="resized"``
gives them in the resized image the model sees, as results.json has them).
``caption_regions``, ``score_phrases`` and ``score_codes`` caption boxes you
give and score phrases against regions (``regions.api``).
They go through the original's test-time preprocessing (reference §1.2:
``torch/image`` resize to a long side of ``image_size``, BGR, minus the VGG
mean), are padded into the model's shape buckets and run in batches through
the jitted ``models.densecap.infer``: one compilation per bucket, then every
image of that shape reuses it.

Where the resize runs is the predictor's ``preprocess``: ``"device"`` (the
default) sends the decoded uint8 original to the devices and resizes it there
(``data.device_resize``), ``"host"`` resizes it in NumPy. The two give the
same model input bit for bit -- checked on CPU for many sizes, and the
bundled model's results on its examples and on generated photos are
identical -- so the default changes no output; on CPU the device path is
also several times faster for large photos (``benchmarks/README.md``).
``predict`` decodes images ahead in threads and batches them as they come
(``read``, ``group_batches``), so memory holds a few batches of images.
"""

import collections
import concurrent.futures
import dataclasses
import functools
import importlib.resources
import itertools
import os

import jax
import numpy as np
from PIL import Image

from densecap_jax import model_dir as checkpoint
from densecap_jax import configs
from densecap_jax import runtime
from densecap_jax import settings as settings_lib
from densecap_jax.data import buckets as buckets_lib
from densecap_jax.data import device_resize
from densecap_jax.data import images as images_lib
from densecap_jax.data import vocab as vocab_lib
from densecap_jax.models import densecap
from densecap_jax.models import precision as precision_lib
from densecap_jax.ops import boxes as boxes_lib
from densecap_jax.regions import api as regions_api
from densecap_jax.regions import coords as coords_lib


BATCH_AXIS = "batch"
# Where test-time images are resized (DenseCapPredictor's ``preprocess``).
PREPROCESS_CHOICES = ("device", "host")
DEFAULT_PREPROCESS = "device"
# Streaming runs (``group_batches``) hold at most this many batches of images waiting.
MAX_PENDING_BATCHES = 4


def default_devices():
  """The devices a model runs on by default: every local accelerator, or one CPU device.

  Batches are split over several GPUs or TPU cores; on a CPU the forced host
  devices share the same cores, so one device does the same work with less
  padding.
  """
  devices = jax.local_devices()
  return devices if devices[0].platform != "cpu" else devices[:1]


def bundled_model_path():
  """Directory of the small demo model shipped inside the package."""
  return str(importlib.resources.files("densecap_jax") / "bundled" / "tiny_synthetic")


def bundled_examples_path():
  """Directory of the example images shipped inside the package."""
  return str(importlib.resources.files("densecap_jax") / "bundled" / "examples")


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


def batch_by_bucket(prepared, buckets, batch_size):
  """Groups prepared images by shape bucket into fixed-size padded batches.

  Yields:
    ``(members, images, sizes)``: indices into ``prepared`` (at most
    ``batch_size``), ``(batch_size, Hb, Wb, 3)`` float32 images zero-padded
    to the bucket (unused slots all zero) and ``(batch_size, 2)`` int32 true
    sizes (the bucket's for unused slots).
  """
  for bucket, on_device, chunk in _bucket_chunks(prepared, buckets, batch_size):
    if on_device:
      raise ValueError("batch_by_bucket takes images prepared on the host; "
                       "DenseCapPredictor.batches resizes the others on the device")
    yield (chunk, _host_batch(prepared, chunk, bucket, batch_size),
           _model_sizes(prepared, chunk, bucket, batch_size))


def _host_batch(prepared, chunk, bucket, batch_size):
  """``(batch_size, Hb, Wb, 3)`` float32: the model inputs of ``chunk``, zero-padded."""
  images = np.zeros((batch_size,) + bucket + (3,), np.float32)
  for k, i in enumerate(chunk):
    h, w = prepared[i].size
    images[k, :h, :w] = prepared[i].model_input
  return images


def _bucket_chunks(prepared, buckets, batch_size):
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


def _model_sizes(prepared, chunk, bucket, batch_size):
  """``(batch_size, 2)`` int32 true sizes of a batch (the bucket's for unused slots)."""
  sizes = np.tile(np.asarray(bucket, np.int32), (batch_size, 1))
  for k, i in enumerate(chunk):
    sizes[k] = prepared[i].size
  return sizes


def read_ahead(fn, items, depth, workers=None):
  """``(item, fn(item))`` for each item, in order, with up to ``depth`` computed ahead in threads.

  Decoding images this way overlaps the device's work on earlier ones
  (Pillow and NumPy release the GIL while they decode and resize), and holds
  at most ``depth`` results besides the one being used, whatever the count.

  Args:
    fn: ``item -> result``; a ``ValueError`` it raises is given in place of
      the result (an unreadable image); other exceptions propagate.
    items: an iterable.
    depth: results computed ahead, at least 1.
    workers: threads (default: ``min(4, CPUs)``).

  Yields:
    ``(item, result or ValueError)``.
  """
  depth = max(int(depth), 1)
  workers = workers or min(4, os.cpu_count() or 1)
  pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="read_ahead")
  pending = collections.deque()
  source = iter(items)
  try:
    for item in itertools.islice(source, depth):
      pending.append((item, pool.submit(fn, item)))
    while pending:
      item, future = pending.popleft()
      for following in itertools.islice(source, 1):
        pending.append((following, pool.submit(fn, following)))
      try:
        result = future.result()
      except ValueError as e:
        result = e
      yield item, result
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


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


class DenseCapPredictor:
  """A model in memory with its test-time settings.

  Attributes:
    config: the model config; ``vocab``: the vocabulary list.
    image_size, num_proposals, rpn_nms_thresh, final_nms_thresh: test-time
      settings (defaults from the config: the original's 720 / 1000 / 0.7 /
      0.3 for the ``vgg16`` model).
    batch_size: images per forward pass, a multiple of the devices.
    devices: where the model runs (default :func:`default_devices`); each
      batch is split over them, the params are replicated on each.
    precision: ``"float32"`` (exact), ``"tf32"`` or ``"bfloat16"``
      (``models/precision.py``); the ``precision`` keyword overrides the
      config's (float32 when the config has none).
    preprocess: where :meth:`predict` (and the ``predict`` and
      ``extract_features`` commands) resize images: ``"device"`` (the default:
      the decoded uint8 original goes to the devices, ``data.device_resize``)
      or ``"host"`` (NumPy, ``data.images.prepare_test_image``). Both give the
      same model input bit for bit (tested on CPU), hence the same results.
    compilation_cache: keep compiled programs in the persistent compilation
      cache (``runtime.use_compilation_cache``: ``~/.cache/densecap_jax/jax``
      or ``$DENSECAP_JAX_CACHE_DIR``), so the next process loads them instead
      of compiling; ``False`` leaves it off, as does
      ``DENSECAP_JAX_CACHE_DIR=off``. A process that set the cache up itself
      (a command's ``runtime.setup``, JAX's ``jax_compilation_cache_dir``)
      keeps its choice.
  """

  def __init__(self, params, config, vocab, *, image_size=None, num_proposals=None,
               rpn_nms_thresh=None, final_nms_thresh=None, batch_size=1, devices=None,
               precision=None, preprocess=None, compilation_cache=True):
    runtime.use_compilation_cache(compilation_cache)  # before anything compiles
    settings_lib.check_settings(image_size=image_size, num_proposals=num_proposals,
                                rpn_nms_thresh=rpn_nms_thresh,
                                final_nms_thresh=final_nms_thresh)
    config = configs.with_precision(config, precision)
    self.precision = configs.precision_of(config)
    params = precision_lib.cast_for_inference(params, self.precision)  # bf16 kernels cast once
    self.devices = list(devices) if devices is not None else default_devices()
    mesh = jax.sharding.Mesh(np.array(self.devices), (BATCH_AXIS,))
    self._replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    self._split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(BATCH_AXIS))
    self.params = jax.device_put(params, self._replicated)
    self.config = config
    self.vocab = vocab
    self.image_size = int(image_size or config.image_size)
    self.num_proposals = int(num_proposals or config.num_proposals)
    self.rpn_nms_thresh = config.rpn_nms_thresh if rpn_nms_thresh is None else rpn_nms_thresh
    self.final_nms_thresh = (config.final_nms_thresh if final_nms_thresh is None
                             else final_nms_thresh)
    if batch_size < 1:
      raise ValueError(f"batch_size must be positive, got {batch_size}")
    self.preprocess = preprocess or DEFAULT_PREPROCESS
    if self.preprocess not in PREPROCESS_CHOICES:
      raise ValueError(f"preprocess must be one of {', '.join(PREPROCESS_CHOICES)}, "
                       f"got {preprocess!r}")
    num_devices = len(self.devices)
    self.batch_size = -(-batch_size // num_devices) * num_devices  # a multiple of the devices
    if self.image_size == config.image_size:
      self.buckets = tuple(tuple(int(v) for v in b) for b in config.buckets)
    else:
      self.buckets = buckets_lib.make_buckets(self.image_size)

    def run(params, images, image_sizes, rpn_nms_thresh, final_nms_thresh):
      # A batch split over the devices (put_batch) captions each device's own kept rows.
      groups = len(self.devices) if self.splits(len(images)) else 1
      return densecap.infer(params, images, image_sizes, config,
                            num_proposals=self.num_proposals, rpn_nms_thresh=rpn_nms_thresh,
                            final_nms_thresh=final_nms_thresh, caption_groups=groups)

    self._infer = jax.jit(run)

  def put_batch(self, *arrays):
    """Batch arrays (leading axis: images) placed for the model: split over :attr:`devices`.

    A batch that does not divide evenly goes to every device whole.
    """
    return tuple(jax.device_put(a, self._split if self.splits(len(a)) else self._replicated)
                 for a in arrays)

  def splits(self, batch_size):
    """Whether a batch of ``batch_size`` images is split over the devices (else replicated)."""
    return batch_size % len(self.devices) == 0

  def prepare(self, image, on_device=False):
    """One image -> :class:`PreparedImage`.

    Args:
      image: a path or a PIL image (turned upright by its EXIF orientation),
        or a uint8 NumPy array: ``(H, W)`` or ``(H, W, 1)`` grey, ``(H, W, 3)``
        RGB, ``(H, W, 4)`` RGBA (alpha dropped) -- see
        ``data.images.user_rgb``.
      on_device: ``False``: resized here (``model_input`` and ``display``
        set); ``True``: only decoded (``rgb`` and ``resized_size`` set), to be
        resized on the devices by :meth:`batches`.

    Raises:
      TypeError: ``image`` is none of these.
      ValueError: an unreadable file (one line naming it), an array of
        another dtype or shape, or an image that would be resized to 0 pixels.
    """
    rgb = images_lib.user_rgb(image)
    if on_device:
      size = images_lib.torch_scale_size(rgb.shape[0], rgb.shape[1], self.image_size)
      if min(size) < 1:
        raise ValueError(f"image of {rgb.shape[0]}x{rgb.shape[1]} (HxW) would be resized to "
                         f"{size[0]}x{size[1]}")
      return PreparedImage(None, None, tuple(rgb.shape[:2]), rgb=rgb, resized_size=size)
    model_input = images_lib.prepare_test_image(rgb, self.image_size)
    display = np.clip(np.rint((model_input + images_lib.VGG_MEAN_BGR)[..., ::-1]), 0, 255)
    return PreparedImage(model_input, display.astype(np.uint8), tuple(rgb.shape[:2]))

  def read(self, images, workers=None):
    """Decodes (and prepares) images ahead in threads, for streaming runs.

    Each image is prepared as :attr:`preprocess` says (only decoded when it
    is ``"device"``), by ``workers`` threads (default ``min(4, CPUs)``), at
    most ``max(batch_size, workers)`` ahead of the one being used.

    Yields:
      ``(image, PreparedImage or the ValueError that made it unreadable)``, in order.
    """
    workers = workers or min(4, os.cpu_count() or 1)
    prepare = functools.partial(self.prepare, on_device=self.preprocess == "device")
    return read_ahead(prepare, images, max(self.batch_size, workers), workers)

  def batches(self, prepared, displays=False):
    """Padded batches of :class:`PreparedImage` s, placed on the devices, one bucket each.

    Images prepared on the host are padded here and sent as float32. The
    others are sent as their uint8 originals, padded to an input bucket, and
    resized on the devices (``data.device_resize``) into the padded batch.

    Args:
      prepared: a list of :class:`PreparedImage`.
      displays: also fetch the resized uint8 image of those resized on the
        devices into their ``display``, once the caller is done with the batch.

    Yields:
      ``(members, images, sizes)``: indices into ``prepared`` (at most
      :attr:`batch_size`), ``(batch_size, Hb, Wb, 3)`` float32 images
      (unused slots all zero) and ``(batch_size, 2)`` int32 true sizes (the
      bucket's for unused slots), placed by :meth:`put_batch`.
    """
    for bucket, on_device, chunk in _bucket_chunks(prepared, self.buckets, self.batch_size):
      sizes = _model_sizes(prepared, chunk, bucket, self.batch_size)
      if not on_device:
        yield (chunk, *self.put_batch(_host_batch(prepared, chunk, bucket, self.batch_size),
                                      sizes))
        continue
      arrays = device_resize.batch_arrays([prepared[i].rgb for i in chunk],
                                          [prepared[i].size for i in chunk], bucket,
                                          self.batch_size)
      placed = dict(zip(arrays, self.put_batch(*arrays.values())))
      images, display = device_resize.resize_batch_jit(**placed, zero=np.uint32(0))
      yield (chunk, images, *self.put_batch(sizes))
      if displays:
        display = jax.device_get(display)
        for k, i in enumerate(chunk):
          h, w = prepared[i].size
          prepared[i].display = display[k, :h, :w].copy()

  def predict_prepared(self, prepared, max_detections=None, displays=False, coords="resized"):
    """Runs the model on :class:`PreparedImage` s, batching images of one bucket together.

    Args:
      prepared: a list of :class:`PreparedImage`.
      max_detections: keep at most this many boxes per image (``None`` or
        -1: all; ``regions.api.detection_limit``).
      displays: fill ``display`` of images resized on the devices (see :meth:`batches`).
      coords: ``"resized"`` (the default here: the original's results.json)
        or ``"image"`` (``regions.coords``).

    Returns:
      One dict per image, in input order: ``boxes`` ``(N, 4)`` float32 xywh
      (1-based, unclipped, in the resized image's pixels as the original's
      results.json, or in the image's with ``coords="image"``), ``scores``
      ``(N,)`` float32 objectness logits, descending, ``captions`` (``N``
      strings), and ``width`` and ``height`` of the image as given.
    """
    regions_api.check_coords(coords)
    max_detections = regions_api.detection_limit(max_detections)
    results = [None] * len(prepared)
    for chunk, images, sizes in self.batches(prepared, displays):
      boxes, scores, tokens, valid = jax.device_get(self._infer(
          self.params, images, sizes, self.rpn_nms_thresh, self.final_nms_thresh))
      boxes = np.asarray(boxes_lib.xcycwh_to_xywh(boxes))  # whole batch: one fixed shape
      for k, i in enumerate(chunk):
        keep = np.flatnonzero(valid[k])[:max_detections]
        p = prepared[i]
        results[i] = {
            "boxes": (boxes[k][keep] if coords == "resized"
                      else coords_lib.to_image(boxes[k][keep], p.original_size, p.size)),
            "scores": scores[k][keep],
            "captions": vocab_lib.decode_captions(tokens[k][keep], self.vocab),
            **regions_api.size_fields(p),
        }
    return results

  def predict(self, images, max_detections=None, coords="image"):
    """Captioned boxes for images (see ``prepare`` for what an image may be).

    Images are decoded ahead in threads while the model runs (:meth:`read`)
    and batched as they come (:func:`group_batches`), so memory holds a few
    batches of images whatever their count.

    Args:
      images: a list (or other iterable) of images, or one image: a path, a
        PIL image or a 2-D / 3-D array is taken as a list of one; a 4-D
        array as a batch of ``(H, W, C)`` images.
      max_detections: keep at most this many boxes per image (``None`` or
        -1: all).
      coords: ``"image"`` (the default: boxes in the pixels of the image as
        given, upright, ``regions.coords``) or ``"resized"`` (of the resized
        image the model sees, as the original's results.json).

    Returns:
      One dict per image, in order (see ``predict_prepared``).
    """
    regions_api.check_coords(coords)
    regions_api.detection_limit(max_detections)  # checked before any image is read
    results = {}
    for group in self.stream_groups(regions_api.image_list(images)):
      outputs = self.predict_prepared([p for _, p in group], max_detections, coords=coords)
      for (i, _), output in zip(group, outputs):
        results[i] = output
    return [results[i] for i in range(len(results))]

  def stream_groups(self, images):
    """Images, decoded ahead in threads (:meth:`read`), in groups of one batch each.

    Args:
      images: an iterable of images (see :meth:`prepare`).

    Yields:
      Lists of ``(i, PreparedImage)`` (:func:`group_batches`), ``i`` the
      image's place in ``images``.

    Raises:
      ValueError: an unreadable image (one line naming it).
    """
    def readable():
      for i, (_, prepared) in enumerate(self.read(images)):  # in order
        if isinstance(prepared, ValueError):
          raise prepared
        yield i, prepared

    return group_batches(readable(), self.buckets, self.batch_size)

  @functools.cached_property
  def regions(self):
    """The :class:`regions.api.RegionModel` of this model (compiled on first use)."""
    return regions_api.RegionModel(self)

  def caption_regions(self, images, boxes, *, with_codes=False, coords="image"):
    """Captions of boxes you give: per box its greedy caption and how sure the model is.

    Args:
      images: images as :meth:`predict` takes them (one image, or a list).
      boxes: for one image a list of ``[x, y, w, h]`` (or a ``(k, 4)``
        array); for a list of images one such list per image. xywh, 1-based,
        in the pixels of the image as given, upright (``regions.coords``), or
        of the resized image with ``coords="resized"``. A box partly outside
        the image is clipped to it, a box wholly outside onto the 1-pixel
        strip along the nearest border (``clipped`` and ``outside`` say
        which), so every box :meth:`predict` returns can be given back.
      with_codes: also return each box's fc7 code.
      coords: ``"image"`` or ``"resized"``, for the boxes given and returned.

    Returns:
      One dict per image: ``boxes`` ``(k, 4)`` float32 xywh as used (after
      clipping), ``clipped`` and ``outside`` ``(k,)`` bool, ``captions`` (``k`` strings),
      ``caption_log_probs`` ``(k,)`` float32 (the log-probability of each
      caption: its words and END), ``scores`` ``(k,)`` float32 objectness
      logits, ``width`` and ``height`` of the image, and with
      ``with_codes`` ``codes`` ``(k, fc_dim)`` float32.

    Raises:
      ValueError: one line naming the image and box index: not 4 numbers,
        NaN or infinite, or a zero or negative size.
    """
    return self.regions.caption_regions(images, boxes, with_codes=with_codes, coords=coords)

  def score_phrases(self, images, phrases, boxes=None, *, coords="image", max_detections=None):
    """How well each phrase describes each region: the language model's log-likelihood.

    The phrase is scored teacher-forced given the region's code (paper
    §4.3): ``log p(words, END | region)``. Phrases are tokenised as the
    training captions were (``regions.phrases``).

    Args:
      images: images as :meth:`predict` takes them.
      phrases: a string or a list of strings.
      boxes: ``None`` (the model's own detections) or boxes as
        :meth:`caption_regions` takes them.
      coords: ``"image"`` or ``"resized"``, for the boxes given and returned.
      max_detections: with ``boxes=None``, score at most this many
        detections per image (the highest objectness first; ``None`` or -1: all).

    Returns:
      One dict per image: ``boxes`` ``(n, 4)``, ``scores`` ``(n,)``
      objectness logits, ``captions``, ``log_likelihood`` ``(n, P)`` float32
      (summed over the words and END), ``mean_log_likelihood`` ``(n, P)``
      (per token), ``phrases`` (the words scored), ``unknown_words`` (per
      phrase, the words outside the vocabulary: ``<UNK>`` when the vocabulary
      has it, else left out), ``no_known_content_words`` (per phrase: the
      words scored are all function words, as "a man riding a horse" scored
      as "a a" when the vocabulary lacks the others; such a column ranks
      nothing, ``regions.phrases``), ``width`` and ``height``; with ``boxes`` also
      ``clipped`` and ``outside`` (as :meth:`caption_regions`).

    Raises:
      ValueError: a phrase with no known word or more than ``seq_length``
        words, or a bad box (as :meth:`caption_regions`).
    """
    return self.regions.score_phrases(images, phrases, boxes, coords=coords,
                                      max_detections=max_detections)

  def score_codes(self, codes, phrases):
    """How well each phrase describes each of ``(n, fc_dim)`` stored fc7 codes.

    Returns:
      A dict as :meth:`score_phrases`' without the regions' fields:
      ``log_likelihood`` and ``mean_log_likelihood`` ``(n, P)`` float32,
      ``phrases`` (the words scored), ``unknown_words`` and
      ``no_known_content_words`` (``regions.api.RegionModel.score_codes``).
    """
    return self.regions.score_codes(codes, phrases)


def load_model(path=None, **settings):
  """A :class:`DenseCapPredictor` for a model directory (default: the bundled demo model).

  Args:
    path: a model directory (``checkpoint.save_model``, a training directory,
      or a converted original checkpoint); ``None`` = the bundled model.
    **settings: ``image_size``, ``num_proposals``, ``rpn_nms_thresh``,
      ``final_nms_thresh``, ``batch_size``, ``devices``, ``precision``,
      ``preprocess``, ``compilation_cache`` (see :class:`DenseCapPredictor`;
      the persistent compilation cache is on unless
      ``compilation_cache=False``).
  """
  runtime.use_compilation_cache(settings.get("compilation_cache", True))
  params, config, vocab = checkpoint.load_model(path or bundled_model_path())
  return DenseCapPredictor(params, config, vocab, **settings)
