"""Test-time passes on regions the caller gives rather than detects (§5, §10.5, paper §4.3).

* ``region_codes(params, images, image_sizes, boxes, box_valid, config)`` ->
  fc7 codes and objectness logits of given boxes; ``region_captions`` adds
  their greedy captions and the tokens' log-probabilities.
* ``phrase_log_likelihood(params, codes, phrases, config)`` -> the
  teacher-forced log-likelihood of phrases given region codes.
"""

import jax.numpy as jnp

from densecap_jax.models import vgg16 as vgg_lib
from densecap_jax.models.densecap import DenseCap
from densecap_jax.models.densecap import build_model
from densecap_jax.models.densecap import pool_regions


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
  pooled = pool_regions(features, boxes, image_sizes, vgg_lib.feature_size(image_sizes),
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
