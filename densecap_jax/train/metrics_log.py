"""The training log: scalars to ``metrics.jsonl`` and TensorBoard (used by ``train.loop``)."""

import json
import os

from densecap_jax import files


class MetricsWriter:
  """Scalars to ``metrics.jsonl`` (one JSON object a line) and TensorBoard event files.

  A line holding one of ``percent_keys`` (the validation mAPs) also says
  ``"unit": "percent"``; lines of those keys without it hold fractions in
  [0, 1] and :meth:`percent_from_fractions` converts them.
  """

  def __init__(self, workdir, *, tensorboard=True, percent_keys=()):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._percent_keys = frozenset(percent_keys)
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def truncate_after(self, step):
    """Drops lines logged after ``step`` (from a run that died before its next checkpoint)."""
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = [l for l in f if l.strip() and json.loads(l)["step"] <= step]
    with files.atomic_output(self.path) as tmp:
      with open(tmp, "w") as f:
        f.write("".join(lines))

  def percent_from_fractions(self):
    """Multiplies the ``percent_keys`` of the lines without a unit by 100; returns how many lines.

    For a run resumed from before the validation mAP was logged in percent.
    TensorBoard's earlier points are not rewritten.
    """
    if not self._percent_keys or not os.path.exists(self.path):
      return 0
    with open(self.path) as f:
      rows = [json.loads(l) for l in f if l.strip()]
    old = [r for r in rows if "unit" not in r and self._percent_keys & r.keys()]
    for row in old:
      row.update((k, 100 * row[k]) for k in self._percent_keys & row.keys())
      row["unit"] = "percent"
    if old:
      with files.atomic_output(self.path) as tmp:
        with open(tmp, "w") as f:
          f.write("".join(json.dumps(r) + "\n" for r in rows))
    return len(old)

  def has(self, step, key):
    """Whether a line of ``step`` holds ``key`` (e.g. whether that step was validated)."""
    if not os.path.exists(self.path):
      return False
    with open(self.path) as f:
      return any(r["step"] == step and key in r for r in map(json.loads, filter(str.strip, f)))

  def write(self, step, scalars):
    scalars = {k: float(v) for k, v in scalars.items()}
    unit = {"unit": "percent"} if self._percent_keys & scalars.keys() else {}
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), **scalars, **unit}) + "\n")
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, v, int(step))
      self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()
