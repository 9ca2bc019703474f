"""Inference over several local devices: each batch split over them, as on one device.

On CPU a convolution over a batch of two may round differently from two of
one, so the comparison is at the same images per device (one).
"""

import copy
import os

import jax
import numpy as np

from densecap_jax import predictor
from densecap_jax.data import images as images_lib
from densecap_jax import engine
from densecap_jax import features


def _examples():
  """A bundled example and its mirror image: two images of one shape bucket (one compile)."""
  folder = predictor.bundled_examples_path()
  rgb = images_lib.load_rgb(os.path.join(folder, sorted(os.listdir(folder))[0]))
  return [rgb, np.ascontiguousarray(rgb[:, ::-1])]


def test_predict_and_features_on_eight_devices_equal_one_device():
  assert jax.local_device_count() == 8
  assert engine.default_devices() == jax.local_devices()[:1]  # CPU: one device by default
  one = predictor.load_model(batch_size=1)
  eight = predictor.load_model(batch_size=1, devices=jax.local_devices())
  assert one.batch_size == 1 and eight.batch_size == 8  # a multiple of the devices
  paths = _examples()  # 2 images: one padded batch of 8, or two batches of one
  for a, b in zip(one.predict(paths), eight.predict(paths)):
    np.testing.assert_array_equal(a["boxes"], b["boxes"])
    np.testing.assert_array_equal(a["scores"], b["scores"])
    assert a["captions"] == b["captions"]
  prepared = [one.prepare(p) for p in paths]
  rows = [features.FeatureExtractor(m, 5).detections(prepared) for m in (one, eight)]
  for a, b in zip(*rows):
    for key in ("boxes", "scores", "feats"):
      np.testing.assert_array_equal(a[key], b[key])


def test_a_copy_of_the_predictor_has_its_own_settings_and_the_same_programs():
  model = predictor.load_model(batch_size=1, devices=jax.local_devices())
  copied = copy.copy(model)
  copied.batch_size, copied.final_nms_thresh = 1, 0.5  # as the server pads a batch of one
  assert (model.batch_size, model.final_nms_thresh) == (8, 0.3)
  assert copied.runner is not model.runner and copied.runner.batch_size == 1
  assert copied.params is model.params
  assert copied._infer is model._infer  # pylint: disable=protected-access
