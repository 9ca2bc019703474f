"""The recognition network on pooled RoI features (reference §2, §5).

``fc6`` and ``fc7`` (Linear + ReLU + inverted dropout each, the ``recog_base``
taken from VGG-16) turn every RoI's 7x7xC features into a region code; the
``objectness`` head gives one logit per RoI and the ``box_reg`` head four
transforms that move the RoI box to the final box.

The pooled features are channels-last ``(..., 7, 7, C)``; they are transposed
to ``(C, 7, 7)`` before flattening, the order of Caffe's fc6 (input index
``c * 49 + i * 7 + j``), so converted VGG-16 fc6 weights apply unchanged.

Precision (``models/precision.py``): fc6 and fc7 follow the model's policy;
the objectness and box-regression heads are float32 at the highest precision
always (their logits rank the final NMS, their transforms become boxes).
"""

import flax.linen as nn
import jax.numpy as jnp

from densecap_jax.models import precision as precision_lib


def flatten_chw(roi_features):
  """``(..., Hr, Wr, C)`` -> ``(..., C * Hr * Wr)`` in (C, H, W) order."""
  moved = jnp.moveaxis(roi_features, -1, -3)
  return moved.reshape(moved.shape[:-3] + (-1,))


class RecognitionNetwork(nn.Module):
  """fc6, fc7, objectness and box-regression heads (§5).

  Attributes:
    fc_dim: width of fc6 / fc7 (4096 for VGG-16).
    drop_prob: dropout probability after fc6 and fc7 at train time (0.5).
    std: init std of the objectness weights (0.01); box_reg starts at zero.
    precision: ``configs.PRECISIONS`` name of fc6 / fc7.
  """
  fc_dim: int = 4096
  drop_prob: float = 0.5
  std: float = 0.01
  precision: str = "float32"

  @nn.compact
  def __call__(self, roi_features, train=False):
    """Codes, objectness logits and box transforms of every RoI.

    Args:
      roi_features: ``(..., Hr, Wr, C)`` float32 pooled features.
      train: apply dropout (needs the ``'dropout'`` rng).

    Returns:
      ``(codes, logits, transforms)``: ``(..., fc_dim)`` float32 post-ReLU
      fc7 codes, ``(...)`` float32 raw objectness logits, ``(..., 4)``
      float32 final box transforms.
    """
    dense_kwargs = precision_lib.dense_kwargs(self.precision)
    head = precision_lib.exact_kwargs()
    x = flatten_chw(roi_features)
    for name in ("fc6", "fc7"):
      x = nn.relu(nn.Dense(self.fc_dim, kernel_init=nn.initializers.he_normal(), name=name,
                           **dense_kwargs)(x))
      x = nn.Dropout(self.drop_prob, deterministic=not train)(x)
    logits = nn.Dense(1, kernel_init=nn.initializers.normal(self.std), name="objectness",
                      **head)(x)
    transforms = nn.Dense(4, kernel_init=nn.initializers.zeros, name="box_reg", **head)(x)
    return x, logits[..., 0], transforms
