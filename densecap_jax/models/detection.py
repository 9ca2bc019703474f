"""Detection at test time: proposals, final NMS and captions of the kept boxes (§3.6, §5).

* ``infer(params, images, image_sizes, config)`` -> boxes, logits, tokens,
  valid (``DenseCapModel:forward_test``): backbone -> RPN -> proposals (clip,
  NMS 0.7) -> pooling -> fc6 / fc7 -> final boxes -> final NMS 0.3 -> greedy
  captions of the kept boxes only (``caption_kept``).
* ``detect_with_codes(params, images, image_sizes, config, num_detections)``
  -> the same detections without captions, with their fc7 region codes
  (``extract_features``, §10.5).
"""

import functools
import math

import jax
import jax.numpy as jnp

from densecap_jax.models import localization as loc_lib
from densecap_jax.models.densecap import DenseCap
from densecap_jax.models.densecap import build_model
from densecap_jax.models.densecap import pool_regions
from densecap_jax.models.densecap import rpn_boxes
from densecap_jax.ops import boxes as boxes_lib
from densecap_jax.ops import nms as nms_lib


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
    dict with ``model``, ``features``, ``rpn`` (``rpn_boxes``), per proposal
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
  rpn = rpn_boxes(model, params, features, image_sizes, config)
  propose = functools.partial(loc_lib.propose, nms_thresh=rpn_nms_thresh,
                              num_proposals=num_proposals)
  proposals, proposal_valid = jax.vmap(propose)(rpn["boxes"], rpn["scores"], rpn["cell_valid"],
                                                image_sizes)
  pooled = pool_regions(features, proposals, image_sizes, rpn["feature_sizes"],
                        config.roi_output_size)
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
    pooled = pool_regions(det["features"], boxes, image_sizes, det["rpn"]["feature_sizes"],
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
