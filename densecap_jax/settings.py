"""Ranges of the test-time settings, checked alike by the Python API and every command.

``check_settings`` is used by ``inference.DenseCapPredictor`` (keywords) and
``cli.check_model_flags`` (flags, before anything is loaded); it imports
nothing heavy, so commands can call it before JAX starts.
"""


def check_settings(*, image_size=None, num_proposals=None, rpn_nms_thresh=None,
                   final_nms_thresh=None, prefix=""):
  """Raises ValueError (one line) for a test-time setting out of range; ``None`` = not given.

  ``image_size`` and ``num_proposals`` must be positive integers, the NMS
  thresholds in ``[0, 1]`` (the server's rule for ``final_nms_thresh``).

  Args:
    image_size, num_proposals, rpn_nms_thresh, final_nms_thresh: the values.
    prefix: put before each name in messages (``"--"`` for flags).
  """
  for name, value in (("image_size", image_size), ("num_proposals", num_proposals)):
    if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
      raise ValueError(f"{prefix}{name} must be a positive integer, got {value}")
  for name, value in (("rpn_nms_thresh", rpn_nms_thresh), ("final_nms_thresh", final_nms_thresh)):
    if value is not None and not 0 <= value <= 1:
      raise ValueError(f"{prefix}{name} must be in [0, 1], got {value}")
