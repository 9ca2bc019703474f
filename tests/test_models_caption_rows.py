"""Caption decoding of the kept rows only (``detection.caption_kept``): at most 1.25 times the
rows the images keep (or ``CAPTION_MIN_ROWS``), packed across the batch, with the same tokens
as the previous per-image decoding (kept here as the reference)."""

import functools
import glob
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from densecap_jax import predictor
from densecap_jax.model_dir import load_model
from densecap_jax.configs import buckets as buckets_lib
from densecap_jax.data import images as images_lib
from densecap_jax.models import densecap as dc
from densecap_jax.models import detection


def previous_caption_kept(model, params, codes, valid):
  """The previous ``caption_kept`` verbatim: every image captions its first ``n`` rows, ``n``
  the smallest of ``ceil(N / 2^i)``, i < 4, holding the largest kept count of the batch."""
  batch, num_boxes, _ = codes.shape
  sizes = tuple(sorted({max(1, math.ceil(num_boxes / 2 ** i)) for i in range(4)}))

  def caption_first(size):
    def run(codes):
      head = codes[:, :size].reshape(batch * size, -1)
      tokens = model.apply({"params": params}, head, method=dc.DenseCap.sample_captions)
      tokens = tokens.reshape(batch, size, -1)
      return jnp.pad(tokens, ((0, 0), (0, num_boxes - size), (0, 0)))
    return run

  needed = jnp.max(jnp.sum(valid, axis=1))
  branch = jnp.sum(jnp.asarray(sizes) < needed)
  tokens = jax.lax.switch(branch, [caption_first(s) for s in sizes], codes)
  return jnp.where(valid[..., None], tokens, 0)


def within_bound(rows, kept):
  return kept <= rows <= max(1.25 * kept, detection.CAPTION_MIN_ROWS)


@pytest.mark.parametrize("max_rows", [1, 7, 64, 65, 300, 1000, 32000])
def test_row_sizes_hold_any_count_within_a_quarter(max_rows):
  sizes = np.asarray(detection.caption_row_sizes(max_rows))
  assert sizes[0] == 0 and sizes[-1] == max_rows and np.all(np.diff(sizes) > 0)
  counts = np.arange(1, max_rows + 1)
  fit = sizes[np.searchsorted(sizes, counts)]  # smallest size >= count
  assert all(within_bound(f, c) for f, c in zip(fit, counts))
  assert len(sizes) <= 2 + max(0, math.log(max_rows / detection.CAPTION_MIN_ROWS, 1.25)) + 1
  strict = np.asarray(detection.caption_row_sizes(max_rows, min_rows=1))
  assert np.all(strict[np.searchsorted(strict, counts)] <= 1.25 * counts)


@pytest.fixture(scope="module")
def bundled():
  """The bundled model, the jitted ``caption_kept`` and the previous one, its config, and
  batches of its examples' detections: ``(codes in kept-first order, valid, codes in
  proposal order)`` from ``detection._detect``, for batches of 3 and 32 images (the examples
  and their mirror images padded to the largest shape bucket; at 32, 26 slots are empty
  images as ``predict`` pads a batch)."""
  params, config, _ = load_model(predictor.bundled_model_path())
  # The original's RPN NMS: more proposals survive than at the bundled model's 0.9, so that
  # the examples keep more than CAPTION_MIN_ROWS boxes in a batch of 3.
  config.rpn_nms_thresh = 0.7
  buckets = [tuple(b) for b in config.buckets]
  bucket = max(buckets, key=lambda b: b[0] * b[1])
  examples = [images_lib.prepare_test_image(images_lib.load_rgb(path), config.image_size)
              for path in sorted(glob.glob(os.path.join(predictor.bundled_examples_path(),
                                                        "*.jpg")))]
  examples += [x[:, ::-1] for x in examples]

  @jax.jit
  def detect(params, images, sizes):
    det = detection._detect(  # pylint: disable=protected-access
        params, images, sizes, config, None, None, None)
    return det["take"](det["codes"]), det["valid"], det["codes"]

  batches = {}
  for batch, members in ((3, examples[:3]), (32, examples)):
    images = np.zeros((batch,) + bucket + (3,), np.float32)
    sizes = np.tile(np.asarray(bucket, np.int32), (batch, 1))
    for k, x in enumerate(members):
      images[k, :x.shape[0], :x.shape[1]] = x
      sizes[k] = x.shape[:2]
    batches[batch] = jax.device_get(detect(params, images, sizes))
  model = dc.build_model(config)
  caption = jax.jit(functools.partial(detection.caption_kept, model), static_argnames="groups")
  previous = jax.jit(functools.partial(previous_caption_kept, model))
  return caption, previous, params, config, batches


@pytest.fixture
def decoded_rows(monkeypatch):
  """Row counts the LM ran on, recorded at run time (only the branch taken records)."""
  rows = []
  sample = dc.DenseCap.sample_captions

  def recording(self, codes):
    jax.debug.callback(lambda n: rows.append(int(n)), jnp.int32(codes.shape[0]))
    return sample(self, codes)

  monkeypatch.setattr(dc.DenseCap, "sample_captions", recording)
  return rows


@pytest.mark.parametrize("batch", [3, 32])
def test_tokens_equal_the_previous_decoding_and_rows_stay_within_a_quarter(
    bundled, decoded_rows, batch):
  caption, previous, params, _, batches = bundled
  kept_codes, valid, all_codes = batches[batch]
  kept = int(valid.sum())
  assert kept > detection.CAPTION_MIN_ROWS
  tokens = np.asarray(caption(params, kept_codes, valid))
  jax.effects_barrier()
  assert len(decoded_rows) == 1 and within_bound(decoded_rows[0], kept), (kept, decoded_rows)
  np.testing.assert_array_equal(tokens, previous(params, kept_codes, valid))
  assert np.all(tokens[~valid] == 0) and np.all(tokens[valid] > 0)
  # caption_all: every proposal, in proposal order.
  every = np.ones_like(valid)
  np.testing.assert_array_equal(caption(params, all_codes, every),
                                previous(params, all_codes, every))


def test_groups_give_the_same_tokens(bundled, decoded_rows):
  caption, _, params, _, batches = bundled
  kept_codes, valid, _ = batches[32]
  one = caption(params, kept_codes, valid)
  for groups in (4, 32):
    jax.effects_barrier()  # the earlier calls' rows are recorded before they are cleared
    decoded_rows.clear()
    np.testing.assert_array_equal(caption(params, kept_codes, valid, groups=groups), one)
    jax.effects_barrier()
    per_group = valid.reshape(groups, -1).sum(axis=1)
    sizes = detection.caption_row_sizes(valid.size // groups)
    assert decoded_rows == [groups * min(s for s in sizes if s >= per_group.max())]
  with pytest.raises(ValueError, match="groups must divide the batch"):
    caption(params, kept_codes, valid, groups=3)


def test_any_valid_rows_and_none(bundled, decoded_rows):
  caption, _, params, _, batches = bundled
  _, _, codes = batches[3]
  rng = np.random.default_rng(0)
  valid = rng.random(codes.shape[:2]) < 0.1  # not a prefix of each image
  tokens = np.asarray(caption(params, codes, valid))
  every = np.asarray(caption(params, codes, np.ones_like(valid)))
  np.testing.assert_array_equal(tokens[valid], every[valid])
  assert np.all(tokens[~valid] == 0)
  decoded_rows.clear()
  nothing = caption(params, codes, np.zeros_like(valid))
  jax.effects_barrier()
  assert not np.any(nothing) and decoded_rows == []  # no LM run at all


def test_infer_compiles_once_for_any_kept_count(bundled, record_compiles):
  _, _, params, config, _ = bundled
  bucket = tuple(max((tuple(b) for b in config.buckets), key=lambda b: b[0] * b[1]))
  infer = jax.jit(lambda p, x, s, t: detection.infer(p, x, s, config, final_nms_thresh=t))
  rng = np.random.default_rng(1)
  images = rng.normal(0, 60, (2,) + bucket + (3,)).astype(np.float32)
  sizes = np.tile(np.asarray(bucket, np.int32), (2, 1))
  infer(params, images, sizes, 0.3)
  counts = set()
  with record_compiles() as names:
    for threshold in (0.05, 0.3, 0.7, 0.0):
      counts.add(int(np.asarray(infer(params, images, sizes, threshold)[3]).sum()))
  assert names == [] and len(counts) > 2
