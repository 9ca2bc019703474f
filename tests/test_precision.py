"""Tests of the precision policy (``models/precision.py``): float32, tf32 and bfloat16.

float32 outputs themselves are covered by the parity and converter tests
(``test_models_*.py``, ``test_convert_*.py``), which run the default policy.
Here: what each policy puts in the traced program, how it is chosen
(config, ``load_model``, the ``--precision`` flag, training configs), and
how close bfloat16 comes to float32 with the bundled model: final boxes and
captions, the synthetic test-split mAP, and 300 training steps.
"""

import argparse
import collections
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import densecap_jax
from densecap_jax import model_dir
from densecap_jax.commands import flags as cli
from densecap_jax import configs
from densecap_jax import predictor as predictor_lib
from densecap_jax.data import images as images_lib
from densecap_jax.data import loader
from densecap_jax.data import visual_genome as preprocess
from densecap_jax.data import synthetic_world as synthetic
from densecap_jax.data import vocab as vocab_lib
from densecap_jax.evaluation import metric
from densecap_jax.evaluation import split_eval
from densecap_jax.models import densecap
from densecap_jax.models import detection
from densecap_jax.models import language_model
from densecap_jax.models import precision as precision_lib
from densecap_jax.models import recognition
from densecap_jax.models import training
from densecap_jax.ops import boxes as boxes_lib
from densecap_jax.train import config_checks
from densecap_jax.train import optim
from densecap_jax.train import trainer
from densecap_jax.train.configs import tiny as tiny_train
from densecap_jax.data import image_stream

BUNDLED_SIZE = 256  # the bundled model's image size
TRAIN_SIZE = 64


def word_overlap_meteor(candidates, references):
  """A deterministic stand-in for METEOR: the best unigram F1 of a candidate against its references."""
  scores = []
  for candidate, refs in zip(candidates, references):
    words = collections.Counter(candidate.split())
    best = 0.0
    for ref in refs:
      ref_words = collections.Counter(ref.split())
      common = sum((words & ref_words).values())
      if common:
        p, r = common / sum(words.values()), common / sum(ref_words.values())
        best = max(best, 2 * p * r / (p + r))
    scores.append(best)
  return scores


def _xywh_to_x1y1x2y2(boxes):
  return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:] - 1], axis=1)


def agreement(reference, other, iou_threshold=0.9):
  """How many ``reference`` boxes ``other`` reproduces.

  Args:
    reference, other: per-image result dicts of ``DenseCapPredictor.predict``.
    iou_threshold: a reference box is matched by the ``other`` box of the
      highest IoU when that IoU is at least this. (Final boxes overlap each
      other at IoU <= 0.3 after the final NMS, so no two reference boxes can
      match one box at 0.9.)

  Returns:
    ``(num_boxes, num_matched, num_same_caption)`` over all images.
  """
  num_boxes = num_matched = num_same = 0
  for ref, oth in zip(reference, other):
    num_boxes += len(ref["boxes"])
    if not len(ref["boxes"]) or not len(oth["boxes"]):
      continue
    iou = boxes_lib.box_iou_x1y1x2y2_np(_xywh_to_x1y1x2y2(ref["boxes"]),
                                        _xywh_to_x1y1x2y2(oth["boxes"]), np.float64)
    best = iou.argmax(axis=1)
    matched = np.flatnonzero(iou.max(axis=1) >= iou_threshold)
    num_matched += len(matched)
    num_same += sum(ref["captions"][i] == oth["captions"][best[i]] for i in matched)
  return num_boxes, num_matched, num_same


# ---------------------------------------------------------------------------
# Choosing a precision.


def test_model_configs_default_to_float32_and_names_are_checked():
  assert configs.get_model_config("vgg16").precision == "float32"
  assert configs.get_model_config("tiny").precision == "float32"
  assert configs.PRECISIONS == ("float32", "tf32", "bfloat16")
  # A model directory saved before the field existed (the bundled one) runs in float32.
  assert configs.precision_of(ml_collections.ConfigDict({"name": "tiny"})) == "float32"
  config = configs.get_model_config("tiny")
  copy = configs.with_precision(config, "bfloat16")
  assert copy.precision == "bfloat16" and config.precision == "float32"
  assert configs.with_precision(config, None) is config
  with pytest.raises(ValueError, match="precision must be one of float32, tf32, bfloat16"):
    configs.with_precision(config, "fp16")
  config.precision = "half"
  with pytest.raises(ValueError, match="model config precision"):
    densecap.build_model(_with_vocab(config))


def _with_vocab(config, vocab_size=10):
  config = config.copy_and_resolve_references()
  config.vocab_size = vocab_size
  return config


def test_training_config_checks_precision():
  config = tiny_train.get_config()
  config_checks.check_config(config)
  for value in configs.PRECISIONS:
    config.model.precision = value
    config_checks.check_config(config)
  config.model.precision = "bf16"
  with pytest.raises(ValueError, match="model.precision='bf16' is not accepted: expected one of "
                                       "float32, tf32, bfloat16"):
    config_checks.check_config(config)


def test_precision_flag():
  parser = argparse.ArgumentParser()
  cli.add_model_flags(parser)
  assert parser.parse_args([]).precision is None  # the model's own
  assert parser.parse_args(["--precision", "bfloat16"]).precision == "bfloat16"
  with pytest.raises(SystemExit):
    parser.parse_args(["--precision", "fp16"])


def test_evaluation_precision_flag():
  from densecap_jax.commands import evaluate as evaluation  # pylint: disable=g-import-not-at-top
  flags = ["--checkpoint", "m", "--data_h5", "d.h5", "--data_json", "d.json"]
  assert evaluation.parse_args(flags).precision is None
  assert evaluation.parse_args(flags + ["--precision", "tf32"]).precision == "tf32"
  with pytest.raises(SystemExit):
    evaluation.parse_args(flags + ["--precision", "fp16"])


def test_load_model_takes_a_precision():
  assert densecap_jax.load_model().precision == "float32"
  model = densecap_jax.load_model(precision="bfloat16")
  assert model.precision == model.config.precision == "bfloat16"
  kernels = {"/".join(str(getattr(k, "key", k)) for k in path): leaf.dtype
             for path, leaf in jax.tree_util.tree_leaves_with_path(model.params)}
  # Kernels are rounded to bf16 once; conv1_1, the heads, biases and the word embedding stay
  # float32.
  assert kernels["backbone/conv1_2/kernel"] == jnp.bfloat16
  assert kernels["recognition/fc6/kernel"] == jnp.bfloat16
  assert kernels["language_model/lstm/weight"] == jnp.bfloat16
  for name in ("backbone/conv1_1/kernel", "localization/rpn_score/kernel", "localization/rpn_box/kernel",
               "recognition/objectness/kernel", "recognition/box_reg/kernel",
               "recognition/fc6/bias", "language_model/word_embed/embedding"):
    assert kernels[name] == jnp.float32, name
  with pytest.raises(ValueError, match="precision must be one of"):
    densecap_jax.load_model(precision="float16")


# ---------------------------------------------------------------------------
# What each policy puts in the program (traced, not compiled).


def _products(jaxpr):
  """Every ``dot_general`` and ``conv_general_dilated`` equation, sub-programs included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
      found.append(eqn)
    for value in eqn.params.values():
      values = value if isinstance(value, (tuple, list)) else (value,)
      for sub in values:
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          found += _products(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          found += _products(sub)
  return found


def _small_config(precision):
  config = configs.with_precision(configs.get_model_config("tiny"), precision)
  config.vocab_size = 12
  config.num_proposals = 20
  config.sampler_batch_size = 16
  return config


def _traced_products(precision, train):
  config = _small_config(precision)
  params = jax.eval_shape(lambda: densecap.init_params(config, jax.random.key(0)))
  images = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  sizes = jax.ShapeDtypeStruct((2, 2), jnp.int32)
  if train:
    batch = {"image": images, "image_size": sizes,
             "gt_boxes": jax.ShapeDtypeStruct((2, 4, 4), jnp.float32),
             "gt_labels": jax.ShapeDtypeStruct((2, 4, config.seq_length), jnp.int32),
             "gt_mask": jax.ShapeDtypeStruct((2, 4), jnp.bool_)}
    fn = lambda p, b: jax.grad(
        lambda q: training.train_forward(q, b, jax.random.key(0), config, True)[0])(p)
    closed = jax.make_jaxpr(fn)(params, batch)
  else:
    closed = jax.make_jaxpr(lambda p, i, s: detection.infer(p, i, s, config))(params, images,
                                                                               sizes)
  return _products(closed.jaxpr), closed


def _precisions(eqn):
  """The ``lax.Precision`` of both operands of a product (``None`` = default)."""
  value = eqn.params["precision"]
  return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


@pytest.mark.parametrize("train", [False, True])
def test_float32_and_tf32_products_are_float32_at_their_precision(train):
  highest, high = jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGH
  for precision in ("float32", "tf32"):
    products, _ = _traced_products(precision, train)
    assert len(products) >= 20
    for eqn in products:
      assert all(v.aval.dtype == jnp.float32 for v in eqn.invars + eqn.outvars), eqn
    used = collections.Counter(_precisions(eqn) for eqn in products)
    if precision == "float32":  # every product, the heads included
      assert set(used) == {(highest, highest)}, used
    else:  # tf32 everywhere but conv1_1 and the four heads, which stay at HIGHEST
      assert set(used) == {(high, high), (highest, highest)}, used
      assert used[(high, high)] > used[(highest, highest)], used


@pytest.mark.parametrize("train", [False, True])
def test_bfloat16_products_accumulate_in_float32_and_heads_stay_float32(train):
  products, closed = _traced_products("bfloat16", train)
  bf16 = [e for e in products if e.invars[0].aval.dtype == jnp.bfloat16]
  f32 = [e for e in products if e.invars[0].aval.dtype == jnp.float32]
  assert bf16 and f32 and len(bf16) + len(f32) == len(products)
  outputs = collections.Counter()
  for eqn in bf16:
    assert all(v.aval.dtype == jnp.bfloat16 for v in eqn.invars), eqn
    out = eqn.outvars[0].aval.dtype
    outputs[out] += 1
    if out == jnp.float32:  # forward: accumulated and returned in float32
      assert eqn.params["preferred_element_type"] == jnp.float32, eqn
  # Training: the backward products of the bf16 layers take bf16 operands too;
  # the matmuls' accumulate and return float32 (_bf16_matmul), the convs' bf16.
  assert set(outputs) == ({jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)} if train
                          else {jnp.dtype(jnp.float32)}), outputs
  if train:
    forward, _ = _traced_products("bfloat16", False)
    forward_f32 = sum(e.invars[0].aval.dtype == jnp.bfloat16 for e in forward)
    assert outputs[jnp.dtype(jnp.float32)] > forward_f32, (outputs, forward_f32)
  # The float32 products are conv1_1 and the four heads (and, in training, their transposes).
  for eqn in f32:
    assert eqn.outvars[0].aval.dtype == jnp.float32
    assert _precisions(eqn) == (jax.lax.Precision.HIGHEST,) * 2, eqn
  # Every output is float32: boxes, logits, and (training) the gradients of float32 params.
  for out in closed.out_avals:
    assert out.dtype in (jnp.float32, jnp.int32, jnp.bool_), out


def _round_bf16(x):
  return np.asarray(jnp.asarray(x, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32),
                    np.float64)


@pytest.mark.parametrize("weight_dtype", [jnp.float32, jnp.bfloat16])
def test_bfloat16_matmul_gradients_are_float32_products_of_bf16_values(weight_dtype):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((3, 5, 40)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((40, 24)), jnp.float32).astype(weight_dtype)
  cotangent = jnp.asarray(rng.standard_normal((3, 5, 24)), jnp.float32)
  out, vjp = jax.vjp(lambda x, w: precision_lib.matmul(x, w, "bfloat16"), x, w)
  dx, dw = vjp(cotangent)
  x64, w64, ct64 = _round_bf16(x), _round_bf16(w), _round_bf16(cotangent)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, x64 @ w64, rtol=1e-5, atol=1e-5)
  # Each gradient in its operand's dtype: float32 weights get float32 sums,
  # not sums rounded to bf16.
  assert dx.dtype == jnp.float32 and dw.dtype == weight_dtype
  np.testing.assert_allclose(dx, ct64 @ w64.T, rtol=1e-5, atol=1e-5)
  want_dw = np.einsum("bik,bin->kn", x64, ct64)
  if weight_dtype == jnp.float32:
    np.testing.assert_allclose(dw, want_dw, rtol=1e-5, atol=1e-5)
    assert np.any(_round_bf16(dw) != np.asarray(dw, np.float64))
  else:
    np.testing.assert_allclose(np.asarray(dw, np.float32), want_dw, rtol=1e-2, atol=1e-2)
  # nn.Dense under the policy takes the same product.
  dense = nn.Dense(24, **precision_lib.dense_kwargs("bfloat16"))
  params = {"params": {"kernel": w, "bias": jnp.zeros(24)}}
  dense_out, dense_vjp = jax.vjp(lambda x: dense.apply(params, x), x)
  np.testing.assert_array_equal(dense_out, out)
  np.testing.assert_array_equal(dense_vjp(cotangent)[0], dx)


def test_cpus_with_bf16_dots_are_named_by_their_flags():
  assert precision_lib.cpu_has_bf16_dots(["fpu", "avx512f", "avx512_bf16"])  # AMD Zen 4
  assert precision_lib.cpu_has_bf16_dots(["avx512_bf16", "amx_tile", "amx_bf16"])
  assert not precision_lib.cpu_has_bf16_dots(["fpu", "avx2", "avx512f", "avx512_vnni"])
  assert isinstance(precision_lib.host_has_bf16_dots(), bool)


def test_bfloat16_modules_keep_float32_params_and_outputs():
  net = recognition.RecognitionNetwork(fc_dim=32, drop_prob=0.5, precision="bfloat16")
  apply = jax.jit(net.apply)
  x = jax.random.normal(jax.random.key(0), (5, 7, 7, 8))
  params = jax.jit(net.init)(jax.random.key(1), x)["params"]
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
  codes, logits, transforms = apply({"params": params}, x)
  assert codes.dtype == logits.dtype == transforms.dtype == jnp.float32
  exact = jax.jit(recognition.RecognitionNetwork(fc_dim=32, drop_prob=0.5).apply)(
      {"params": params}, x)
  np.testing.assert_allclose(codes, exact[0], rtol=0.05, atol=0.05)
  # Kernels cast once (cast_for_inference) give the very same outputs.
  cast = precision_lib.cast_for_inference(params, "bfloat16")
  assert cast["fc6"]["kernel"].dtype == jnp.bfloat16
  assert cast["objectness"]["kernel"].dtype == jnp.float32
  for a, b in zip(apply({"params": cast}, x), (codes, logits, transforms)):
    np.testing.assert_array_equal(a, b)
  assert precision_lib.cast_for_inference(params, "float32") is params

  lm = language_model.LanguageModel(9, 6, 32, 16, 24, precision="bfloat16")
  scores_fn = jax.jit(lm.apply)
  sample_fn = jax.jit(functools.partial(lm.apply, method="sample"))
  codes = jax.random.normal(jax.random.key(2), (4, 32))
  labels = jnp.array([[1, 2, 3, 0, 0, 0]] * 4)
  lm_params = jax.jit(lm.init)(jax.random.key(3), codes, labels)["params"]
  scores = scores_fn({"params": lm_params}, codes, labels)
  assert scores.dtype == jnp.float32
  exact = jax.jit(language_model.LanguageModel(9, 6, 32, 16, 24).apply)(
      {"params": lm_params}, codes, labels)
  np.testing.assert_allclose(scores, exact, rtol=0.05, atol=0.05)
  lm_cast = precision_lib.cast_for_inference(lm_params, "bfloat16")
  np.testing.assert_array_equal(scores_fn({"params": lm_cast}, codes, labels), scores)
  np.testing.assert_array_equal(sample_fn({"params": lm_cast}, codes),
                                sample_fn({"params": lm_params}, codes))


# ---------------------------------------------------------------------------
# bfloat16 against float32 with the bundled model.


@pytest.fixture(scope="module")
def predictors():
  """The bundled model in float32 and in bfloat16, with one 256 x 256 shape bucket.

  ``DenseCapPredictor`` s on one device, one image a batch: one compilation
  per precision, shared by the tests below (an image's detections do not
  depend on its bucket or batch).
  """
  params, config, vocab = model_dir.load_model(predictor_lib.bundled_model_path())
  config.buckets = ((BUNDLED_SIZE, BUNDLED_SIZE),)
  config.rpn_nms_thresh = 0.7  # the original's: more final boxes to compare than at 0.9
  return {precision: predictor_lib.DenseCapPredictor(params, config, vocab, precision=precision,
                                                 devices=jax.devices()[:1])
          for precision in ("float32", "bfloat16")}


@pytest.fixture(scope="module")
def test_split(tmp_path_factory, predictors):
  """A generated synthetic dataset at the bundled model's size, mostly test images."""
  folder = tmp_path_factory.mktemp("precision")
  paths = synthetic.generate_dataset(str(folder / "vg"), 48, seed=7, image_size=BUNDLED_SIZE,
                                     val_fraction=0.1, test_fraction=0.8, progress=False)
  preprocess.preprocess(paths["region_data"], paths["image_dir"], paths["split_json"],
                        str(folder / "d.h5"), str(folder / "d.json"), image_size=BUNDLED_SIZE,
                        min_token_instances=1, num_workers=2, progress=False, log=lambda *a: None)
  data = loader.DenseCapH5(str(folder / "d.h5"), str(folder / "d.json"))
  # The model's token ids are the dataset's: 48 scenes use every word of the synthetic language.
  assert data.vocab == predictors["float32"].vocab
  return data, paths


def test_bfloat16_final_boxes_and_captions_match_float32(predictors, test_split, capsys):
  _, paths = test_split
  examples = predictor_lib.bundled_examples_path()
  images = [f"{examples}/{name}" for name in ("synthetic_12.jpg", "synthetic_13.jpg",
                                               "synthetic_29.jpg")]
  images += [f"{paths['image_dir']}/{i}.jpg" for i in range(1, 22)]
  results = {precision: model.predict(images) for precision, model in predictors.items()}
  num_boxes, num_matched, num_same = agreement(results["float32"], results["bfloat16"])
  with capsys.disabled():
    print(f"\nbfloat16 vs float32 on {len(images)} images: {num_matched}/{num_boxes} final "
          f"boxes matched at IoU >= 0.9 ({num_matched / num_boxes:.1%}), {num_same}/"
          f"{num_matched} of them with the same caption ({num_same / num_matched:.1%})")
  assert num_boxes >= 500
  assert num_matched >= 0.9 * num_boxes
  assert num_same >= 0.9 * num_matched


def _split_map(model, data, split):
  """Dense-captioning mAP of ``model`` on ``split``, one image at a time.

  The images and ground truth of ``split_eval.evaluate_split`` (the HDF5
  pixels, every region), through the predictor; ``test_evaluation_split``
  checks that the two give the same numbers.
  """
  evaluator = metric.DenseCaptioningEvaluator(meteor_fn=word_overlap_meteor)
  for index in data.split_indices(split):
    model_input = images_lib.bgr_uint8_to_model_input(data.read_image_bgr(index))
    prepared = image_stream.PreparedImage(model_input, None, model_input.shape[:2])
    result = model.predict_prepared([prepared])[0]
    gt_boxes, gt_labels = data.regions(index)
    x, y, w, h = result["boxes"].T  # back to the model's xcycwh (the inverse of xcycwh_to_xywh)
    boxes = np.stack([x + (w - 1) / 2, y + (h - 1) / 2, w, h], axis=-1)
    evaluator.add_result(result["scores"], boxes, result["captions"], gt_boxes,
                         vocab_lib.decode_captions(gt_labels, data.vocab))
  return evaluator.evaluate()


def test_bfloat16_test_split_map_within_one_point_of_float32(predictors, test_split, capsys):
  data, _ = test_split
  f32, bf16 = (_split_map(predictors[p], data, "test") for p in ("float32", "bfloat16"))
  with capsys.disabled():
    print(f"\ntest split ({f32['num_images']} images, word-overlap METEOR): mAP "
          f"{100 * f32['map']:.2f} (float32) vs {100 * bf16['map']:.2f} (bfloat16), detection "
          f"mAP {100 * f32['detmap']:.2f} vs {100 * bf16['detmap']:.2f}")
  assert f32["num_images"] == bf16["num_images"] >= 30
  assert f32["map"] > 0.05
  assert abs(100 * (bf16["map"] - f32["map"])) <= 1.0
  assert abs(100 * (bf16["detmap"] - f32["detmap"])) <= 1.0


def test_evaluation_runs_the_config_precision(predictors):
  # split_eval.make_predict_fn(config) runs config.precision (traced only: no compilation).
  model = predictors["bfloat16"]
  predict_fn = split_eval.make_predict_fn(model.config)
  closed = jax.make_jaxpr(predict_fn)(model.params, jnp.zeros((1, 64, 64, 3)),
                                      jnp.full((1, 2), 64, jnp.int32), 0.7, 0.3)
  dtypes = {eqn.invars[0].aval.dtype for eqn in _products(closed.jaxpr)}
  assert dtypes == {jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)}


# ---------------------------------------------------------------------------
# Training in bfloat16.


@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
  folder = tmp_path_factory.mktemp("precision_train")
  paths = synthetic.generate_dataset(str(folder / "vg"), 24, seed=3, image_size=96,
                                     val_fraction=0.1, test_fraction=0.1, progress=False)
  preprocess.preprocess(paths["region_data"], paths["image_dir"], paths["split_json"],
                        str(folder / "d.h5"), str(folder / "d.json"), image_size=TRAIN_SIZE,
                        min_token_instances=1, num_workers=2, progress=False, log=lambda *a: None)
  return loader.DenseCapH5(str(folder / "d.h5"), str(folder / "d.json"))


def _train_losses(config, params, batches):
  """Per-step total losses of ``config`` (a training config) from ``params`` on ``batches``."""
  tx = optim.from_config(config)
  loss_fn = trainer.make_loss_fn(config.model, finetune_cnn=True)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, batch, rng):
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for i, batch in enumerate(batches):
    params, opt_state, loss = step(params, opt_state, batch, jax.random.key(i))
    losses.append(loss)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))  # master weights
  return np.asarray(jax.device_get(losses))


@pytest.mark.slow
def test_bfloat16_training_ends_within_ten_percent_of_float32(train_data, capsys):
  num_steps = 300
  config = tiny_train.get_config()
  config.model.image_size = TRAIN_SIZE
  config.model.buckets = ((TRAIN_SIZE, TRAIN_SIZE),)
  config.model.sampler_batch_size = 32
  config.model.vocab_size = len(train_data.vocab) - 1
  config.lr_schedule = "constant"
  config.warmup_steps = 50
  keys = ("image", "image_size", "gt_boxes", "gt_labels", "gt_mask")
  with loader.make_batches(train_data, "train", batch_size=1, max_boxes=config.model.max_gt_boxes,
                           buckets=config.model.buckets, shuffle=True, seed=0,
                           prefetch=0) as batches:
    batches = [{k: np.asarray(v) for k, v in next(batches).items() if k in keys}
               for _ in range(num_steps)]
  # The same initial params for both (they do not depend on the precision).
  params = densecap.init_params(config.model, jax.random.key(config.seed))
  final = {}
  for precision in ("float32", "bfloat16"):
    config.model.precision = precision
    config_checks.check_config(config)
    losses = _train_losses(config, params, batches)
    assert np.all(np.isfinite(losses))
    assert losses[-100:].mean() < 0.5 * losses[:10].mean()  # it learns
    # The same images in the same order: the mean over the last 100 steps
    # averages out which images they were.
    final[precision] = losses[-100:].mean()
  with capsys.disabled():
    print(f"\nloss over steps 201-300: {final['float32']:.3f} (float32), "
          f"{final['bfloat16']:.3f} (bfloat16)")
  assert abs(final["bfloat16"] - final["float32"]) <= 0.1 * final["float32"]


# ---------------------------------------------------------------------------
# bfloat16 3x3 convs as nine dots on CPU.


def _conv_same(inputs, kernel, **kwargs):
  return jax.lax.conv_general_dilated(inputs, kernel, (1, 1), ((1, 1), (1, 1)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"), **kwargs)


@pytest.mark.parametrize("shape", [(1, 5, 7, 3, 4), (2, 9, 6, 16, 8)])
def test_conv3x3_as_dots_matches_the_convolution(shape):
  batch, height, width, channels, features = shape
  rng = np.random.default_rng(0)
  inputs = jnp.asarray(rng.standard_normal((batch, height, width, channels)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, channels, features)), jnp.float32)
  highest = jax.lax.Precision.HIGHEST
  with jax.default_matmul_precision("highest"):
    got = precision_lib.conv3x3_as_dots(inputs, kernel)
  np.testing.assert_allclose(got, _conv_same(inputs, kernel, precision=highest),
                             rtol=1e-5, atol=1e-5)
  # A corner by hand: out[0, 0, 0] sees only the 2x2 taps kernel[1:, 1:].
  corner = np.einsum("yxc,yxco->o", np.asarray(inputs[0, :2, :2]), np.asarray(kernel[1:, 1:]))
  np.testing.assert_allclose(got[0, 0, 0], corner, rtol=1e-5, atol=1e-5)
  # bf16 operands, float32 accumulation: the same exact products, summed in another order.
  bf16 = inputs.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
  got = precision_lib.conv3x3_as_dots(*bf16, preferred_element_type=jnp.float32)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, _conv_same(*bf16, preferred_element_type=jnp.float32),
                             rtol=1e-5, atol=1e-5)


def _conv_layer(channels):
  layer = nn.Conv(8, (3, 3), padding=1, **precision_lib.conv_kwargs("bfloat16"))
  inputs = jnp.asarray(np.random.default_rng(1).standard_normal((1, 6, 5, channels)),
                       jnp.float32)
  return layer, layer.init(jax.random.key(0), inputs), inputs


def _hlo_ops(fn, *args, platform):
  text = jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()
  return {op: text.count(f"stablehlo.{op}") for op in ("convolution", "dot_general")}


def test_bfloat16_wide_convs_run_as_dots_on_bf16_dot_cpus_only(monkeypatch):
  monkeypatch.setattr(precision_lib, "host_has_bf16_dots", lambda: True)
  layer, params, inputs = _conv_layer(channels=precision_lib.DOT_CONV_MIN_CHANNELS)
  apply = lambda p, x: layer.apply(p, x)
  assert _hlo_ops(apply, params, inputs, platform="cpu") == {"convolution": 0, "dot_general": 9}
  assert _hlo_ops(apply, params, inputs, platform="cuda") == {"convolution": 1, "dot_general": 0}
  narrow, narrow_params, narrow_inputs = _conv_layer(channels=8)
  assert _hlo_ops(lambda p, x: narrow.apply(p, x), narrow_params, narrow_inputs,
                  platform="cpu") == {"convolution": 1, "dot_general": 0}
  with monkeypatch.context() as patch:
    patch.setattr(precision_lib, "host_has_bf16_dots", lambda: False)
    assert _hlo_ops(lambda p, x: layer.apply(p, x), params, inputs,  # traced anew
                    platform="cpu") == {"convolution": 1, "dot_general": 0}

  weights = jnp.asarray(np.random.default_rng(2).standard_normal((1, 6, 5, 8)), jnp.float32)
  linear_loss = lambda p: jnp.sum(layer.apply(p, inputs) * weights)
  as_dots = jax.jit(apply)(params, inputs), jax.jit(jax.grad(linear_loss))(params)
  monkeypatch.setattr(precision_lib, "DOT_CONV_MIN_CHANNELS", 10**9)  # the convolution
  as_conv = jax.jit(apply)(params, inputs), jax.jit(jax.grad(linear_loss))(params)
  assert as_dots[0].dtype == jnp.float32
  np.testing.assert_allclose(as_dots[0], as_conv[0], rtol=1e-5, atol=1e-5)
  # The backward products are the convolution's whatever the forward's form:
  # with a loss linear in the output, the gradients are identical.
  for got, want in zip(jax.tree.leaves(as_dots[1]), jax.tree.leaves(as_conv[1])):
    np.testing.assert_array_equal(got, want)
