"""The engine: batches split over the 8 forced host devices (conftest), pmap replicas, casts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from densecap_jax import configs
from densecap_jax import engine


def _runner(devices, batch_size=1, **settings):
  params = {"w": np.arange(12, dtype=np.float32).reshape(3, 4)}
  return engine.Runner(params, configs.get_model_config("tiny"), devices=devices,
                       batch_size=batch_size, **settings)


def test_put_batch_splits_an_even_batch_over_the_devices_and_replicates_an_uneven_one():
  devices = jax.local_devices()
  assert len(devices) == 8
  runner = _runner(devices)
  assert runner.batch_size == 8  # rounded up to a multiple of the devices
  even, sizes = runner.put_batch(np.arange(16, dtype=np.float32).reshape(8, 2),
                                 np.ones((8, 2), np.int32))
  assert runner.splits(8) and runner.groups(8) == 8
  assert {s.data.shape for s in even.addressable_shards} == {(1, 2)}
  assert {d for s in even.addressable_shards for d in s.data.devices()} == set(devices)
  assert sizes.sharding == even.sharding
  (uneven,) = runner.put_batch(np.arange(6, dtype=np.float32).reshape(3, 2))
  assert not runner.splits(3) and runner.groups(3) == 1
  assert {s.data.shape for s in uneven.addressable_shards} == {(3, 2)}
  assert len(uneven.addressable_shards) == 8
  np.testing.assert_array_equal(uneven, np.arange(6).reshape(3, 2))
  assert {s.data.shape for s in runner.params["w"].addressable_shards} == {(3, 4)}


def test_jit_gives_the_same_result_on_one_and_eight_devices():
  # Whole numbers: a matmul over 8 rows may round apart from 8 of one row (the model's
  # comparison is test_inference_devices'); these sums are exact either way.
  x = np.random.default_rng(0).integers(-9, 10, (8, 3)).astype(np.float32)

  def project(params, batch, scale, groups):
    return {"y": jnp.dot(batch, params["w"]) * scale,
            "groups": jnp.full(len(batch), groups)}  # static: the batch's device groups

  outputs = {}
  for count in (1, 8):
    runner = _runner(jax.local_devices()[:count])
    run = runner.jit(project, grouped=True)
    (batch,) = runner.put_batch(x)
    outputs[count] = jax.device_get(run(batch, 2.0))
    np.testing.assert_array_equal(outputs[count]["groups"], [count] * 8)
  np.testing.assert_array_equal(outputs[1]["y"], outputs[8]["y"])
  np.testing.assert_array_equal(outputs[8]["y"], 2 * x @ np.arange(12).reshape(3, 4))
  runner = _runner(jax.local_devices())
  plain = runner.jit(lambda params, batch: batch @ params["w"])
  (batch,) = runner.put_batch(x[:3])  # replicated: 3 rows do not divide over 8 devices
  np.testing.assert_array_equal(plain(batch), outputs[8]["y"][:3] / 2)


def test_replace_copies_the_settings_and_leaves_the_runner_as_it_was():
  runner = _runner(jax.local_devices()[:1], batch_size=4, final_nms_thresh=0.5)
  other = runner.replace(batch_size=1, final_nms_thresh=0.3)
  assert (runner.batch_size, runner.final_nms_thresh) == (4, 0.5)
  assert (other.batch_size, other.final_nms_thresh) == (1, 0.3)
  assert other.params is runner.params and other.buckets == runner.buckets
  with pytest.raises(AttributeError, match="no attribute 'batch'"):
    runner.replace(batch=2)
  with pytest.raises(ValueError, match="batch_size must be positive"):
    _runner(None, batch_size=0)


def test_replicate_and_unreplicate_round_trip_over_the_local_devices():
  tree = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "step": np.int32(7)}
  replicated = engine.replicate(tree)
  assert replicated["a"].shape == (8, 2, 3) and replicated["step"].shape == (8,)
  assert replicated["a"].sharding.spec == jax.sharding.PartitionSpec(engine.BATCH_AXIS)
  total = jax.pmap(lambda t: jax.lax.psum(t["a"], engine.BATCH_AXIS),
                   axis_name=engine.BATCH_AXIS)(replicated)
  np.testing.assert_array_equal(engine.unreplicate(total), 8 * tree["a"])
  back = engine.unreplicate(replicated)
  np.testing.assert_array_equal(back["a"], tree["a"])
  assert back["step"] == 7


def test_prefetch_to_devices_keeps_the_order_and_splits_the_device_axis():
  batches = [{"x": np.full((8, 2), i, np.float32)} for i in range(5)]
  placed = list(engine.prefetch_to_devices(iter(batches), size=2))
  assert [int(b["x"][0, 0]) for b in placed] == list(range(5))
  assert {s.data.shape for s in placed[0]["x"].addressable_shards} == {(1, 2)}


def test_one_process_gathers_and_shares_its_own_results():
  arrays = {"boxes": np.ones((2, 4), np.float32)}
  assert engine.gather_processes(arrays) is arrays
  assert engine.share_from_chief({"map": 0.5}) == {"map": 0.5}


def test_inference_params_casts_the_kernels_for_the_precision():
  config = configs.get_model_config("tiny")
  params = {"conv": {"kernel": np.ones((3, 3), np.float32), "bias": np.ones(3, np.float32)}}
  same, config32 = engine.inference_params(params, config)
  assert same is params and configs.precision_of(config32) == configs.precision_of(config)
  cast, config16 = engine.inference_params(params, config, "bfloat16")
  assert configs.precision_of(config16) == "bfloat16"
  assert cast["conv"]["kernel"].dtype == jnp.bfloat16
  assert cast["conv"]["bias"].dtype == np.float32
