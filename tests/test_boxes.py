"""Tests for densecap_jax.ops.boxes against the original's vectors and hand-worked values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from densecap_jax.ops import boxes as B


def test_conversions_hand_worked():
  # xcycwh (10, 20, 5, 7): x1 = 10 - 2 = 8, x2 = 12, y1 = 20 - 3 = 17, y2 = 23.
  np.testing.assert_allclose(B.xcycwh_to_x1y1x2y2([[10, 20, 5, 7]]), [[8, 17, 12, 23]])
  # back: xc = 10, w = x2 - x1 = 4 (the original drops the +1).
  np.testing.assert_allclose(B.x1y1x2y2_to_xcycwh([[8, 17, 12, 23]]), [[10, 20, 4, 6]])
  np.testing.assert_allclose(B.xywh_to_x1y1x2y2([[3, 4, 10, 20]]), [[3, 4, 12, 23]])
  np.testing.assert_allclose(B.x1y1x2y2_to_xywh([[3, 4, 12, 23]]), [[3, 4, 10, 20]])
  # xcycwh -> xywh: x = xc - (w-1)/2, w kept.
  np.testing.assert_allclose(B.xcycwh_to_xywh([[10, 20, 5, 7]]), [[8, 17, 5, 7]])
  # xywh -> xcycwh: xc = x + w/2.
  np.testing.assert_allclose(B.xywh_to_xcycwh([[8, 17, 5, 7]]), [[10.5, 20.5, 5, 7]])


def test_round_trip_xcycwh_shrinks_by_one():
  rng = np.random.default_rng(0)
  boxes = np.concatenate([rng.uniform(0, 100, (50, 2)), rng.uniform(2, 50, (50, 2))], -1)
  back = B.x1y1x2y2_to_xcycwh(B.xcycwh_to_x1y1x2y2(boxes))
  np.testing.assert_allclose(back[:, :2], boxes[:, :2], rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(back[:, 2:], boxes[:, 2:] - 1, rtol=1e-6, atol=1e-5)


def test_xywh_x1y1x2y2_inverse():
  # box_conversion_test.lua: xywh -> x1y1x2y2 -> xywh is the identity.
  rng = np.random.default_rng(1)
  xywh = rng.standard_normal((100, 4)).astype(np.float32)
  xywh[:, 2:] = np.abs(xywh[:, 2:])
  corners = B.xywh_to_x1y1x2y2(xywh)
  np.testing.assert_allclose(B.x1y1x2y2_to_xywh(corners), xywh, atol=1e-6)
  np.testing.assert_allclose(B.xywh_to_x1y1x2y2(B.x1y1x2y2_to_xywh(corners)), corners, atol=1e-6)


def test_conversions_broadcast_over_leading_dims():
  boxes = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) + 1
  out = B.xcycwh_to_x1y1x2y2(boxes)
  assert out.shape == (2, 3, 4) and out.dtype == jnp.float32
  np.testing.assert_allclose(out.reshape(-1, 4), B.xcycwh_to_x1y1x2y2(boxes.reshape(-1, 4)))


def test_scale_boxes_xywh():
  # x' = (x-1)f + 1: a box at pixel 1 stays at pixel 1.
  np.testing.assert_allclose(B.scale_boxes_xywh([[1, 11, 10, 20]], 2.0), [[1, 21, 20, 40]])
  np.testing.assert_allclose(B.scale_boxes_xywh([[5, 9, 8, 4]], 0.5), [[3, 5, 4, 2]])


# clip_boxes_test.lua inputs; bounds x in [0, 12], y in [0, 15].
CLIP_INPUT = np.array([
    [0.5, 8.5, 7, 5], [3.5, -0.5, 9, 7], [9.5, 14.5, 7, 5], [9, 7, 4, 4],
    [11, 1.5, 2, 3], [13, 1.5, 2, 2], [1, 16, 3, 1], [-5, 1, 3, 1],
    [-5, -6, 3, 1], [15, 16, 3, 1]], np.float32)
CLIP_BOUNDS = (0, 0, 12, 15)


def test_clip_boxes_xcycwh_released_semantics():
  # Worked by hand with the released rules (reference §3.4): corners by (w-1)/2,
  # clamp x1 to [0, 11], y1 to [0, 14], x2 to [1, 12], y2 to [1, 15], back with
  # w = x2 - x1. E.g. row 0: x1 = -2.5 -> 0, x2 = 3.5, y1 = 6.5, y2 = 10.5
  # -> (1.75, 8.5, 3.5, 4). The original test expects (2, 8.5, 4, 5) (x1 = xc - w/2
  # and no -1 shrink), which the released code does not give.
  expected = np.array([
      [1.75, 8.5, 3.5, 4],     # x1 clipped
      [3.75, 1.25, 7.5, 2.5],  # x1, y1 clipped
      [9.25, 13.75, 5.5, 2.5],  # x2, y2 clipped
      [9, 7, 3, 3],            # inside: still shrinks by 1
      [11, 1.5, 1, 2],         # inside
      [11.5, 1.5, 1, 1],       # right of the image: a 1-px sliver at x in [11, 12]
      [1, 14.5, 2, 1],         # below: sliver at y in [14, 15]
      [0.5, 1, 1, 0],          # h = 1 gives y1 = y2 = 1: degenerate
      [0.5, 0.5, 1, 1],        # above-left: sliver in the corner
      [11.5, 14.5, 1, 1],      # below-right: sliver in the corner
  ], np.float32)
  # Only the degenerate row is invalid; fully outside boxes stay "valid" (§14.2).
  expected_valid = np.array([1, 1, 1, 1, 1, 1, 1, 0, 1, 1], bool)
  clipped, valid = B.clip_boxes(CLIP_INPUT, CLIP_BOUNDS, "xcycwh")
  np.testing.assert_allclose(clipped, expected, atol=1e-6)
  np.testing.assert_array_equal(valid, expected_valid)
  # Same with a leading batch dimension, as the original calls it (1 x 10 x 4).
  clipped_b, valid_b = B.clip_boxes(CLIP_INPUT[None], CLIP_BOUNDS, "xcycwh")
  np.testing.assert_allclose(clipped_b[0], expected, atol=1e-6)
  np.testing.assert_array_equal(valid_b[0], expected_valid)


def test_clip_boxes_other_formats():
  corners = np.array([[-3, 2, 5, 20], [4, 4, 4, 9]], np.float32)
  clipped, valid = B.clip_boxes(corners, CLIP_BOUNDS, "x1y1x2y2")
  np.testing.assert_allclose(clipped, [[0, 2, 5, 15], [4, 4, 4, 9]])
  np.testing.assert_array_equal(valid, [True, False])  # x2 == x1 is degenerate
  # xywh (-3, 2, 9, 19) -> corners (-3, 2, 5, 20) -> (0, 2, 5, 15) -> xywh (0, 2, 6, 14).
  clipped, valid = B.clip_boxes([[-3, 2, 9, 19]], CLIP_BOUNDS, "xywh")
  np.testing.assert_allclose(clipped, [[0, 2, 6, 14]])
  np.testing.assert_array_equal(valid, [True])


def test_clip_boxes_per_image_bounds_and_bad_format():
  boxes = np.array([[[50, 50, 200, 200]], [[50, 50, 200, 200]]], np.float32)
  bounds = (1, 1, jnp.array([[100], [300]]), jnp.array([[100], [300]]))
  clipped, _ = B.clip_boxes(boxes, bounds, "x1y1x2y2")
  np.testing.assert_allclose(clipped[:, 0, 2], [100, 200])
  with pytest.raises(ValueError, match="box format must be one of"):
    B.clip_boxes(boxes, CLIP_BOUNDS, "cxcywh")


def test_box_iou_released_quirk():
  # Identical 100x100 boxes: inter = 99*99, areas 100*100 -> 9801 / 10199.
  iou = B.box_iou([[50, 50, 100, 100]], [[50, 50, 100, 100]])
  np.testing.assert_allclose(iou, [[9801 / 10199]], rtol=1e-6)
  assert abs(float(iou[0, 0]) - 0.961) < 1e-3
  # BoxIoU_test simpleTest boxes under the released rule: corners (5.5, 14.5) and
  # (10.5, 19.5) overlap 4 x 4 = 16; areas 100 each -> 16 / 184.
  np.testing.assert_allclose(B.box_iou([[10, 10, 10, 10]], [[15, 15, 10, 10]]), [[16 / 184]],
                             rtol=1e-6)


def test_box_iou_clean_matches_original_test_vectors():
  # BoxIoU_test.lua expectations (continuous IoU).
  np.testing.assert_allclose(
      B.box_iou([[10, 10, 10, 10]], [[15, 15, 10, 10]], clean=True), [[25 / 175]], rtol=1e-6)
  np.testing.assert_allclose(
      B.box_iou([[10, 10, 5, 5]], [[15, 15, 5, 5]], clean=True), [[0]], atol=1e-7)
  boxes1 = np.array([[[2, 4, 2, 6], [5, 7.5, 2, 5]], [[4, 2, 2, 6], [6, -2, 2, 2]]], np.float32)
  boxes2 = np.array([[[5, 8, 4, 2], [4.5, 4.5, 5, 3], [4.5, 0, 5, 4]],
                     [[4, 2, 4, 2], [4.5, -1, 3, 2], [6, -2, 4, 4]]], np.float32)
  expected = np.array([[[0, 3 / 24, 1 / 31], [4 / 14, 2 / 23, 0]],
                       [[1 / 4, 1 / 8, 1 / 27], [0, 1 / 9, 1 / 4]]])
  np.testing.assert_allclose(B.box_iou(boxes1, boxes2, clean=True), expected, rtol=1e-6,
                             atol=1e-7)
  np.testing.assert_allclose(B.box_iou(boxes1[0], boxes2[0], clean=True), expected[0],
                             rtol=1e-6, atol=1e-7)


def _iou_inclusive_numpy(a, b):
  out = np.zeros((len(a), len(b)))
  for i, p in enumerate(a):
    for j, q in enumerate(b):
      iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]) + 1)
      ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]) + 1)
      inter = iw * ih
      union = (p[2] - p[0] + 1) * (p[3] - p[1] + 1) + (q[2] - q[0] + 1) * (q[3] - q[1] + 1) - inter
      out[i, j] = inter / union
  return out


def test_box_iou_x1y1x2y2_inclusive():
  # Identical boxes give exactly 1; 1..10 vs 6..15 (1-D overlap 5 of 10 px): 50 / 150.
  np.testing.assert_allclose(B.box_iou_x1y1x2y2([[1, 1, 10, 10]], [[1, 1, 10, 10]]), [[1.0]])
  np.testing.assert_allclose(B.box_iou_x1y1x2y2([[1, 1, 10, 10]], [[6, 1, 15, 10]]), [[50 / 150]],
                             rtol=1e-6)
  rng = np.random.default_rng(2)
  xy = rng.uniform(0, 50, (30, 2))
  a = np.concatenate([xy, xy + rng.uniform(0, 30, (30, 2))], -1)
  xy = rng.uniform(0, 50, (20, 2))
  b = np.concatenate([xy, xy + rng.uniform(0, 30, (20, 2))], -1)
  np.testing.assert_allclose(B.box_iou_x1y1x2y2(a, b), _iou_inclusive_numpy(a, b), rtol=1e-5,
                             atol=1e-6)


def test_apply_box_transform_original_vectors():
  # ApplyBoxTransform_test.lua simpleTest.
  boxes = np.array([[10, 20, 30, 40], [-30, 50, 100, 200]], np.float32)
  trans = np.array([[0.5, -0.2, 0, math.log(2)], [0, -0.5, math.log(0.5), math.log(1.1)]],
                   np.float32)
  np.testing.assert_allclose(B.apply_box_transform(boxes, trans),
                             [[25, 12, 30, 80], [-30, -50, 50, 220]], rtol=1e-5, atol=1e-5)


def test_apply_invert_are_inverse():
  # InvertBoxTransform_test.lua: apply(invert) and invert(apply) are identities.
  rng = np.random.default_rng(3)
  anchors = np.concatenate([rng.uniform(-50, 50, (40, 2)), rng.uniform(5, 60, (40, 2))], -1)
  targets = np.concatenate([rng.uniform(-50, 50, (40, 2)), rng.uniform(5, 60, (40, 2))], -1)
  deltas = B.invert_box_transform(anchors, targets)
  np.testing.assert_allclose(B.apply_box_transform(anchors, deltas), targets, rtol=1e-4, atol=1e-4)
  trans = rng.standard_normal((40, 4)).astype(np.float32)
  np.testing.assert_allclose(
      B.invert_box_transform(anchors, B.apply_box_transform(anchors, trans)), trans, atol=1e-4)


def test_invert_box_transform_hand_worked():
  # anchor (10, 20, 4, 8), target (12, 16, 8, 2): tx = 2/4, ty = -4/8, tw = log 2, th = log 1/4.
  np.testing.assert_allclose(B.invert_box_transform([[10, 20, 4, 8]], [[12, 16, 8, 2]]),
                             [[0.5, -0.5, math.log(2), math.log(0.25)]], rtol=1e-6)


def test_box_transform_gradients():
  rng = np.random.default_rng(4)
  boxes = jnp.asarray(np.concatenate([rng.standard_normal((10, 2)), rng.uniform(1, 3, (10, 2))],
                                     -1), jnp.float32)
  trans = jnp.asarray(rng.standard_normal((10, 4)) * 0.3, jnp.float32)
  check_grads(B.apply_box_transform, (boxes, trans), order=1, modes=("rev",), atol=1e-2,
              rtol=1e-2)
  targets = B.apply_box_transform(boxes, trans)
  check_grads(B.invert_box_transform, (boxes, targets), order=1, modes=("rev",), atol=1e-2,
              rtol=1e-2)
  # Hand-derived (§3.3): d x / d tx = wa, d w / d tw = w, d x / d xa = 1,
  # d w / d wa = exp(tw).
  g_trans = jax.grad(lambda t: B.apply_box_transform(boxes, t)[:, 0].sum())(trans)
  np.testing.assert_allclose(g_trans[:, 0], boxes[:, 2], rtol=1e-6)
  g_trans = jax.grad(lambda t: B.apply_box_transform(boxes, t)[:, 2].sum())(trans)
  np.testing.assert_allclose(g_trans[:, 2], boxes[:, 2] * np.exp(trans[:, 2]), rtol=1e-5)
  g_boxes = jax.grad(lambda b: B.apply_box_transform(b, trans)[:, 2].sum())(boxes)
  np.testing.assert_allclose(g_boxes[:, 2], np.exp(trans[:, 2]), rtol=1e-5)


def test_jitted_box_ops_do_not_recompile(record_compiles):
  def iou_sum(a, b):
    return B.box_iou(a, b) + B.box_iou_x1y1x2y2(a, b)

  fn = jax.jit(iou_sum)
  rng = np.random.default_rng(5)
  sample = lambda n: rng.uniform(1, 9, (n, 4)).astype(np.float32)
  with record_compiles() as compiled:
    fn(sample(7), sample(3)).block_until_ready()
    for _ in range(3):
      fn(sample(7), sample(3)).block_until_ready()
  assert compiled.count("jit(iou_sum)") == 1


# ------------------------------------------------------------- NumPy versions


def _random_boxes(seed, n, fmt="xcycwh"):
  rng = np.random.default_rng(seed)
  if fmt == "x1y1x2y2":
    xy = rng.uniform(0, 100, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(1, 60, (n, 2))], 1).astype(np.float32)
  return np.concatenate([rng.uniform(0, 500, (n, 2)), rng.uniform(1, 200, (n, 2))],
                        1).astype(np.float32)


@pytest.mark.parametrize("name, fmt", [("xcycwh_to_x1y1x2y2", "xcycwh"),
                                       ("xywh_to_x1y1x2y2", "xywh"),
                                       ("x1y1x2y2_to_xywh", "x1y1x2y2")])
def test_numpy_conversions_equal_the_jax_ones_in_float32(name, fmt):
  b = _random_boxes(0, 50, fmt)
  got = getattr(B, name + "_np")(b, np.float32)
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, np.asarray(getattr(B, name)(b)))
  # Leading dimensions broadcast as in the JAX version.
  np.testing.assert_array_equal(getattr(B, name + "_np")(b.reshape(5, 10, 4), np.float32),
                                got.reshape(5, 10, 4))


def test_numpy_conversions_compute_in_the_dtype_asked_for():
  # 0.1 is not exact in float32: the float64 result keeps what float32 rounds.
  got = B.xywh_to_x1y1x2y2_np([[0.1, 1, 3.2, 2]], np.float64)
  assert got.dtype == np.float64
  np.testing.assert_array_equal(got, [[0.1, 1, 0.1 + 3.2 - 1, 2]])
  np.testing.assert_array_equal(B.x1y1x2y2_to_xywh_np([[3, 4, 12, 23]], np.float64),
                                [[3, 4, 10, 20]])
  np.testing.assert_array_equal(B.xcycwh_to_x1y1x2y2_np([[10, 20, 5, 7]], np.float64),
                                [[8, 17, 12, 23]])


def test_numpy_scaling_and_model_boxes():
  b = _random_boxes(1, 30, "xywh")
  np.testing.assert_array_equal(B.scale_boxes_xywh_np(b, 0.37, np.float32),
                                np.asarray(B.scale_boxes_xywh(b, 0.37)))
  np.testing.assert_array_equal(B.scale_xywh(b, 0.37), B.scale_boxes_xywh_np(b, 0.37, np.float32))
  # x' = (x - 1) f + 1, w' = w f: (11, 21, 10, 4) at f = 2.5 -> (26, 51, 25, 10).
  np.testing.assert_array_equal(B.scale_boxes_xywh_np([[11, 21, 10, 4]], 2.5, np.float64),
                                [[26, 51, 25, 10]])
  # xywh_to_model inverts xcycwh_to_xywh, in float32 or float64.
  model = _random_boxes(2, 30)
  np.testing.assert_allclose(B.xywh_to_model(np.asarray(B.xcycwh_to_xywh(model))), model,
                             atol=1e-4)
  np.testing.assert_array_equal(B.xywh_to_model([[8, 17, 5, 7]], np.float64), [[10, 20, 5, 7]])
  assert B.xywh_to_model([[8, 17, 5, 7]], np.float64).dtype == np.float64


def test_numpy_iou_inclusive_convention():
  a = np.array([[1, 1, 10, 10]], np.float32)
  others = np.array([[6, 1, 15, 10],     # 5 x 10 overlap: 50 / (100 + 100 - 50)
                     [10, 1, 19, 10],    # one shared column: 10 / 190
                     [11, 1, 20, 10],    # touching, no shared pixel: 0
                     [1, 12, 10, 20]],   # disjoint: 0
                    np.float32)
  got = B.box_iou_x1y1x2y2_np(a, others, np.float64)
  assert got.dtype == np.float64
  np.testing.assert_allclose(got, [[50 / 150, 10 / 190, 0, 0]], rtol=1e-15)
  # Degenerate boxes (x2 = x1 - 1: no pixel) overlap nothing: 0, not NaN.
  empty = np.array([[5, 5, 4, 4]], np.float32)
  np.testing.assert_array_equal(B.box_iou_x1y1x2y2_np(empty, empty, np.float64), [[0]])


def test_numpy_iou_equals_the_jax_one_on_random_boxes():
  b = _random_boxes(3, 40, "x1y1x2y2")
  np.testing.assert_allclose(B.box_iou_x1y1x2y2_np(b[:20], b[20:], np.float64),
                             np.asarray(B.box_iou_x1y1x2y2(b[:20], b[20:])), atol=1e-6)
  got32 = B.box_iou_x1y1x2y2_np(b[:20], b[20:], np.float32)
  assert got32.dtype == np.float32
  np.testing.assert_allclose(got32, np.asarray(B.box_iou_x1y1x2y2(b[:20], b[20:])), rtol=1e-6)
  batched = B.box_iou_x1y1x2y2_np(b.reshape(2, 20, 4), b.reshape(2, 20, 4)[:, :5], np.float64)
  assert batched.shape == (2, 20, 5)
  np.testing.assert_array_equal(batched[1], B.box_iou_x1y1x2y2_np(b[20:], b[20:25], np.float64))


# ------------------------------------------------------------ the box check


def test_is_box_numbers():
  assert B.is_box_numbers([1, 2.5, 3, 4])
  for value in ([1, 2, 3], [1, 2, 3, 4, 5], (1, 2, 3, 4), [1, "2", 3, 4], [1, True, 3, 4],
                [1, None, 3, 4], {"x": 1}, 7, None):
    assert not B.is_box_numbers(value), value


def test_box_faults_names_each_unusable_box_and_its_field():
  nan, inf = float("nan"), float("inf")
  given = [[1, 1, 5, 5],          # fine
           [1, 2, 3],             # not 4 numbers
           [nan, 1, 5, 5],        # x
           [1, 1, 5, -inf],       # h (the first number not finite)
           [1, 1, 0, 5],          # w = 0
           [1, 1, 5, -2],         # h < 0
           [1, 1, inf, 0],        # w not finite comes before the size
           [1, False, 5, 5]]      # a bool is no number
  expected = [(1, "numbers"), (2, "x"), (3, "h"), (4, "size"), (5, "size"), (6, "w"),
              (7, "numbers")]
  assert B.box_faults(given) == expected
  assert B.box_faults([]) == []
  assert B.box_faults([[1, 1, 5, 5], [2.5, 3, 0.5, 1]]) == []
  # An array gives the same (without the 'numbers' check it needs no list for).
  array = np.array([g for g in given if len(g) == 4 and g[1] is not False], np.float64)
  assert B.box_faults(array) == [(1, "x"), (2, "h"), (3, "size"), (4, "size"), (5, "w")]


def test_box_faults_empty_and_x1y1x2y2():
  # empty=True accepts a width or height of 0, not a negative one.
  assert B.box_faults(np.array([[1, 1, 0, 5], [1, 1, 5, -1]]), empty=True) == [(1, "size")]
  # x1y1x2y2: width x2 - x1 + 1; (5, 5, 4, 9) has width 0, (5, 5, 3, 9) width -1.
  boxes = np.array([[5, 5, 4, 9], [5, 5, 3, 9], [5, 5, 5, 5], [5, 5, np.nan, 9]])
  assert B.box_faults(boxes, "x1y1x2y2", empty=True) == [(1, "size"), (3, "x2")]
  assert B.box_faults(boxes, "x1y1x2y2") == [(0, "size"), (1, "size"), (3, "x2")]


def test_json_numbers_too_large_for_a_float_are_infinite():
  assert B.json_number(10 ** 400) == np.inf and B.json_number(-(10 ** 400)) == -np.inf
  assert B.json_number(3) == 3.0 and B.json_number(2.5) == 2.5
  assert B.box_faults([[1, 1, 5, 5], [1, 10 ** 400, 5, 5], [1, 1, 5, -(10 ** 309)]]) == [
      (1, "y"), (2, "h")]


def test_check_boxes_clipping_is_idempotent_in_float32():
  # 640 - 417.25378 + 1 rounds in float32 to a width whose far corner lies past
  # x = 640 by a fraction of a pixel; the clipped box must come back inside.
  boxes = np.asarray([[417.25378, 168.28835, 226.93605, 261.21756],
                      [10.5, 399.1, 20.0, 40.123456]], np.float32)
  clipped, was_clipped, outside = B.check_boxes(boxes, (427, 640))
  assert was_clipped.tolist() == [True, True] and not outside.any()
  x, y, w, h = clipped.astype(np.float64).T
  assert np.all(x + w - 1 <= 640) and np.all(y + h - 1 <= 427)
  np.testing.assert_allclose(x + w - 1, [640, 29.5], rtol=0, atol=1e-4)
  again, clipped_again, _ = B.check_boxes(clipped, (427, 640))
  assert not clipped_again.any()
  np.testing.assert_array_equal(again, clipped)
