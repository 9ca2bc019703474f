"""The test-time settings: where their values come from, and their one range check.

The test-time settings are ``image_size``, ``num_proposals``,
``rpn_nms_thresh`` and ``final_nms_thresh`` (and ``precision``). Their values
live in one place, the model config (``config.json`` of a model directory; for
a new model, ``densecap_jax/configs/``). A run overrides one only where it is
given: a keyword of ``DenseCapPredictor`` / ``load_model``, a command's flag, a
request field of the server. Everywhere ``None`` means "the model's value", so
the commands' flags default to ``None``. One command keeps a default of its
own, because the original's command had it: ``extract_features``'s
``--final_nms_thresh 0.4``.

Training: the training config's ``test_num_proposals``, ``test_rpn_nms_thresh``
and ``test_final_nms_thresh`` are references to ``config.model``'s
``num_proposals``, ``rpn_nms_thresh`` and ``final_nms_thresh``
(``ml_collections`` field references): setting either name sets both, so
validation during training runs with the values the saved model directories
carry.

``check_settings`` is the range check of every entry point: the predictor
(keywords), the commands (flags, before anything is loaded), the training
config checks (config fields) and the server (request fields); each writes its
own message through ``describe``. It imports nothing heavy, so commands can
call it before JAX starts.
"""

import math
import numbers

# The settings ``check_settings`` knows, with what each must be: the words of
# the default message ("must be ...") and of a description ("expected ...").
POSITIVE_INTEGER = ("a positive integer", "a positive integer")
UNIT_INTERVAL = ("in [0, 1]", "a number in [0, 1]")
RULES = {"image_size": POSITIVE_INTEGER, "num_proposals": POSITIVE_INTEGER,
         "rpn_nms_thresh": UNIT_INTERVAL, "final_nms_thresh": UNIT_INTERVAL}


def _accepted(rule, value):
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    return False
  if rule is POSITIVE_INTEGER:
    return math.isfinite(value) and int(value) == value and value >= 1
  return 0 <= value <= 1


def check_settings(*, image_size=None, num_proposals=None, rpn_nms_thresh=None,
                   final_nms_thresh=None, prefix="", describe=None):
  """Raises ValueError (one line) for a test-time setting out of range; ``None`` = not given.

  ``image_size`` and ``num_proposals`` must be positive integers (``3.0``
  counts), the NMS thresholds numbers in ``[0, 1]``.

  Args:
    image_size, num_proposals, rpn_nms_thresh, final_nms_thresh: the values.
    prefix: put before each name in the default message (``"--"`` for flags):
      ``"{prefix}{name} must be in [0, 1], got {value}"``.
    describe: ``describe(name, value, expected) -> message`` replaces the
      default message; ``expected`` reads ``"a positive integer"`` or ``"a
      number in [0, 1]"``.
  """
  given = {"image_size": image_size, "num_proposals": num_proposals,
           "rpn_nms_thresh": rpn_nms_thresh, "final_nms_thresh": final_nms_thresh}
  for name, value in given.items():
    rule = RULES[name]
    if value is None or _accepted(rule, value):
      continue
    if describe is not None:
      raise ValueError(describe(name, value, rule[1]))
    raise ValueError(f"{prefix}{name} must be {rule[0]}, got {value}")
