"""The package as a user installs it: the wheel, in a fresh environment, outside the checkout.

``pip wheel`` builds the wheel from a copy of what the build reads
(``setup.cfg``, ``pyproject.toml``, ``README.md``, ``densecap_jax/``), offline:
``--no-index --no-build-isolation`` with the setuptools of the test extras.
The build output must carry no setuptools warning. The wheel goes into a
fresh ``python -m venv --without-pip`` environment that sees the project
environment's installed dependencies through a ``.pth`` file listing its
site-packages folders (plain path lines: the ``.pth`` files there, this
checkout's editable install among them, are not processed), so nothing is
downloaded and ``densecap_jax`` can only come from the wheel, which the test
checks. Every console script then runs from a temporary folder with
``PYTHONPATH`` unset: ``--help`` for each, and ``densecap-predict`` for real on
a bundled example image, with the bundled model.
"""

import json
import os
import re
import shutil
import site
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {  # console script -> a flag its --help must list
    "densecap-predict": "--input_image",
    "densecap-extract-features": "--output_h5",
    "densecap-serve": "--port",
    "densecap-train": "--workdir",
    "densecap-eval": "--data_h5",
    "densecap-convert": "--input",
    "densecap-preprocess": "--region_data",
    "densecap-synthetic": "--num_images",
    "densecap-index": "--shard_size",
    "densecap-search": "--query",
    "densecap-score": "--phrase",
    "densecap-fetch": "--models_url",
}
# absl's --help (densecap-train) exits with status 1 after printing the help.
ABSL_SCRIPTS = {"densecap-train"}


def run(args, **kwargs):
  done = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False, **kwargs)
  assert done.returncode == 0, (args, done.stdout[-3000:], done.stderr[-3000:])
  return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """``(venv, env, user_dir)``: the fresh environment holding the wheel, its environment
  variables and a folder outside the checkout to run commands in."""
  base = tmp_path_factory.mktemp("install")
  source = base / "source"
  source.mkdir()
  for name in ("setup.cfg", "pyproject.toml", "README.md"):
    shutil.copy(os.path.join(ROOT, name), source / name)
  shutil.copytree(os.path.join(ROOT, "densecap_jax"), source / "densecap_jax",
                  ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  build = run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-index",
               "--no-build-isolation", "--wheel-dir", str(base / "dist"), str(source)])
  # setuptools' warning classes (SetuptoolsDeprecationWarning, BuildBackendWarning, ...)
  warnings = [line for line in (build.stdout + build.stderr).splitlines()
              if re.search(r"[A-Z]\w*Warning\b|!!$", line)]
  assert not warnings, "\n".join(warnings)
  (wheel,) = (base / "dist").glob("densecap_jax-*.whl")
  with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
  for path in ("densecap_jax/train/configs/tiny.py", "densecap_jax/convert/t7.py",
               "densecap_jax/bundled/tiny_synthetic/config.json",
               "densecap_jax/bundled/tiny_synthetic/params/_METADATA",
               "densecap_jax/bundled/examples/synthetic_12.jpg",
               "densecap_jax/viewer/view_results.html", "densecap_jax/static/index.html"):
    assert path in names, path
  assert any(n.startswith("densecap_jax/bundled/tiny_synthetic/params/ocdbt.process_0/")
             for n in names)

  venv = base / "venv"
  run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
  python = venv / "bin" / "python"
  purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
                ).stdout.strip()
  with open(os.path.join(purelib, "project_dependencies.pth"), "w") as f:
    f.write("\n".join(site.getsitepackages()) + "\n")
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
  env.update(JAX_PLATFORMS="cpu", XDG_CACHE_HOME=str(base / "cache"))
  user_dir = base / "user"
  user_dir.mkdir()
  run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
       str(wheel)], cwd=user_dir, env=env)
  where = run([str(python), "-c", "import densecap_jax; print(densecap_jax.__file__)"],
              cwd=user_dir, env=env).stdout.strip()
  assert where.startswith(purelib), where
  return venv, env, user_dir


@pytest.mark.slow
def test_console_scripts_show_their_help(installed):
  venv, env, user_dir = installed
  for script, flag in SCRIPTS.items():
    done = subprocess.run([str(venv / "bin" / script), "--help"], cwd=user_dir, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode in ((0, 1) if script in ABSL_SCRIPTS else (0,)), (script, done.stderr)
    assert flag in done.stdout, (script, done.stdout, done.stderr[-2000:])
    if script not in ABSL_SCRIPTS:  # usage names the command as typed
      assert done.stdout.startswith(f"usage: {script} "), (script, done.stdout[:200])
  done = run([str(venv / "bin" / "python"), "-m", "densecap_jax.convert", "--help"],
             cwd=user_dir, env=env)
  assert "--output" in done.stdout
  assert done.stdout.startswith("usage: python -m densecap_jax.convert "), done.stdout[:200]


@pytest.mark.slow
def test_installed_train_finds_its_config_and_names_the_missing_data(installed):
  venv, env, user_dir = installed
  done = subprocess.run([str(venv / "bin" / "densecap-train"), "--config", "tiny", "--workdir",
                         "run"], cwd=user_dir, env=env, capture_output=True, text=True,
                        timeout=120, check=False)
  assert done.returncode != 0
  assert "data/synthetic/regions.h5" in done.stderr and "densecap_jax.data.preprocess" in (
      done.stderr), done.stderr[-3000:]


@pytest.mark.slow
def test_installed_predict_captions_a_bundled_example(installed):
  venv, env, user_dir = installed
  python = venv / "bin" / "python"
  examples = run([str(python), "-c", "from densecap_jax import predictor; "
                  "print(predictor.bundled_examples_path())"], cwd=user_dir, env=env
                 ).stdout.strip()
  image = os.path.join(examples, "synthetic_12.jpg")
  assert os.path.isfile(image) and not image.startswith(ROOT)
  run([str(venv / "bin" / "densecap-predict"), "--input_image", image, "--output_vis_dir", "vis",
       "--output_dir", "drawn"], cwd=user_dir, env=env)
  with open(user_dir / "vis" / "results.json") as f:
    results = json.load(f)
  (entry,) = results["results"]
  assert entry["img_name"] == "synthetic_12.jpg" and entry["captions"]
  assert not results["opt"]["checkpoint"].startswith(ROOT)
  for name in ("view_results.html", "viewer.js", "synthetic_12.jpg"):
    assert os.path.isfile(user_dir / "vis" / name), name
  assert os.path.isfile(user_dir / "drawn" / "synthetic_12.jpg")
