"""``tools/plot_training.py`` on metrics.jsonl files written here."""

import json

import numpy as np
import pytest

from tools import plot_training

pytest.importorskip("matplotlib")


def write_run(folder, rows):
  folder.mkdir()
  with open(folder / "metrics.jsonl", "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in rows))
  return folder


def training_row(step, loss):
  return {"step": step, "loss": loss, "captioning_loss": 0.8 * loss, "word_loss": 0.1 * loss,
          "box_decay_loss": 0.01, "num_pos": 12.0, "steps_per_sec": 3.0}


def test_reads_training_and_validation_rows(tmp_path):
  run = write_run(tmp_path / "run", [
      training_row(10, 5.0), {"step": 10, "val_map": 1.0, "val_detmap": 2.0, "unit": "percent"},
      {"step": 15, "nonfinite_step": 1.0}, training_row(20, 4.0),
      {"step": 20, "val_map": 3.0, "val_colour_shape_accuracy": 50.0, "unit": "percent"}])
  training, validation = plot_training.read_metrics(str(run))
  assert [s for s, _ in training] == [10, 20] and training[1][1]["loss"] == 4.0
  assert validation == [(10, {"val_map": 1.0, "val_detmap": 2.0}),
                        (20, {"val_map": 3.0, "val_colour_shape_accuracy": 50.0})]
  assert plot_training.loss_keys(training) == ["loss", "captioning_loss", "word_loss",
                                               "box_decay_loss"]
  assert plot_training.validation_keys(validation) == ["val_map", "val_detmap",
                                                       "val_colour_shape_accuracy"]


def test_moving_mean():
  assert plot_training.moving_mean([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
  assert plot_training.moving_mean([1.0, 3.0], 1) == [1.0, 3.0]


def test_plots_consecutive_stages_into_one_png(tmp_path):
  first = write_run(tmp_path / "joint", [training_row(s, 10.0 / s) for s in range(10, 110, 10)] +
                    [{"step": 100, "val_map": 5.0, "val_detmap": 9.0, "unit": "percent"}])
  second = write_run(tmp_path / "captioner", [training_row(s, 1.0 / s) for s in range(10, 60, 10)]
                     + [{"step": 50, "val_map": 7.0, "val_detmap": 9.0, "unit": "percent"}])
  out = tmp_path / "plot.png"
  assert plot_training.plot_run([str(first), str(second)], str(out)) == str(out)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(out) as image:
    assert image.format == "PNG" and image.size == (1000, 800)  # losses and mAP
    pixels = np.asarray(image.convert("L"))
  assert pixels.min() < 100 and pixels.max() > 200  # drawn, not blank
  with open(second / "metrics.jsonl", "a") as f:
    f.write(json.dumps({"step": 50, "val_colour_shape_accuracy": 20.0}) + "\n")
  plot_training.plot_run([str(first), str(second)], str(out))
  with Image.open(out) as image:
    assert image.size == (1000, 1100)  # and a panel of the attribute accuracy


def test_attribute_keys_have_their_own_panel():
  assert plot_training.is_attribute_key("val_colour_shape_accuracy")
  assert plot_training.is_attribute_key("val_attribute_matched")
  assert not plot_training.is_attribute_key("val_map")
  assert not plot_training.is_attribute_key("val_detmap")


def test_the_stages_are_drawn_one_after_another(tmp_path, monkeypatch):
  first = write_run(tmp_path / "a", [training_row(10, 1.0), training_row(100, 0.5)])
  second = write_run(tmp_path / "b", [training_row(10, 0.4), {"step": 30, "val_map": 2.0}])
  drawn = []
  from matplotlib.axes import Axes  # pylint: disable=g-import-not-at-top
  plot = Axes.plot

  def record(self, x, y, *args, **kwargs):
    drawn.append((kwargs.get("label"), list(x), list(y)))
    return plot(self, x, y, *args, **kwargs)

  monkeypatch.setattr(Axes, "plot", record)
  plot_training.plot_run([str(first), str(second)], str(tmp_path / "p.png"), smooth=1)
  labelled = {label: (x, y) for label, x, y in drawn if label}
  assert labelled["loss"] == ([10, 100], [1.0, 0.5])  # the first stage's curve carries the label
  assert ([110], [0.4]) in [(x, y) for label, x, y in drawn if not label]  # offset by 100
  assert labelled["val_map"] == ([130], [2.0])


def test_a_folder_without_metrics_is_a_one_line_error(tmp_path):
  with pytest.raises(ValueError, match="metrics.jsonl not found"):
    plot_training.plot_run([str(tmp_path)], str(tmp_path / "p.png"))
  write_run(tmp_path / "bad", ["not a row"])
  with pytest.raises(ValueError, match="line 1 is not a JSON object with a step"):
    plot_training.plot_run([str(tmp_path / "bad")], str(tmp_path / "p.png"))
  assert not (tmp_path / "p.png").exists()
