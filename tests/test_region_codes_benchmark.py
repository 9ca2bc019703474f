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


def test_box_cells_cover_the_box_at_the_layers_stride():
  # a 20 x 10 box at x 17..36, y 5..14 of a scene shown at half size: pixels 8..18, 2..7
  assert region_codes.box_cells((17, 5, 20, 10), 0.5, 4, (40, 40)) == (0, 2, 2, 5)
  # a box that rounds to nothing still has a cell; a box past the grid is cut to it
  assert region_codes.box_cells((33, 33, 1, 1), 1.0, 16, (4, 4)) == (2, 3, 2, 3)
  assert region_codes.box_cells((40, 1, 60, 60), 1.0, 16, (4, 4)) == (0, 4, 2, 4)


def test_layer_descriptors_are_the_mean_and_max_of_the_layers_over_each_box(tmp_path):
  """On a random tiny model: conv1_1's descriptor of each object equals the mean and max of
  conv1_1 computed here with NumPy over the box's pixels (stride 1)."""
  import small_model  # pylint: disable=g-import-not-at-top
  from densecap_jax import model_dir  # pylint: disable=g-import-not-at-top
  from densecap_jax.data import images as images_lib  # pylint: disable=g-import-not-at-top
  path = small_model.save_random_tiny_model(tmp_path / "model", ["<pad>", "a", "b"],
                                            image_size=64)
  params, config, _ = model_dir.load_model(path)
  scenes = [synthetic.make_scene(0, i) for i in (3, 4)]
  descriptors, objects = region_codes.layer_descriptors(path, scenes)
  assert list(descriptors)[:3] == ["conv1_1", "conv1_2", "conv2_1"]
  assert list(descriptors)[-1] == "conv5_3" and len(descriptors) == 13
  assert len(objects) == sum(len(s.objects) for s in scenes)
  assert descriptors["conv5_3"].shape == (len(objects), 2 * config.cnn_widths[-1][-1])
  rgb = synthetic.render_scene(scenes[0])[0]
  image = images_lib.prepare_test_image(rgb, 64).astype(np.float64) * config.input_scale
  kernel = np.asarray(params["backbone"]["conv1_1"]["kernel"], np.float64)
  bias = np.asarray(params["backbone"]["conv1_1"]["bias"], np.float64)
  padded = np.pad(image, ((1, 1), (1, 1), (0, 0)))
  height, width = image.shape[:2]
  relu = np.maximum(sum(padded[i:i + height, j:j + width] @ kernel[i, j]
                        for i in range(3) for j in range(3)) + bias, 0)
  scale = height / rgb.shape[0]
  for k, obj in enumerate(scenes[0].objects):
    r0, r1, c0, c1 = region_codes.box_cells(obj.box, scale, 1.0, relu.shape[:2])
    cells = relu[r0:r1, c0:c1].reshape(-1, relu.shape[-1])
    np.testing.assert_allclose(descriptors["conv1_1"][k],
                               np.concatenate([cells.mean(0), cells.max(0)]), rtol=1e-4,
                               atol=1e-4)
