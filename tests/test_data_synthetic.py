"""Tests for densecap_jax.data.synthetic: determinism, caption / box consistency, preprocessing."""

import json
import os

import h5py
import numpy as np
import pytest

from densecap_jax.configs import buckets
from densecap_jax.data import loader
from densecap_jax.data import visual_genome as preprocess
from densecap_jax.data import synthetic_world as synthetic
from densecap_jax.data import vocab
from densecap_jax.commands import synthetic as synthetic_command

NUMBER_WORDS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
RELATIONS = ("above", "below", "to the left of", "to the right of")


def _files(folder):
  out = {}
  for root, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, folder)] = f.read()
  return out


def test_dataset_deterministic_by_seed(tmp_path):
  for name, seed in [("a", 3), ("b", 3), ("c", 4)]:
    synthetic.generate_dataset(str(tmp_path / name), 6, seed, image_size=64, progress=False)
  a, b, c = (_files(tmp_path / n) for n in "abc")
  assert sorted(a) == ["densecap_splits.json", "image_data.json"] + [
      f"images/{i}.jpg" for i in sorted(range(1, 7), key=str)] + [
          "objects.json", "region_descriptions.json"]
  assert a == b
  assert a["region_descriptions.json"] != c["region_descriptions.json"]
  # Scene i depends only on (seed, i), not on how many images are made.
  assert synthetic.make_scene(3, 2, 64) == synthetic.make_scene(3, 2, 64)
  synthetic.generate_dataset(str(tmp_path / "d"), 3, 3, image_size=64, progress=False)
  assert _files(tmp_path / "d")["images/2.jpg"] == a["images/2.jpg"]


def test_objects_json_lists_each_scenes_objects(tmp_path):
  paths = synthetic.generate_dataset(str(tmp_path), 4, 5, image_size=64, progress=False)
  assert paths["objects"] == str(tmp_path / "objects.json")
  with open(paths["objects"]) as f:
    objects = json.load(f)
  assert list(objects["attributes"]) == ["colour", "shape", "texture", "size"]
  assert objects["attributes"]["colour"] == ["red", "green", "blue", "yellow", "purple",
                                             "orange", "pink", "cyan"]
  assert objects["attributes"]["size"] == ["small", "medium", "large"]
  assert sorted(objects["images"]) == ["1", "2", "3", "4"]
  with open(paths["region_data"]) as f:
    regions = {entry["id"]: entry["regions"] for entry in json.load(f)}
  for image_id in range(1, 5):
    scene = synthetic.make_scene(5, image_id, 64)
    listed = objects["images"][str(image_id)]
    assert listed == [{"x": o.box[0], "y": o.box[1], "width": o.box[2], "height": o.box[3],
                       "colour": o.color, "shape": o.shape, "texture": o.texture,
                       "size": o.size} for o in scene.objects]
    # every object's box is a captioned region's box, and its caption names its colour
    for obj in listed:
      captions = [r["phrase"] for r in regions[image_id] if (r["x"], r["y"], r["width"],
                  r["height"]) == (obj["x"], obj["y"], obj["width"], obj["height"])]
      assert captions and all(obj["colour"] in c for c in captions), (obj, captions)
  # written again from the seed alone, the file is the same
  synthetic.write_objects_json(str(tmp_path / "again"), 4, 5, image_size=64)
  assert (tmp_path / "again" / "objects.json").read_bytes() == (
      tmp_path / "objects.json").read_bytes()


def _tight_box(mask):
  ys, xs = np.nonzero(mask)
  return (xs.min() + 1, ys.min() + 1, xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)


def _union(boxes):
  x1 = min(b[0] for b in boxes)
  y1 = min(b[1] for b in boxes)
  return (x1, y1, max(b[0] + b[2] for b in boxes) - x1, max(b[1] + b[3] for b in boxes) - y1)


def _centre(box):
  return box[0] + box[2] / 2, box[1] + box[3] / 2


def _find(objects, color, shape):
  return [o for o in objects if o.color == color and o.shape == shape]


def _check_region(scene, phrase, box):
  """Checks one caption against the scene's objects, read from the words alone."""
  words = phrase.split()
  objs = scene.objects
  if phrase.endswith("background"):        # "four shapes on a dark background"
    assert NUMBER_WORDS[words[0]] == len(objs)
    assert box == (1, 1, scene.width, scene.height)
    assert words[-2] == scene.background["tone"]
    return
  if words[0] in NUMBER_WORDS:             # "three yellow stars"
    members = _find(objs, words[1], words[2][:-2] if words[2] == "crosses" else words[2][:-1])
    assert len(members) == NUMBER_WORDS[words[0]]
    assert box == _union([m.box for m in members])
    return
  rel = next((r for r in RELATIONS if f" {r} " in phrase), None)
  if rel:                                  # "a blue square above a green triangle"
    left, right = phrase.split(f" {rel} ")
    a_color, a_shape = left.split()[1:]
    b_color, b_shape = right.split()[1:]
    pairs = [(a, b) for a in _find(objs, a_color, a_shape) for b in _find(objs, b_color, b_shape)
             if a is not b and box == _union([a.box, b.box])]
    assert pairs, phrase

    def holds(a, b):
      (ax, ay), (bx, by) = _centre(a.box), _centre(b.box)
      dominant_y = abs(ay - by) >= abs(ax - bx)
      return {"above": dominant_y and ay < by, "below": dominant_y and ay > by,
              "to the left of": not dominant_y and ax < bx,
              "to the right of": not dominant_y and ax > bx}[rel]

    assert any(holds(a, b) for a, b in pairs), phrase
    return
  matches = [o for o in objs if o.box == box]  # one object
  assert len(matches) == 1, phrase
  obj = matches[0]
  assert obj.color in words and obj.shape in words
  for attribute in (synthetic.SIZES, synthetic.TEXTURES):
    named = [w for w in words if w in attribute]
    assert named in ([], [obj.size if attribute is synthetic.SIZES else obj.texture]), phrase
  noun = [w for w in words if w in synthetic.TEXTURE_NOUNS.values()]
  assert noun in ([], [synthetic.TEXTURE_NOUNS.get(obj.texture)]), phrase
  for name, field in synthetic.ATTRIBUTE_FIELDS.items():  # the measure reads what it names
    values = synthetic.ATTRIBUTE_WORDS[name]
    named = {values[w] for w in words if w in values}
    assert named in (set(), {getattr(obj, field)}), phrase
  cx, cy = _centre(box)
  if "left" in words:
    assert cx < scene.width / 2
  if "right" in words:
    assert cx > scene.width / 2
  if "top" in words:
    assert cy < scene.height / 2
  if "bottom" in words:
    assert cy > scene.height / 2


def test_captions_and_boxes_match_the_drawing():
  all_words = set()
  for image_id in range(1, 21):
    scene = synthetic.make_scene(7, image_id, 96)
    assert 77 <= max(scene.width, scene.height) <= 96
    rgb, masks = synthetic.render_scene(scene)
    assert rgb.shape == (scene.height, scene.width, 3)
    background = synthetic.render_background(scene.background, scene.height, scene.width)
    union = np.zeros(rgb.shape[:2], bool)
    for obj, mask in zip(scene.objects, masks):
      assert mask.any() and not (mask & union).any()  # objects do not overlap
      union |= mask
      assert obj.box == _tight_box(mask)
      if obj.texture == "solid":
        assert (rgb[mask] == synthetic.COLORS[obj.color]).all()
      else:
        assert len(np.unique(rgb[mask], axis=0)) == 2
    np.testing.assert_array_equal(rgb[~union], background[~union])  # nothing drawn outside
    assert len(scene.regions) >= 2
    for phrase, box in scene.regions:
      assert 3 <= len(phrase.split()) <= 10, phrase
      _check_region(scene, phrase, box)
      all_words.update(phrase.split())
  assert len(all_words) >= 35
  assert {"circle", "square", "triangle", "star", "striped", "dotted", "above"} <= all_words


def test_through_preprocess(tmp_path):
  paths = synthetic.generate_dataset(str(tmp_path / "syn"), 12, 0, image_size=96, progress=False)
  counts = preprocess.preprocess(paths["region_data"], paths["image_dir"], paths["split_json"],
                                 str(tmp_path / "syn.h5"), str(tmp_path / "syn.json"),
                                 image_size=64, min_token_instances=1, num_workers=2,
                                 progress=False, log=lambda line: None)
  regions = json.loads(open(paths["region_data"]).read())
  splits = json.loads(open(paths["split_json"]).read())
  image_data = json.loads(open(paths["image_data"]).read())
  assert sorted(splits["train"] + splits["val"] + splits["test"]) == list(range(1, 13))
  assert min(len(splits["val"]), len(splits["test"])) >= 1
  phrases = [r["phrase"] for e in regions for r in e["regions"]]
  assert counts["images_kept"] == 12 and counts["regions_kept"] == len(phrases)
  words = vocab.load_vocab(str(tmp_path / "syn.json"))
  assert "<UNK>" not in words
  with h5py.File(tmp_path / "syn.h5", "r") as f:
    decoded = [vocab.decode_sequence(row, words) for row in f["labels"][()]]
    assert decoded == [" ".join(vocab.tokenize_phrase(p)) for p in phrases]
    np.testing.assert_array_equal(f["original_widths"][()], [d["width"] for d in image_data])
    np.testing.assert_array_equal(f["original_heights"][()], [d["height"] for d in image_data])
    assert max(f["image_heights"][0], f["image_widths"][0]) in (63, 64)


def test_cli(tmp_path, capsys):
  synthetic_command.main(["--out", str(tmp_path), "--num_images", "2", "--seed", "1", "--image_size", "48"])
  assert "wrote 2 images" in capsys.readouterr().out
  assert sorted(os.listdir(tmp_path / "images")) == ["1.jpg", "2.jpg"]
  with pytest.raises(SystemExit, match="num_images must be positive"):
    synthetic_command.main(["--out", str(tmp_path), "--num_images", "0"])


def test_few_hundred_images_end_to_end(tmp_path):
  paths = synthetic.generate_dataset(str(tmp_path / "syn"), 300, 1, image_size=128, progress=False)
  h5_path, json_path = str(tmp_path / "d.h5"), str(tmp_path / "d.json")
  counts = preprocess.preprocess(paths["region_data"], paths["image_dir"], paths["split_json"],
                                 h5_path, json_path, image_size=128, progress=False,
                                 log=lambda line: None)
  assert counts["images_kept"] == 300
  data = loader.DenseCapH5(h5_path, json_path)
  assert 40 <= data.vocab_size <= 70 and "<UNK>" not in data.vocab  # every word seen >= 15 times
  seen = []
  for batch in loader.make_batches(data, "train", batch_size=8, max_boxes=32, num_devices=8,
                                   num_epochs=1):
    assert batch["image"].shape[:2] == (8, 1)
    assert tuple(batch["image"].shape[2:4]) in buckets.make_buckets(128)
    seen += [int(i) for i in batch["image_index"].reshape(-1) if i >= 0]
  assert sorted(seen) == data.split_indices("train").tolist()
