"""Captioned boxes for your own images: ``load_model(path=None).predict(images)``.

  import densecap_jax
  model = densecap_jax.load_model()            # the bundled demo model
  results = model.predict([PIL.Image.open("photo.jpg")])
  results[0]["boxes"], results[0]["scores"], results[0]["captions"]

Images are taken upright: a path or a PIL image is turned by its EXIF
orientation (``data.images.exif_upright``), as ``predict``,
``extract_features`` and the server do. Boxes are xywh, 1-based, in the
pixels of the upright image as given (``ops.boxes``; ``coords="resized"``
gives them in the resized image the model sees, as results.json has them).
``caption_regions``, ``score_phrases`` and ``score_codes`` caption boxes you
give and score phrases against regions (``regions.api``).
They go through the original's test-time preprocessing (reference §1.2:
``torch/image`` resize to a long side of ``image_size``, BGR, minus the VGG
mean), are padded into the model's shape buckets and run in batches through
the jitted ``models.detection.infer``: one compilation per bucket, then every
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

import functools
import importlib.resources
import os

import jax
import numpy as np

from densecap_jax import model_dir as checkpoint
from densecap_jax import configs
from densecap_jax import engine
from densecap_jax import runtime
from densecap_jax import settings as settings_lib
from densecap_jax.configs import buckets as buckets_lib
from densecap_jax.data import device_resize
from densecap_jax.data import image_stream
from densecap_jax.data import images as images_lib
from densecap_jax.data import vocab as vocab_lib
from densecap_jax.models import detection
from densecap_jax.models import precision as precision_lib
from densecap_jax.ops import boxes as boxes_lib
from densecap_jax.regions import api as regions_api


# Where test-time images are resized (DenseCapPredictor's ``preprocess``).
PREPROCESS_CHOICES = ("device", "host")
DEFAULT_PREPROCESS = "device"


def bundled_model_path():
  """Directory of the small demo model shipped inside the package."""
  return str(importlib.resources.files("densecap_jax") / "bundled" / "tiny_synthetic")


def bundled_examples_path():
  """Directory of the example images shipped inside the package."""
  return str(importlib.resources.files("densecap_jax") / "bundled" / "examples")


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
    self.devices = list(devices) if devices is not None else engine.default_devices()
    mesh = jax.sharding.Mesh(np.array(self.devices), (engine.BATCH_AXIS,))
    self._replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    self._split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(engine.BATCH_AXIS))
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
      return detection.infer(params, images, image_sizes, config,
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
      return image_stream.PreparedImage(None, None, tuple(rgb.shape[:2]), rgb=rgb, resized_size=size)
    model_input = images_lib.prepare_test_image(rgb, self.image_size)
    display = np.clip(np.rint((model_input + images_lib.VGG_MEAN_BGR)[..., ::-1]), 0, 255)
    return image_stream.PreparedImage(model_input, display.astype(np.uint8), tuple(rgb.shape[:2]))

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
    return image_stream.read_ahead(prepare, images, max(self.batch_size, workers), workers)

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
    for bucket, on_device, chunk in image_stream.bucket_chunks(prepared, self.buckets, self.batch_size):
      sizes = image_stream.model_sizes(prepared, chunk, bucket, self.batch_size)
      if not on_device:
        yield (chunk, *self.put_batch(image_stream.host_batch(prepared, chunk, bucket, self.batch_size),
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
        or ``"image"`` (``ops.boxes``).

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
                      else boxes_lib.to_image(boxes[k][keep], p.original_size, p.size)),
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
        given, upright, ``ops.boxes``) or ``"resized"`` (of the resized
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

  def stream_groups(self, images, *, failed=None, bar=None):
    """Images, decoded ahead in threads (:meth:`read`), in groups of one batch each.

    Args:
      images: an iterable of images (see :meth:`prepare`).
      failed, bar: skip unreadable images into this list, advance this
        progress bar (``data.image_stream.stream``).

    Yields:
      Lists of ``(i, PreparedImage)``, ``i`` the image's place in ``images``.

    Raises:
      ValueError: an unreadable image (one line naming it), unless ``failed`` is given.
    """
    return image_stream.stream(self.read, images, self.buckets, self.batch_size, failed=failed,
                               bar=bar)

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
        in the pixels of the image as given, upright (``ops.boxes``), or
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
