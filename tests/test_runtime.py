"""Tests for process start-up: the compilation cache folder, compile notices, quiet logs.

The commands are run as subprocesses (``python -m densecap_jax.predict``) with
a small random model, each with its own cache folder in ``tmp_path``.
"""

import argparse
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
import small_model

from densecap_jax import runtime

VOCAB = [None, "a", "red", "circle"]
IMAGE_SIZE = 32
NOISE_MARKER = "orbax-checkpoint version"  # orbax's INFO line when it loads a model


@pytest.fixture(scope="module")
def model_and_image(tmp_path_factory):
  folder = tmp_path_factory.mktemp("runtime")
  model = small_model.save_random_tiny_model(folder / "model", VOCAB, image_size=IMAGE_SIZE,
                                             buckets=((IMAGE_SIZE, IMAGE_SIZE),))
  image = folder / "image.png"
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), np.uint8)).save(image)
  return model, str(image)


def run_predict(model_and_image, tmp_path, *flags, cache=None, env=None):
  """``(seconds, completed process)`` of one predict run; ``cache``: DENSECAP_JAX_CACHE_DIR."""
  model, image = model_and_image
  environment = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
  environment.pop("XLA_FLAGS", None)
  if cache is not None:
    environment[runtime.CACHE_ENV] = str(cache)
  vis = tmp_path / f"vis{len(list(tmp_path.glob('vis*')))}"
  start = time.perf_counter()
  done = subprocess.run(
      [sys.executable, "-m", "densecap_jax.predict", "--checkpoint", model, "--input_image", image,
       "--output_vis_dir", str(vis), *flags],
      capture_output=True, text=True, env=environment, timeout=600, check=False)
  assert done.returncode == 0, done.stderr
  return time.perf_counter() - start, done


def cache_entries(folder):
  return sorted(n for n in os.listdir(folder) if n.endswith("-cache")) if os.path.isdir(
      folder) else []


# ------------------------------------------------------------------ units


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
  for name in (runtime.CACHE_ENV, "JAX_COMPILATION_CACHE_DIR", "XDG_CACHE_HOME"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert runtime.cache_dir() == str(tmp_path / "home" / ".cache" / "densecap_jax" / "jax")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert runtime.cache_dir() == str(tmp_path / "xdg" / "densecap_jax" / "jax")
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
  assert runtime.cache_dir() == str(tmp_path / "jax")
  monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path / "mine"))
  assert runtime.cache_dir() == str(tmp_path / "mine")
  for off in ("", "off", "OFF", " off "):
    monkeypatch.setenv(runtime.CACHE_ENV, off)
    assert runtime.cache_dir() is None


def test_runtime_flags():
  parser = argparse.ArgumentParser()
  runtime.add_runtime_flags(parser)
  args = parser.parse_args([])
  assert (args.verbose, args.compilation_cache) == (False, True)
  for flag in ("--no_compilation_cache", "--nocompilation_cache"):
    args = parser.parse_args(["--verbose", flag])
    assert (args.verbose, args.compilation_cache) == (True, False)


def test_notice_says_compiling_then_loading_once_the_key_is_recorded(monkeypatch, tmp_path,
                                                                     capsys):
  monkeypatch.setitem(runtime._state, "cache", str(tmp_path))  # pylint: disable=protected-access
  monkeypatch.setitem(runtime._state, "announced", set())  # pylint: disable=protected-access
  with runtime.compiling(3, key={"model": "m"}, detail="3 buckets") as notice:
    pass
  assert capsys.readouterr().err == "compiling 3 programs (3 buckets; first run only)\n"
  assert not notice.from_cache and notice.seconds >= 0
  runtime.announce_compiles(3, key={"model": "m"})
  assert capsys.readouterr().err == ""  # once per process and key
  monkeypatch.setitem(runtime._state, "announced", set())  # pylint: disable=protected-access
  notice = runtime.announce_compiles(3, key={"model": "m"}, detail="3 buckets")
  assert notice.from_cache
  assert capsys.readouterr().err == "loading 3 compiled programs from the cache (3 buckets)\n"
  runtime.announce_compiles(1, key={"model": "other"}, upto=True)
  assert capsys.readouterr().err == "compiling up to 1 program (first run only)\n"
  monkeypatch.setitem(runtime._state, "cache", None)  # pylint: disable=protected-access
  runtime.announce_compiles(2, key={"model": "third"})
  assert capsys.readouterr().err == "compiling 2 programs (compilation cache off)\n"


# ------------------------------------------------------------ predict runs


@pytest.mark.slow
def test_second_predict_loads_its_programs_from_the_cache(model_and_image, tmp_path):
  cache = tmp_path / "cache"
  hits = "Persistent compilation cache hit for 'jit_run'"  # JAX logs it with JAX_LOG_COMPILES
  first_s, first = run_predict(model_and_image, tmp_path, cache=cache,
                               env={"JAX_LOG_COMPILES": "1"})
  assert hits not in first.stderr
  assert "compiling up to 1 program (one per shape bucket used; first run only)" in first.stderr
  entries = cache_entries(cache)
  model_entries = [cache / name for name in entries if name.startswith("jit_run-")]
  assert model_entries, entries
  second_s, second = run_predict(model_and_image, tmp_path, cache=cache,
                                 env={"JAX_LOG_COMPILES": "1"})
  assert "loading up to 1 compiled program from the cache" in second.stderr, second.stderr
  assert hits in second.stderr, second.stderr  # usually faster too (not asserted: shared CPUs)
  assert first.stdout.splitlines()[-1] == second.stdout.splitlines()[-1]  # the same captions
  # nothing of the first run's cache was lost, and the model was not compiled again
  # under another key; small helper programs (jit_add, jit_stack, ...) cross the
  # 0.1 s caching threshold or not with the machine's load, so they may be added
  after = cache_entries(cache)
  assert set(entries) <= set(after)
  assert [n for n in after if n.startswith("jit_run-")] == [
      n for n in entries if n.startswith("jit_run-")]
  print(f"first run {first_s:.1f} s, second {second_s:.1f} s")


@pytest.mark.slow
def test_cache_off_by_flag_or_environment_writes_nothing(model_and_image, tmp_path):
  cache = tmp_path / "cache"
  _, done = run_predict(model_and_image, tmp_path, "--no_compilation_cache", cache=cache)
  assert "compilation cache off)" in done.stderr
  assert not cache.exists() or not os.listdir(cache)
  home = tmp_path / "home"
  _, done = run_predict(model_and_image, tmp_path, cache="off",
                        env={"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")})
  assert "compilation cache off)" in done.stderr and not home.exists()


@pytest.mark.slow
def test_an_unusable_cache_folder_is_reported_once_and_predict_runs(model_and_image, tmp_path):
  (tmp_path / "file").write_text("not a folder")
  _, done = run_predict(model_and_image, tmp_path, cache=tmp_path / "file" / "jax")
  warnings = [line for line in done.stderr.splitlines() if "compilation cache folder" in line]
  assert len(warnings) == 1 and warnings[0].startswith("warning: cannot use"), done.stderr
  assert "compilation cache off)" in done.stderr


@pytest.mark.slow
def test_log_noise_only_with_verbose(model_and_image, tmp_path):
  _, quiet = run_predict(model_and_image, tmp_path, cache="off")
  assert NOISE_MARKER not in quiet.stderr
  assert "INFO" not in quiet.stderr and "Unable to initialize backend" not in quiet.stderr
  _, verbose = run_predict(model_and_image, tmp_path, "--verbose", cache="off")
  assert NOISE_MARKER in verbose.stderr


# ------------------------------------------------------------ the Python API

LIBRARY_RUN = """
import sys
import jax
import densecap_jax
hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None)
keyword = {"on": {}, "off": {"compilation_cache": False}}[sys.argv[3]]
model = densecap_jax.load_model(sys.argv[1], **keyword)
result = model.predict([sys.argv[2]])[0]
print(jax.config.jax_compilation_cache_dir)
print(len(hits))
print(" | ".join(result["captions"]))
"""


def run_library(model_and_image, env, mode="on"):
  """Runs ``load_model(...).predict`` in a fresh Python process that never calls runtime.setup."""
  model, image = model_and_image
  environment = dict(os.environ, JAX_PLATFORMS="cpu", **env)
  environment.pop("XLA_FLAGS", None)
  for name in (runtime.CACHE_ENV, "JAX_COMPILATION_CACHE_DIR"):
    if name not in env:
      environment.pop(name, None)
  done = subprocess.run([sys.executable, "-c", LIBRARY_RUN, model, image, mode],
                        capture_output=True, text=True, env=environment, timeout=600, check=False)
  assert done.returncode == 0, done.stderr
  folder, hits, captions = done.stdout.splitlines()[-3:]
  return folder, int(hits), captions


@pytest.mark.slow
def test_load_model_uses_the_compilation_cache_across_processes(model_and_image, tmp_path):
  # No DENSECAP_JAX_CACHE_DIR: the default folder under XDG_CACHE_HOME, as for a user.
  xdg = tmp_path / "xdg"
  env = {"XDG_CACHE_HOME": str(xdg), "HOME": str(tmp_path / "home")}
  folder, hits, captions = run_library(model_and_image, env)
  assert folder == str(xdg / "densecap_jax" / "jax")
  assert hits == 0
  model_entries = [n for n in cache_entries(folder) if n.startswith("jit_run-")]
  assert model_entries
  folder2, hits2, captions2 = run_library(model_and_image, env)
  assert (folder2, captions2) == (folder, captions)
  assert hits2 >= 1  # the model's program came from the first process's cache
  assert [n for n in cache_entries(folder) if n.startswith("jit_run-")] == model_entries
  # turned off: by the keyword or by the environment, nothing is used or written
  off = {"XDG_CACHE_HOME": str(tmp_path / "xdg-off"), "HOME": str(tmp_path / "home")}
  assert run_library(model_and_image, off, mode="off")[:2] == ("None", 0)
  assert run_library(model_and_image, dict(off, **{runtime.CACHE_ENV: "off"}))[:2] == ("None", 0)
  assert not (tmp_path / "xdg-off").exists()


def test_use_compilation_cache_keeps_a_choice_already_made(monkeypatch, tmp_path):
  state = runtime._state  # pylint: disable=protected-access
  monkeypatch.setitem(state, "configured", True)
  monkeypatch.setitem(state, "cache", "/chosen")
  monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path / "other"))
  assert runtime.use_compilation_cache() == "/chosen"  # setup() ran first: kept
  assert not (tmp_path / "other").exists()


def test_prog_name_is_the_command_as_typed(monkeypatch):
  import types  # pylint: disable=g-import-not-at-top
  script = types.ModuleType("__main__")  # a console script or a checkout script: no spec
  script.__spec__ = None
  monkeypatch.setitem(sys.modules, "__main__", script)
  monkeypatch.setattr(sys, "argv", ["/venv/bin/densecap-score", "--help"])
  assert runtime.prog_name("densecap_jax.score") == "densecap-score"
  monkeypatch.setattr(sys, "argv", ["eval/evaluate.py"])
  assert runtime.prog_name("densecap_jax.evaluation") == "eval/evaluate.py"
  module = types.ModuleType("__main__")  # python -m densecap_jax.evaluation
  module.__spec__ = types.SimpleNamespace(name="densecap_jax.evaluation.__main__")
  monkeypatch.setitem(sys.modules, "__main__", module)
  monkeypatch.setattr(sys, "argv", ["/src/densecap_jax/evaluation/__main__.py"])
  assert runtime.prog_name("densecap_jax.evaluation") == "python -m densecap_jax.evaluation"
  module.__spec__ = types.SimpleNamespace(name="pytest.__main__")  # main(argv) from elsewhere
  assert runtime.prog_name("densecap_jax.score") == "python -m densecap_jax.score"


def test_bundled_notice_names_the_installed_converter():
  from densecap_jax.commands import flags as cli  # pylint: disable=g-import-not-at-top
  assert "densecap-convert" in cli.BUNDLED_NOTICE
  assert "Converting the original weights" in cli.BUNDLED_NOTICE
  assert "tools/" not in cli.BUNDLED_NOTICE  # a pip install has no tools/ folder
