"""Tests for densecap_jax.train.region_pretraining."""

import json
import os

import jax
import numpy as np
import pytest

from densecap_jax import model_dir
from densecap_jax.data import device_pixels
from densecap_jax.data import loader
from densecap_jax.data import region_labels
from densecap_jax.data import synthetic_world as synthetic
from densecap_jax.models import densecap
from densecap_jax.models import vgg16 as vgg_lib
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
  np.testing.assert_array_equal(batch["valid"], [True, True, False])
  np.testing.assert_array_equal(batch["boxes"][1], [[10, 12, 8, 6], [20, 20, 4, 4]])


def test_pretraining_trains_backbone_and_fc_layers_only_and_writes_a_model(dataset, tmp_path):
  data = loader.DenseCapH5(*dataset[:2])
  config = tiny.get_config().model
  config.image_size, config.buckets, config.vocab_size = SIZE, ((SIZE, SIZE),), data.vocab_size
  heads, labels = region_labels.load_region_labels(dataset[2], data, SIZE)
  workdir = str(tmp_path / "pretrain")
  os.makedirs(workdir)  # a stopped attempt's lines: the stage starts over without them
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.write(json.dumps({"step": 20, "loss": -1.0}) + "\n" + json.dumps({"step": 60}) + "\n")
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
  assert 0 < rows[1]["loss"] < rows[0]["loss"]
  for name in heads:
    assert 0 <= rows[1][f"pretrain_{name}_accuracy"] <= 100
  # A second call finds the model and does not train again.
  mtime = os.path.getmtime(os.path.join(workdir, "metrics.jsonl"))
  assert region_pretraining.pretrain(config, data, None, heads, workdir, steps=40) == out
  assert os.path.getmtime(os.path.join(workdir, "metrics.jsonl")) == mtime


def _skip_config(vocab_size):
  config = tiny.get_config().model
  config.image_size, config.buckets, config.vocab_size = SIZE, ((SIZE, SIZE),), vocab_size
  config.cnn_skip_blocks = (1, 2)  # the fc6 rows past relu5_3's stay as they are
  return config


def test_rescale_conv5_scales_relu5_3_and_keeps_the_codes():
  config = _skip_config(10)
  model = densecap.build_model(config)
  params = region_pretraining.initial_params(config, seed=3)
  images = jax.random.normal(jax.random.key(1), (2, SIZE, SIZE, 3)) * 60
  sizes = np.asarray([[SIZE, SIZE], [40, 56]], np.int32)
  boxes = np.asarray([[[20, 24, 30, 20], [40, 40, 16, 30]]] * 2, np.float32)

  def run(p):
    features = model.apply({"params": p}, images, sizes, method=densecap.DenseCap.features)
    pooled = densecap.pool_regions(features, boxes, sizes, vgg_lib.feature_size(sizes),
                                   config.roi_output_size)
    codes, _, _ = model.apply({"params": p}, pooled, method=densecap.DenseCap.recognize)
    return np.asarray(features), np.asarray(codes)

  before, codes_before = run(params)
  after, codes_after = run(region_pretraining.rescale_conv5(params, config, 0.25))
  channels = config.cnn_widths[-1][-1]
  assert before[..., :channels].std() > 0 and codes_before.std() > 0
  np.testing.assert_allclose(after[..., :channels], 0.25 * before[..., :channels],
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(after[..., channels:], before[..., channels:])
  np.testing.assert_allclose(codes_after, codes_before, rtol=1e-4, atol=1e-6)
  # The input tree is left as it was.
  initial = region_pretraining.initial_params(config, 3)
  np.testing.assert_array_equal(params["backbone"]["conv5_3"]["bias"],
                                initial["backbone"]["conv5_3"]["bias"])


def test_relu5_3_rms_is_the_rms_over_the_valid_cells(dataset):
  data = loader.DenseCapH5(*dataset[:2])
  config = _skip_config(data.vocab_size)
  params = region_pretraining.initial_params(config, seed=0)
  bucket = (SIZE + 32, SIZE + 32)  # every image padded
  none = lambda index: (np.zeros((0, 4), np.float32), np.zeros((0, 4), np.int32))
  batches = [region_pretraining.assemble(data, np.asarray(i), bucket, none, 1, 4)
             for i in ([0, 1, 2], [3, -1, 5])]
  model = densecap.build_model(config)
  squares, cells = 0.0, 0
  for batch in batches:
    for image, size, valid in zip(batch["image"], batch["image_size"], batch["valid"]):
      if not valid:  # a padding example (a black image) is not counted
        continue
      h, w = size  # one at a time, unpadded
      pixels = device_pixels.model_images(image[None, :, :h, :w], size[None])
      features = np.asarray(model.apply({"params": params}, pixels, size[None],
                                        method=densecap.DenseCap.features))
      relu5_3 = features[..., :config.cnn_widths[-1][-1]].astype(np.float64)
      squares, cells = squares + np.sum(relu5_3 ** 2), cells + relu5_3.size
  expected = np.sqrt(squares / cells)
  assert expected > 0
  np.testing.assert_allclose(region_pretraining.relu5_3_rms(params, config, batches), expected,
                             rtol=1e-5)


def test_pretraining_with_feature_rms_scales_relu5_3_of_the_same_run(dataset, tmp_path):
  data = loader.DenseCapH5(*dataset[:2])
  config = _skip_config(data.vocab_size)
  heads, labels = region_labels.load_region_labels(dataset[2], data, SIZE)
  models = {}
  for rms in (0.0, 0.05):
    out = region_pretraining.pretrain(
        config, data, labels, heads, str(tmp_path / str(rms)), steps=4, batch_size=4,
        warmup_steps=1, log_every=2, feature_rms=rms, progress=False)
    models[rms] = model_dir.load_model(out)[0]
  with open(tmp_path / "0.05" / "metrics.jsonl") as f:
    scale = [json.loads(line) for line in f][-1]["conv5_scale"]
  assert 0 < scale
  expected = region_pretraining.rescale_conv5(models[0.0], config, scale)
  for module, layer in (("backbone", "conv5_3"), ("recognition", "fc6"), ("backbone", "conv4_1")):
    for name in ("kernel", "bias"):
      np.testing.assert_allclose(models[0.05][module][layer][name],
                                 expected[module][layer][name], rtol=1e-6, atol=1e-9)


def test_pretraining_passes_no_gradient_through_the_appended_blocks(dataset):
  data = loader.DenseCapH5(*dataset[:2])
  heads, labels = region_labels.load_region_labels(dataset[2], data, SIZE)
  batch = region_pretraining.assemble(data, np.asarray([0, 1]), (SIZE, SIZE), labels, 4,
                                      len(heads))
  grads = {}
  for skip_gradient in (False, True):
    config = _skip_config(data.vocab_size)
    config.cnn_skip_gradient = skip_gradient
    trained = {"params": region_pretraining.initial_params(config, seed=0),
               "heads": region_pretraining.init_heads(config.fc_dim, list(heads.values()),
                                                      jax.random.key(2))}
    loss_fn = region_pretraining.make_loss_fn(config)
    grads[skip_gradient] = jax.device_get(jax.grad(lambda t: loss_fn(t, batch)[0])(trained))
  conv1 = grads[True]["params"]["backbone"]["conv1_1"]["kernel"]
  assert np.any(conv1)
  for a, b in zip(jax.tree.leaves(grads[False]), jax.tree.leaves(grads[True])):
    np.testing.assert_array_equal(b, a)
