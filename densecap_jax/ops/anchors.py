"""Anchor boxes slid over a feature map (``MakeAnchors``, reference §3.2, §2.1)."""

import jax.numpy as jnp
import numpy as np

# The original's 12 anchors as (width, height) in image pixels, in its order.
VGG16_ANCHOR_SIZES = np.array(
    [[45, 90], [90, 45], [64, 64], [90, 180], [180, 90], [128, 128],
     [181, 362], [362, 181], [256, 256], [362, 724], [724, 362], [512, 512]],
    dtype=np.float32)

# Receptive-field centre of feature cell (0, 0) and the stride, for VGG-16's
# relu5_3 in 1-based image pixels (net_utils.compute_field_centers, §2.1).
VGG16_FIELD_CENTERS = (8.5, 8.5, 16.0, 16.0)  # (x0, y0, sx, sy)


def make_anchors(height, width, anchor_sizes, x0, y0, sx, sy):
  """Anchors of every size centred on every cell of a feature map.

  Anchor ``a`` at cell (row ``r``, column ``c``), both 0-based, is
  ``(x0 + sx*c, y0 + sy*r, w_a, h_a)``.

  Args:
    height, width: feature-map size ``Hf, Wf`` (static ints).
    anchor_sizes: ``(k, 2)`` anchor ``(w, h)`` in image pixels.
    x0, y0: image position of the centre of cell (0, 0), 1-based pixels.
    sx, sy: distance between neighbouring cell centres in image pixels.

  Returns:
    ``(height, width, k, 4)`` float32 xcycwh anchors. ``reshape(-1, 4)`` gives
    row-major cells; the original's flat order (anchor-major, §3.1 item 5) is
    ``transpose(2, 0, 1, 3).reshape(-1, 4)``.
  """
  sizes = jnp.asarray(anchor_sizes, jnp.float32)
  k = sizes.shape[0]
  xc = x0 + sx * jnp.arange(width, dtype=jnp.float32)
  yc = y0 + sy * jnp.arange(height, dtype=jnp.float32)
  shape = (height, width, k)
  return jnp.stack([
      jnp.broadcast_to(xc[None, :, None], shape),
      jnp.broadcast_to(yc[:, None, None], shape),
      jnp.broadcast_to(sizes[None, None, :, 0], shape),
      jnp.broadcast_to(sizes[None, None, :, 1], shape),
  ], axis=-1)
