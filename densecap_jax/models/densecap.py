"""The DenseCap model (reference §2–§6): its Flax module and the stages every pass shares.

``DenseCap`` composes the parameterised parts — ``backbone`` (VGG-16 convs),
``localization`` (RPN head), ``recognition`` (fc6, fc7, objectness, box_reg)
and ``language_model`` — with one method per stage. The forward passes that
run them from top to bottom are ``training.train_forward`` (the losses),
``detection.infer`` and ``detection.detect_with_codes`` (test time), and
``given_boxes`` (codes, captions and phrase scores of given regions); they
share ``rpn_boxes`` and ``pool_regions``.

Batches hold several images padded into one shape bucket; every per-image step
is ``jax.vmap``-ed, every shape is static, and the true image sizes are traced
values, so one program serves every image of a bucket.

Freezing (§4.2) is done in the forward pass with ``jax.lax.stop_gradient``:
conv1_1 ... conv2_2 never receive gradient, conv3_1 ... conv5_3 only when
``finetune_cnn=True``. ``optim.param_groups`` gives the matching parameter
partition for the optimizer (separate CNN group, frozen layers unchanged).

Precision: ``config.precision`` (``"float32"`` when absent) goes to every
module (``models/precision.py``); whatever it is, every stage hands float32
arrays to the next, and the box, NMS, pooling and loss code of the forward
passes is float32.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from densecap_jax import configs as configs_lib
from densecap_jax.models import language_model as lm_lib
from densecap_jax.models import localization as loc_lib
from densecap_jax.models import losses as losses_lib
from densecap_jax.models import precision as precision_lib
from densecap_jax.models import recognition as recog_lib
from densecap_jax.models import vgg16 as vgg_lib
from densecap_jax.ops import boxes as boxes_lib
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
  skip_blocks: tuple = ()
  skip_gradient: bool = False
  word_head: bool = False

  def setup(self):
    self.backbone = vgg_lib.VGG16(self.cnn_widths, self.frozen_blocks, self.precision,
                                  self.input_scale, self.skip_blocks, self.skip_gradient)
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
    """``(B, Hf, Wf, C)`` -> raw ``(B, Hf, Wf, 4k)`` transforms, ``(B, Hf, Wf, 2k)`` scores.

    The RPN sees relu5_3's channels only; the ``skip_blocks``' appended
    channels go to the RoI codes alone.
    """
    return self.localization(features[..., :self.cnn_widths[-1][-1]])

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
      skip_blocks=tuple(config.get("cnn_skip_blocks", ())),
      skip_gradient=config.get("cnn_skip_gradient", False),
      word_head=config.get("word_loss_weight", 0.0) > 0)


def init_params(config, rng):
  """Freshly initialised parameters (the ``'params'`` collection) for ``config``."""
  model = build_model(config)
  images = jnp.zeros((1, 16, 16, 3), jnp.float32)
  sizes = jnp.full((1, 2), 16, jnp.int32)
  labels = jnp.zeros((1, config.seq_length), jnp.int32)
  return jax.jit(model.init)(rng, images, sizes, labels)["params"]


def rpn_boxes(model, params, features, image_sizes, config, box_decay_weight=0.0):
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


def pool_regions(features, boxes, image_sizes, feature_sizes, output_size):
  """Per-image bilinear RoI pooling: ``(B, S, 4)`` boxes -> ``(B, S, Hr, Wr, C)``."""
  pool = functools.partial(roi_pool_lib.bilinear_roi_pool, output_size=tuple(output_size))
  return jax.vmap(lambda f, b, s, fs: pool(f, b, s, feature_size=fs))(
      features, boxes, image_sizes, feature_sizes)
