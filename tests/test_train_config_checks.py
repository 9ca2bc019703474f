"""Tests for densecap_jax.train.config_checks and the commands' --config checks (commands.flags)."""

import types

import jax
import numpy as np
import pytest

from densecap_jax.models import densecap
from densecap_jax.commands import flags as command_flags
from densecap_jax.train import config_checks
from densecap_jax.train.configs import tiny
from densecap_jax.train.configs import vgg16


def _config(**overrides):
  config = tiny.get_config()
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def test_shipped_configs_pass():
  config_checks.check_config(tiny.get_config())


def test_trainable_modules_are_the_models_top_level_modules():
  model = tiny.get_config().model
  model.vocab_size = 10
  params = jax.eval_shape(lambda: densecap.init_params(model, jax.random.key(0)))
  assert "word_classifier" in params  # the tiny recipe has the bag-of-words head
  assert sorted(params) == sorted(config_checks.TRAINABLE_MODULES)


@pytest.mark.parametrize("overrides, message", [
    ({"learning_rate": 0.0}, "learning_rate=0.0 .* expected a positive number"),
    ({"learning_rate": -1e-3}, "learning_rate=-0.001"),
    ({"max_iters": 100}, "max_iters=100 .* more than warmup_steps=200"),
    ({"max_iters": -1}, "max_iters=-1 .* lr_schedule='cosine'"),
    ({"max_iters": 0}, "max_iters=0"),
    ({"lr_schedule": "linear"}, "lr_schedule='linear' .* constant, cosine"),
    ({"val_metric": "meteor"}, "val_metric='meteor' .* 'detmap'"),
    ({"per_device_batch_size": 0}, "per_device_batch_size=0"),
    ({"save_checkpoint_every": 0}, "save_checkpoint_every=0 .* positive integer"),
    ({"optim_beta2": 1.0}, r"optim_beta2=1.0 .* \[0, 1\)"),
    ({"test_final_nms_thresh": 1.5}, r"test_final_nms_thresh=1.5 .* \[0, 1\]"),
    ({"test_rpn_nms_thresh": -0.5}, r"test_rpn_nms_thresh=-0.5 .* a number in \[0, 1\]"),
    ({"test_num_proposals": 0}, "test_num_proposals=0 .* a positive integer"),
    ({"model.frozen_blocks": 7}, "model.frozen_blocks=7 .* 0 .. 5"),
    ({"model.input_scale": 0.0}, "model.input_scale=0.0 .* positive number"),
    ({"model.cnn_skip_blocks": (5,)}, r"model.cnn_skip_blocks=\(5,\) .* 1 \.\. 4"),
    ({"model.cnn_skip_blocks": (3, 2)}, r"model.cnn_skip_blocks=\(3, 2\) .* increasing"),
    ({"model.cnn_skip_blocks": (0, 2)}, r"model.cnn_skip_blocks=\(0, 2\) .* relu5_3 alone"),
    ({"model.word_loss_weight": -0.1}, "model.word_loss_weight=-0.1 .* >= 0"),
    ({"trained_modules": ("lm",)}, r"trained_modules=\('lm',\) .* language_model"),
])
def test_bad_fields_are_named_with_the_accepted_values(overrides, message):
  with pytest.raises(ValueError, match=message) as error:
    config_checks.check_config(_config(**overrides))
  assert "\n" not in str(error.value)


def _fake_data(image_sizes, num_train=10, seq_length=15, slot_size=720):
  return types.SimpleNamespace(
      seq_length=seq_length, image_sizes=np.asarray(image_sizes), slot_size=slot_size,
      split_indices=lambda split: np.arange(num_train if split == "train" else 0))


def test_sizes_that_do_not_fit_the_data():
  config = tiny.get_config()  # 256-pixel buckets
  config_checks.check_fits_data(config, _fake_data([[256, 192]], slot_size=256), 4)
  with pytest.raises(ValueError, match="model.image_size=256 does not fit .* up to 720x540 "
                                       r".*--config.model.image_size=720"):
    config_checks.check_fits_data(config, _fake_data([[720, 540]]), 1)
  with pytest.raises(ValueError, match="model.seq_length=15 .* 16 tokens"):
    config_checks.check_fits_data(config, _fake_data([[256, 256]], seq_length=16), 1)
  with pytest.raises(ValueError, match=r"per_device_batch_size=2 .* 8 devices x 2 = 16 .* has 10"):
    config_checks.check_fits_data(config, _fake_data([[256, 256]], slot_size=256), 8)


def test_typo_in_a_config_field_names_it_and_suggests_the_right_one():
  problem = command_flags.check_config_flags(
      ["train", "--config=tiny".replace("tiny", command_flags._config_path("tiny")),
       "--config.learnin_rate=1"])
  assert problem.startswith("--config.learnin_rate: the config has no field 'learnin_rate'; "
                            "did you mean 'learning_rate'?")
  problem = command_flags.check_config_flags(
      ["train", "--config", command_flags._config_path("tiny"), "--config.model.fc_dimm", "3"])
  assert "model has no field 'fc_dimm'; did you mean 'model.fc_dim'?" in problem
  assert command_flags.check_config_flags(
      ["train", "--config", command_flags._config_path("tiny"), "--config.model.fc_dim=3"]) is None


def test_unknown_config_name_lists_the_shipped_ones():
  problem = command_flags.check_config_flags(["train", "--config=nosuch"])
  assert problem == ("--config nosuch: no such config file; expected a path to one or a name of "
                     "tiny, vgg16")
  assert command_flags.resolve_config_names(["t", "--config", "tiny"])[2].endswith(
      "densecap_jax/train/configs/tiny.py")


def test_test_time_fields_are_the_model_configs_values():
  for config in (tiny.get_config(), vgg16.get_config()):
    assert (config.test_num_proposals, config.test_rpn_nms_thresh,
            config.test_final_nms_thresh) == (config.model.num_proposals,
                                              config.model.rpn_nms_thresh,
                                              config.model.final_nms_thresh)
  # One value under two names: validation during training runs with what the saved model
  # directory's config.json says.
  config = tiny.get_config()
  config.test_num_proposals = 30
  config.model.rpn_nms_thresh = 0.6
  assert config.model.num_proposals == 30 and config.test_rpn_nms_thresh == 0.6
  assert '"num_proposals": 30' in config.model.to_json()
