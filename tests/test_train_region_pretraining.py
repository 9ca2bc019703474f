"""Tests for densecap_jax.train.region_pretraining."""

import json
import os

import jax
import numpy as np
import pytest

from densecap_jax import model_dir
from densecap_jax.data import loader
from densecap_jax.data import region_labels
from densecap_jax.data import synthetic_world as synthetic
from densecap_jax.train import region_pretraining
from densecap_jax.train.configs import tiny
from tests import small_dataset

SIZE = small_dataset.LABELLED_SIZE
SEED = small_dataset.LABELLED_SEED
RENDER = small_dataset.LABELLED_RENDER


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return small_dataset.make_labelled_dataset(tmp_path_factory.mktemp("synthetic"))


def test_object_attributes_number_each_object_in_attribute_order():
  scene = synthetic.make_scene(SEED, 4)
  boxes, classes = synthetic.object_attributes(scene)
  assert list(synthetic.ATTRIBUTES) == ["colour", "shape", "texture", "size"]
  assert boxes.shape == (len(scene.objects), 4) and classes.shape == (len(scene.objects), 4)
  for obj, box, (colour, shape, texture, size) in zip(scene.objects, boxes, classes):
    assert tuple(box) == obj.box
    assert (synthetic.ATTRIBUTES["colour"][colour], synthetic.SHAPES[shape],
            synthetic.TEXTURES[texture], list(synthetic.SIZES)[size]) == (
                obj.color, obj.shape, obj.texture, obj.size)


def test_assemble_pads_images_regions_and_examples(dataset):
  data = loader.DenseCapH5(*dataset[:2])

  def region_labels(index):
    return np.asarray([[10, 12, 8, 6], [20, 20, 4, 4], [5, 5, 3, 3]], np.float32)[:index + 1], \
        np.asarray([[1, 2], [0, -1], [3, 3]])[:index + 1]

  batch = region_pretraining.assemble(data, np.asarray([0, 2, -1]), (SIZE, SIZE), region_labels,
                                      max_regions=2, num_heads=2)
  assert batch["image"].shape == (3, 3, SIZE, SIZE) and batch["image"].dtype == np.uint8
  height, width = data.image_sizes[2]
  np.testing.assert_array_equal(batch["image"][1, :, :height, :width], data.read_image_chw(2))
  assert not batch["image"][2].any()
  np.testing.assert_array_equal(batch["image_size"], [data.image_sizes[0], data.image_sizes[2],
                                                      [SIZE, SIZE]])
  np.testing.assert_array_equal(batch["labels"][0], [[1, 2], [-1, -1]])
  np.testing.assert_array_equal(batch["labels"][1], [[1, 2], [0, -1]])  # the first 2 of 3
  np.testing.assert_array_equal(batch["labels"][2], -1)
  np.testing.assert_array_equal(batch["boxes"][1], [[10, 12, 8, 6], [20, 20, 4, 4]])


def test_pretraining_trains_backbone_and_fc_layers_only_and_writes_a_model(dataset, tmp_path):
  data = loader.DenseCapH5(*dataset[:2])
  config = tiny.get_config().model
  config.image_size, config.buckets, config.vocab_size = SIZE, ((SIZE, SIZE),), data.vocab_size
  heads, labels = region_labels.load_region_labels(dataset[2], data, SIZE)
  workdir = str(tmp_path / "pretrain")
  out = region_pretraining.pretrain(
      config, data, labels, heads, workdir,
      steps=40, batch_size=4, learning_rate=3e-3, warmup_steps=5, log_every=20, progress=False)
  assert out == region_pretraining.model_path(workdir)
  params, saved_config, vocab = model_dir.load_model(out)
  assert vocab == data.vocab and saved_config.vocab_size == data.vocab_size
  init = region_pretraining.initial_params(config, seed=0)
  changed = lambda a, b: not np.array_equal(np.asarray(a), np.asarray(b))
  assert changed(params["backbone"]["conv1_1"]["kernel"], init["backbone"]["conv1_1"]["kernel"])
  assert changed(params["recognition"]["fc7"]["kernel"], init["recognition"]["fc7"]["kernel"])
  for module in ("localization", "language_model", "word_classifier"):
    same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
                        params[module], init[module])
    assert all(jax.tree.leaves(same)), module
  assert not np.asarray(params["recognition"]["box_reg"]["kernel"]).any()  # no gradient reaches it
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows] == [20, 40]
  assert rows[1]["loss"] < rows[0]["loss"]
  for name in heads:
    assert 0 <= rows[1][f"pretrain_{name}_accuracy"] <= 100
  # A second call finds the model and does not train again.
  mtime = os.path.getmtime(os.path.join(workdir, "metrics.jsonl"))
  assert region_pretraining.pretrain(config, data, None, heads, workdir, steps=40) == out
  assert os.path.getmtime(os.path.join(workdir, "metrics.jsonl")) == mtime
