"""Tests for densecap_jax.data.tfds_builder: built without TensorFlow, same examples as the HDF5."""

import json
import sys

import h5py
import numpy as np
import tensorflow_datasets as tfds

from densecap_jax.data import loader
from densecap_jax.data import visual_genome as preprocess
from densecap_jax.data import synthetic_world as synthetic
from densecap_jax.data import tfds_builder


def test_tfds_matches_hdf5(tmp_path):
  paths = synthetic.generate_dataset(str(tmp_path / "syn"), 10, 2, image_size=64, progress=False)
  h5_path, json_path = str(tmp_path / "d.h5"), str(tmp_path / "d.json")
  preprocess.preprocess(paths["region_data"], paths["image_dir"], paths["split_json"], h5_path,
                        json_path, image_size=48, min_token_instances=2, num_workers=2,
                        progress=False, log=lambda line: None)
  dataset_dir = tfds_builder.build(h5_path, json_path, str(tmp_path / "tfds"))
  sources, info = tfds_builder.load_data_sources(dataset_dir)
  by_name = tfds.data_source("densecap_regions", data_dir=str(tmp_path / "tfds"))
  assert "tensorflow" not in sys.modules
  assert sorted(by_name) == sorted(sources) == ["test", "train", "val"]
  np.testing.assert_array_equal(by_name["train"][1]["captions"], sources["train"][1]["captions"])

  data = loader.DenseCapH5(h5_path, json_path)
  assert info.metadata["idx_to_token"] == json.loads(open(json_path).read())["idx_to_token"]
  splits = json.loads(open(paths["split_json"]).read())
  for name in ("train", "val", "test"):
    indices = data.split_indices(name)
    source = sources[name]
    assert len(source) == len(indices) == len(splits[name])
    for position, index in enumerate(indices):
      example = source[position]
      h, w = data.image_sizes[index]
      with h5py.File(h5_path, "r") as f:
        stored = f["images"][index]
      assert example["image"].shape == (h, w, 3) and example["image"].dtype == np.uint8
      np.testing.assert_array_equal(example["image"], stored[::-1, :h, :w].transpose(1, 2, 0))
      assert example["image_index"] == index
      assert f"{example['image_id']}.jpg" == data.filenames[index]
      np.testing.assert_array_equal(example["original_size"], data.original_sizes[index])
      first, count = data.first_box[index], data.num_boxes[index]
      np.testing.assert_array_equal(example["boxes"], data.boxes[first:first + count])
      np.testing.assert_array_equal(example["captions"], data.labels[first:first + count])
      np.testing.assert_array_equal(example["lengths"], data.lengths[first:first + count])
