"""Tests for densecap_jax.settings: the one range check of the test-time settings."""

import math

import pytest

from densecap_jax import settings


@pytest.mark.parametrize("given, message", [
    ({"image_size": 0}, "image_size must be a positive integer, got 0"),
    ({"image_size": math.inf}, "image_size must be a positive integer, got inf"),
    ({"num_proposals": 2.5}, "num_proposals must be a positive integer, got 2.5"),
    ({"num_proposals": True}, "num_proposals must be a positive integer, got True"),
    ({"num_proposals": "300"}, "num_proposals must be a positive integer, got 300"),
    ({"rpn_nms_thresh": -0.1}, r"rpn_nms_thresh must be in \[0, 1\], got -0.1"),
    ({"final_nms_thresh": math.nan}, r"final_nms_thresh must be in \[0, 1\], got nan"),
    ({"final_nms_thresh": "0.3"}, r"final_nms_thresh must be in \[0, 1\], got 0.3"),
])
def test_out_of_range_values_raise_one_line(given, message):
  with pytest.raises(ValueError, match=f"^{message}$"):
    settings.check_settings(**given)
  with pytest.raises(ValueError, match=f"^--{message}$"):
    settings.check_settings(**given, prefix="--")


def test_each_caller_words_its_own_message():
  def describe(name, value, expected):
    return f"config field test_{name}={value!r} is not accepted: expected {expected}"

  with pytest.raises(ValueError, match=r"^config field test_rpn_nms_thresh=1.5 is not accepted: "
                                       r"expected a number in \[0, 1\]$"):
    settings.check_settings(rpn_nms_thresh=1.5, describe=describe)
  with pytest.raises(ValueError, match="^config field test_num_proposals=0 is not accepted: "
                                       "expected a positive integer$"):
    settings.check_settings(num_proposals=0, describe=describe)


def test_values_in_range_and_unset_ones_pass():
  settings.check_settings()
  settings.check_settings(image_size=720, num_proposals=1000.0, rpn_nms_thresh=0,
                          final_nms_thresh=1)
  settings.check_settings(image_size=None, num_proposals=None, rpn_nms_thresh=0.7,
                          final_nms_thresh=None)
