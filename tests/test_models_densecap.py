"""End-to-end tests of the DenseCap model: training forward, gradients, inference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from densecap_jax import configs
from densecap_jax.models import losses as losses_lib
from densecap_jax.train import optim
from densecap_jax.models import densecap as dc
from densecap_jax.models import detection
from densecap_jax.models import training

V, L = 11, 5


def micro_config():
  """The tiny config shrunk further so that each program compiles in seconds."""
  config = configs.get_model_config("tiny")
  config.vocab_size = V
  config.seq_length = L
  config.image_size = 64
  config.cnn_widths = ((4, 4), (4, 4), (8, 8, 8), (8, 8, 8), (8, 8, 8))
  config.rpn_num_filters = 8
  config.anchor_scale = 0.25
  config.fc_dim = 32
  config.rnn_size = 16
  config.rnn_encoding_size = 16
  config.sampler_batch_size = 16
  config.num_proposals = 24
  return config


def make_batch(seed=0, sizes=((64, 64), (48, 40)), bucket=(64, 64), num_gt=4):
  """Random images zero outside their true sizes and a few GT boxes inside them."""
  rng = np.random.default_rng(seed)
  b = len(sizes)
  images = np.zeros((b,) + bucket + (3,), np.float32)
  gt_boxes = np.zeros((b, num_gt, 4), np.float32)
  gt_labels = np.zeros((b, num_gt, L), np.int32)
  gt_mask = np.zeros((b, num_gt), bool)
  for i, (h, w) in enumerate(sizes):
    images[i, :h, :w] = rng.normal(size=(h, w, 3)) * 60
    count = num_gt - i
    wh = rng.uniform(0.2, 0.6, size=(count, 2)) * np.array([w, h])
    centres = rng.uniform(wh / 2 + 1, np.array([w, h]) - wh / 2, size=(count, 2))
    gt_boxes[i, :count] = np.concatenate([centres, wh], axis=1)
    lengths = rng.integers(1, L + 1, size=count)
    for j, n in enumerate(lengths):
      gt_labels[i, j, :n] = rng.integers(1, V + 1, size=n)
    gt_mask[i, :count] = True
  return {"image": images, "image_size": np.asarray(sizes, np.int32), "gt_boxes": gt_boxes,
          "gt_labels": gt_labels, "gt_mask": gt_mask}


@pytest.fixture(scope="module")
def config():
  return micro_config()


@pytest.fixture(scope="module")
def params(config):
  return dc.init_params(config, jax.random.key(0))


@pytest.fixture(scope="module")
def batch():
  return make_batch()


@pytest.fixture(scope="module")
def infer_fn(config):
  return jax.jit(functools.partial(detection.infer, config=config))


@pytest.fixture(scope="module")
def loss_and_grad(config):
  def loss(p, batch, rng, finetune_cnn):
    total, losses, aux = training.train_forward(p, batch, rng, config, finetune_cnn=finetune_cnn)
    return total, (losses, aux)
  return jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnames="finetune_cnn")


def test_unknown_config_name():
  with pytest.raises(ValueError, match="unknown model config 'vgg19'"):
    configs.get_model_config("vgg19")


def test_vocab_size_must_be_set():
  with pytest.raises(ValueError, match="vocab_size"):
    dc.build_model(configs.get_model_config("tiny"))


@pytest.mark.parametrize("name", ["vgg16", "tiny"])
def test_both_configs_build_train_and_infer_shapes(name):
  config = configs.get_model_config(name)
  config.vocab_size = 100
  params = jax.eval_shape(lambda: dc.init_params(config, jax.random.key(0)))
  assert params["recognition"]["fc6"]["kernel"].shape == (
      7 * 7 * config.cnn_widths[-1][-1], config.fc_dim)
  height, width = config.buckets[0]
  r = config.max_gt_boxes
  batch = {"image": jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32),
           "image_size": jax.ShapeDtypeStruct((1, 2), jnp.int32),
           "gt_boxes": jax.ShapeDtypeStruct((1, r, 4), jnp.float32),
           "gt_labels": jax.ShapeDtypeStruct((1, r, config.seq_length), jnp.int32),
           "gt_mask": jax.ShapeDtypeStruct((1, r), jnp.bool_)}
  total, losses, _ = jax.eval_shape(
      lambda p, b: training.train_forward(p, b, jax.random.key(0), config), params, batch)
  assert total.shape == () and set(losses) == set(losses_lib.LOSS_NAMES) | {"box_decay_loss"}
  out = jax.eval_shape(lambda p, i, s: detection.infer(p, i, s, config), params,
                       batch["image"], batch["image_size"])
  n = config.num_proposals
  assert [o.shape for o in out] == [(1, n, 4), (1, n), (1, n, config.seq_length), (1, n)]


def test_batch_errors_are_clear(config, params, batch):
  with pytest.raises(ValueError, match="missing"):
    training.train_forward(params, {"image": batch["image"]}, jax.random.key(0), config)
  bad = dict(batch, gt_labels=batch["gt_labels"][..., :3])
  with pytest.raises(ValueError, match="seq_length"):
    training.train_forward(params, bad, jax.random.key(0), config)


def test_train_forward_losses(config, params, batch, loss_and_grad):
  (total, (losses, aux)), _ = loss_and_grad(params, batch, jax.random.key(1), False)
  assert np.isfinite(total)
  five = sum(float(losses[name]) for name in losses_lib.LOSS_NAMES)
  np.testing.assert_allclose(total, five, rtol=1e-6)
  for name, value in losses.items():
    assert np.isfinite(value) and value >= 0, name
  # Box regression convs start at zero: no box decay, zero RPN regression input.
  assert float(losses["box_decay_loss"]) == 0.0
  num_pos = np.asarray(aux["num_pos"])
  assert np.all(num_pos >= 1) and np.all(num_pos <= config.sampler_batch_size // 2)


def test_word_head_only_when_its_loss_has_a_weight(config, params, batch):
  assert "word_classifier" not in params
  cfg = micro_config()
  for name in losses_lib.LOSS_NAMES:
    cfg[name.replace("_loss", "_weight")] = 0.0
  cfg.word_loss_weight = 0.5
  with_head = dc.init_params(cfg, jax.random.key(0))
  assert with_head["word_classifier"]["kernel"].shape == (cfg.fc_dim, V)
  # at zero scores every word costs log 2 whether the caption holds it or not
  zero = jax.tree.map(jnp.zeros_like, with_head["word_classifier"])
  p = dict(with_head, word_classifier=zero)
  forward = jax.jit(lambda q: training.train_forward(q, batch, jax.random.key(1), cfg)[:2])
  total, losses = forward(p)
  np.testing.assert_allclose(losses["word_loss"], 0.5 * V * np.log(2), rtol=1e-6)
  np.testing.assert_allclose(total, losses["word_loss"], rtol=1e-6)
  # its gradient reaches the codes' layers and not the language model
  grads = jax.jit(jax.grad(
      lambda q: training.train_forward(q, batch, jax.random.key(1), cfg)[0]))(with_head)
  assert np.any(grads["recognition"]["fc7"]["kernel"])
  assert np.any(grads["word_classifier"]["kernel"])
  assert not any(np.any(g) for g in jax.tree.leaves(grads["language_model"]))


def test_cnn_skip_block_feeds_fc6_and_trains_through_it(batch):
  """``cnn_skip_blocks=(1,)`` widens fc6 by conv1's channels and leaves rpn_conv on relu5_3's;
  the losses train through it, the CNN only when it is fine-tuned."""
  cfg = micro_config()
  cfg.frozen_blocks = 0
  cfg.cnn_skip_blocks = (1,)
  skipped = dc.init_params(cfg, jax.random.key(0))
  channels = cfg.cnn_widths[-1][-1] + cfg.cnn_widths[0][-1]
  assert skipped["recognition"]["fc6"]["kernel"].shape == (7 * 7 * channels, cfg.fc_dim)
  assert skipped["localization"]["rpn_conv"]["kernel"].shape[2] == cfg.cnn_widths[-1][-1]
  grads = jax.jit(jax.grad(lambda q: training.train_forward(
      q, batch, jax.random.key(1), cfg, finetune_cnn=False)[0]))(skipped)
  assert not np.any(grads["backbone"]["conv1_1"]["kernel"])  # finetune_cnn=False: none
  grads = jax.jit(jax.grad(lambda q: training.train_forward(
      q, batch, jax.random.key(1), cfg, finetune_cnn=True)[0]))(skipped)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert np.any(grads["backbone"]["conv1_1"]["kernel"])
  fc6 = np.asarray(grads["recognition"]["fc6"]["kernel"]).reshape(7, 7, channels, -1)
  assert np.any(fc6[:, :, cfg.cnn_widths[-1][-1]:])  # the codes learn to read the skip
  out = detection.infer(skipped, batch["image"], batch["image_size"], cfg)
  assert out[0].shape == (2, cfg.num_proposals, 4)


def _group_max(grads, params, config):
  labels = optim.param_groups(params, config.frozen_blocks)
  out = {}
  for group, g in zip(jax.tree.leaves(labels), jax.tree.leaves(grads)):
    out[group] = max(out.get(group, 0.0), float(jnp.max(jnp.abs(g))))
  return out


@pytest.mark.parametrize("finetune", [False, True])
def test_gradient_flow(config, params, batch, loss_and_grad, finetune):
  (_, _), grads = loss_and_grad(params, batch, jax.random.key(1), finetune)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  group_max = _group_max(grads, params, config)
  assert group_max["frozen"] == 0.0
  assert (group_max["cnn"] > 0) == finetune
  assert group_max["rest"] > 0
  for path in (("localization", "rpn_box"), ("localization", "rpn_score"),
               ("recognition", "fc6"), ("recognition", "objectness"),
               ("language_model", "lstm")):
    sub = grads
    for key in path:
      sub = sub[key]
    assert any(np.any(g) for g in jax.tree.leaves(sub)), path


def test_optimizer_groups_of_model_params(config, params):
  labels = optim.param_groups(params, config.frozen_blocks)
  assert labels["backbone"]["conv2_2"]["kernel"] == "frozen"
  assert labels["backbone"]["conv3_1"]["bias"] == "cnn"
  assert labels["language_model"]["lstm"]["weight"] == "rest"
  assert labels["recognition"]["fc6"]["kernel"] == "rest"


def test_box_decay_gradient_is_w_times_t_on_real_cells(config, params, batch):
  cfg = micro_config()
  for name in losses_lib.LOSS_NAMES:
    cfg[name.replace("_loss", "_weight")] = 0.0
  cfg.box_reg_decay = 0.3
  rng = np.random.default_rng(4)
  p = jax.tree.map(lambda x: x, params)
  p["localization"]["rpn_box"] = {
      "kernel": jnp.asarray(rng.normal(size=p["localization"]["rpn_box"]["kernel"].shape),
                            jnp.float32) * 0.1,
      "bias": jnp.asarray(rng.normal(size=p["localization"]["rpn_box"]["bias"].shape),
                          jnp.float32)}
  grads = jax.jit(jax.grad(
      lambda q: training.train_forward(q, batch, jax.random.key(2), cfg)[0]))(p)

  model = dc.build_model(cfg)

  def reference(box_params):
    q = dict(p, localization=dict(p["localization"], rpn_box=box_params))
    feats = model.apply({"params": q}, batch["image"], batch["image_size"],
                        method=dc.DenseCap.features)
    t, _ = model.apply({"params": q}, feats, method=dc.DenseCap.rpn)
    hf, wf = np.asarray(-(-batch["image_size"] // 16)).T
    cells = np.zeros(t.shape[:3] + (1,), np.float32)
    for i in range(len(hf)):
      cells[i, :hf[i], :wf[i]] = 1
    return 0.5 * cfg.box_reg_decay * jnp.sum(cells * t ** 2) / t.shape[0]

  expected = jax.jit(jax.grad(reference))(p["localization"]["rpn_box"])
  np.testing.assert_allclose(grads["localization"]["rpn_box"]["kernel"], expected["kernel"],
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(grads["localization"]["rpn_box"]["bias"], expected["bias"],
                             rtol=1e-4, atol=1e-6)


def test_infer_outputs(config, params, batch, infer_fn):
  boxes, scores, tokens, valid = (np.asarray(x) for x in infer_fn(
      params, batch["image"], batch["image_size"]))
  n = config.num_proposals
  assert boxes.shape == (2, n, 4) and scores.shape == (2, n) and tokens.shape == (2, n, L)
  assert tokens.dtype == np.int32 and valid.dtype == bool
  for i in range(2):
    count = valid[i].sum()
    assert count > 0 and np.all(valid[i, :count])
    assert np.all(np.diff(scores[i, :count]) <= 0)
    assert np.all((tokens[i, :count] >= 1) & (tokens[i, :count] <= V + 1))
    np.testing.assert_array_equal(tokens[i, count:], 0)
    np.testing.assert_array_equal(boxes[i, count:], 0)


def test_batched_inference_equals_one_at_a_time(params, batch, infer_fn):
  together = infer_fn(params, batch["image"], batch["image_size"])
  for i in range(2):
    alone = infer_fn(params, batch["image"][i:i + 1], batch["image_size"][i:i + 1])
    np.testing.assert_array_equal(alone[3][0], together[3][i])
    np.testing.assert_array_equal(alone[2][0], together[2][i])
    np.testing.assert_allclose(alone[0][0], together[0][i], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(alone[1][0], together[1][i], rtol=1e-5, atol=1e-5)


def test_no_recompilation_within_a_bucket(params, infer_fn):
  infer_fn(params, make_batch(1)["image"], make_batch(1)["image_size"])
  before = infer_fn._cache_size()
  other = make_batch(seed=5, sizes=((30, 64), (64, 17)))
  infer_fn(params, other["image"], other["image_size"])
  assert infer_fn._cache_size() == before


def test_padded_image_infers_like_the_unpadded_one(params, infer_fn):
  single = make_batch(seed=6, sizes=((40, 56),), bucket=(40, 56))
  padded = make_batch(seed=6, sizes=((40, 56),), bucket=(64, 64))
  a = infer_fn(params, single["image"], single["image_size"])
  b = infer_fn(params, padded["image"], padded["image_size"])
  np.testing.assert_array_equal(a[3], b[3])
  np.testing.assert_array_equal(a[2], b[2])
  np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-3)
  np.testing.assert_allclose(a[1], b[1], rtol=1e-5, atol=1e-4)


def test_captioning_only_kept_boxes_equals_captioning_all(config, params, batch, infer_fn):
  kept_only = infer_fn(params, batch["image"], batch["image_size"])
  everything = jax.jit(functools.partial(detection.infer, config=config, caption_all=True))(
      params, batch["image"], batch["image_size"])
  for x, y in zip(kept_only, everything):
    np.testing.assert_array_equal(x, y)


def test_final_boxes_are_unclipped_and_scores_are_logits(params, batch, infer_fn):
  p = jax.tree.map(lambda x: x, params)
  # Final boxes 20x wider and taller than their proposals; constant logit 3.7.
  p["recognition"]["box_reg"] = {"kernel": jnp.zeros_like(p["recognition"]["box_reg"]["kernel"]),
                                 "bias": jnp.array([0.0, 0.0, np.log(20.0), np.log(20.0)])}
  p["recognition"]["objectness"] = {
      "kernel": jnp.zeros_like(p["recognition"]["objectness"]["kernel"]),
      "bias": jnp.array([3.7])}
  boxes, scores, _, valid = infer_fn(p, batch["image"], batch["image_size"])
  first = np.asarray(boxes)[:, 0]
  assert np.all(np.asarray(valid)[:, 0])
  np.testing.assert_allclose(np.asarray(scores)[np.asarray(valid)], 3.7, rtol=1e-6)
  right_edge = first[:, 0] + (first[:, 2] - 1) / 2
  assert np.all(right_edge > batch["image_size"][:, 1])


@pytest.mark.slow
def test_loss_falls_when_overfitting_one_image(config, params):
  batch = make_batch(seed=7, sizes=((64, 64),))
  optimizer = optim.make_optimizer(3e-3, weight_decay=0.0, finetune_cnn_after=0,
                                   frozen_blocks=config.frozen_blocks)

  @jax.jit
  def step(p, state, rng):
    (loss, _), grads = jax.value_and_grad(
        lambda q: training.train_forward(q, batch, rng, config, finetune_cnn=True)[:2],
        has_aux=True)(p)
    updates, state = optimizer.update(grads, state, p)
    return optax.apply_updates(p, updates), state, loss

  p, state = params, optimizer.init(params)
  history = []
  for i in range(120):
    p, state, loss = step(p, state, jax.random.key(i))
    history.append(float(loss))
  assert np.all(np.isfinite(history))
  assert np.mean(history[-10:]) < 0.4 * np.mean(history[:5])


def test_rpn_sample_on_anchors_takes_the_rpn_losses_of_the_anchor_sample(config, params, batch):
  moved = dict(params)  # the RPN's boxes moved off their anchors, so the two matchings differ
  moved["localization"] = jax.tree.map(
      lambda x: x + 0.05 * jax.random.normal(jax.random.key(4), x.shape), params["localization"])

  def losses(**options):
    cfg = micro_config()
    cfg.update(options)
    return jax.device_get(jax.jit(
        lambda q: training.train_forward(q, batch, jax.random.key(1), cfg)[1])(moved))

  boxes = losses()
  anchors = losses(sample_on_anchors=True)
  both = losses(rpn_sample_on_anchors=True)
  mid = ("mid_objectness_loss", "mid_box_reg_loss")
  assert any(boxes[name] != anchors[name] for name in mid)
  for name in losses_lib.LOSS_NAMES:
    np.testing.assert_array_equal(both[name], (anchors if name in mid else boxes)[name], name)
  # With the sampler already on the anchors the second minibatch would be the first.
  anchors_twice = losses(sample_on_anchors=True, rpn_sample_on_anchors=True)
  for name in losses_lib.LOSS_NAMES:
    np.testing.assert_array_equal(anchors_twice[name], anchors[name], name)


@pytest.mark.parametrize("on_anchors", [False, True])
def test_fixed_proposals_stop_the_recognition_gradient_at_the_rpn_boxes(params, batch, on_anchors):
  recognition = ("end_objectness_loss", "end_box_reg_loss", "captioning_loss")

  def run(fixed):
    cfg = micro_config()
    cfg.sample_on_anchors = on_anchors
    cfg.fixed_proposals = fixed

    def recognition_loss(p):
      _, losses, _ = training.train_forward(p, batch, jax.random.key(1), cfg)
      return sum(losses[name] for name in recognition), losses

    return jax.device_get(jax.jit(jax.grad(recognition_loss, has_aux=True))(params))

  free_grads, free_losses = run(False)
  fixed_grads, fixed_losses = run(True)
  for name in losses_lib.LOSS_NAMES:  # the forward pass is unchanged
    np.testing.assert_array_equal(fixed_losses[name], free_losses[name], name)
  # The recognition losses reach the RPN's layers only through the RoI boxes.
  free_rpn = jax.tree.leaves(free_grads["localization"])
  assert max(float(np.abs(g).max()) for g in free_rpn) > 0
  assert all(not np.any(g) for g in jax.tree.leaves(fixed_grads["localization"]))
  # Everything else still learns from them, as before.
  for key in ("recognition", "language_model"):
    for free, fixed in zip(jax.tree.leaves(free_grads[key]), jax.tree.leaves(fixed_grads[key])):
      np.testing.assert_allclose(fixed, free, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("frozen_blocks", [0, 1])
def test_cnn_skip_gradient_trains_the_appended_block_through_its_channels(batch, frozen_blocks):
  def grads(skip_gradient):
    cfg = micro_config()
    cfg.frozen_blocks = frozen_blocks
    cfg.cnn_skip_blocks = (1,)
    cfg.cnn_skip_gradient = skip_gradient
    params = dc.init_params(cfg, jax.random.key(0))
    return jax.device_get(jax.jit(jax.grad(lambda q: training.train_forward(
        q, batch, jax.random.key(1), cfg, finetune_cnn=True)[0]))(params))

  stopped, passed = grads(False), grads(True)
  backbone = stopped["backbone"]
  for name in backbone:  # blocks 2-5 and everything after them: the same gradient
    if not name.startswith("conv1_"):
      for a, b in zip(jax.tree.leaves(stopped["backbone"][name]),
                      jax.tree.leaves(passed["backbone"][name])):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-8, err_msg=name)
  for a, b in zip(jax.tree.leaves(stopped["recognition"]), jax.tree.leaves(passed["recognition"])):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-8)
  conv1 = [np.abs(np.asarray(passed["backbone"][n]["kernel"]) -
                  np.asarray(stopped["backbone"][n]["kernel"])).max()
           for n in ("conv1_1", "conv1_2")]
  if frozen_blocks:  # block 1 is frozen: no gradient either way
    assert not np.any(passed["backbone"]["conv1_1"]["kernel"])
    assert max(conv1) == 0
  else:  # the codes' losses reach conv1 through its appended channels
    assert min(conv1) > 0
