"""Rebuilds the demo model that ships inside the package, from nothing: ``make bundled-model``.

1. renders the synthetic dataset (``densecap_jax.data.synthetic``, fixed seed),
2. preprocesses it like Visual Genome (``densecap_jax.data.preprocess``),
3. trains the ``tiny`` config on it (``train/configs/tiny.py``),
4. fits the captioner to the trained detector: from the best model of step
   3, only the language model trains (``trained_modules``), without dropout,
   for ``--captioner_iters`` steps. Trained jointly, the LM follows codes
   that are still changing; fitted to the fixed codes it tells the regions
   apart more sharply (``benchmarks/region_codes.py``: median rank of an
   object's caption 112.5 of 762 after step 3, 105 after step 4),
5. evaluates the best validation checkpoint on the test split,
6. writes the model to ``densecap_jax/bundled/tiny_synthetic`` (with its
   test-split numbers in ``metrics.json``) and a few test images to
   ``densecap_jax/bundled/examples``.

Every step's output lives under ``--workdir``; a step whose output is already
there is skipped, and training resumes where it stopped.
"""

import argparse
import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from densecap_jax import model_dir  # pylint: disable=g-import-not-at-top
from densecap_jax import files
from densecap_jax.evaluation import split_eval
from densecap_jax.data import loader
from densecap_jax.data import visual_genome as preprocess
from densecap_jax.data import synthetic_world as synthetic
from densecap_jax.train import trainer
from densecap_jax.train.configs import tiny

BUNDLED = os.path.join(ROOT, "densecap_jax", "bundled")
NUM_EXAMPLES = 3
CAPTIONER_ITERS = 2000


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", default=os.path.join(ROOT, "out", "bundled"))
  parser.add_argument("--num_images", type=int, default=3000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--max_iters", type=int, default=0,
                      help="joint training steps (default: the tiny config's)")
  parser.add_argument("--captioner_iters", type=int, default=CAPTIONER_ITERS,
                      help="steps of the language model alone on the trained detector")
  return parser.parse_args(argv)


def captioner_config(config, start_from, max_iters):
  """The joint ``config`` as the captioner stage: the LM alone, from the model ``start_from``."""
  config = config.copy_and_resolve_references()
  config.checkpoint_start_from = start_from
  config.trained_modules = ("language_model",)
  config.max_iters = max_iters
  config.model.drop_prob = 0.0  # fc6 / fc7 are fixed: dropout would only blur the LM's input
  config.warmup_steps = min(config.warmup_steps, max_iters // 10)
  config.save_checkpoint_every = min(config.save_checkpoint_every, max_iters)
  return config


def main(argv=None):
  args = parse_args(argv)
  vg_dir = os.path.join(args.workdir, "vg")
  h5, js = os.path.join(args.workdir, "regions.h5"), os.path.join(args.workdir, "regions-dicts.json")
  config = tiny.get_config()
  if not os.path.exists(os.path.join(vg_dir, "densecap_splits.json")):
    synthetic.generate_dataset(vg_dir, args.num_images, args.seed)
  if not os.path.exists(js):
    preprocess.preprocess(os.path.join(vg_dir, "region_descriptions.json"),
                          os.path.join(vg_dir, "images"),
                          os.path.join(vg_dir, "densecap_splits.json"), h5, js,
                          image_size=config.model.image_size)
  config.data_h5, config.data_json = h5, js
  if args.max_iters:
    config.max_iters = args.max_iters
  run_dir = os.path.join(args.workdir, "run")
  trainer.train(config, run_dir)
  captioner_dir = os.path.join(args.workdir, "captioner")
  trainer.train(captioner_config(config, run_dir, args.captioner_iters), captioner_dir)

  params, model_config, vocab = model_dir.load_model(captioner_dir)
  model_config.drop_prob = config.model.drop_prob  # what fine-tuning it would use
  data = loader.DenseCapH5(h5, js)
  results = split_eval.evaluate_split(
      params, data, "test", split_eval.make_predict_fn(model_config), config=model_config,
      batch_size=4)
  target = os.path.join(BUNDLED, "tiny_synthetic")
  model_dir.save_model(target, params, model_config, vocab, overwrite=True)
  files.write_json(os.path.join(target, "metrics.json"), {
      "split": "test", "num_images": results["num_images"], "map": results["map"],
      "detmap": results["detmap"], "num_proposals": model_config.num_proposals,
      "training_steps": config.max_iters, "captioner_steps": args.captioner_iters,
      "dataset": {"num_images": args.num_images, "seed": args.seed}})
  examples = os.path.join(BUNDLED, "examples")
  os.makedirs(examples, exist_ok=True)
  with open(os.path.join(vg_dir, "densecap_splits.json")) as f:
    test_ids = json.load(f)["test"][:NUM_EXAMPLES]
  for i in test_ids:
    shutil.copyfile(os.path.join(vg_dir, "images", f"{i}.jpg"),
                    os.path.join(examples, f"synthetic_{i}.jpg"))
  print(f"bundled model: {target}\n  test mAP {results['map']:.4f}, detection mAP "
        f"{results['detmap']:.4f} over {results['num_images']} images")


if __name__ == "__main__":
  main()
