"""``benchmarks/caption_attributes.py``: scene truth against detections made up from it."""

import os
import sys

import numpy as np

from densecap_jax.data import synthetic_world as synthetic

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCHMARKS)
try:
  import caption_attributes  # pylint: disable=g-import-not-at-top
finally:
  sys.path.remove(BENCHMARKS)


def other(values, value):
  return next(v for v in values if v != value)


def test_objects_are_scored_on_the_scene_truth():
  scene = synthetic.make_scene(0, 5)
  objects = scene.objects
  assert len(objects) >= 4
  boxes = np.array([obj.box for obj in objects], np.float64)
  captions = [f"a {o.size} {o.color} {o.shape}" for o in objects]
  # The second object: the wrong colour; the third: the wrong shape and a texture word.
  o = objects[1]
  captions[1] = f"a {o.size} {other(tuple(synthetic.COLORS), o.color)} {o.shape}"
  o = objects[2]
  captions[2] = f"a {o.texture} {o.color} {other(synthetic.SHAPES, o.shape)}"
  # The last object's box is moved off by more than half its width: unmatched
  # (the objects do not overlap, so it matches no other object either).
  last = boxes[-1].copy()
  last[0] += 0.7 * last[2]
  boxes = np.concatenate([boxes[:-1], last[None]])
  found = {"scores": np.arange(len(objects), 0, -1.0), "boxes": boxes, "captions": captions}
  results = caption_attributes.score_scenes([scene], [found])
  n = len(objects)
  matched = n - 1
  assert (results["eligible"], results["matched"]) == (n, matched)
  assert results["colour_shape"] == (matched - 2) / matched
  assert results["colour"] == (matched - 1) / matched
  assert results["shape"] == (matched - 1) / matched
  # Every caption but the third names the size, right; only the third names the texture, right.
  assert results["size_named"] == (matched - 1) / matched
  assert results["size_right_of_named"] == 1.0
  assert results["texture_named"] == 1 / matched and results["texture_right_of_named"] == 1.0
  table = caption_attributes.table(results)
  assert f"| {n} | {matched} ({100 * matched / n:.1f} %) |" in table
  assert "| texture |" in table


def test_the_reference_names_every_attribute():
  obj = synthetic.make_scene(0, 5).objects[0]
  assert caption_attributes.object_reference(obj).split() == [obj.size, obj.texture, obj.color,
                                                              obj.shape]
