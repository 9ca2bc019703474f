"""The localization layer: RPN head, anchors, RoI sampling and proposals (reference §3).

``LocalizationLayer`` holds the parameters (``rpn_conv``, ``rpn_box``,
``rpn_score``) and maps conv5_3 features to the raw RPN maps. The rest are
plain functions over one image, vmapped by the model:

* training (§3.5): ``sample_rois`` draws the fixed-size RoI minibatch from the
  predicted boxes with ``ops.sampler.sample_boxes`` and gathers every
  parallel array (boxes, anchors, transforms, scores, matched ground truth);
* test (§3.6): ``propose`` clips, scores and suppresses the predicted boxes
  into ``num_proposals`` proposals with a validity mask.

Flat box order (§3.1 item 5): box ``n = a * Hf * Wf + r * Wf + c`` is anchor
``a`` at feature cell (row ``r``, column ``c``); the box-conv channels of
anchor ``a`` are ``4a + (tx, ty, tw, th)`` and the score-conv channels
``2a + (positive, negative)``, so converted weights keep their meaning.

Shape buckets: the feature map of a padded image has cells beyond the true
feature size ``ceil(H / 16) x ceil(W / 16)``; their boxes are never sampled,
proposed or decayed (``cell_valid``).
"""

from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from densecap_jax.models import precision as precision_lib
from densecap_jax.ops import anchors as anchors_lib
from densecap_jax.ops import boxes as boxes_lib
from densecap_jax.ops import nms as nms_lib
from densecap_jax.ops import sampler as sampler_lib

# Bounds that no box reaches: the sampler's bounds when out-of-bounds boxes are kept.
_FAR = 1e6


class LocalizationLayer(nn.Module):
  """RPN head (§3.1): 3x3 conv + ReLU, then 1x1 box and score convs.

  Attributes:
    num_anchors: k, anchors per cell.
    num_filters: channels of ``rpn_conv`` (256 in the original).
    std: init std of ``rpn_conv`` and ``rpn_score``; ``rpn_box`` starts at zero
      (``zero_box_conv``).
    precision: ``configs.PRECISIONS`` name of ``rpn_conv``; the box and score
      convs are float32 at the highest precision always (the scores rank the
      proposals, the deltas become boxes; ``models/precision.py``).
  """
  num_anchors: int
  num_filters: int = 256
  std: float = 0.01
  precision: str = "float32"

  @nn.compact
  def __call__(self, features):
    """Raw RPN maps.

    Args:
      features: ``(B, Hf, Wf, C)`` conv5_3 features.

    Returns:
      ``(transforms, scores)``: ``(B, Hf, Wf, 4k)`` float32 box deltas and
      ``(B, Hf, Wf, 2k)`` float32 scores, channels as in the module doc.
    """
    init = nn.initializers.normal(self.std)
    head = precision_lib.exact_kwargs()
    x = nn.relu(nn.Conv(self.num_filters, (3, 3), padding=1, kernel_init=init, name="rpn_conv",
                        **precision_lib.conv_kwargs(self.precision))(features))
    transforms = nn.Conv(4 * self.num_anchors, (1, 1), kernel_init=nn.initializers.zeros,
                         name="rpn_box", **head)(x)
    scores = nn.Conv(2 * self.num_anchors, (1, 1), kernel_init=init, name="rpn_score",
                     **head)(x)
    return transforms, scores


def anchor_major(maps, num_anchors):
  """``(B, Hf, Wf, k*D)`` -> ``(B, k*Hf*Wf, D)`` in the flat box order (``ReshapeBoxFeatures``)."""
  b, h, w, channels = maps.shape
  per_anchor = maps.reshape(b, h, w, num_anchors, channels // num_anchors)
  return per_anchor.transpose(0, 3, 1, 2, 4).reshape(b, num_anchors * h * w, -1)


def rpn_anchors(height, width, anchor_sizes, field_centers):
  """``(k*Hf*Wf, 4)`` xcycwh anchors in the flat box order (§3.2).

  Args:
    height, width: static feature-map size.
    anchor_sizes: ``(k, 2)`` anchor (w, h) in image pixels (already scaled).
    field_centers: ``(x0, y0, sx, sy)`` of the backbone (§2.1).
  """
  grid = anchors_lib.make_anchors(height, width, np.asarray(anchor_sizes, np.float32),
                                  *field_centers)
  return grid.transpose(2, 0, 1, 3).reshape(-1, 4)


def cell_mask(feature_sizes, height, width, num_anchors):
  """``(B, k*Hf*Wf)`` bool: boxes whose cell lies inside the true feature size.

  Args:
    feature_sizes: ``(B, 2)`` int true feature size ``(Hf, Wf)`` of each image.
    height, width: static padded feature-map size.
    num_anchors: k.
  """
  rows = jnp.arange(height)[None, :, None] < feature_sizes[:, 0, None, None]
  cols = jnp.arange(width)[None, None, :] < feature_sizes[:, 1, None, None]
  cells = (rows & cols).reshape(-1, 1, height * width)
  return jnp.broadcast_to(cells, (cells.shape[0], num_anchors, height * width)).reshape(
      cells.shape[0], -1)


def gather_rows(x, index):
  """``x[index]`` whose gradient reaches each source row from its last occurrence only.

  The original's ``BoxSamplerHelper`` scatters gradients back with
  ``indexCopy``: with repeated indices (negatives drawn with replacement)
  one copy's gradient is written, nothing is accumulated (§3.5 item 4).

  Args:
    x: ``(N, D)``.
    index: ``(S,)`` int32 in ``[0, N)``.

  Returns:
    ``(S, D)``.
  """
  later = jnp.arange(index.shape[0])[None, :] > jnp.arange(index.shape[0])[:, None]
  is_last = ~jnp.any(later & (index[None, :] == index[:, None]), axis=1)
  rows = x[index]
  return jnp.where(is_last[:, None], rows, jax.lax.stop_gradient(rows))


class RoiSample(NamedTuple):
  """One image's RoI minibatch, ``S`` slots with positives first (§3.5 items 4–5).

  Attributes:
    boxes: ``(S, 4)`` xcycwh predicted RPN boxes (differentiable).
    anchors: ``(S, 4)`` xcycwh anchors.
    transforms: ``(S, 4)`` RPN transforms (differentiable).
    scores: ``(S, 2)`` RPN scores (differentiable).
    is_pos: ``(S,)`` bool, positive slots (``slot < num_pos``).
    target_boxes: ``(S, 4)`` xcycwh matched ground truth (positive slots).
    target_labels: ``(S, L)`` int32 matched captions (positive slots; 0 elsewhere).
    num_pos: int32 scalar P.
    neg_with_replacement: bool scalar, negatives were drawn with replacement.
  """
  boxes: jax.Array
  anchors: jax.Array
  transforms: jax.Array
  scores: jax.Array
  is_pos: jax.Array
  target_boxes: jax.Array
  target_labels: jax.Array
  num_pos: jax.Array
  neg_with_replacement: jax.Array


def sample_rois(rng, boxes, anchors, transforms, scores, cell_valid, image_size, gt_boxes,
                gt_labels, gt_mask, num_samples, low_thresh=0.3, high_thresh=0.7,
                remove_outbounds_boxes=True, on_anchors=False):
  """Samples and gathers the training RoIs of one image (§3.5 items 2–5).

  The sampler sees the *predicted* boxes (anchors + current transforms), or
  with ``on_anchors`` the anchors (as Faster R-CNN's RPN does: a box whose
  transform has run off stays a positive of its object, and its regression
  pulls it back); the RoIs pooled are the predicted boxes either way;
  with ``remove_outbounds_boxes`` (``train_remove_outbounds_boxes``) boxes
  reaching outside ``x in [1, W], y in [1, H]`` are neither positive nor
  negative unless forced positive. Boxes of padding cells (``~cell_valid``)
  are never sampled, not even by the sampler's no-negatives fallback.

  Args:
    rng: ``jax.random`` key.
    boxes: ``(K, 4)`` xcycwh predicted boxes.
    anchors: ``(K, 4)`` xcycwh anchors.
    transforms: ``(K, 4)`` RPN transforms.
    scores: ``(K, 2)`` RPN scores.
    cell_valid: ``(K,)`` bool, boxes of real (not padding) feature cells.
    image_size: ``(2,)`` int true ``(H, W)``.
    gt_boxes: ``(R, 4)`` xcycwh ground truth, padded.
    gt_labels: ``(R, L)`` int32 captions, 0-padded.
    gt_mask: ``(R,)`` bool, real ground-truth rows.
    num_samples: static S.
    low_thresh, high_thresh: sampler IoU thresholds.
    remove_outbounds_boxes: static bool.
    on_anchors: static bool, match the anchors instead of the predicted
      boxes (False: the original).

  Returns:
    ``RoiSample``.
  """
  height = image_size[0].astype(jnp.float32)
  width = image_size[1].astype(jnp.float32)
  bounds = (1.0, 1.0, width, height) if remove_outbounds_boxes else (-_FAR / 2, -_FAR / 2,
                                                                     _FAR, _FAR)
  matched = anchors if on_anchors else boxes
  samples = sampler_lib.sample_boxes(rng, jax.lax.stop_gradient(matched), gt_boxes, num_samples,
                                     low_thresh, high_thresh, target_mask=gt_mask, bounds=bounds,
                                     valid=cell_valid)
  index = samples.roi_idx
  is_pos = samples.is_pos
  target_labels = jnp.where(is_pos[:, None], gt_labels[samples.pos_target_idx], 0)
  return RoiSample(
      boxes=gather_rows(boxes, index),
      anchors=anchors[index],
      transforms=gather_rows(transforms, index),
      scores=gather_rows(scores, index),
      is_pos=is_pos,
      target_boxes=gt_boxes[samples.pos_target_idx],
      target_labels=target_labels,
      num_pos=samples.num_pos,
      neg_with_replacement=samples.neg_with_replacement)


def propose(boxes, scores, cell_valid, image_size, nms_thresh, num_proposals,
            clip_boxes=True):
  """Test-time proposals of one image (§3.6).

  Boxes are clipped to ``x in [1, W], y in [1, H]`` with ``boxes.clip_boxes``
  (its quirk included: every box loses 1 px of width and height, and only
  degenerate boxes become invalid, §3.4), scored by the softmax probability
  of the positive class and suppressed by NMS (IoU > ``nms_thresh``) down to
  at most ``num_proposals`` boxes, in decreasing probability.

  Args:
    boxes: ``(K, 4)`` xcycwh predicted boxes.
    scores: ``(K, 2)`` RPN scores (positive, negative).
    cell_valid: ``(K,)`` bool, boxes of real feature cells.
    image_size: ``(2,)`` int true ``(H, W)``.
    nms_thresh: float scalar (may be traced).
    num_proposals: static int N.
    clip_boxes: static bool (``setTestArgs{clip_boxes}``, true in the original).

  Returns:
    ``(proposals, valid)``: ``(N, 4)`` xcycwh (the clipped boxes) and ``(N,)``
    bool; invalid slots hold zeros.
  """
  valid = cell_valid
  if clip_boxes:
    bounds = (1.0, 1.0, image_size[1].astype(jnp.float32), image_size[0].astype(jnp.float32))
    boxes, inside = boxes_lib.clip_boxes(boxes, bounds, "xcycwh")
    valid = valid & inside
  prob = jax.nn.softmax(scores, axis=-1)[:, 0]
  # One NMS block of at least twice the picks usually holds them all (ops/nms.py).
  keep, count = nms_lib.nms(boxes_lib.xcycwh_to_x1y1x2y2(boxes), prob, nms_thresh,
                            num_proposals, valid=valid,
                            block_size=max(nms_lib.DEFAULT_BLOCK_SIZE, 2 * num_proposals))
  kept = jnp.arange(num_proposals) < count
  proposals = jnp.where(kept[:, None], boxes[jnp.maximum(keep, 0)], 0.0)
  return proposals, kept


def scaled_anchor_sizes(anchor_sizes: Sequence[Sequence[float]], anchor_scale: float):
  """``(k, 2)`` float32 anchor (w, h) times ``anchor_scale`` (``MakeAnchors``, §3.2)."""
  return np.asarray(anchor_sizes, np.float32) * np.float32(anchor_scale)
