"""Tests for densecap_jax.data.loader and the vocabulary helpers."""

import json

import h5py
import numpy as np
import pytest

from densecap_jax.configs import buckets
from densecap_jax.data import loader
from densecap_jax.data import vocab

SLOT = 64
SIZES = [(48, 64), (64, 40), (64, 64), (30, 64), (48, 64), (64, 40), (40, 64), (48, 64), (64, 64),
         (64, 40)]
SPLIT = [0, 0, 1, 0, 0, 2, 0, 0, 1, 0]
TRAIN = [0, 1, 3, 4, 6, 7, 9]
NUM_REGIONS = [3, 1, 5, 2, 4, 1, 2, 6, 1, 3]
TOKENS = ["a", "blue", "circle", "red", "<UNK>"]
MEAN = np.array([103.939, 116.779, 123.68])


def _stored_pixels(i, height, width):
  c, y, x = np.mgrid[0:3, 0:height, 0:width]
  return ((i * 20 + c * 5 + y + x) % 256).astype(np.uint8)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """A hand-written HDF5 + JSON pair in the §8.4 / §8.5 layout."""
  folder = tmp_path_factory.mktemp("h5")
  rng = np.random.default_rng(0)
  n, m = len(SIZES), sum(NUM_REGIONS)
  imgs = np.zeros((n, 3, SLOT, SLOT), np.uint8)
  for i, (h, w) in enumerate(SIZES):
    imgs[i, :, :h, :w] = _stored_pixels(i, h, w)
  lengths = rng.integers(1, 8, m).astype(np.int32)
  labels = np.zeros((m, 15), np.int32)
  for r, length in enumerate(lengths):
    labels[r, :length] = rng.integers(1, len(TOKENS) + 1, length)
  boxes = rng.integers(1, 60, (m, 4)).astype(np.int32)
  last = np.cumsum(NUM_REGIONS).astype(np.int32)
  with h5py.File(folder / "d.h5", "w") as f:
    f["images"] = imgs
    f["image_heights"] = np.array([s[0] for s in SIZES], np.int32)
    f["image_widths"] = np.array([s[1] for s in SIZES], np.int32)
    f["original_heights"] = np.array([s[0] * 2 for s in SIZES], np.int32)
    f["original_widths"] = np.array([s[1] * 2 for s in SIZES], np.int32)
    f["split"] = np.array(SPLIT, np.float64)
    f["labels"] = labels
    f["lengths"] = lengths
    f["boxes"] = boxes
    f["img_to_first_box"] = last - np.array(NUM_REGIONS, np.int32) + 1
    f["img_to_last_box"] = last
    f["box_to_img"] = np.repeat(np.arange(1, n + 1, dtype=np.int32), NUM_REGIONS)
  names = [f"{100 + i}.jpg" for i in range(n)]
  (folder / "d.json").write_text(json.dumps({
      "token_to_idx": {t: i + 1 for i, t in enumerate(TOKENS)},
      "idx_to_token": {str(i + 1): t for i, t in enumerate(TOKENS)},
      "filename_to_idx": {f: i + 1 for i, f in enumerate(names)},
      "idx_to_filename": {str(i + 1): f for i, f in enumerate(names)}}))
  return {"data": loader.DenseCapH5(str(folder / "d.h5"), str(folder / "d.json")), "folder": folder,
          "boxes": boxes, "labels": labels, "first": last - np.array(NUM_REGIONS)}


def _take(iterator, steps):
  batches = [next(iterator) for _ in range(steps)]
  iterator.close()
  return batches


def _valid_indices(batch):
  return [int(i) for i in batch["image_index"].reshape(-1) if i >= 0]


def test_batch_contents_padding_and_masks(dataset):
  data = dataset["data"]
  it = loader.make_batches(data, "train", batch_size=2, max_boxes=4, num_epochs=1, prefetch=0)
  seen = []
  for batch in it:
    b, hb, wb, _ = batch["image"].shape
    assert batch["image"].dtype == np.float32 and b == 2
    assert batch["image_size"].dtype == np.int32 and batch["image_size"].shape == (2, 2)
    assert batch["gt_boxes"].dtype == np.float32 and batch["gt_boxes"].shape == (2, 4, 4)
    assert batch["gt_labels"].dtype == np.int32 and batch["gt_labels"].shape == (2, 4, 15)
    assert batch["gt_mask"].dtype == bool and batch["gt_mask"].shape == (2, 4)
    assert batch["image_index"].dtype == np.int32 and batch["example_mask"].dtype == bool
    for k in range(b):
      i = int(batch["image_index"][k])
      if i < 0:
        assert not batch["example_mask"][k] and not batch["gt_mask"][k].any()
        assert (batch["image"][k] == 0).all() and tuple(batch["image_size"][k]) == (hb, wb)
        continue
      seen.append(i)
      h, w = SIZES[i]
      assert batch["example_mask"][k]
      assert buckets.pick_bucket(h, w, buckets.make_buckets(SLOT)) == (hb, wb)
      want = _stored_pixels(i, h, w).transpose(1, 2, 0) - MEAN
      np.testing.assert_allclose(batch["image"][k, :h, :w], want, atol=1e-4)
      assert (batch["image"][k, h:] == 0).all() and (batch["image"][k, :, w:] == 0).all()
      assert tuple(batch["image_size"][k]) == (h, w)
      r = min(NUM_REGIONS[i], 4)
      rows = slice(dataset["first"][i], dataset["first"][i] + r)
      np.testing.assert_array_equal(batch["gt_mask"][k], np.arange(4) < r)
      np.testing.assert_array_equal(batch["gt_boxes"][k, :r], dataset["boxes"][rows])
      np.testing.assert_array_equal(batch["gt_labels"][k, :r], dataset["labels"][rows])
      assert (batch["gt_boxes"][k, r:] == 0).all() and (batch["gt_labels"][k, r:] == 0).all()
  assert sorted(seen) == TRAIN
  assert it.num_truncated == sum(NUM_REGIONS[i] > 4 for i in TRAIN)


def test_sequential_order_with_batch_one(dataset):
  batches = _take(loader.make_batches(dataset["data"], "train", max_boxes=8), 17)
  assert [_valid_indices(b)[0] for b in batches] == (TRAIN * 3)[:17]
  val = _take(loader.make_batches(dataset["data"], "val", max_boxes=8), 3)
  assert [_valid_indices(b)[0] for b in val] == [2, 8, 2]


def test_max_images_takes_the_first_images_of_the_split(dataset):
  batches = list(loader.make_batches(dataset["data"], "train", max_boxes=8, num_epochs=1,
                                     max_images=3, batch_size=2, buckets=[(SLOT, SLOT)]))
  assert [_valid_indices(b) for b in batches] == [TRAIN[:2], TRAIN[2:3]]
  assert batches[-1]["example_mask"].tolist() == [True, False]


def test_bucket_schedule_by_hand():
  a, b = 0, 1
  ids = [a, a, b, a, b, b, a]
  finite = [(k, p.tolist()) for k, p in loader.bucketed_schedule(ids, 2, num_epochs=1)]
  assert finite == [(a, [0, 1]), (b, [2, 4]), (a, [3, 6]), (b, [5, -1])]
  # Unfilled queues are flushed oldest first.
  flushed = [(k, p.tolist()) for k, p in loader.bucketed_schedule([0, 2, 1, 0], 2, num_epochs=1)]
  assert flushed == [(0, [0, 3]), (2, [1, -1]), (1, [2, -1])]
  endless = loader.bucketed_schedule(ids, 2)
  got = [(k, p.tolist()) for _, (k, p) in zip(range(7), endless)]
  # Position 5 waits into the second epoch and pairs with its position 2.
  assert got == [(a, [0, 1]), (b, [2, 4]), (a, [3, 6]), (a, [0, 1]), (b, [5, 2]), (b, [4, 5]),
                 (a, [3, 6])]


def test_single_bucket_keeps_sequential_order(dataset):
  batches = _take(loader.make_batches(dataset["data"], "train", batch_size=3, max_boxes=8,
                                      buckets=((SLOT, SLOT),)), 4)
  assert [_valid_indices(b) for b in batches] == [TRAIN[0:3], TRAIN[3:6], [9, 0, 1], [3, 4, 6]]
  assert all(b["image"].shape == (3, SLOT, SLOT, 3) for b in batches)


def test_shuffle_is_seeded_per_epoch(dataset):
  def order(seed):
    batches = _take(loader.make_batches(dataset["data"], "train", max_boxes=8, shuffle=True,
                                        seed=seed, prefetch=0), 14)
    return [_valid_indices(b)[0] for b in batches]

  first = order(5)
  assert first == order(5)
  assert first != order(6)
  assert sorted(first[:7]) == TRAIN and sorted(first[7:]) == TRAIN
  assert first[:7] != first[7:] and first[:7] != TRAIN


@pytest.mark.parametrize("kwargs", [
    {},
    {"batch_size": 2, "shuffle": True, "seed": 3},
    {"batch_size": 4, "process_count": 2, "process_index": 1, "shuffle": True},
])
def test_resume_from_step_equals_continuing(dataset, kwargs):
  full = _take(loader.make_batches(dataset["data"], "train", max_boxes=3, **kwargs), 12)
  resumed = loader.make_batches(dataset["data"], "train", max_boxes=3, start_step=5, **kwargs)
  assert resumed.step == 5
  rest = _take(resumed, 7)
  assert resumed.step == 12
  for a, b in zip(full[5:], rest):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_device_axis(dataset):
  flat = _take(loader.make_batches(dataset["data"], "train", batch_size=4, max_boxes=3), 3)
  split = _take(loader.make_batches(dataset["data"], "train", batch_size=4, max_boxes=3,
                                    num_devices=2), 3)
  for a, b in zip(flat, split):
    assert b["image"].shape == (2, 2) + a["image"].shape[1:]
    assert b["gt_labels"].shape == (2, 2, 3, 15) and b["image_index"].shape == (2, 2)
    for key in a:
      np.testing.assert_array_equal(b[key].reshape(a[key].shape), a[key])
  with pytest.raises(ValueError, match="divisible by num_devices"):
    loader.make_batches(dataset["data"], "train", batch_size=4, max_boxes=3, num_devices=3)


@pytest.mark.parametrize("num_epochs", [1, 2])
def test_host_shards_are_disjoint_and_cover_the_split(dataset, num_epochs):
  hosts = [list(loader.make_batches(dataset["data"], "train", batch_size=4, max_boxes=3,
                                    num_epochs=num_epochs, process_index=p, process_count=2,
                                    num_devices=1))
           for p in range(2)]
  assert len(hosts[0]) == len(hosts[1])
  per_host = [[], []]
  for b0, b1 in zip(*hosts):
    assert b0["image"].shape == b1["image"].shape  # same bucket on every host
    assert b0["image_index"].shape == (1, 2)
    per_host[0] += _valid_indices(b0)
    per_host[1] += _valid_indices(b1)
  if num_epochs == 1:
    assert not set(per_host[0]) & set(per_host[1])
  # Every image exactly once per epoch over all hosts (a bucket with fewer images than the global
  # batch, here (64, 40) with images 1 and 9, fills its batch from the next epoch).
  assert sorted(per_host[0] + per_host[1]) == sorted(TRAIN * num_epochs)


def test_truncation_and_overflow_error(dataset):
  it = loader.make_batches(dataset["data"], "train", max_boxes=2, num_epochs=1, prefetch=0)
  batches = list(it)
  assert it.num_truncated == sum(NUM_REGIONS[i] > 2 for i in TRAIN)
  assert all(b["gt_mask"].sum() == min(NUM_REGIONS[b["image_index"][0]], 2) for b in batches)
  it = loader.make_batches(dataset["data"], "train", max_boxes=2, overflow="error", prefetch=0)
  with pytest.raises(ValueError, match="has 3 regions, more than max_boxes=2"):
    list(it)
  it = loader.make_batches(dataset["data"], "train", max_boxes=2, overflow="error", prefetch=2)
  for _ in range(2):  # raised from the prefetch thread, and again on the next call
    with pytest.raises(ValueError, match="more than max_boxes"):
      next(it)
  it.close()


def test_prefetch_gives_the_same_batches(dataset):
  kwargs = {"batch_size": 2, "max_boxes": 4, "shuffle": True, "seed": 1}
  a = _take(loader.make_batches(dataset["data"], "train", prefetch=0, **kwargs), 6)
  it = loader.make_batches(dataset["data"], "train", prefetch=3, **kwargs)
  b = _take(it, 6)
  assert not any(t.is_alive() for t in it._source._pool._threads)
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_vocab_helpers(dataset):
  words = vocab.load_vocab(str(dataset["folder"] / "d.json"))
  assert words == [None] + TOKENS
  assert dataset["data"].vocab == words and dataset["data"].vocab_size == 5
  assert vocab.token_to_idx_of(words) == {"a": 1, "blue": 2, "circle": 3, "red": 4, "<UNK>": 5}
  assert vocab.decode_sequence([1, 2, 5, 3], words) == "a blue <UNK> circle"
  assert vocab.decode_sequence([4, 3, 6, 1], words) == "red circle"  # 6 = END = V + 1
  assert vocab.decode_sequence([2, 0, 1], words) == "blue"
  assert vocab.decode_sequence([6, 1], words) == ""
  with pytest.raises(ValueError, match="exactly 1..2"):
    vocab.vocab_from_idx_to_token({"1": "a", "3": "b"})


def test_bad_inputs(dataset, tmp_path):
  folder = dataset["folder"]
  with h5py.File(folder / "d.h5", "r") as src, h5py.File(tmp_path / "bad.h5", "w") as dst:
    for name in src:
      if name != "boxes":
        dst[name] = src[name][()]
  with pytest.raises(ValueError, match="missing dataset 'boxes'"):
    loader.DenseCapH5(str(tmp_path / "bad.h5"), str(folder / "d.json"))
  with h5py.File(folder / "d.h5", "r") as src, h5py.File(tmp_path / "range.h5", "w") as dst:
    for name in src:
      dst[name] = src[name][()]
    dst["img_to_last_box"][-1] += 1
  with pytest.raises(ValueError, match="img_to_last_box outside 1..28"):
    loader.DenseCapH5(str(tmp_path / "range.h5"), str(folder / "d.json"))
  with pytest.raises(ValueError, match=r"dataset HDF5 \S*none.h5 not found; python -m densecap"):
    loader.DenseCapH5(str(tmp_path / "none.h5"), str(folder / "d.json"))
  with pytest.raises(ValueError, match=r"dataset JSON \S*none.json not found; python -m densecap"):
    loader.DenseCapH5(str(folder / "d.h5"), str(tmp_path / "none.json"))
  with pytest.raises(ValueError, match="split 'bogus'|split must be one of"):
    loader.make_batches(dataset["data"], "bogus", max_boxes=2)
  with pytest.raises(ValueError, match="multiple of process_count"):
    loader.make_batches(dataset["data"], "train", batch_size=3, process_count=2, max_boxes=2)
