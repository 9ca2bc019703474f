"""Plots a training run's ``metrics.jsonl`` (``train.trainer``'s work directory) into one PNG.

  python tools/plot_training.py WORKDIR [WORKDIR ...] --out run.png [--title TEXT]

Top panel: the training loss terms against the step (the total ``loss`` and
every ``*_loss`` the trainer logs: the weighted objectness, box regression,
captioning and word losses and the box decay), each a thin line of the logged
values under a moving mean, on a log scale when all are positive. Below it,
the validation curves in percent: ``val_map``, ``val_detmap`` (and any other
validation scalar), and, when logged, a third panel of the caption-attribute
scalars (``val_*_accuracy``, ``val_attribute_matched``; ``train.trainer``).

Several work directories are consecutive stages of one recipe (e.g. a joint
run, then a captioner fitted from its best model): they are drawn one after
another, each stage's steps offset by the last step the stages before it
logged, with a dashed line and the directory's name at each stage's start.

Needs matplotlib (the ``test`` extra), which the package itself never imports.
"""

import argparse
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from densecap_jax import files  # pylint: disable=g-import-not-at-top

VALIDATION_ORDER = ("val_map", "val_detmap")  # first; then the other percent curves by name


def read_metrics(run_dir):
  """The rows of ``run_dir/metrics.jsonl`` by step (a later row of a step updates an earlier one).

  Returns:
    ``(training, validation)``: two lists of ``(step, {key: value})`` in step
    order: rows with ``loss`` and rows with a ``val_`` key.

  Raises:
    ValueError: no metrics.jsonl there, or a line that is not a JSON object with a step.
  """
  path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.isfile(path):
    raise ValueError(f"{path} not found: expected a training work directory (train.trainer)")
  training, validation = {}, {}
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        step = int(row["step"])
      except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path} line {number} is not a JSON object with a step") from None
      if "loss" in row:
        training.setdefault(step, {}).update(row)
      if any(k.startswith("val_") for k in row):
        validation.setdefault(step, {}).update(
            (k, v) for k, v in row.items() if k.startswith("val_"))
  return sorted(training.items()), sorted(validation.items())


def loss_keys(rows):
  """``loss`` then the ``*_loss`` keys of training rows, in first-seen order."""
  keys = []
  for _, row in rows:
    keys += [k for k in row if (k == "loss" or k.endswith("_loss")) and k not in keys]
  return sorted(keys, key=lambda k: k != "loss")


def validation_keys(rows):
  """``val_map``, ``val_detmap`` then the other validation keys, sorted."""
  present = {k for _, row in rows for k in row}
  return [k for k in VALIDATION_ORDER if k in present] + sorted(present - set(VALIDATION_ORDER))


def is_attribute_key(key):
  """Whether a validation key is a caption-attribute scalar (its own panel)."""
  return key.endswith("_accuracy") or key.startswith("val_attribute_")


def moving_mean(values, window):
  """Trailing mean over up to ``window`` values (fewer at the start)."""
  out, total = [], 0.0
  for i, v in enumerate(values):
    total += v
    if i >= window:
      total -= values[i - window]
    out.append(total / min(i + 1, window))
  return out


def plot_run(run_dirs, out_png, *, title=None, smooth=None):
  """Writes one PNG of the loss and validation curves of consecutive runs.

  Args:
    run_dirs: a work directory, or a list of them (consecutive stages).
    out_png: the PNG to write (atomically).
    title: the figure's title (default: the directories' names).
    smooth: moving-mean window in logged points (default: 1/25 of the
      longest stage's training rows, at least 1).

  Returns:
    ``out_png``.
  """
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  if isinstance(run_dirs, (str, os.PathLike)):
    run_dirs = [run_dirs]
  run_dirs = [os.fspath(d) for d in run_dirs]
  if not run_dirs:
    raise ValueError("no run directory given")
  stages = [(d,) + read_metrics(d) for d in run_dirs]
  if not any(training or validation for _, training, validation in stages):
    raise ValueError(f"no training or validation scalars in {', '.join(run_dirs)}")
  if smooth is None:
    smooth = max(1, max(len(training) for _, training, _ in stages) // 25)
  names = [os.path.basename(os.path.normpath(d)) for d in run_dirs]

  with_attributes = any(is_attribute_key(k) for _, _, validation in stages
                        for k in validation_keys(validation))
  figure = Figure(figsize=(10, 11 if with_attributes else 8), dpi=100, layout="constrained")
  axes = figure.subplots(3 if with_attributes else 2, 1, sharex=True)
  loss_ax, val_ax = axes[:2]
  attribute_ax = axes[2] if with_attributes else val_ax
  colours = {}  # per panel: a curve keeps its colour across the stages

  def colour(ax, key):
    panel = colours.setdefault(id(ax), {})
    if key not in panel:
      panel[key] = f"C{len(panel) % 10}"
    return panel[key]

  offset = 0
  positive = True
  loss_range = [math.inf, 0.0]
  labelled = set()
  for name, (_, training, validation) in zip(names, stages):
    for key in loss_keys(training):
      points = [(offset + s, r[key]) for s, r in training if _finite(r.get(key))]
      if not points:
        continue
      steps, values = zip(*points)
      positive &= min(values) > 0
      loss_range = [min(loss_range[0], min(values)), max(loss_range[1], max(values))]
      label = None if key in labelled else key
      labelled.add(key)
      loss_ax.plot(steps, values, color=colour(loss_ax, key), alpha=0.25, linewidth=0.7)
      loss_ax.plot(steps, moving_mean(values, smooth), color=colour(loss_ax, key),
                   linewidth=2.2 if key == "loss" else 1.4, label=label)
    for key in validation_keys(validation):
      points = [(offset + s, r[key]) for s, r in validation if _finite(r.get(key))]
      if not points:
        continue
      steps, values = zip(*points)
      label = None if key in labelled else key
      labelled.add(key)
      ax = attribute_ax if is_attribute_key(key) else val_ax
      ax.plot(steps, values, color=colour(ax, key), marker="o", markersize=3, linewidth=1.4,
              label=label)
    if len(stages) > 1:
      for ax in axes:
        ax.axvline(offset, color="0.5", linestyle="--", linewidth=0.8)
      loss_ax.annotate(name, (offset, 1), xycoords=("data", "axes fraction"),
                       xytext=(3, -3), textcoords="offset points", va="top", fontsize=8)
    last = [s for s, _ in training] + [s for s, _ in validation]
    offset += max(last, default=0)

  if positive and loss_ax.lines:
    loss_ax.set_yscale("log")  # a term that starts near 0 (the box decay) does not squash the rest
    loss_ax.set_ylim(max(loss_range[0], 1e-5 * loss_range[1]) / 1.5, 1.5 * loss_range[1])
  loss_ax.set_title(f"training losses (moving mean of {smooth} logged points)")
  loss_ax.set_ylabel("loss" + (" (log scale)" if positive and loss_ax.lines else ""))
  val_ax.set_title("validation: dense-captioning and detection mAP")
  if with_attributes:
    attribute_ax.set_title("validation: captions of matched objects naming their attributes right")
  axes[-1].set_xlabel("step" + (" (stages one after another)" if len(stages) > 1 else ""))
  for ax in axes:
    ax.grid(True, alpha=0.3)
    if any(line.get_label()[:1] != "_" for line in ax.lines):
      ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
  for ax in axes[1:]:
    ax.set_ylabel("percent")
    if ax.lines:
      ax.set_ylim(bottom=0)
    else:
      ax.text(0.5, 0.5, "no validation logged", transform=ax.transAxes, ha="center")
  figure.suptitle(title or "training run: " + " then ".join(names))
  with files.atomic_output(out_png) as tmp:
    figure.savefig(tmp, format="png")
  return out_png


def _finite(value):
  return isinstance(value, (int, float)) and math.isfinite(value)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("run_dirs", nargs="+", help="work directories, in stage order")
  parser.add_argument("--out", required=True, help="the PNG to write")
  parser.add_argument("--title", default=None)
  parser.add_argument("--smooth", type=int, default=None, help="moving-mean window (points)")
  args = parser.parse_args(argv)
  if args.smooth is not None and args.smooth < 1:
    parser.error(f"--smooth must be at least 1, got {args.smooth}")
  try:
    print(plot_run(args.run_dirs, args.out, title=args.title, smooth=args.smooth))
  except ValueError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  main()
