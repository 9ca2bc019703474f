"""Do a model's captions name the colour and shape of the objects it detects? Synthetic test scenes.

The first ``--images`` scenes of the test split of the dataset
``tools/make_bundled_model.py`` renders (``synthetic.split_ids(3000, 0)``;
rendered again as arrays, not read from JPEG files) go through the model's
full detection (``predictor.predict``, ``--num_proposals`` proposals, the
model's NMS thresholds). The scene's truth gives each object's colour,
shape, texture, size and tight box; each object is one ground-truth region
(no merging) whose reference names all four, and
``evaluation.attribute_accuracy`` matches it with the highest-scoring
detection at IoU >= 0.5 and reads that detection's caption.

  python benchmarks/caption_attributes.py [--model DIR] [--images 300] [--num_proposals 300]

Prints a markdown table: the objects, the share a detection matched, the
share of matched objects whose caption names their colour and shape right
(and no other colour or shape), and per attribute: the share of matched
objects whose caption names it right, names it at all, and names it right
among those that name it.
"""

import argparse

import numpy as np

from densecap_jax import predictor
from densecap_jax.data import synthetic_world as synthetic
from densecap_jax.evaluation import attribute_accuracy

import region_codes  # pylint: disable=g-import-not-at-top,g-bad-import-order

JOINT = ("colour", "shape")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default=None, help="model directory (default: the bundled one)")
  parser.add_argument("--images", type=int, default=300, help="test scenes used")
  parser.add_argument("--num_proposals", type=int, default=300, help="proposals kept after the RPN")
  return parser.parse_args(argv)


def object_reference(obj):
  """One reference naming every attribute of a ``SceneObject``, e.g. ``"small dotted red star"``."""
  return " ".join(getattr(obj, field) for field in ("size", "texture", "color", "shape"))


def score_scenes(scenes, detections):
  """The ``AttributeAccuracy`` results of detections on scenes.

  Args:
    scenes: ``synthetic.Scene`` s.
    detections: per scene, a dict with ``scores`` ``(N,)``, ``boxes``
      ``(N, 4)`` xywh in the scene's pixels and ``captions`` (as
      ``predictor.predict`` returns).
  """
  measure = attribute_accuracy.AttributeAccuracy(synthetic.ATTRIBUTE_WORDS, required=JOINT,
                                                 merge_thresh=None)
  for scene, found in zip(scenes, detections):
    gt_boxes = np.array([obj.box for obj in scene.objects], np.float64).reshape(-1, 4)
    measure.add_result(found["scores"], found["boxes"], found["captions"], gt_boxes,
                       [object_reference(obj) for obj in scene.objects], box_format="xywh")
  return measure.evaluate()


def score_test_scenes(model, test_ids, seed=region_codes.DATASET_SEED):
  """:func:`score_scenes` of ``model``'s detections on the synthetic scenes ``test_ids``."""
  scenes = [synthetic.make_scene(seed, image_id) for image_id in test_ids]
  return score_scenes(scenes, model.predict([synthetic.render_scene(scene)[0] for scene in scenes]))


def table(results):
  """The markdown table of :func:`score_scenes`' results."""
  lines = ["| objects | matched at IoU >= 0.5 | colour + shape right |", "|---:|---:|---:|",
           f"| {results['eligible']} | {results['matched']} "
           f"({100 * results['matched_share']:.1f} %) | "
           f"{100 * results[attribute_accuracy.joint_name(JOINT)]:.1f} % |", "",
           "| attribute | right | named | right of named |", "|---|---:|---:|---:|"]
  for name in region_codes.ATTRIBUTES:
    lines.append(f"| {name} | {100 * results[name]:.1f} % | {100 * results[name + '_named']:.1f} % "
                 f"| {100 * results[name + '_right_of_named']:.1f} % |")
  return "\n".join(lines)


def main(argv=None):
  args = parse_args(argv)
  model = predictor.load_model(args.model, num_proposals=args.num_proposals)
  test_ids = synthetic.split_ids(region_codes.DATASET_IMAGES,
                                 region_codes.DATASET_SEED)["test"][:args.images]
  results = score_test_scenes(model, test_ids)
  print(f"{len(test_ids)} test scenes, {args.num_proposals} proposals\n")
  print(table(results))


if __name__ == "__main__":
  main()
