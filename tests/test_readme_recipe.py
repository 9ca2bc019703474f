"""The README's tiny-model recipe, run as written (one slow end-to-end test).

The commands are the ``bash`` block that follows the ``<!-- readme-recipe``
marker in README.md: comments dropped, lines ending in ``\\`` joined, each run
with ``shlex.split`` in a temporary folder, one after the other, each of them
expected to succeed. Only the size changes, by these substitutions (each must
match, so the test fails when the README's commands change under it):

* ``.venv/bin/python`` -> this interpreter (the project's environment);
* ``--num_images 3000`` -> ``--num_images 40`` (32 train, 4 val, 4 test images);
* the pretrain command gets ``--config.pretrain.steps=4`` (warm-up 1, batch 2)
  and the single bucket below;
* both train commands get ``--config.max_iters=6 --config.warmup_steps=2
  --config.save_checkpoint_every=6`` appended (one checkpoint and one
  validation, at the end; the last occurrence of a flag wins),
  ``--config.finetune_cnn_after=-1`` (one training program, where CNN
  fine-tuning from step 1 compiles a second) and
  ``--config.model.buckets=((256,256),)``: a single shape bucket, so that
  training, validation, evaluation and predict each compile their programs
  once.

The commands run on one CPU device (``XLA_FLAGS`` of the test set-up
removed), with the user's cache folder in the temporary folder. Validation
and evaluation score captions with METEOR, so the test needs Java.
"""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from densecap_jax.evaluation import meteor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = "<!-- readme-recipe"
EXPECTED_MODULES = ["densecap_jax.data.synthetic", "densecap_jax.data.preprocess",
                    "densecap_jax.train.pretrain", "densecap_jax.train", "densecap_jax.train",
                    "densecap_jax.evaluation", "densecap_jax.predict"]
# appended to both train commands (the last occurrence of a flag wins)
TRAIN_FLAGS = (" --config.max_iters=6 --config.warmup_steps=2 --config.save_checkpoint_every=6 "
               "--config.finetune_cnn_after=-1 '--config.model.buckets=((256,256),)'")
# appended to the pretrain command: a few steps of small batches, one bucket
PRETRAIN_FLAGS = (" --config.pretrain.steps=4 --config.pretrain.warmup_steps=1 "
                  "--config.pretrain.batch_size=2 '--config.model.buckets=((256,256),)'")
SUBSTITUTIONS = [  # (module, README text, replacement)
    (None, ".venv/bin/python", sys.executable),
    ("densecap_jax.data.synthetic", "--num_images 3000", "--num_images 40"),
    ("densecap_jax.train", "--config tiny", "--config tiny"),
]


def readme_recipe(readme_path):
  """The commands of the fenced block after the recipe marker, one string each."""
  with open(readme_path, encoding="utf-8") as f:
    text = f.read()
  start = text.index(MARKER)
  block = re.search(r"```bash\n(.*?)\n```", text[start:], re.S)
  assert block, "no ```bash block after the readme-recipe marker"
  commands, current = [], ""
  for line in block.group(1).splitlines():
    if not current and (not line.strip() or line.lstrip().startswith("#")):
      continue
    current += line.strip()
    if current.endswith("\\"):
      current = current[:-1].rstrip() + " "
    else:
      commands.append(current)
      current = ""
  assert not current, f"unfinished command: {current}"
  return commands


def module_of(command):
  words = shlex.split(command)
  return words[words.index("-m") + 1] if "-m" in words else None


def shrink(command):
  for module, old, new in SUBSTITUTIONS:
    if module is None or module_of(command) == module:
      assert old in command, f"the README's {module or 'recipe'} command lost {old!r}: {command}"
      command = command.replace(old, new)
  if module_of(command) == "densecap_jax.train":
    command += TRAIN_FLAGS
  if module_of(command) == "densecap_jax.train.pretrain":
    command += PRETRAIN_FLAGS
  return command


def test_recipe_block_is_the_documented_commands():
  commands = readme_recipe(os.path.join(ROOT, "README.md"))
  assert [module_of(c) for c in commands] == EXPECTED_MODULES, commands
  assert all(c.startswith(".venv/bin/python -m ") for c in commands), commands
  first, captioner = (c for c in commands if module_of(c) == "densecap_jax.train")
  assert "--config tiny --workdir runs/tiny" in first
  assert "--config.checkpoint_start_from=runs/pretrain/model" in first
  pretrain = commands[EXPECTED_MODULES.index("densecap_jax.train.pretrain")]
  assert "--labels data/synthetic/vg/objects.json --workdir runs/pretrain" in pretrain
  assert "--config.checkpoint_start_from=runs/tiny " in captioner
  preprocess = commands[EXPECTED_MODULES.index("densecap_jax.data.preprocess")]
  for flag in ("--image_size 256", "--h5_output data/synthetic/regions.h5",
               "--json_output data/synthetic/regions-dicts.json"):
    assert flag in preprocess  # what the tiny config reads


@pytest.mark.slow
def test_readme_recipe_runs(tmp_path):
  try:
    meteor.check_available()
  except meteor.MeteorError as e:
    pytest.skip(f"validation and evaluation need METEOR: {e}")
  commands = [shrink(c) for c in readme_recipe(os.path.join(ROOT, "README.md"))]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
             XDG_CACHE_HOME=str(tmp_path / "cache"))
  env.pop("XLA_FLAGS", None)
  for command in commands:
    done = subprocess.run(shlex.split(command), cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, (command, done.stdout[-3000:], done.stderr[-3000:])

  assert os.path.isfile(tmp_path / "data/synthetic/regions.h5")
  assert os.path.isdir(tmp_path / "runs/tiny/best") and os.path.isdir(tmp_path / "runs/tiny/last")
  with open(tmp_path / "runs/captioner/config.json") as f:
    captioner = json.load(f)
  assert captioner["trained_modules"] == ["language_model"], captioner["trained_modules"]
  with open(tmp_path / "runs/captioner/eval_test.json") as f:
    results = json.load(f)["results"]
  assert results["num_images"] == 4 and 0.0 <= results["map"] <= 1.0
  with open(tmp_path / "out/tiny/vis/results.json") as f:
    entries = json.load(f)["results"]
  assert len(entries) == 4 and all(e["captions"] for e in entries)
  assert os.path.isfile(tmp_path / "out/tiny/vis/view_results.html")
  assert len(os.listdir(tmp_path / "out/tiny/drawn")) == 4
