"""A newcomer's first errors: a missing dataset names the command that writes it; --help shows defaults."""

import os
import subprocess
import sys

import pytest

from densecap_jax import predictor
from densecap_jax.data import loader
from densecap_jax.commands import preprocess
from densecap_jax.commands import synthetic
from densecap_jax.commands import evaluate as evaluation_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_missing_dataset_files_name_the_commands_that_write_them(tmp_path):
  h5, js = str(tmp_path / "regions.h5"), str(tmp_path / "regions-dicts.json")
  with pytest.raises(ValueError) as error:
    loader.DenseCapH5(h5, js)
  message = str(error.value)
  assert f"dataset HDF5 {h5} and dataset JSON {js} not found" in message
  assert "python -m densecap_jax.data.preprocess" in message
  assert "--h5_output" in message and "python -m densecap_jax.data.synthetic" in message
  assert "\n" not in message

  (tmp_path / "regions-dicts.json").write_text("{}")
  with pytest.raises(ValueError, match="densecap_jax.data.preprocess") as error:
    loader.DenseCapH5(h5, js)
  assert str(error.value).startswith(f"dataset HDF5 {h5} not found;")


def test_training_without_the_synthetic_data_says_how_to_make_it(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  done = subprocess.run([sys.executable, "-m", "densecap_jax.train", "--config", "tiny",
                         "--workdir", "run"], cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=120, check=False)
  assert done.returncode != 0
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith("error: dataset HDF5 data/synthetic/regions.h5"), done.stderr[-2000:]
  assert "python -m densecap_jax.data.preprocess" in last
  assert "python -m densecap_jax.data.synthetic" in last
  assert "Traceback" not in done.stderr


def test_evaluation_with_a_wrong_data_h5_says_how_to_make_it(tmp_path):
  (tmp_path / "regions-dicts.json").write_text("{}")
  wrong = str(tmp_path / "typo.h5")
  with pytest.raises(SystemExit) as exit_info:
    evaluation_main.main(["--checkpoint", predictor.bundled_model_path(), "--data_h5", wrong,
                          "--data_json", str(tmp_path / "regions-dicts.json")])
  message = str(exit_info.value.code)
  assert f"dataset HDF5 {wrong} not found" in message
  assert "python -m densecap_jax.data.preprocess" in message


@pytest.mark.parametrize("module, expected", [
    (preprocess, ["(default: data/visual-genome/region_descriptions.json)",
                  "(default: data/VG-regions.h5)", "(default: data/VG-regions-dicts.json)",
                  "(default: 720)", "(default: 15)", "(default: error)"]),
    (synthetic, ["(default: 500)", "(default: 0)", "(default: 320)", "(default: 0.1)",
                 "(default: 90)", "output folder (required)"]),
])
def test_data_commands_show_their_defaults(module, expected, capsys):
  with pytest.raises(SystemExit) as exit_info:
    module.main(["--help"])
  assert exit_info.value.code == 0
  text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
  for fragment in expected:
    assert fragment in text, (fragment, text)
  assert "(default: None)" not in text
