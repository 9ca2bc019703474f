"""Captioned boxes for your own images: ``load_model(path=None).predict(images)``.

  import densecap_jax
  model = densecap_jax.load_model()            # the bundled demo model
  results = model.predict([PIL.Image.open("photo.jpg")])
  results[0]["boxes"], results[0]["scores"], results[0]["captions"]

Images are taken upright: a path or a PIL image is turned by its EXIF
orientation (``data.images.exif_upright``), as ``predict``,
``extract_features`` and the server do, and boxes refer to the upright image.
They go through the original's test-time preprocessing (reference §1.2:
``torch/image`` resize to a long side of ``image_size``, BGR, minus the VGG
mean), are padded into the model's shape buckets and run in batches through
the jitted ``models.densecap.infer``: one compilation per bucket, then every
image of that shape reuses it.
"""

import dataclasses
import importlib.resources
import os

import jax
import numpy as np
from PIL import Image

from densecap_jax import checkpoint
from densecap_jax import settings as settings_lib
from densecap_jax.data import buckets as buckets_lib
from densecap_jax.data import images as images_lib
from densecap_jax.data import vocab as vocab_lib
from densecap_jax.models import densecap
from densecap_jax.ops import boxes as boxes_lib


BATCH_AXIS = "batch"


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
  """One image after the test-time preprocessing.

  Attributes:
    model_input: ``(h, w, 3)`` float32 BGR minus the VGG mean.
    display: ``(h, w, 3)`` uint8 RGB, the resized image the boxes refer to.
    original_size: ``(H0, W0)`` before resizing.
  """
  model_input: np.ndarray
  display: np.ndarray
  original_size: tuple


def batch_by_bucket(prepared, buckets, batch_size):
  """Groups prepared images by shape bucket into fixed-size padded batches.

  Yields:
    ``(members, images, sizes)``: indices into ``prepared`` (at most
    ``batch_size``), ``(batch_size, Hb, Wb, 3)`` float32 images zero-padded
    to the bucket (unused slots all zero) and ``(batch_size, 2)`` int32 true
    sizes (the bucket's for unused slots).
  """
  by_bucket = {}
  for i, p in enumerate(prepared):
    bucket = buckets_lib.pick_bucket(*p.model_input.shape[:2], buckets)
    by_bucket.setdefault(bucket, []).append(i)
  for bucket, members in by_bucket.items():
    for start in range(0, len(members), batch_size):
      chunk = members[start:start + batch_size]
      images = np.zeros((batch_size,) + bucket + (3,), np.float32)
      sizes = np.tile(np.asarray(bucket, np.int32), (batch_size, 1))
      for k, i in enumerate(chunk):
        h, w = prepared[i].model_input.shape[:2]
        images[k, :h, :w] = prepared[i].model_input
        sizes[k] = (h, w)
      yield chunk, images, sizes


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
  """

  def __init__(self, params, config, vocab, *, image_size=None, num_proposals=None,
               rpn_nms_thresh=None, final_nms_thresh=None, batch_size=1, devices=None):
    settings_lib.check_settings(image_size=image_size, num_proposals=num_proposals,
                                rpn_nms_thresh=rpn_nms_thresh,
                                final_nms_thresh=final_nms_thresh)
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
    num_devices = len(self.devices)
    self.batch_size = -(-batch_size // num_devices) * num_devices  # a multiple of the devices
    if self.image_size == config.image_size:
      self.buckets = tuple(tuple(int(v) for v in b) for b in config.buckets)
    else:
      self.buckets = buckets_lib.make_buckets(self.image_size)

    def run(params, images, image_sizes, rpn_nms_thresh, final_nms_thresh):
      return densecap.infer(params, images, image_sizes, config,
                            num_proposals=self.num_proposals, rpn_nms_thresh=rpn_nms_thresh,
                            final_nms_thresh=final_nms_thresh)

    self._infer = jax.jit(run)

  def put_batch(self, *arrays):
    """Batch arrays (leading axis: images) placed for the model: split over :attr:`devices`.

    A batch that does not divide evenly goes to every device whole.
    """
    return tuple(jax.device_put(a, self._split if len(a) % len(self.devices) == 0
                                else self._replicated) for a in arrays)

  def prepare(self, image):
    """One image -> :class:`PreparedImage`.

    Args:
      image: a path or a PIL image (turned upright by its EXIF orientation),
        or a uint8 NumPy array: ``(H, W)`` or ``(H, W, 1)`` grey, ``(H, W, 3)``
        RGB, ``(H, W, 4)`` RGBA (alpha dropped) -- see
        ``data.images.user_rgb``.

    Raises:
      TypeError: ``image`` is none of these.
      ValueError: an unreadable file (one line naming it), or an array of
        another dtype or shape.
    """
    rgb = images_lib.user_rgb(image)
    model_input = images_lib.prepare_test_image(rgb, self.image_size)
    display = np.clip(np.rint((model_input + images_lib.VGG_MEAN_BGR)[..., ::-1]), 0, 255)
    return PreparedImage(model_input, display.astype(np.uint8), tuple(rgb.shape[:2]))

  def predict_prepared(self, prepared, max_detections=None):
    """Runs the model on :class:`PreparedImage` s, batching images of one bucket together.

    Returns:
      One dict per image, in input order: ``boxes`` ``(N, 4)`` float32 xywh
      (1-based, in the resized image's pixels, unclipped, as the original's
      results.json), ``scores`` ``(N,)`` float32 objectness logits, descending,
      and ``captions`` (``N`` strings).
    """
    results = [None] * len(prepared)
    for chunk, images, sizes in batch_by_bucket(prepared, self.buckets, self.batch_size):
      boxes, scores, tokens, valid = jax.device_get(self._infer(
          self.params, *self.put_batch(images, sizes), self.rpn_nms_thresh,
          self.final_nms_thresh))
      boxes = np.asarray(boxes_lib.xcycwh_to_xywh(boxes))  # whole batch: one fixed shape
      for k, i in enumerate(chunk):
        keep = np.flatnonzero(valid[k])[:max_detections]
        results[i] = {
            "boxes": boxes[k][keep],
            "scores": scores[k][keep],
            "captions": vocab_lib.decode_captions(tokens[k][keep], self.vocab),
        }
    return results

  def predict(self, images, max_detections=None):
    """Captioned boxes for images (see ``prepare`` for what an image may be).

    Args:
      images: a list (or other iterable) of images, or one image: a path, a
        PIL image or a 2-D / 3-D array is taken as a list of one; a 4-D
        array as a batch of ``(H, W, C)`` images.
      max_detections: keep at most this many boxes per image (``None``: all).

    Returns:
      One dict per image, in order (see ``predict_prepared``).
    """
    if (isinstance(images, (str, os.PathLike, Image.Image))
        or (isinstance(images, np.ndarray) and images.ndim in (2, 3))):
      images = [images]
    elif isinstance(images, (bytes, bytearray)) or not hasattr(images, "__iter__"):
      raise TypeError(f"expected images (paths, PIL images or uint8 NumPy arrays), or a list of "
                      f"them, got {type(images).__name__}")
    return self.predict_prepared([self.prepare(image) for image in images], max_detections)


def load_model(path=None, **settings):
  """A :class:`DenseCapPredictor` for a model directory (default: the bundled demo model).

  Args:
    path: a model directory (``checkpoint.save_model``, a training directory,
      or a converted original checkpoint); ``None`` = the bundled model.
    **settings: ``image_size``, ``num_proposals``, ``rpn_nms_thresh``,
      ``final_nms_thresh``, ``batch_size``, ``devices`` (see
      :class:`DenseCapPredictor`).
  """
  params, config, vocab = checkpoint.load_model(path or bundled_model_path())
  return DenseCapPredictor(params, config, vocab, **settings)
