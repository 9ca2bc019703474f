"""``benchmarks/train.py``: its configs and flags, as ``benchmarks/gpu.py`` loads it."""

import importlib.util
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
  spec = importlib.util.spec_from_file_location(
      "gpu_benchmark", os.path.join(ROOT, "benchmarks", "gpu.py"))
  gpu = importlib.util.module_from_spec(spec)
  saved = list(sys.path)
  try:
    spec.loader.exec_module(gpu)
  finally:
    sys.path[:] = saved
  return gpu.load_bench_train()


def test_train_config_sets_only_what_is_asked(bench):
  config = bench.train_config("vgg16", 100, None, "off")  # as gpu.py calls it
  assert config.model.precision == "float32" and config.model.vocab_size == 100
  assert config.finetune_cnn_after == -1
  config = bench.train_config("vgg16", 100, 3, "on", "bfloat16")
  assert config.model.precision == "bfloat16" and config.per_device_batch_size == 3
  assert config.finetune_cnn_after == 0


def test_precisions_flag(bench, capsys):
  assert bench.parse_args(["--precisions", "float32,bfloat16"]).precisions == ("float32",
                                                                               "bfloat16")
  with pytest.raises(SystemExit):
    bench.parse_args(["--precisions", "float16"])
  assert "--precisions must be one of float32, tf32, bfloat16, got 'float16'" in (
      capsys.readouterr().err)
