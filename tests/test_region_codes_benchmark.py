"""``benchmarks/region_codes.py``: its probe and its choice of each object's captions."""

import os
import sys

import numpy as np

from densecap_jax.data import synthetic_world as synthetic

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCHMARKS)
try:
  import region_codes  # pylint: disable=g-import-not-at-top
finally:
  sys.path.remove(BENCHMARKS)


def test_probe_reads_an_attribute_the_codes_carry():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, 400)
  codes = np.concatenate([np.eye(5)[labels] * 3, rng.normal(size=(400, 20))], axis=1)
  accuracy, majority = region_codes.probe_accuracy(codes.astype(np.float32), labels, 5)
  assert accuracy > 0.95
  assert majority == np.bincount(labels[280:], minlength=5).max() / 120


def test_probe_is_near_the_majority_rate_for_codes_that_do_not_carry_it():
  rng = np.random.default_rng(1)
  labels = np.where(rng.random(600) < 0.5, 0, rng.integers(1, 4, 600))
  accuracy, majority = region_codes.probe_accuracy(rng.normal(size=(600, 10)), labels, 4)
  assert abs(accuracy - majority) < 0.1
  assert 0.4 < majority < 0.6


def test_object_captions_are_those_of_the_objects_own_box():
  scene = synthetic.make_scene(0, 5)
  for obj in scene.objects:
    captions = region_codes.object_captions(scene, obj)
    assert len(captions) == 2, obj  # the generator writes two captions per object
    for caption in captions:  # a one-object caption names the object's shape and colour
      assert obj.shape in caption.split() and obj.color in caption.split(), caption
