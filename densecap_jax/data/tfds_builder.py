"""A TFDS builder for a preprocessed DenseCap dataset, written as array_record.

Usage::

  python -m densecap_jax.data.tfds_builder --h5 data/VG-regions.h5 \
      --json data/VG-regions-dicts.json --data_dir data/tfds

Reads the HDF5 + JSON of ``preprocess.py`` (VG or the synthetic scenes) and
writes the splits ``train`` / ``val`` / ``test`` (those that have images) in
HDF5 order. Building and reading need no TensorFlow: features are plain
tensors (``tfds.features.Image`` would need TensorFlow to encode PNG) and the
files are array_record, read with ``tfds.data_source`` /
``load_data_sources``.

Features of one example (image ``i`` of the HDF5):

* ``image``: ``(H, W, 3)`` uint8 **RGB**, the resized image (the HDF5 slot
  cropped to its true size, channels reversed from the stored BGR);
* ``image_index``: int32, ``i`` (0-based HDF5 index);
* ``image_id``: int64, the Visual Genome id (file name ``<id>.jpg``);
* ``original_size``: ``(2,)`` int32 ``(H0, W0)``;
* ``boxes``: ``(R, 4)`` int32 xcycwh, 1-based, resized-image pixels;
* ``captions``: ``(R, L)`` int32 token ids, 0-padded; ``lengths``: ``(R,)`` int32.

The vocabulary is stored in the dataset metadata as ``idx_to_token``
(``info.metadata["idx_to_token"]``, same dict as the JSON's).
"""

import argparse
import os
import sys

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from densecap_jax import runtime
from densecap_jax.data import loader


def image_id_of(filename):
  """``'<id>.jpg'`` -> ``id`` (int)."""
  stem = os.path.splitext(filename)[0]
  if not stem.isdigit():
    raise ValueError(f"image file name {filename!r} is not '<integer id>.jpg'")
  return int(stem)


def example_from_h5(data, index):
  """The TFDS example of HDF5 image ``index`` of a ``loader.DenseCapH5``."""
  boxes, labels = data.regions(index)
  first = data.first_box[index]
  return {
      "image": np.ascontiguousarray(data.read_image_bgr(index)[:, :, ::-1]),
      "image_index": np.int32(index),
      "image_id": np.int64(image_id_of(data.filenames[index])),
      "original_size": data.original_sizes[index].astype(np.int32),
      "boxes": boxes.astype(np.int32),
      "captions": labels.astype(np.int32),
      "lengths": data.lengths[first:first + len(boxes)].astype(np.int32),
  }


class DensecapRegions(tfds.core.GeneratorBasedBuilder):
  """DenseCap regions (images, boxes, caption tokens) from a preprocessed HDF5 + JSON."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "HDF5 layout of preprocess.py (reference §8.4) as array_record."}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    """This file. TFDS's own lookup needs ``importlib_resources`` for editable installs."""
    return epath.Path(__file__)

  def __init__(self, *, h5_path=None, json_path=None, **kwargs):
    """``h5_path`` / ``json_path`` are needed to build; reading a built dataset needs neither."""
    self._data = loader.DenseCapH5(h5_path, json_path) if h5_path else None
    super().__init__(**kwargs)

  def _info(self):
    metadata = tfds.core.MetadataDict()
    if self._data is not None:
      metadata["idx_to_token"] = {str(i): t for i, t in enumerate(self._data.vocab) if i}
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding="zlib"),
            "image_index": tfds.features.Scalar(dtype=np.int32),
            "image_id": tfds.features.Scalar(dtype=np.int64),
            "original_size": tfds.features.Tensor(shape=(2,), dtype=np.int32),
            "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.int32),
            "captions": tfds.features.Tensor(shape=(None, None), dtype=np.int32,
                                             encoding="zlib"),
            "lengths": tfds.features.Tensor(shape=(None,), dtype=np.int32),
        }),
        metadata=metadata,
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is local
    if self._data is None:
      raise ValueError("building densecap_regions needs h5_path and json_path")
    return {name: self._generate_examples(name) for name in loader.SPLITS
            if len(self._data.split_indices(name))}

  def _generate_examples(self, split):
    for index in self._data.split_indices(split):
      yield int(index), example_from_h5(self._data, int(index))


def build(h5_path, json_path, data_dir):
  """Builds the array_record dataset under ``data_dir``; returns its version folder."""
  builder = DensecapRegions(h5_path=h5_path, json_path=json_path, data_dir=data_dir,
                            file_format="array_record")
  builder.download_and_prepare()
  return str(builder.data_dir)


def load_data_sources(dataset_dir):
  """``{split: random-access data source}`` of a built dataset folder, and its ``DatasetInfo``."""
  builder = tfds.builder_from_directory(dataset_dir)
  return builder.as_data_source(), builder.info


def main(argv=None):
  parser = argparse.ArgumentParser(
      prog=runtime.prog_name("densecap_jax.data.tfds_builder"),
      description="Preprocessed DenseCap HDF5 + JSON -> TFDS array_record.")
  parser.add_argument("--h5", required=True, help="HDF5 written by densecap_jax.data.preprocess")
  parser.add_argument("--json", required=True, help="JSON written by densecap_jax.data.preprocess")
  parser.add_argument("--data_dir", required=True, help="TFDS data directory")
  args = parser.parse_args(argv)
  try:
    path = build(args.h5, args.json, args.data_dir)
  except ValueError as e:
    sys.exit(f"tfds_builder: error: {e}")
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
