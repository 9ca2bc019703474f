"""Do a model's region codes carry what its captions should say? A check on synthetic scenes.

The objects of the first ``--images`` scenes of the test split of the
dataset ``tools/make_bundled_model.py`` renders (``synthetic.split_ids(3000,
0)``; the scenes are rendered again as arrays, not read from JPEG files) are
captioned at their ground-truth boxes (``caption_regions(...,
with_codes=True)``). Then:

1. **Probes**: for colour, shape, texture and size, a ridge regression from
   the fc7 code (standardised per dimension) to the one-hot attribute, fit on
   the first 70 % of the objects and scored on the rest, against the majority
   class of the rest. A code that does not carry the attribute scores at the
   majority rate. 200 scenes give about 800 objects, so the fit has more
   objects than the code has dimensions.
2. **Captions**: the share of objects whose greedy caption names the
   object's own colour (shape, ...).
3. **Language model**: the per-token log-likelihood (``score_codes``) of one
   ground-truth caption of each object given its own code and given the
   other objects' codes, and the median rank of the own object among all of
   them for its caption (chance: half the objects).

With ``--layers`` it probes the backbone instead, layer by layer: each
object's descriptor at a conv layer is the mean and the max of the layer's
ReLU output over the cells its box covers (the scene prepared as at test
time, ``prepare_test_image``), and the same probes say where along the
network an attribute is kept or lost.

  python benchmarks/region_codes.py [--model DIR] [--images 200] [--layers]

Prints markdown tables.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from densecap_jax import model_dir
from densecap_jax import predictor
from densecap_jax.data import images as images_lib
from densecap_jax.data import synthetic_world as synthetic
from densecap_jax.evaluation import attribute_accuracy
from densecap_jax.models import densecap

DATASET_IMAGES, DATASET_SEED = 3000, 0  # tools/make_bundled_model.py's defaults
ATTRIBUTES = {name: (synthetic.ATTRIBUTE_FIELDS[name], values)  # {name: (field, values)}
              for name, values in synthetic.ATTRIBUTES.items()}
FIT_SHARE = 0.7
RIDGE = 10.0  # on codes standardised over the fitted objects


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default=None, help="model directory (default: the bundled one)")
  parser.add_argument("--images", type=int, default=200, help="test scenes used")
  parser.add_argument("--seed", type=int, default=0, help="picks each object's caption")
  parser.add_argument("--layers", action="store_true",
                      help="probe every conv layer of the backbone instead of the codes")
  return parser.parse_args(argv)


def object_captions(scene, obj):
  """The scene's captions whose box is the object's own box (its one-object captions)."""
  return [phrase for phrase, box in scene.regions if tuple(box) == tuple(obj.box)]


def probe_accuracy(codes, labels, num_classes):
  """Held-out accuracy of a ridge regression from codes to one-hot labels, and the majority rate."""
  fit = np.arange(len(labels)) < FIT_SHARE * len(labels)
  codes = np.asarray(codes, np.float64)
  mean, std = codes[fit].mean(axis=0), codes[fit].std(axis=0) + 1e-6
  x = np.concatenate([(codes - mean) / std, np.ones((len(codes), 1))], axis=1)
  y = np.eye(num_classes)[labels]
  weights = np.linalg.solve(x[fit].T @ x[fit] + RIDGE * np.eye(x.shape[1]), x[fit].T @ y[fit])
  predicted = (x[~fit] @ weights).argmax(axis=1)
  majority = np.bincount(labels[~fit], minlength=num_classes).max() / max((~fit).sum(), 1)
  return float(np.mean(predicted == labels[~fit])), float(majority)


def test_scenes(num_images):
  test_ids = synthetic.split_ids(DATASET_IMAGES, DATASET_SEED)["test"][:num_images]
  return [synthetic.make_scene(DATASET_SEED, image_id) for image_id in test_ids]


def box_cells(box, scale, stride, cells):
  """Rows and columns ``(r0, r1, c0, c1)`` of the ``stride``-pixel cells an xywh box covers.

  ``box`` is 1-based xywh in the scene's pixels, ``scale`` maps them to the
  model's input; at least one cell, inside the ``cells = (rows, cols)`` grid.
  """
  x, y, w, h = box
  def span(start, length, limit):
    first = min(int(np.floor((start - 1) * scale / stride)), limit - 1)
    last = int(np.ceil((start - 1 + length) * scale / stride))
    return first, min(max(last, first + 1), limit)
  return span(y, h, cells[0]) + span(x, w, cells[1])


def layer_descriptors(model_path, scenes):
  """``({layer: (n, 2C) mean and max descriptors}, objects)`` of the scenes' objects.

  Layers are ``conv1_1`` ... ``conv5_3`` of the model's backbone (ReLU
  outputs, keyed in network order); ``objects`` lists the ``n``
  ``SceneObject``s in the descriptors' order.
  """
  params, config, _ = model_dir.load_model(model_path)
  model = densecap.build_model(config)
  apply = jax.jit(lambda p, x: model.apply(
      {"params": p}, x, None, method=densecap.DenseCap.features, capture_intermediates=True,
      mutable=["intermediates"])[1]["intermediates"]["backbone"])
  names = [f"conv{b}_{i}" for b, block in enumerate(config.cnn_widths, 1)
           for i in range(1, len(block) + 1)]
  out, objects = {name: [] for name in names}, []
  for scene in scenes:
    rgb = synthetic.render_scene(scene)[0]
    image = images_lib.prepare_test_image(rgb, config.image_size)
    scale = image.shape[0] / rgb.shape[0]
    layers = apply(params, jnp.asarray(image)[None])
    for name in names:
      feature = np.maximum(np.asarray(layers[name]["__call__"][0][0]), 0)
      stride = image.shape[0] / feature.shape[0]
      for obj in scene.objects:
        r0, r1, c0, c1 = box_cells(obj.box, scale, stride, feature.shape[:2])
        cells = feature[r0:r1, c0:c1].reshape(-1, feature.shape[-1])
        out[name].append(np.concatenate([cells.mean(axis=0), cells.max(axis=0)]))
    objects += scene.objects
  return {name: np.stack(v) for name, v in out.items()}, objects


def print_layer_probes(model_path, num_images):
  descriptors, objects = layer_descriptors(model_path, test_scenes(num_images))
  print(f"{len(objects)} objects of {num_images} test scenes; probe accuracy of each layer's "
        f"mean and max over the object's box\n")
  print("| layer | channels | " + " | ".join(ATTRIBUTES) + " |")
  print("|---|---:|" + "---:|" * len(ATTRIBUTES))
  labels = {name: np.array([values.index(getattr(obj, field)) for obj in objects])
            for name, (field, values) in ATTRIBUTES.items()}
  for layer, x in descriptors.items():
    cells = [f"{probe_accuracy(x, labels[name], len(values))[0]:.3f}"
             for name, (_, values) in ATTRIBUTES.items()]
    print(f"| {layer} | {x.shape[1] // 2} | " + " | ".join(cells) + " |")


def collect(model, num_images):
  """``(objects, codes, captions)`` of the first test scenes' objects at their boxes.

  ``objects``: ``(scene, SceneObject)`` pairs; ``codes``: ``(n, fc_dim)``
  float32 fc7 codes; ``captions``: the ``n`` greedy captions, in that order.
  """
  scenes = test_scenes(num_images)
  images = [synthetic.render_scene(scene)[0] for scene in scenes]
  boxes = [[list(obj.box) for obj in scene.objects] for scene in scenes]
  results = model.caption_regions(images, boxes, with_codes=True)
  objects = [(scene, obj) for scene in scenes for obj in scene.objects]
  codes = np.concatenate([r["codes"] for r in results])
  captions = [c for r in results for c in r["captions"]]
  return objects, codes, captions


def main(argv=None):
  args = parse_args(argv)
  if args.layers:
    print_layer_probes(predictor.model_path(args.model), args.images)
    return
  model = predictor.load_model(args.model)
  objects, codes, captions = collect(model, args.images)
  print(f"{len(objects)} objects of {args.images} test scenes, codes of size {codes.shape[1]}\n")
  print("| attribute | classes | probe accuracy | majority class | greedy captions naming it |")
  print("|---|---|---|---|---|")
  for name, (field, values) in ATTRIBUTES.items():
    labels = np.array([values.index(getattr(obj, field)) for _, obj in objects])
    accuracy, majority = probe_accuracy(codes, labels, len(values))
    words = synthetic.ATTRIBUTE_WORDS[name]  # "with dots" names dotted
    named = np.mean([getattr(obj, field) in attribute_accuracy.named_values(caption, words)
                     for (_, obj), caption in zip(objects, captions)])
    print(f"| {name} | {len(values)} | {accuracy:.3f} | {majority:.3f} | {named:.3f} |")
  rng = np.random.default_rng(args.seed)
  phrases = [str(rng.choice(object_captions(scene, obj))) for scene, obj in objects]
  means = model.score_codes(codes, phrases)["mean_log_likelihood"]  # (objects, phrases)
  own = np.diag(means)
  others = (means.sum(axis=0) - own) / (len(own) - 1)
  ranks = (means > own[None, :]).sum(axis=0) + 1
  print(f"\n| per-token log-likelihood of an object's caption | value |\n|---|---|\n"
        f"| given its own code | {own.mean():.3f} |\n| given another object's code | "
        f"{others.mean():.3f} |\n| median rank of the own object (of {len(own)}; chance "
        f"{(len(own) + 1) / 2:g}) | {np.median(ranks):g} |\n"
        f"| distinct greedy captions | {len(set(captions))} |")


if __name__ == "__main__":
  main()
