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

from densecap_jax import configs
from densecap_jax import engine
from densecap_jax import model_dir
from densecap_jax import pretrained
from densecap_jax import runtime
from densecap_jax import settings as settings_lib
from densecap_jax.data import image_stream
from densecap_jax.data import images as images_lib
from densecap_jax.data import vocab as vocab_lib
from densecap_jax.models import detection
from densecap_jax.ops import boxes as boxes_lib
from densecap_jax.regions import api as regions_api


# Where test-time images are resized (DenseCapPredictor's ``preprocess``).
PREPROCESS_CHOICES = ("device", "host")
DEFAULT_PREPROCESS = "device"


def bundled_model_path():
  """Directory of the small demo model shipped inside the package (``tiny-synthetic``)."""
  return pretrained.bundled_dir(pretrained.REGISTRY["tiny-synthetic"])


def bundled_examples_path():
  """Directory of the example images shipped inside the package."""
  return str(importlib.resources.files("densecap_jax") / "bundled" / "examples")


def _runner_attribute(name):
  """An attribute of the predictor kept by its ``engine.Runner`` (read and set there)."""
  return property(lambda self: getattr(self.runner, name),
                  lambda self, value: setattr(self.runner, name, value))


class DenseCapPredictor:
  """A model in memory with its test-time settings.

  Attributes:
    runner: the ``engine.Runner`` the model runs on; ``params``, ``config``,
      ``devices``, ``batch_size``, ``buckets``, ``image_size``,
      ``num_proposals``, ``rpn_nms_thresh`` and ``final_nms_thresh`` are its
      attributes.
    config: the model config; ``vocab``: the vocabulary list.
    image_size, num_proposals, rpn_nms_thresh, final_nms_thresh: test-time
      settings (defaults from the config: the original's 720 / 1000 / 0.7 /
      0.3 for the ``vgg16`` model).
    batch_size: images per forward pass, a multiple of the devices.
    devices: where the model runs (default ``engine.default_devices``); each
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

  params = _runner_attribute("params")
  config = _runner_attribute("config")
  devices = _runner_attribute("devices")
  batch_size = _runner_attribute("batch_size")
  buckets = _runner_attribute("buckets")
  image_size = _runner_attribute("image_size")
  num_proposals = _runner_attribute("num_proposals")
  rpn_nms_thresh = _runner_attribute("rpn_nms_thresh")
  final_nms_thresh = _runner_attribute("final_nms_thresh")

  def __init__(self, params, config, vocab, *, image_size=None, num_proposals=None,
               rpn_nms_thresh=None, final_nms_thresh=None, batch_size=1, devices=None,
               precision=None, preprocess=None, compilation_cache=True):
    runtime.use_compilation_cache(compilation_cache)  # before anything compiles
    settings_lib.check_settings(image_size=image_size, num_proposals=num_proposals,
                                rpn_nms_thresh=rpn_nms_thresh,
                                final_nms_thresh=final_nms_thresh)
    params, config = engine.inference_params(params, config, precision)  # bf16 kernels cast once
    self.precision = configs.precision_of(config)
    self.runner = engine.Runner(params, config, devices=devices, batch_size=batch_size,
                                image_size=image_size, num_proposals=num_proposals,
                                rpn_nms_thresh=rpn_nms_thresh, final_nms_thresh=final_nms_thresh)
    self.vocab = vocab
    self.preprocess = preprocess or DEFAULT_PREPROCESS
    if self.preprocess not in PREPROCESS_CHOICES:
      raise ValueError(f"preprocess must be one of {', '.join(PREPROCESS_CHOICES)}, "
                       f"got {preprocess!r}")

    def run(params, images, image_sizes, rpn_nms_thresh, final_nms_thresh, groups):
      # A batch split over the devices (put_batch) captions each device's own kept rows.
      return detection.infer(params, images, image_sizes, config,
                             num_proposals=self.num_proposals, rpn_nms_thresh=rpn_nms_thresh,
                             final_nms_thresh=final_nms_thresh, caption_groups=groups)

    self._infer = self.runner.jit(run, grouped=True)

  def __copy__(self):
    """A shallow copy with a copy of :attr:`runner`: its settings set apart, the same programs."""
    copied = object.__new__(type(self))
    copied.__dict__.update(self.__dict__)
    copied.runner = self.runner.replace()
    return copied

  def put_batch(self, *arrays):
    """Batch arrays (leading axis: images) placed for the model (``engine.Runner.put_batch``)."""
    return self.runner.put_batch(*arrays)

  def splits(self, batch_size):
    """Whether a batch of ``batch_size`` images is split over the devices (else replicated)."""
    return self.runner.splits(batch_size)

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

    Yields ``(members, images, sizes)`` (``engine.Runner.batches``).
    """
    return self.runner.batches(prepared, displays)

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
          images, sizes, self.rpn_nms_thresh, self.final_nms_thresh))
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
    return self._each_group(regions_api.image_list(images), lambda prepared, _: (
        self.predict_prepared(prepared, max_detections, coords=coords)))

  def _each_group(self, images, run):
    """``run(prepared, indices)`` on each group of :meth:`stream_groups`; its results in order.

    ``run`` takes a group's ``PreparedImage`` s and their places in
    ``images`` and returns one result per image.
    """
    results = {}
    for group in self.stream_groups(images):
      outputs = run([p for _, p in group], [i for i, _ in group])
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
    return regions_api.RegionModel(self.runner, self.vocab)

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
    regions_api.check_coords(coords)
    if boxes is None:
      raise ValueError("boxes must be a list of [x, y, w, h] per image, got None (the model's "
                       "own detections: predict)")
    images, boxes = regions_api.boxes_per_image(images, boxes)
    return self._each_group(images, lambda prepared, indices: self.regions.caption_prepared(
        prepared, self.regions.given_boxes(prepared, [boxes[i] for i in indices], coords),
        coords=coords, with_codes=with_codes))

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
    regions_api.check_coords(coords)
    max_detections = regions_api.detection_limit(max_detections)
    encoded = self.regions.encode_phrases(phrases)
    images, boxes = regions_api.boxes_per_image(images, boxes)

    def score(prepared, indices):
      given = (None if boxes is None
               else self.regions.given_boxes(prepared, [boxes[i] for i in indices], coords))
      return self.regions.score_prepared(prepared, encoded, given, coords=coords,
                                         max_detections=max_detections)

    return self._each_group(images, score)

  def score_codes(self, codes, phrases):
    """How well each phrase describes each of ``(n, fc_dim)`` stored fc7 codes.

    Returns:
      A dict as :meth:`score_phrases`' without the regions' fields:
      ``log_likelihood`` and ``mean_log_likelihood`` ``(n, P)`` float32,
      ``phrases`` (the words scored), ``unknown_words`` and
      ``no_known_content_words`` (``regions.api.RegionModel.score_codes``).
    """
    return self.regions.score_codes(codes, phrases)


def model_path(path=None, *, models_url=None):
  """The model directory ``path`` names: itself, a fetched model of that name, or the bundled one.

  A name of ``pretrained.NAMES`` is resolved (``pretrained.resolve``:
  downloaded and converted on first use, then read from the cache); a path
  that exists is returned as it is (``model_dir.load_model`` says what is
  wrong with it, if anything); ``None`` or ``""`` is the bundled model.

  Raises:
    FileNotFoundError: neither a path nor a name (one line listing the names).
  """
  if not path:
    return bundled_model_path()
  if os.path.exists(path):
    return path
  if os.fspath(path) in pretrained.NAMES:
    return pretrained.resolve(path, base_url=models_url)
  raise FileNotFoundError(f"model directory not found: {os.path.abspath(path)} (model names: "
                          f"{', '.join(pretrained.NAMES)})")


def load_model(path=None, *, models_url=None, **settings):
  """A :class:`DenseCapPredictor` for a model directory or name (default: the bundled demo model).

  Args:
    path: a model directory (``model_dir.save_model``, a training directory,
      or a converted original checkpoint), a model name of
      ``pretrained.NAMES`` (``"densecap-vgg16"``: downloaded, verified,
      converted and cached on first use, ``pretrained.resolve``); ``None`` =
      the bundled model.
    models_url: a mirror of the models' files (``pretrained.resolve``'s
      ``base_url``; default ``$DENSECAP_JAX_MODELS_URL``).
    **settings: ``image_size``, ``num_proposals``, ``rpn_nms_thresh``,
      ``final_nms_thresh``, ``batch_size``, ``devices``, ``precision``,
      ``preprocess``, ``compilation_cache`` (see :class:`DenseCapPredictor`;
      the persistent compilation cache is on unless
      ``compilation_cache=False``).
  """
  runtime.use_compilation_cache(settings.get("compilation_cache", True))
  params, config, vocab = model_dir.load_model(model_path(path, models_url=models_url))
  return DenseCapPredictor(params, config, vocab, **settings)
