"""The training input pipeline: batch workers, uint8 batches and their conversion on the device."""

import time

import h5py
import jax
import numpy as np
import pytest

from densecap_jax.data import batch_workers
from densecap_jax.data import device_pixels
from densecap_jax.data import loader
from densecap_jax.models import densecap
from densecap_jax.train import trainer
from densecap_jax.train.configs import tiny
import small_dataset

SIZE = 64


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """A synthetic dataset at 64 px with two shape buckets, and a chunked copy of its images."""
  folder = tmp_path_factory.mktemp("pipeline")
  h5_path, json_path = small_dataset.make_small_dataset(folder, 24, seed=5, image_size=SIZE)
  chunked = str(folder / "chunked.h5")
  with h5py.File(h5_path, "r") as src, h5py.File(chunked, "w") as dst:
    for name in src:
      if name == "images":
        dst.create_dataset(name, data=src[name][()], chunks=(1, 3, 16, 16), compression="gzip")
      else:
        dst[name] = src[name][()]
  return loader.DenseCapH5(h5_path, json_path), loader.DenseCapH5(chunked, json_path)


BUCKETS = ((48, 64), (64, 48), (64, 64))


def _batches(data, steps, **kwargs):
  with loader.make_batches(data, "train", max_boxes=16, buckets=BUCKETS, **kwargs) as it:
    return [next(it) for _ in range(steps)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      assert x[key].dtype == y[key].dtype
      np.testing.assert_array_equal(x[key], y[key])


@pytest.mark.parametrize("pixels", ["float32", "uint8"])
def test_any_number_of_workers_gives_the_same_batches(dataset, pixels):
  data = dataset[0]
  kwargs = dict(batch_size=4, shuffle=True, seed=3, pixels=pixels)
  one = _batches(data, 12, num_workers=1, **kwargs)
  assert len({b["image"].shape for b in one}) > 1  # several buckets take part
  _assert_same(_batches(data, 12, num_workers=2, **kwargs), one)
  _assert_same(_batches(data, 12, num_workers=3, prefetch=1, **kwargs), one)
  _assert_same(_batches(data, 12, prefetch=0, **kwargs), one)
  # Resume at any step and each host's share: the same batches with any number of workers.
  _assert_same(_batches(data, 5, num_workers=3, start_step=7, **kwargs), one[7:])
  for p in range(2):
    share = _batches(data, 12, num_workers=2, process_index=p, process_count=2, **kwargs)
    _assert_same(share, [{k: v[2 * p:2 * p + 2] for k, v in b.items()} for b in one])


def test_uint8_batches_hold_the_stored_pixels_channels_first(dataset):
  data = dataset[0]
  floats = _batches(data, 6, batch_size=2, num_epochs=1)
  ints = _batches(data, 6, batch_size=2, num_epochs=1, pixels="uint8")
  for f, u in zip(floats, ints):
    assert u["image"].dtype == np.uint8 and u["image"].shape == (2, 3) + f["image"].shape[1:3]
    for key in f:
      if key != "image":
        np.testing.assert_array_equal(f[key], u[key])
    for k, index in enumerate(u["image_index"]):
      if index >= 0:
        h, w = data.image_sizes[index]
        with h5py.File(data.h5_path, "r") as h5_file:
          np.testing.assert_array_equal(u["image"][k, :, :h, :w],
                                        h5_file["images"][index, :, :h, :w])
        assert not u["image"][k, :, h:].any() and not u["image"][k, :, :, w:].any()


def test_chunked_images_are_read_through_h5py_with_the_same_pixels(dataset):
  mapped, chunked = dataset
  assert isinstance(mapped._pixels(), np.memmap) and not isinstance(chunked._pixels(), np.memmap)
  for pixels in ("float32", "uint8"):
    kwargs = dict(batch_size=4, shuffle=True, seed=1, pixels=pixels, num_workers=2)
    _assert_same(_batches(chunked, 6, **kwargs), _batches(mapped, 6, **kwargs))


def test_device_conversion_equals_the_float32_batch_bit_for_bit(dataset):
  data = dataset[0]
  # One pass with a batch of 8: the last batches hold padding examples.
  kwargs = dict(batch_size=8, num_epochs=1, num_devices=2)
  floats = _batches(data, 3, **kwargs)
  ints = _batches(data, 3, pixels="uint8", **kwargs)
  assert not all(b["example_mask"].all() for b in ints)
  convert = jax.pmap(device_pixels.model_batch)
  for f, u in zip(floats, ints):
    converted = jax.device_get(convert(u))
    assert converted["image"].dtype == np.float32
    np.testing.assert_array_equal(converted["image"].view(np.uint32), f["image"].view(np.uint32))
  same = jax.jit(device_pixels.model_batch)({k: v[0] for k, v in floats[0].items()})
  np.testing.assert_array_equal(same["image"], floats[0]["image"][0])  # float32 passes as it is


def test_training_loss_and_gradients_are_the_same_from_uint8_batches(dataset):
  data = dataset[0]
  config = tiny.get_config().model
  config.image_size = SIZE
  config.buckets = BUCKETS
  config.sampler_batch_size = 32
  config.vocab_size = data.vocab_size
  params = densecap.init_params(config, jax.random.key(0))
  loss_fn = jax.jit(jax.value_and_grad(trainer.make_loss_fn(config, True), has_aux=True))
  kwargs = dict(batch_size=2, max_boxes=config.max_gt_boxes, buckets=BUCKETS)
  with loader.make_batches(data, "train", **kwargs) as floats, loader.make_batches(
      data, "train", pixels="uint8", **kwargs) as ints:
    f, u = next(floats), next(ints)
  (loss_f, aux_f), grads_f = loss_fn(params, f, jax.random.key(1))
  (loss_u, aux_u), grads_u = loss_fn(params, u, jax.random.key(1))
  np.testing.assert_allclose(loss_u, loss_f, rtol=1e-6)
  for key in aux_f:
    np.testing.assert_allclose(aux_u[key], aux_f[key], rtol=1e-6, atol=1e-7)
  for gu, gf in zip(jax.tree.leaves(grads_u), jax.tree.leaves(grads_f)):
    scale = float(np.abs(gf).max()) or 1.0
    np.testing.assert_allclose(gu, gf, rtol=1e-5, atol=1e-6 * scale)


def test_ordered_workers_keep_order_and_repeat_an_error():
  def slow_square(i):
    if i == 5:
      raise ValueError("task 5")
    time.sleep(0.01 * (i % 3))  # later tasks often finish first
    return i * i

  workers = batch_workers.OrderedWorkers(iter(range(8)), slow_square, num_workers=3, depth=4)
  assert [next(workers) for _ in range(5)] == [0, 1, 4, 9, 16]
  for _ in range(2):
    with pytest.raises(ValueError, match="task 5"):
      next(workers)
  workers.close()
  done = batch_workers.OrderedWorkers(iter(range(3)), lambda i: i, num_workers=2, depth=1)
  assert list(done) == [0, 1, 2] and list(done) == []
  done.close()


def test_bad_pipeline_options(dataset):
  with pytest.raises(ValueError, match="pixels"):
    loader.make_batches(dataset[0], max_boxes=4, pixels="float16")
  with pytest.raises(ValueError, match="num_workers"):
    loader.make_batches(dataset[0], max_boxes=4, num_workers=0)
