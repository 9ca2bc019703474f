"""``tools/make_bundled_model.py``: a training stage that ends early stops the tool."""

import pytest

from tools import make_bundled_model


@pytest.mark.parametrize("reason", ["SIGTERM", "SIGINT", "exploded"])
def test_a_stage_that_ends_early_stops_before_anything_is_written(monkeypatch, tmp_path, reason):
  calls = []
  monkeypatch.setattr(make_bundled_model.trainer, "train",
                      lambda config, workdir: calls.append(workdir) or (None, reason))
  with pytest.raises(SystemExit, match=f"ended early \\({reason}\\); the bundled model is "
                                       "unchanged; run it again to resume"):
    make_bundled_model.train_stage(None, str(tmp_path / "run"))
  assert calls == [str(tmp_path / "run")]


def test_a_stage_that_ran_to_its_end_returns(monkeypatch, tmp_path):
  monkeypatch.setattr(make_bundled_model.trainer, "train", lambda config, workdir: (None, "done"))
  assert make_bundled_model.train_stage(None, str(tmp_path / "run")) is None
