"""A small preprocessed synthetic dataset (HDF5 + JSON) for tests of training and evaluation."""

from densecap_jax.data import visual_genome as preprocess
from densecap_jax.data import synthetic_world as synthetic


def make_small_dataset(folder, num_images, *, seed, image_size, render_size=96,
                       val_fraction=0.2, test_fraction=0.1):
  """Renders ``num_images`` scenes into ``folder`` and preprocesses them at ``image_size``.

  Returns:
    ``(h5_path, json_path)``.
  """
  paths = synthetic.generate_dataset(str(folder / "vg"), num_images, seed=seed,
                                     image_size=render_size, val_fraction=val_fraction,
                                     test_fraction=test_fraction, progress=False)
  preprocess.preprocess(paths["region_data"], paths["image_dir"], paths["split_json"],
                        str(folder / "d.h5"), str(folder / "d.json"), image_size=image_size,
                        min_token_instances=1, num_workers=2, progress=False, log=lambda *a: None)
  return str(folder / "d.h5"), str(folder / "d.json")


# The small dataset with objects' attribute labels that the region-pretraining tests share.
LABELLED_SIZE, LABELLED_SEED, LABELLED_RENDER = 64, 5, 96


def make_labelled_dataset(folder):
  """12 scenes preprocessed at ``LABELLED_SIZE`` (seed ``LABELLED_SEED``, rendered at
  ``LABELLED_RENDER``); returns ``(h5_path, json_path, objects_json_path)``."""
  h5, js = make_small_dataset(folder, 12, seed=LABELLED_SEED, image_size=LABELLED_SIZE,
                              render_size=LABELLED_RENDER)
  return h5, js, str(folder / "vg" / "objects.json")
