"""Tests for densecap_jax.data.region_labels (objects.json -> region_pretraining's labels)."""

import json
import os
import types

import numpy as np
import pytest

from densecap_jax.data import loader
from densecap_jax.data import region_labels
from densecap_jax.data import synthetic_world as synthetic
from densecap_jax.data import visual_genome
from tests import small_dataset

SIZE = small_dataset.LABELLED_SIZE
SEED = small_dataset.LABELLED_SEED
RENDER = small_dataset.LABELLED_RENDER


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return small_dataset.make_labelled_dataset(tmp_path_factory.mktemp("synthetic"))


def scene_labels(data, index):
  """The reference: the scene regenerated from its seed, its boxes resized as preprocess does."""
  image_id = int(os.path.splitext(data.filenames[index])[0])
  boxes, classes = synthetic.object_attributes(synthetic.make_scene(SEED, image_id, RENDER))
  boxes, _ = visual_genome.encode_boxes(
      boxes, np.tile(data.original_sizes[index], (len(boxes), 1)), SIZE)
  return boxes.astype(np.float32), classes


def test_synthetic_objects_file_gives_the_regenerated_scenes_labels(dataset):
  h5, js, objects = dataset
  data = loader.DenseCapH5(h5, js)
  heads, labels = region_labels.load_region_labels(objects, data, SIZE)
  assert heads == {"colour": 8, "shape": 7, "texture": 4, "size": 3}
  for index in range(data.num_images):
    boxes, classes = labels(index)
    want_boxes, want_classes = scene_labels(data, index)
    assert boxes.dtype == np.float32 and classes.dtype == np.int32
    assert boxes.shape == (len(want_boxes), 4) and len(want_boxes) >= 1
    np.testing.assert_array_equal(boxes, want_boxes)
    np.testing.assert_array_equal(classes, want_classes)


def test_synthetic_labels_are_the_preprocessed_object_boxes(dataset):
  h5, js, objects = dataset
  data = loader.DenseCapH5(h5, js)
  _, labels = region_labels.load_region_labels(objects, data, SIZE)
  words = {i: w for i, w in enumerate(data.vocab) if w}
  checked = 0
  for index in range(data.num_images):
    boxes, classes = labels(index)
    gt_boxes, gt_labels = data.regions(index)
    captions = [" ".join(words[t] for t in row if t) for row in gt_labels]
    for box, (colour, shape, _, _) in zip(boxes, classes):
      # Every object has captions at its own box (as preprocess stored it) naming its colour and shape.
      same = [c for b, c in zip(gt_boxes, captions) if tuple(b) == tuple(box)]
      assert same, (index, box)
      assert any(synthetic.ATTRIBUTES["colour"][colour] in c.split() and
                 synthetic.SHAPES[shape] in c.split() for c in same)
      checked += 1
  assert checked >= 2 * data.num_images


def fake_data():
  """Two images: 1.jpg of 50 x 100 (H0 x W0) and 7.jpg of 20 x 20."""
  return types.SimpleNamespace(filenames=["images/1.jpg", "7.jpg"],
                               original_sizes=np.asarray([[50, 100], [20, 20]], np.int32))


def write(tmp_path, content):
  path = tmp_path / "objects.json"
  path.write_text(content if isinstance(content, str) else json.dumps(content))
  return str(path)


GOOD = {"attributes": {"colour": ["red", "blue"], "kind": ["a", "b", "c"]},
        "images": {"1": [{"x": 11, "y": 1, "width": 20, "height": 10, "colour": "blue",
                          "kind": "c"},
                         {"x": 1, "y": 41, "width": 100, "height": 10, "kind": "a"}],
                   "99": [{"x": 1, "y": 1, "width": 1, "height": 1, "colour": "red"}]}}


def test_hand_worked_file(tmp_path):
  heads, labels = region_labels.load_region_labels(write(tmp_path, GOOD), fake_data(), 64)
  assert list(heads.items()) == [("colour", 2), ("kind", 3)]
  boxes, classes = labels(0)
  # s = 64 / 100: x = round(0.64 * 10 + 1) = 7, y = 1, w = round(12.8) = 13, h = round(6.4) = 6,
  # centre (7 + 6, 1 + 3); second: x = 1, y = round(0.64 * 40 + 1) = 27, w = 64, h = 6, then the
  # clamp w <= 64 - 1 = 63, centre (1 + 31, 27 + 3).
  np.testing.assert_array_equal(boxes, [[13, 4, 13, 6], [32, 30, 63, 6]])
  np.testing.assert_array_equal(classes, [[1, 2], [-1, 0]])
  boxes, classes = labels(1)  # 7.jpg is not in the file: no regions
  assert boxes.shape == (0, 4) and boxes.dtype == np.float32
  assert classes.shape == (0, 2) and classes.dtype == np.int32


@pytest.mark.parametrize("content, message", [
    ("{", "not a region labels file"),
    ([], 'the file must be an object {"attributes": ..., "images": ...}, got list'),
    ({"images": {}}, '"attributes" must be an object, got NoneType'),
    ({"attributes": {"colour": ["red"]}, "images": []}, '"images" must be an object, got list'),
    ({"attributes": {"colour": "red"}, "images": {}},
     '"attributes"."colour" must be a non-empty list of strings, got \'red\''),
    ({"attributes": {"colour": ["red", "red"]}, "images": {}}, "a list of distinct values"),
    ({"attributes": {}, "images": {}}, '"attributes" must be at least one attribute'),
    ({"attributes": {"colour": ["red"]}, "images": {"1": {}}},
     '"images"."1" must be a list of objects, got dict'),
    ({"attributes": {"colour": ["red"]}, "images": {"1": [{"x": 1, "y": 1, "width": "3",
                                                          "height": 2}]}},
     '"images"."1"[0]."width" must be a number, got \'3\''),
    ({"attributes": {"colour": ["red"]}, "images": {"1": [{"x": 1, "y": 1, "width": 3,
                                                          "height": 2, "colour": "green"}]}},
     '"images"."1"[0]."colour" must be one of red, got \'green\''),
    ({"attributes": {"colour": ["red"]}, "images": {"1": [{"x": 1, "y": 1, "width": 3,
                                                          "height": 2, "shape": "star"}]}},
     '"images"."1"[0]."shape" must be one of the attributes colour, got \'shape\''),
    ({"attributes": {"colour": ["red"]}, "images": {"1": [{"x": 1, "y": 1, "width": 3,
                                                          "height": 2}, {"x": 90, "y": 45,
                                                          "width": 12, "height": 2}]}},
     '"images"."1"[1] box x=90 y=45 width=12 height=2 must lie inside its image of 100x50'),
    ({"attributes": {"colour": ["red"]}, "images": {"7": [{"x": 0, "y": 1, "width": 3,
                                                          "height": 2}]}},
     '"images"."7"[0] box x=0 y=1'),
])
def test_malformed_files_are_one_line_errors(tmp_path, content, message):
  path = write(tmp_path, content)
  with pytest.raises(ValueError) as raised:
    region_labels.load_region_labels(path, fake_data(), 64)
  text = str(raised.value)
  assert text.startswith(path + ": ") and message in text and "\n" not in text, text


def test_missing_file(tmp_path):
  with pytest.raises(ValueError, match="region labels file not found"):
    region_labels.load_region_labels(str(tmp_path / "nope.json"), fake_data(), 64)
