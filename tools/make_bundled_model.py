"""Rebuilds the demo model that ships inside the package, from nothing: ``make bundled-model``.

1. renders the synthetic dataset (``densecap_jax.data.synthetic``, fixed seed),
2. preprocesses it like Visual Genome (``densecap_jax.data.preprocess``),
3. pretrains the backbone and fc6 / fc7 for ``--pretrain_iters`` steps
   (``config.pretrain.steps``; 0 skips it) to classify the colour, shape,
   texture and size of the training split's objects from their regions
   (``python -m densecap_jax.train.pretrain`` on the dataset's
   ``objects.json``), as the original starts from VGG-16 trained on
   ImageNet, with relu5_3 scaled down to a trained detector's size
   (``config.pretrain.feature_rms``); then trains the ``tiny`` config from
   it (``train/configs/tiny.py``, 16,000 steps, the CNN trained from
   ``--finetune_cnn_after``). ``benchmarks/README.md`` ("The bundled
   model's recipe") has the runs that chose it,
4. fits the captioner to the trained detector: from the best model of step
   3, only the language model trains (``trained_modules``), without dropout,
   for ``--captioner_iters`` steps. Trained jointly, the LM follows codes
   that are still changing; fitted to the fixed codes it tells the regions
   apart more sharply (``benchmarks/region_codes.py``),
5. evaluates the best validation checkpoint on the test split,
6. writes the model to ``densecap_jax/bundled/tiny_synthetic`` and a few
   test images to ``densecap_jax/bundled/examples``,
7. measures it on the test split into ``metrics.json`` beside it: the mAPs,
   the caption attributes of the detected objects
   (``benchmarks/caption_attributes.py``) and phrase search
   (``benchmarks/retrieval.py``'s quality protocol, the LM ranking over all
   regions); plots the stages' loss and validation curves to
   ``training.png`` beside it (``tools/plot_training.py``),
8. redraws the README's pictures (``tools/make_readme_pictures.py``, needs
   chromium).

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
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

# pylint: disable=g-import-not-at-top,g-bad-import-order
import caption_attributes
import retrieval
from densecap_jax import model_dir
from densecap_jax import files
from densecap_jax import predictor
from densecap_jax.evaluation import split_eval
from densecap_jax.data import loader
from densecap_jax.data import region_labels
from densecap_jax.data import visual_genome as preprocess
from densecap_jax.data import synthetic_world as synthetic
from densecap_jax.train import region_pretraining
from densecap_jax.train import trainer
from densecap_jax.train.configs import tiny
from tools import make_readme_pictures
from tools import plot_training

BUNDLED = os.path.join(ROOT, "densecap_jax", "bundled")
NUM_EXAMPLES = 3
RENDER_SIZE = 320  # long side of the rendered scenes (before preprocessing)
CAPTIONER_ITERS = 4000
SEARCH_IMAGES = 100  # benchmarks/retrieval.py's defaults
SEARCH_CANDIDATES = 500


def parse_args(argv=None):
  config = tiny.get_config()
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", default=os.path.join(ROOT, "out", "bundled"))
  parser.add_argument("--num_images", type=int, default=3000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--pretrain_iters", type=int, default=config.pretrain.steps,
                      help="steps of region-attribute pretraining before training (0: none, "
                           "training starts from scratch)")
  parser.add_argument("--max_iters", type=int, default=config.max_iters,
                      help="joint training steps")
  parser.add_argument("--finetune_cnn_after", type=int, default=config.finetune_cnn_after,
                      help="joint step from which the pretrained CNN trains")
  parser.add_argument("--captioner_iters", type=int, default=CAPTIONER_ITERS,
                      help="steps of the language model alone on the trained detector")
  parser.add_argument("--no_pictures", action="store_true",
                      help="do not redraw the README pictures (needs chromium)")
  return parser.parse_args(argv)


def phrase_search_scores(model, workdir, seed):
  """Recall@1/5/10 and median rank of the LM ranking, ``benchmarks/retrieval.py``'s quality protocol."""
  folder = os.path.join(workdir, "search")
  shutil.rmtree(folder, ignore_errors=True)
  _, _, rows, num_queries, _ = retrieval.quality(model, folder, SEARCH_IMAGES, SEARCH_CANDIDATES,
                                                 seed)
  _, r1, r5, r10, median, _ = rows[0]  # "LM, all regions"
  return {"images": SEARCH_IMAGES, "queries": num_queries, "recall_at_1": float(r1),
          "recall_at_5": float(r5), "recall_at_10": float(r10), "median_rank": float(median)}


def captioner_config(config, start_from, max_iters):
  """The joint ``config`` as the captioner stage: the LM alone, from the model ``start_from``."""
  config = config.copy_and_resolve_references()
  config.checkpoint_start_from = start_from
  config.trained_modules = ("language_model",)
  config.finetune_cnn_after = -1
  config.max_iters = max_iters
  config.model.drop_prob = 0.0  # fc6 / fc7 are fixed: dropout would only blur the LM's input
  config.warmup_steps = min(config.warmup_steps, max_iters // 10)
  config.save_checkpoint_every = min(config.save_checkpoint_every, max_iters)
  return config


def train_stage(config, workdir):
  """Trains one stage in ``workdir``; stops the tool when training ended before ``max_iters``.

  A stopped stage (a signal, an exploded loss) leaves its checkpoint to
  resume from and writes nothing into the package.
  """
  _, reason = trainer.train(config, workdir)
  if reason != "done":
    raise SystemExit(f"make_bundled_model: training in {workdir} ended early ({reason}); "
                     f"the bundled model is unchanged; run it again to resume")


def main(argv=None):
  args = parse_args(argv)
  vg_dir = os.path.join(args.workdir, "vg")
  h5, js = os.path.join(args.workdir, "regions.h5"), os.path.join(args.workdir, "regions-dicts.json")
  config = tiny.get_config()
  if not os.path.exists(os.path.join(vg_dir, "densecap_splits.json")):
    synthetic.generate_dataset(vg_dir, args.num_images, args.seed, image_size=RENDER_SIZE)
  objects = os.path.join(vg_dir, "objects.json")
  if not os.path.exists(objects):  # a dataset generated before the file was part of it
    synthetic.write_objects_json(vg_dir, args.num_images, args.seed, RENDER_SIZE)
  if not os.path.exists(js):
    preprocess.preprocess(os.path.join(vg_dir, "region_descriptions.json"),
                          os.path.join(vg_dir, "images"),
                          os.path.join(vg_dir, "densecap_splits.json"), h5, js,
                          image_size=config.model.image_size)
  config.data_h5, config.data_json = h5, js
  config.max_iters = args.max_iters
  data = loader.DenseCapH5(h5, js)
  stages = []
  if args.pretrain_iters:
    model_config = config.model.copy_and_resolve_references()
    model_config.vocab_size = data.vocab_size
    pretrain_dir = os.path.join(args.workdir, "pretrain")
    heads, labels = region_labels.load_region_labels(objects, data, model_config.image_size)
    settings = dict(region_pretraining.settings_kwargs(config.pretrain), steps=args.pretrain_iters)
    config.checkpoint_start_from = region_pretraining.pretrain(
        model_config, data, labels, heads, pretrain_dir, seed=config.seed, **settings)
    config.finetune_cnn_after = args.finetune_cnn_after
    stages.append(pretrain_dir)
  run_dir = os.path.join(args.workdir, "run")
  train_stage(config, run_dir)
  captioner_dir = os.path.join(args.workdir, "captioner")
  train_stage(captioner_config(config, run_dir, args.captioner_iters), captioner_dir)
  stages += [run_dir, captioner_dir]

  params, model_config, vocab = model_dir.load_model(captioner_dir)
  model_config.drop_prob = config.model.drop_prob  # what fine-tuning it would use
  results = split_eval.evaluate_split(
      params, data, "test", split_eval.make_predict_fn(model_config), config=model_config,
      batch_size=4)
  target = os.path.join(BUNDLED, "tiny_synthetic")
  model_dir.save_model(target, params, model_config, vocab, overwrite=True)
  examples = os.path.join(BUNDLED, "examples")
  os.makedirs(examples, exist_ok=True)
  with open(os.path.join(vg_dir, "densecap_splits.json")) as f:
    test_ids = json.load(f)["test"]
  for i in test_ids[:NUM_EXAMPLES]:
    shutil.copyfile(os.path.join(vg_dir, "images", f"{i}.jpg"),
                    os.path.join(examples, f"synthetic_{i}.jpg"))
  model = predictor.load_model(target, num_proposals=model_config.num_proposals, batch_size=4)
  attributes = caption_attributes.score_test_scenes(model, test_ids, args.seed)
  search = phrase_search_scores(model, args.workdir, args.seed)
  files.write_json(os.path.join(target, "metrics.json"), {
      "split": "test", "num_images": results["num_images"], "map": results["map"],
      "detmap": results["detmap"], "num_proposals": model_config.num_proposals,
      "caption_attributes": {k: v for k, v in attributes.items() if not isinstance(v, dict)},
      "phrase_search": search,
      "pretraining_steps": args.pretrain_iters, "training_steps": config.max_iters,
      "captioner_steps": args.captioner_iters,
      "dataset": {"num_images": args.num_images, "seed": args.seed}})
  plot_training.plot_run(stages, os.path.join(target, "training.png"),
                         title="tiny model on the synthetic scenes")
  if not args.no_pictures:
    make_readme_pictures.make_pictures(target, os.path.join(ROOT, "docs"))
  print(f"bundled model: {target}\n  test mAP {results['map']:.4f}, detection mAP "
        f"{results['detmap']:.4f} over {results['num_images']} images; colour and shape right "
        f"in {100 * attributes['colour_shape']:.1f} % of the matched objects' captions; phrase "
        f"search R@5 {search['recall_at_5']:.3f}, median rank {search['median_rank']:g}")


if __name__ == "__main__":
  main()
