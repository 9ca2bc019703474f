"""The DenseCap model and its two entry points (reference §2–§6).

``DenseCap`` composes the parameterised parts — ``backbone`` (VGG-16 convs),
``localization`` (RPN head), ``recognition`` (fc6, fc7, objectness, box_reg)
and ``language_model`` — and the functions below run a forward pass from top
to bottom:

* ``train_forward(params, batch, rng, config)`` -> ``(total_loss, losses, aux)``:
  backbone -> RPN (+ box decay) -> per-image RoI sampling and bilinear pooling
  -> fc6 / fc7 -> objectness, box regression, teacher-forced LM -> the five
  losses of §4.1, each averaged over the images of the batch.
* ``infer(params, images, image_sizes, config)`` -> boxes, logits, tokens,
  valid: backbone -> RPN -> proposals (clip, NMS 0.7) -> pooling -> fc6 / fc7
  -> final boxes -> final NMS 0.3 -> greedy captions of the kept boxes only.
* ``detect_with_codes(params, images, image_sizes, config, num_detections)``
  -> the same detections without captions, with their fc7 region codes
  (``extract_features``, §10.5).
* ``region_codes(params, images, image_sizes, boxes, box_valid, config)`` ->
  fc7 codes and objectness logits of given boxes; ``region_captions`` adds
  their greedy captions and the tokens' log-probabilities.
* ``phrase_log_likelihood(params, codes, phrases, config)`` -> the
  teacher-forced log-likelihood of phrases given region codes (paper §4.3).

Batches hold several images padded into one shape bucket; every per-image step
is ``jax.vmap``-ed, every shape is static, and the true image sizes are traced
values, so one program serves every image of a bucket.

Freezing (§4.2) is done in the forward pass with ``jax.lax.stop_gradient``:
conv1_1 ... conv2_2 never receive gradient, conv3_1 ... conv5_3 only when
``finetune_cnn=True``. ``optim.param_groups`` gives the matching parameter
partition for the optimizer (separate CNN group, frozen layers unchanged).

Precision: ``config.precision`` (``"float32"`` when absent) goes to every
module (``models/precision.py``); whatever it is, every stage hands float32
arrays to the next, and the box, NMS, pooling and loss code here is float32.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from densecap_jax import configs as configs_lib
from densecap_jax.models import losses as losses_lib
from densecap_jax.models import language_model as lm_lib
from densecap_jax.models import localization as loc_lib
from densecap_jax.models import precision as precision_lib
from densecap_jax.models import recognition as recog_lib
from densecap_jax.models import vgg16 as vgg_lib
from densecap_jax.ops import boxes as boxes_lib
from densecap_jax.ops import nms as nms_lib
from densecap_jax.ops import roi_pool as roi_pool_lib


class DenseCap(nn.Module):
  """Parameter container of the whole model; one method per stage.

  Attributes mirror the config fields of the same names (see ``build_model``).
  """
  cnn_widths: tuple
  frozen_blocks: int
  num_anchors: int
  rpn_num_filters: int
  fc_dim: int
  drop_prob: float
  vocab_size: int
  seq_length: int
  rnn_size: int
  rnn_encoding_size: int
  std: float = 0.01
  precision: str = "float32"
  input_scale: float = 1.0
  word_head: bool = False

  def setup(self):
    self.backbone = vgg_lib.VGG16(self.cnn_widths, self.frozen_blocks, self.precision,
                                  self.input_scale)
    self.localization = loc_lib.LocalizationLayer(self.num_anchors, self.rpn_num_filters,
                                                  self.std, self.precision)
    self.recognition = recog_lib.RecognitionNetwork(self.fc_dim, self.drop_prob, self.std,
                                                    self.precision)
    self.language_model = lm_lib.LanguageModel(self.vocab_size, self.seq_length, self.fc_dim,
                                               self.rnn_encoding_size, self.rnn_size,
                                               self.precision)
    if self.word_head:
      self.word_classifier = nn.Dense(self.vocab_size, **precision_lib.exact_kwargs())

  def features(self, images, image_sizes, finetune_cnn=False):
    """``(B, H, W, 3)`` images -> ``(B, Hf, Wf, C)`` conv5_3 features (``VGG16``)."""
    return self.backbone(images, image_sizes, finetune_cnn)

  def rpn(self, features):
    """``(B, Hf, Wf, C)`` -> raw ``(B, Hf, Wf, 4k)`` transforms, ``(B, Hf, Wf, 2k)`` scores."""
    return self.localization(features)

  def recognize(self, roi_features, train=False):
    """``(..., 7, 7, C)`` -> codes ``(..., fc_dim)``, logits ``(...)``, transforms ``(..., 4)``."""
    return self.recognition(roi_features, train)

  def caption_scores(self, codes, labels):
    """Teacher-forced LM scores ``(N, L + 2, V + 1)`` of ``(N, fc_dim)`` codes."""
    return self.language_model(codes, labels)

  def sample_captions(self, codes):
    """Greedy ``(N, L)`` int32 tokens of ``(N, fc_dim)`` codes."""
    return self.language_model.sample(codes)

  def sample_captions_scored(self, codes):
    """Greedy ``(N, L)`` tokens and ``(N, L)`` log-probabilities (``LanguageModel.sample_scored``)."""
    return self.language_model.sample_scored(codes)

  def phrase_log_likelihood(self, codes, phrases):
    """``(N, P, T)`` per-token log-likelihoods (``LanguageModel.phrase_log_likelihood``)."""
    return self.language_model.phrase_log_likelihood(codes, phrases)

  def word_scores(self, codes):
    """``(N, fc_dim)`` codes -> ``(N, V)`` word-presence logits (only with ``word_head``)."""
    return self.word_classifier(codes)

  def __call__(self, images, image_sizes, labels):
    """Runs every stage once on small inputs (used by ``init_params``)."""
    features = self.features(images, image_sizes)
    self.rpn(features)
    pooled = jnp.zeros((1, 7, 7, features.shape[-1]), features.dtype)
    codes, _, _ = self.recognize(pooled)
    if self.word_head:
      self.word_scores(codes)
    return self.caption_scores(codes, labels)


def build_model(config):
  """The ``DenseCap`` module of a model config (``densecap_jax.configs``).

  Raises:
    ValueError: ``config.vocab_size`` is not set to a positive int, or
      ``config.precision`` is not one of ``configs.PRECISIONS``.
  """
  if not isinstance(config.vocab_size, int) or config.vocab_size <= 0:
    raise ValueError(f"config.vocab_size must be set to the vocabulary size (a positive int), "
                     f"got {config.vocab_size!r}")
  return DenseCap(
      cnn_widths=tuple(tuple(block) for block in config.cnn_widths),
      frozen_blocks=config.frozen_blocks,
      num_anchors=len(config.anchor_sizes),
      rpn_num_filters=config.rpn_num_filters,
      fc_dim=config.fc_dim,
      drop_prob=config.drop_prob,
      vocab_size=config.vocab_size,
      seq_length=config.seq_length,
      rnn_size=config.rnn_size,
      rnn_encoding_size=config.rnn_encoding_size,
      std=config.std,
      precision=configs_lib.precision_of(config),
      input_scale=config.get("input_scale", 1.0),
      word_head=config.get("word_loss_weight", 0.0) > 0)


def init_params(config, rng):
  """Freshly initialised parameters (the ``'params'`` collection) for ``config``."""
  model = build_model(config)
  images = jnp.zeros((1, 16, 16, 3), jnp.float32)
  sizes = jnp.full((1, 2), 16, jnp.int32)
  labels = jnp.zeros((1, config.seq_length), jnp.int32)
  return jax.jit(model.init)(rng, images, sizes, labels)["params"]


def _rpn_boxes(model, params, features, image_sizes, config, box_decay_weight=0.0):
  """Flat RPN outputs of a batch (§3.1, §3.8).

  Args:
    model, params: the ``DenseCap`` module and its params.
    features: ``(B, Hf, Wf, C)`` conv5_3 features of padded images.
    image_sizes: ``(B, 2)`` int32 true image sizes.
    config: the model config.
    box_decay_weight: ``box_reg_decay`` whose gradient ``w * t`` is added on
      the box-conv output (0 at test time); divided by ``B`` because the
      training losses are means over images.

  Returns:
    dict with ``transforms`` ``(B, K, 4)``, ``scores`` ``(B, K, 2)``,
    ``anchors`` ``(K, 4)``, ``boxes`` ``(B, K, 4)`` xcycwh, ``cell_valid``
    ``(B, K)``, ``feature_sizes`` ``(B, 2)`` and ``box_decay_loss`` (mean over images).
  """
  batch, height, width = features.shape[:3]
  k = len(config.anchor_sizes)
  transform_map, score_map = model.apply({"params": params}, features, method=DenseCap.rpn)
  feature_sizes = vgg_lib.feature_size(image_sizes)
  cells = vgg_lib.valid_region_mask(feature_sizes, height, width)
  # RegularizeLayer on the whole box-conv output (§3.8), padding cells excluded.
  transform_map = losses_lib.box_decay(transform_map, box_decay_weight / batch, cells)
  decay = losses_lib.box_decay_loss(jax.lax.stop_gradient(transform_map),
                                    config.box_reg_decay, cells) / batch
  anchors = loc_lib.rpn_anchors(
      height, width, loc_lib.scaled_anchor_sizes(config.anchor_sizes, config.anchor_scale),
      tuple(config.field_centers))
  transforms = loc_lib.anchor_major(transform_map, k)
  return {
      "transforms": transforms,
      "scores": loc_lib.anchor_major(score_map, k),
      "anchors": anchors,
      "boxes": boxes_lib.apply_box_transform(anchors, transforms),
      "cell_valid": loc_lib.cell_mask(feature_sizes, height, width, k),
      "feature_sizes": feature_sizes,
      "box_decay_loss": decay,
  }


def _pool(features, boxes, image_sizes, feature_sizes, output_size):
  """Per-image bilinear RoI pooling: ``(B, S, 4)`` boxes -> ``(B, S, Hr, Wr, C)``."""
  pool = functools.partial(roi_pool_lib.bilinear_roi_pool, output_size=tuple(output_size))
  return jax.vmap(lambda f, b, s, fs: pool(f, b, s, feature_size=fs))(
      features, boxes, image_sizes, feature_sizes)


def _image_losses(sample, logits, final_transforms, lm_scores):
  """The five unweighted losses of one image (§4.1)."""
  num_lm = lm_scores.shape[0]
  return {
      "mid_objectness_loss": losses_lib.rpn_objectness_loss(sample.scores, sample.is_pos,
                                                            ~sample.is_pos),
      "mid_box_reg_loss": losses_lib.rpn_box_reg_loss(sample.transforms, sample.anchors,
                                                      sample.target_boxes, sample.is_pos),
      "end_objectness_loss": losses_lib.end_objectness_loss(logits, sample.is_pos),
      "end_box_reg_loss": losses_lib.end_box_reg_loss(sample.boxes, final_transforms,
                                                      sample.target_boxes, sample.is_pos),
      "captioning_loss": losses_lib.captioning_loss(
          lm_scores, lm_lib.lm_targets(sample.target_labels[:num_lm], lm_scores.shape[-1] - 1),
          sample.is_pos[:num_lm]),
  }


def _check_batch(batch, config):
  required = ("image", "image_size", "gt_boxes", "gt_labels", "gt_mask")
  missing = [key for key in required if key not in batch]
  if missing:
    raise ValueError(f"batch is missing {missing}; expected keys {required}")
  if batch["image"].ndim != 4 or batch["image"].shape[-1] != 3:
    raise ValueError(f"batch['image'] must be (B, H, W, 3), got {batch['image'].shape}")
  if batch["gt_labels"].shape[-1] != config.seq_length:
    raise ValueError(f"batch['gt_labels'] must have config.seq_length = {config.seq_length} "
                     f"tokens per caption, got shape {batch['gt_labels'].shape}")


def train_forward(params, batch, rng, config, finetune_cnn=False):
  """Training forward pass and losses (``DenseCapModel:forward_backward``, §3.5, §4, §5).

  Per image: RPN boxes, the RoI minibatch of ``config.sampler_batch_size``
  slots (positives first), bilinear pooling of the predicted boxes, fc6 / fc7
  with dropout, objectness of every RoI, box regression and teacher-forced
  captions of the positives (only the first ``S // 2`` slots can be
  positive). Differentiating ``total_loss`` gives the original's gradients,
  including the box-decay term on the RPN box conv (``losses.box_decay``),
  which is not part of ``total_loss``.

  Args:
    params: the ``'params'`` collection (``init_params``).
    batch: dict with ``image`` ``(B, Hb, Wb, 3)`` float32, ``image_size``
      ``(B, 2)`` int32 true (H, W), ``gt_boxes`` ``(B, R, 4)`` float32 xcycwh,
      ``gt_labels`` ``(B, R, L)`` int32, ``gt_mask`` ``(B, R)`` bool.
    rng: ``jax.random`` key (sampling and dropout).
    config: the model config.
    finetune_cnn: static bool, train conv3_1 ... conv5_3 too (§4.2).

  Returns:
    ``(total_loss, losses, aux)``: the sum of the five weighted losses; a dict
    of the five weighted losses (means over images) plus ``box_decay_loss``
    (reported only); ``aux`` with per-image ``num_pos`` ``(B,)`` and
    ``neg_with_replacement`` ``(B,)``.
  """
  _check_batch(batch, config)
  model = build_model(config)
  sample_rng, dropout_rng = jax.random.split(rng)
  image_sizes = batch["image_size"]
  features = model.apply({"params": params}, batch["image"], image_sizes, finetune_cnn,
                         method=DenseCap.features)
  rpn = _rpn_boxes(model, params, features, image_sizes, config, config.box_reg_decay)

  num_images = features.shape[0]
  sample_fn = functools.partial(
      loc_lib.sample_rois, num_samples=config.sampler_batch_size,
      low_thresh=config.sampler_low_thresh, high_thresh=config.sampler_high_thresh,
      remove_outbounds_boxes=config.train_remove_outbounds_boxes)
  samples = jax.vmap(sample_fn, in_axes=(0, 0, None, 0, 0, 0, 0, 0, 0, 0))(
      jax.random.split(sample_rng, num_images), rpn["boxes"], rpn["anchors"],
      rpn["transforms"], rpn["scores"], rpn["cell_valid"], image_sizes, batch["gt_boxes"],
      batch["gt_labels"], batch["gt_mask"])

  pooled = _pool(features, samples.boxes, image_sizes, rpn["feature_sizes"],
                 config.roi_output_size)
  codes, logits, final_transforms = model.apply(
      {"params": params}, pooled, True, rngs={"dropout": dropout_rng},
      method=DenseCap.recognize)
  num_lm = config.sampler_batch_size // 2
  lm_codes = codes[:, :num_lm].reshape(num_images * num_lm, -1)
  lm_labels = samples.target_labels[:, :num_lm].reshape(num_images * num_lm, -1)
  lm_scores = model.apply({"params": params}, lm_codes, lm_labels,
                          method=DenseCap.caption_scores)
  lm_scores = lm_scores.reshape((num_images, num_lm) + lm_scores.shape[1:])

  per_image = jax.vmap(_image_losses)(samples, logits, final_transforms, lm_scores)
  losses = losses_lib.weighted_losses(jax.tree.map(jnp.mean, per_image), config)
  if model.word_head:
    word_scores = model.apply({"params": params}, lm_codes, method=DenseCap.word_scores)
    per_image_words = jax.vmap(losses_lib.word_presence_loss)(
        word_scores.reshape(num_images, num_lm, -1), samples.target_labels[:, :num_lm],
        samples.is_pos[:, :num_lm])
    losses["word_loss"] = config.word_loss_weight * jnp.mean(per_image_words)
  total_loss = sum(losses.values())
  losses["box_decay_loss"] = rpn["box_decay_loss"]
  aux = {"num_pos": samples.num_pos, "neg_with_replacement": samples.neg_with_replacement}
  return total_loss, losses, aux


CAPTION_MIN_ROWS = 64  # fewer rows cost the LM about as much on an accelerator


def caption_row_sizes(max_rows, ratio=1.25, min_rows=CAPTION_MIN_ROWS):
  """Static row counts the captioning LM may run on, ascending: 0, then ``min_rows`` (or
  ``max_rows`` if less), then each the largest ``<= ratio * (previous + 1)``, up to
  ``max_rows``.

  Any count ``t >= 1`` of rows to caption fits in a size ``<= max(ratio * t,
  min_rows)``. Each size is one compiled copy of the LM, so the floor keeps
  their number down (14 for 1,000 rows, 29 for 32,000).
  """
  sizes = [0, min(min_rows, max_rows)]
  while sizes[-1] < max_rows:
    sizes.append(min(max_rows, max(sizes[-1] + 1, math.floor(ratio * (sizes[-1] + 1)))))
  return tuple(sizes)


def caption_kept(model, params, codes, valid, groups=1):
  """Greedy captions of the valid rows only, packed across the batch.

  The valid rows of all images are gathered, in order, into one array of
  the smallest size of ``caption_row_sizes`` that holds them (a
  ``lax.switch`` over static sizes: at most 1.25 times the valid rows, or
  ``CAPTION_MIN_ROWS``, and none when there are none), captioned at once
  and scattered back; the other rows get token 0. Rows are captioned
  independently, so the tokens do not depend on how they are packed.

  Args:
    model, params: the ``DenseCap`` module and its params.
    codes: ``(B, N, fc_dim)`` region codes.
    valid: ``(B, N)`` bool, the rows to caption.
    groups: static int dividing ``B``: the images are packed in that many
      groups of consecutive images (all of the same size, that of the group
      with the most valid rows), e.g. one per device a batch is split over,
      so that no rows move between devices.

  Returns:
    ``(B, N, L)`` int32 tokens, 0 on rows that are not valid.
  """
  batch, num_boxes, dim = codes.shape
  if batch % groups:
    raise ValueError(f"groups must divide the batch, got {groups} groups for {batch} images")
  rows = batch // groups * num_boxes
  codes = codes.reshape(groups, rows, dim)
  valid = valid.reshape(groups, rows)
  packed_row = jnp.cumsum(valid, axis=1) - 1  # each valid row's place in its group's pack
  group = jnp.arange(groups)[:, None]
  # source[g, k]: the row of group g packed at place k (rows beyond its count: the last row).
  source = jnp.full((groups, rows), rows - 1, jnp.int32).at[
      group, jnp.where(valid, packed_row, rows)].set(jnp.arange(rows, dtype=jnp.int32),
                                                     mode="drop")
  sizes = caption_row_sizes(rows)

  def caption_packed(size):
    def run(codes):
      if size == 0:
        return jnp.zeros((groups, rows, model.seq_length), jnp.int32)
      head = jnp.take_along_axis(codes, source[:, :size, None], axis=1)
      tokens = model.apply({"params": params}, head.reshape(groups * size, dim),
                           method=DenseCap.sample_captions).reshape(groups, size, -1)
      return jnp.take_along_axis(tokens, jnp.clip(packed_row, 0, size - 1)[..., None], axis=1)
    return run

  needed = jnp.max(jnp.sum(valid, axis=1))
  branch = jnp.sum(jnp.asarray(sizes) < needed)
  tokens = jax.lax.switch(branch, [caption_packed(s) for s in sizes], codes)
  return jnp.where(valid[..., None], tokens, 0).reshape(batch, num_boxes, -1)


def _detect(params, images, image_sizes, config, num_proposals, rpn_nms_thresh,
            final_nms_thresh):
  """Proposals, recognition and the final NMS: the detection stage of ``infer`` (§3.6, §5).

  Returns:
    dict with ``model``, ``features``, ``rpn`` (``_rpn_boxes``), per proposal
    ``proposals`` ``(B, N, 4)``, ``codes`` ``(B, N, fc_dim)``, ``logits``
    ``(B, N)`` and ``final_boxes`` ``(B, N, 4)``, and the final NMS result:
    ``take(x)`` reorders a ``(B, N, ...)`` array into kept-first logit order,
    ``valid`` ``(B, N)`` marks the kept slots.
  """
  num_proposals = config.num_proposals if num_proposals is None else num_proposals
  rpn_nms_thresh = config.rpn_nms_thresh if rpn_nms_thresh is None else rpn_nms_thresh
  final_nms_thresh = config.final_nms_thresh if final_nms_thresh is None else final_nms_thresh
  model = build_model(config)
  features = model.apply({"params": params}, images, image_sizes, method=DenseCap.features)
  rpn = _rpn_boxes(model, params, features, image_sizes, config)
  propose = functools.partial(loc_lib.propose, nms_thresh=rpn_nms_thresh,
                              num_proposals=num_proposals)
  proposals, proposal_valid = jax.vmap(propose)(rpn["boxes"], rpn["scores"], rpn["cell_valid"],
                                                image_sizes)
  pooled = _pool(features, proposals, image_sizes, rpn["feature_sizes"], config.roi_output_size)
  codes, logits, transforms = model.apply({"params": params}, pooled, method=DenseCap.recognize)
  final_boxes = boxes_lib.apply_box_transform(proposals, transforms)
  take, valid = final_nms(final_boxes, logits, proposal_valid, final_nms_thresh)
  return {"model": model, "features": features, "rpn": rpn, "proposals": proposals,
          "codes": codes, "logits": logits, "final_boxes": final_boxes, "take": take,
          "valid": valid}


def final_nms(final_boxes, logits, proposal_valid, final_nms_thresh):
  """The final NMS (§5) on the regressed boxes, scored by the raw objectness logits.

  Args:
    final_boxes: ``(B, N, 4)`` xcycwh boxes (corners by the ``(w-1)/2`` rule).
    logits: ``(B, N)`` objectness logits.
    proposal_valid: ``(B, N)`` bool, the real proposals.
    final_nms_thresh: IoU threshold (may be traced); ``<= 0`` keeps every proposal.

  Returns:
    ``(take, valid)``: ``take(x)`` reorders a ``(B, N, ...)`` array so that the
    kept rows come first in decreasing logit; ``valid`` ``(B, N)`` marks them.
  """
  num_proposals = final_boxes.shape[1]
  threshold = jnp.where(jnp.asarray(final_nms_thresh) > 0, final_nms_thresh, 2.0)
  # Batched (one loop for all images), in one block: every proposal may be kept.
  keep, count = nms_lib.nms(boxes_lib.xcycwh_to_x1y1x2y2(final_boxes), logits, threshold,
                            num_proposals, valid=proposal_valid, block_size=num_proposals)
  order = jnp.maximum(keep, 0)

  def take(x):
    return jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), axis=1)

  return take, jnp.arange(num_proposals)[None, :] < count[:, None]


def infer(params, images, image_sizes, config, num_proposals=None, rpn_nms_thresh=None,
          final_nms_thresh=None, caption_all=False, caption_groups=1):
  """Test-time forward pass (``DenseCapModel:forward_test``, §3.6, §5).

  Proposals: the RPN boxes clipped to the image (the 1-px shrink quirk of
  §3.4), NMS at ``rpn_nms_thresh`` on the RPN probability, at most
  ``num_proposals``. Final boxes: the proposals moved by the box-regression
  head, **not clipped**, scored by the raw objectness **logit**, then NMS at
  ``final_nms_thresh`` (no count limit) in decreasing logit. The final NMS
  depends only on boxes and logits, so it runs before captioning and only the
  kept boxes are captioned; ``caption_all=True`` captions all proposals first
  and then selects, as the original does (same result, more work).
  A ``final_nms_thresh <= 0`` keeps every proposal (the original then skips
  the NMS; here they are still sorted by logit).

  Args:
    params: the ``'params'`` collection.
    images: ``(B, Hb, Wb, 3)`` float32, BGR minus the VGG mean, zero outside
      each true size (one shape bucket).
    image_sizes: ``(B, 2)`` int32 true ``(H, W)``.
    config: the model config.
    num_proposals: static int N (default ``config.num_proposals``).
    rpn_nms_thresh, final_nms_thresh: floats, may be traced (defaults from config).
    caption_all: static bool, see above.
    caption_groups: static int, ``caption_kept``'s ``groups``: the kept rows
      of all images are captioned packed together, or in that many groups of
      consecutive images (pass the number of devices a batch is split over,
      so that each captions the rows of its own images).

  Returns:
    ``(boxes, scores, tokens, valid)``: ``(B, N, 4)`` float32 xcycwh final
    boxes, ``(B, N)`` float32 logits, ``(B, N, L)`` int32 caption tokens
    (``data.vocab.decode_captions``), ``(B, N)`` bool; valid detections come first,
    sorted by logit, descending; invalid slots hold zeros.
  """
  det = _detect(params, images, image_sizes, config, num_proposals, rpn_nms_thresh,
                final_nms_thresh)
  model, take, valid = det["model"], det["take"], det["valid"]
  boxes = jnp.where(valid[..., None], take(det["final_boxes"]), 0.0)
  scores = jnp.where(valid, take(det["logits"]), 0.0)
  if caption_all:
    all_tokens = caption_kept(model, params, det["codes"], jnp.ones_like(valid), caption_groups)
    tokens = jnp.where(valid[..., None], take(all_tokens), 0)
  else:
    tokens = caption_kept(model, params, take(det["codes"]), valid, caption_groups)
  return boxes, scores, tokens, valid


def _fit_slots(x, size):
  """``(B, N, ...)`` -> ``(B, size, ...)``: the first ``size`` rows, zero-padded if ``N < size``."""
  x = x[:, :size]
  pad = [(0, 0), (0, size - x.shape[1])] + [(0, 0)] * (x.ndim - 2)
  return jnp.pad(x, pad)


def detect_with_codes(params, images, image_sizes, config, num_detections, num_proposals=None,
                      rpn_nms_thresh=None, final_nms_thresh=None, pool_final_boxes=False):
  """Detections and their fc7 region codes (``DenseCapModel:extractFeatures``, §10.5).

  The same detections as ``infer`` (proposals, recognition, final NMS at
  ``final_nms_thresh``, kept boxes first by decreasing logit), without
  captions. As the original, the code of a detection is the fc7 output
  (post-ReLU) of its *proposal*, the region pooled before the box-regression
  head moved it to the final box. ``pool_final_boxes=True`` pools the final
  boxes themselves and runs fc6 / fc7 on them, so that each code describes
  exactly the returned box.

  Args:
    params, images, image_sizes, config, num_proposals, rpn_nms_thresh,
      final_nms_thresh: as ``infer``.
    num_detections: static int M, detection slots returned per image (the
      first M of the ``num_proposals`` kept slots, zero-padded when larger).
    pool_final_boxes: static bool, see above.

  Returns:
    dict of ``boxes`` ``(B, M, 4)`` float32 xcycwh final boxes (unclipped),
    ``scores`` ``(B, M)`` float32 objectness logits, ``codes``
    ``(B, M, fc_dim)`` float32, ``proposals`` ``(B, M, 4)`` float32 xcycwh
    boxes that were pooled for ``codes`` in the default mode, ``valid``
    ``(B, M)`` bool; valid detections first, sorted by logit, descending;
    invalid slots hold zeros.
  """
  det = _detect(params, images, image_sizes, config, num_proposals, rpn_nms_thresh,
                final_nms_thresh)
  model = det["model"]
  take = lambda x: _fit_slots(det["take"](x), num_detections)
  valid = _fit_slots(det["valid"], num_detections)
  boxes = jnp.where(valid[..., None], take(det["final_boxes"]), 0.0)
  if pool_final_boxes:  # Clean variant of §10.5: codes of the returned boxes themselves.
    pooled = _pool(det["features"], boxes, image_sizes, det["rpn"]["feature_sizes"],
                   config.roi_output_size)
    kept_codes, _, _ = model.apply({"params": params}, pooled, method=DenseCap.recognize)
  else:
    kept_codes = take(det["codes"])
  return {
      "boxes": boxes,
      "scores": jnp.where(valid, take(det["logits"]), 0.0),
      "codes": jnp.where(valid[..., None], kept_codes, 0.0),
      "proposals": jnp.where(valid[..., None], take(det["proposals"]), 0.0),
      "valid": valid,
  }


def region_codes(params, images, image_sizes, boxes, box_valid, config):
  """fc7 region codes of given boxes (the recognition base on user boxes, §5, §10.5).

  Args:
    params: the ``'params'`` collection.
    images: ``(B, Hb, Wb, 3)`` float32, BGR minus the VGG mean, zero outside
      each true size (one shape bucket).
    image_sizes: ``(B, 2)`` int32 true ``(H, W)``.
    boxes: ``(B, M, 4)`` float32 xcycwh boxes in 1-based pixels of each image.
    box_valid: ``(B, M)`` bool, the real boxes (padding slots are ignored).
    config: the model config.

  Returns:
    ``(codes, logits)``: ``(B, M, fc_dim)`` float32 fc7 codes (post-ReLU) of
    the bilinearly pooled boxes and ``(B, M)`` float32 objectness logits;
    zeros in invalid slots.
  """
  model = build_model(config)
  features = model.apply({"params": params}, images, image_sizes, method=DenseCap.features)
  pooled = _pool(features, boxes, image_sizes, vgg_lib.feature_size(image_sizes),
                 config.roi_output_size)
  codes, logits, _ = model.apply({"params": params}, pooled, method=DenseCap.recognize)
  return jnp.where(box_valid[..., None], codes, 0.0), jnp.where(box_valid, logits, 0.0)


def region_captions(params, images, image_sizes, boxes, box_valid, config):
  """Codes, objectness, greedy captions and their log-probabilities of given boxes.

  Args:
    params, images, image_sizes, boxes, box_valid, config: as ``region_codes``.

  Returns:
    dict of ``codes`` ``(B, M, fc_dim)``, ``logits`` ``(B, M)``, ``tokens``
    ``(B, M, L)`` int32 and ``log_probs`` ``(B, M, L)`` float32 (each chosen
    token's log-probability); every row is captioned, invalid ones hold
    zero codes.
  """
  codes, logits = region_codes(params, images, image_sizes, boxes, box_valid, config)
  batch, slots, dim = codes.shape
  tokens, log_probs = build_model(config).apply(
      {"params": params}, codes.reshape(batch * slots, dim),
      method=DenseCap.sample_captions_scored)
  return {"codes": codes, "logits": logits, "tokens": tokens.reshape(batch, slots, -1),
          "log_probs": log_probs.reshape(batch, slots, -1)}


def phrase_log_likelihood(params, codes, phrases, config):
  """Teacher-forced log-likelihood of phrases given region codes (paper §4.3).

  Args:
    params: the ``'params'`` collection.
    codes: ``(N, fc_dim)`` float32 region codes.
    phrases: ``(P, T - 1)`` int32 word ids, 0-padded (``regions.phrases``).
    config: the model config.

  Returns:
    ``(N, P, T)`` float32 log-probabilities of each phrase's words and END
    (``LanguageModel.phrase_log_likelihood``).
  """
  return build_model(config).apply({"params": params}, codes, phrases,
                                   method=DenseCap.phrase_log_likelihood)
