"""Tests for densecap_jax.evaluation.metric: the dense-captioning mAP of reference §9.

Boxes below are written as inclusive x1y1x2y2 corners and given to the
evaluator as xcycwh through ``xcycwh(...)`` (``w = x2 - x1 + 1``, so the
evaluator's ``(w-1)/2`` rule gives the corners back exactly).
"""

import random
import shutil

import numpy as np
import pytest

from densecap_jax.evaluation import metric as ev
from densecap_jax.ops import boxes as box_ops

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="no java on PATH")


def xcycwh(*corners):
  """Inclusive ``(x1, y1, x2, y2)`` tuples -> ``(N, 4)`` xcycwh float32."""
  c = np.array(corners, np.float64).reshape(-1, 4)
  return np.stack([(c[:, 0] + c[:, 2]) / 2, (c[:, 1] + c[:, 3]) / 2,
                   c[:, 2] - c[:, 0] + 1, c[:, 3] - c[:, 1] + 1], -1).astype(np.float32)


def constant_meteor(value):
  return lambda candidates, references: [value] * len(candidates)


def all_aps(results):
  return list(results["ap_breakdown"].values()) + list(results["det_breakdown"].values())


# A horizontal strip of 100-pixel-high boxes (y from 1 to 100).
def strip(x1, x2):
  return (x1, 1, x2, 100)


# ------------------------------------------------------------------- merging


def test_merge_takes_the_box_overlapping_most_first():
  # B0 = x 1..100, B1 = x 11..110, B2 = x 21..120, B3 = x 301..400.
  # IoU(B0,B1) = IoU(B1,B2) = 90/110 = 0.818; IoU(B0,B2) = 80/120 = 0.667.
  # Column counts of IoU >= 0.7 (diagonal included): 2, 3, 2, 1 -> B1 first,
  # absorbing B0 and B2; then B3 alone. (Starting from B0 would give {0,1},{2},{3}.)
  corners = np.array([strip(1, 100), strip(11, 110), strip(21, 120), strip(301, 400)],
                     np.float32)
  groups = ev.merge_boxes(corners, 0.7)
  assert [g.tolist() for g in groups] == [[0, 1, 2], [3]]
  merged, refs = ev.merge_ground_truth(corners, ["a", "b", "c", "d"])
  # Mean of x1 = (1+11+21)/3 = 11, of x2 = (100+110+120)/3 = 110.
  np.testing.assert_array_equal(merged, [strip(11, 110), strip(301, 400)])
  assert refs == [["a", "b", "c"], ["d"]]


def test_merge_ties_take_the_first_column():
  # Two pairs, every column count 2: the first column (box 0) wins, so the
  # groups come out as {0, 2} then {1, 3}.
  corners = np.array([strip(301, 400), strip(1, 100), strip(306, 405), strip(6, 105)],
                     np.float32)
  assert [g.tolist() for g in ev.merge_boxes(corners, 0.7)] == [[0, 2], [1, 3]]


def test_merge_threshold_is_inclusive():
  # (1,1,70,100) in (1,1,100,100): IoU = 7000 / 10000 = 0.7 exactly -> merged;
  # (1,1,69,100): 6900 / 10000 = 0.69 -> not merged.
  at = np.array([[1, 1, 70, 100], [1, 1, 100, 100]], np.float32)
  below = np.array([[1, 1, 69, 100], [1, 1, 100, 100]], np.float32)
  assert [g.tolist() for g in ev.merge_boxes(at, 0.7)] == [[0, 1]]
  assert [g.tolist() for g in ev.merge_boxes(below, 0.7)] == [[0], [1]]
  with pytest.raises(ValueError, match="must be > 0"):
    ev.merge_boxes(at, 0)
  assert ev.merge_boxes(np.zeros((0, 4), np.float32), 0.7) == []


# ------------------------------------------------------------------ matching

G = strip(1, 100)
A = strip(41, 140)   # IoU with G: 60*100 / (2*10000 - 6000) = 3/7 = 0.4286


def test_matching_in_score_order_claims_whatever_the_iou():
  # B (score 1) equals G; A (score 2) overlaps it 3/7. A is visited first and
  # claims G although B overlaps it better.
  m = ev.match_detections(np.array([1.0, 2.0]), np.array([G, A], np.float32),
                          np.array([G], np.float32))
  assert m.order.tolist() == [1, 0]
  assert m.gt_index.tolist() == [0, 0]
  np.testing.assert_allclose(m.overlap, [3 / 7, 1.0], rtol=1e-15)
  assert m.ok.tolist() == [True, False]

  e = ev.DenseCaptioningEvaluator(meteor_fn=constant_meteor(1.0))
  e.add_result(np.array([1.0, 2.0]), xcycwh(G, A), ["b", "a"], xcycwh(G), ["g"])
  r = e.evaluate()
  # Ranked: A (ok, ov 0.43), B (not ok). IoU 0.3 and 0.4: TP then FP, recall 1
  # at precision 1 -> AP 1. IoU >= 0.5: two FPs -> AP 0.
  assert r["det_breakdown"] == {"ov0.3": 1.0, "ov0.4": 1.0, "ov0.5": 0.0, "ov0.6": 0.0,
                                "ov0.7": 0.0}
  assert r["ap_breakdown"]["ov0.4_score0.25"] == 1.0
  assert r["ap_breakdown"]["ov0.5_score0"] == 0.0
  assert r["detmap"] == pytest.approx(2 / 5)
  assert r["map"] == pytest.approx(12 / 30)


G0, G1, FAR = strip(1, 100), strip(301, 400), strip(601, 700)


def test_unmatched_detection_claims_the_last_box_quirk():
  # Scores: FAR 3 (overlaps nothing), G1 2, G0 1. Released: FAR has jmax = -1
  # and used[-1] is G1's flag, so FAR takes G1 (ok, ov 0) and the exact G1
  # detection is not ok.
  scores, dets, gts = np.array([3.0, 2.0, 1.0]), np.array([FAR, G1, G0], np.float32), \
      np.array([G0, G1], np.float32)
  m = ev.match_detections(scores, dets, gts)
  assert m.gt_index.tolist() == [-1, 1, 0]
  assert m.overlap.tolist() == [0.0, 1.0, 1.0]
  assert m.ok.tolist() == [True, False, True]
  clean = ev.match_detections(scores, dets, gts, quirks=False)
  assert clean.ok.tolist() == [False, True, True]


def _far_g1_g0(quirks):
  e = ev.DenseCaptioningEvaluator(meteor_fn=constant_meteor(1.0), quirks=quirks)
  e.add_result(np.array([3.0, 2.0, 1.0]), xcycwh(FAR, G1, G0), ["far", "g1", "g0"],
               xcycwh(G0, G1), ["G0", "G1"])
  return e.evaluate()


def test_used_minus_one_quirk_in_the_map():
  # Released: FP, FP, TP; npos 2 -> recall 0, 0, 0.5; precision 0, 0, 1/3.
  # Thresholds reaching recall 0.5 are t_0..t_49 (t_50 = 0.5000000000000002),
  # so AP = 50 * (1/3) / 100 = 1/6 at every threshold pair.
  r = _far_g1_g0(quirks=True)
  np.testing.assert_allclose(all_aps(r), 1 / 6, rtol=1e-12)
  assert r["map"] == pytest.approx(1 / 6) and r["detmap"] == pytest.approx(1 / 6)
  # Clean: FP, TP, TP -> recall 0, .5, 1; precision 0, 1/2, 2/3; every one of
  # the 101 thresholds is reached by rank 3 -> AP = 2/3.
  np.testing.assert_allclose(all_aps(_far_g1_g0(quirks=False)), 2 / 3, rtol=1e-12)


def test_records_are_ranked_across_images():
  # Image 1: d1 equals its GT (score 0.5). Image 2: FAR (score 0.9) overlaps
  # nothing and takes the only GT by the used[-1] quirk; the exact d3 (0.1)
  # is then not ok. Global ranking FAR, d1, d3: FP, TP, FP; npos = 2 ->
  # precision 0, 1/2, 1/3 and recall 0, 1/2, 1/2. t_0..t_49 reach recall 1/2 with
  # best precision 1/2: AP = 50 * 0.5 / 100 = 0.25.
  def run(quirks):
    e = ev.DenseCaptioningEvaluator(meteor_fn=constant_meteor(1.0), quirks=quirks)
    e.add_result(np.array([0.5]), xcycwh(G0), ["d1"], xcycwh(G0), ["g"])
    e.add_result(np.array([0.9, 0.1]), xcycwh(FAR, G1), ["far", "d3"], xcycwh(G1), ["g"])
    return e.evaluate()

  r = run(True)
  assert r["num_images"] == 2 and r["num_detections"] == 3 and r["num_ground_truth"] == 2
  np.testing.assert_allclose(all_aps(r), 0.25, rtol=1e-12)
  # Clean: FP, TP, TP -> precision reaches 2/3 at recall 1: AP = 2/3.
  np.testing.assert_allclose(all_aps(run(False)), 2 / 3, rtol=1e-12)


# --------------------------------------------------------- recall thresholds


def test_recall_thresholds_accumulate_0_01():
  t = ev.recall_thresholds()
  assert len(t) == 100
  assert t[0] == 0.0 and t[1] == 0.01
  assert t[50] == 0.5000000000000002 and t[-1] == 0.9900000000000007
  clean = ev.recall_thresholds(quirks=False)
  assert len(clean) == 101 and clean[50] == 0.5 and clean[-1] == 1.0


def test_accumulated_thresholds_change_the_ap():
  # Ranked TP, FP with 2 positives: recall .5, .5; precision 1, .5.
  # Accumulated thresholds: t_0..t_49 <= 0.5 -> AP = 50 / 100 = 0.5.
  assert ev.average_precision([True, False], 2) == 0.5
  # The exact 100 values k/100 (k = 0..99) would count t = 0.50 too: 51 / 100.
  rec, prec = np.array([0.5, 0.5]), np.array([1.0, 0.5])
  exact = np.mean([prec[rec >= t].max(initial=0) for t in np.arange(100) / 100])
  assert exact == pytest.approx(0.51)
  # Clean: 101 values k/100, 51 of them <= 0.5: AP = 51 / 101.
  assert ev.average_precision([True, False], 2, quirks=False) == pytest.approx(51 / 101)


def test_average_precision_is_max_interpolated():
  # TP, FP, TP with 2 positives: recall .5, .5, 1; precision 1, 1/2, 2/3.
  # t <= 0.5 (t_0..t_49): best precision 1; t_50..t_99: 2/3.
  # AP = (50 * 1 + 50 * 2/3) / 100 = 5/6.
  assert ev.average_precision([True, False, True], 2) == pytest.approx(5 / 6, rel=1e-12)
  # Clean: 51 thresholds <= 0.5 at 1, 50 above at 2/3 -> (51 + 100/3) / 101.
  assert ev.average_precision([True, False, True], 2, quirks=False) == pytest.approx(
      (51 + 100 / 3) / 101, rel=1e-12)
  # No true positive, or nothing ranked: AP 0.
  assert ev.average_precision([False, False], 3) == 0.0
  assert ev.average_precision([], 3) == 0.0
  with pytest.raises(ValueError, match="num_positives"):
    ev.average_precision([True], 0)


# -------------------------------------------------------------------- METEOR


@pytest.mark.parametrize("meteor, expected_map", [
    # One exact detection, METEOR 0.05: TP at "> 0" only -> 5 of the 30 APs
    # are 1. METEOR 0.0 is not "> 0": every captioning AP is 0.
    (0.05, 5 / 30), (0.0, 0.0), (0.25, 25 / 30), (0.2500001, 1.0)])
def test_meteor_threshold_is_strict(meteor, expected_map):
  e = ev.DenseCaptioningEvaluator(meteor_fn=constant_meteor(meteor))
  e.add_result(np.array([1.0]), xcycwh(G), ["a"], xcycwh(G), ["a"])
  r = e.evaluate()
  assert r["map"] == pytest.approx(expected_map)
  assert r["detmap"] == 1.0  # localisation ignores the caption
  if meteor == 0.05:
    assert r["ap_breakdown"]["ov0.7_score0"] == 1.0
    assert r["ap_breakdown"]["ov0.7_score0.05"] == 0.0


def test_meteor_gets_candidate_and_merged_references():
  # GT: B0, B1, B2 merge (captions a, b, c) around x 11..110; B3 = d alone.
  # Detections: on the merged box ('x', score 3), on B3 ('y', 2), far ('z', 1).
  # The far one has ov 0 and can never be a true positive: it is not scored.
  calls = []

  def recording_meteor(candidates, references):
    calls.append((list(candidates), [list(r) for r in references]))
    return [0.5] * len(candidates)

  e = ev.DenseCaptioningEvaluator(meteor_fn=recording_meteor)
  e.add_result(np.array([1.0, 3.0, 2.0]),
               xcycwh(strip(801, 900), strip(11, 110), strip(301, 400)), ["z", "x", "y"],
               xcycwh(strip(1, 100), strip(11, 110), strip(21, 120), strip(301, 400)),
               ["a", "b", "c", "d"])
  r = e.evaluate()
  assert calls == [(["x", "y"], [["a", "b", "c"], ["d"]])]
  assert r["num_ground_truth"] == 2
  # Ranked: x TP, y TP, z FP -> AP 1 while the threshold is below 0.5.
  assert r["ap_breakdown"]["ov0.7_score0.25"] == 1.0
  # A second evaluate() scores nothing again; new images only their own pairs.
  e.evaluate()
  e.add_result(np.array([1.0]), xcycwh(G), ["w"], xcycwh(G), ["v"])
  e.evaluate()
  assert calls[1:] == [(["w"], [["v"]])]


# ------------------------------------------------ detections equal to the GT

# Image 1: A and B overlap by 10000/11000 = 0.91 and merge into
# M0 = (1, 1, 100, 105); C stands alone. Image 2: D and E stand alone.
# npos = 2 + 2 = 4 merged boxes.
GT_IMAGES = [
    ([(1, 1, 100, 100), (1, 1, 100, 110), (301, 1, 400, 100)],
     ["a red car", "the red car", "a tall tree"]),
    ([(1, 1, 50, 50), (101, 101, 200, 200)],
     ["white cloud in the sky", "a dog on the grass"]),
]


def _perfect_detections(evaluator, duplicate_score):
  """Adds each image's GT boxes and captions as detections."""
  (boxes1, caps1), (boxes2, caps2) = GT_IMAGES
  evaluator.add_result(np.array([0.9, duplicate_score, 0.8]), xcycwh(*boxes1), caps1,
                       xcycwh(*boxes1), caps1)
  evaluator.add_result(np.array([0.7, 0.6]), xcycwh(*boxes2), caps2, xcycwh(*boxes2), caps2)
  return evaluator.evaluate()


@needs_java
def test_detections_equal_to_ground_truth_reach_the_maximum():
  # With the real METEOR (a caption equal to a reference scores exactly 1.0).
  # A (0.9) claims M0 with IoU 10000/10500 = 0.95, B (0.1) also matches M0
  # best and is not ok. Ranked A, C, D, E, B: TP TP TP TP FP -> recall 1 at
  # precision 1, every AP = 1: the best the rules allow. The duplicate can
  # only be a false positive, and the 100 thresholds stopping at 0.99 do not
  # matter because recall reaches 1.
  r = _perfect_detections(ev.DenseCaptioningEvaluator(), duplicate_score=0.1)
  assert r["num_ground_truth"] == 4
  assert r["map"] == 1.0 and r["detmap"] == 1.0
  assert all(ap == 1.0 for ap in all_aps(r))


def test_a_duplicate_ranked_high_lowers_the_ap():
  # B (0.95) now claims M0 (IoU 10500/11000 = 0.95); A is the FP at rank 2.
  # Ranked B, A, C, D, E: TP FP TP TP TP -> recall .25 .25 .5 .75 1,
  # precision 1 1/2 2/3 3/4 4/5. t_0..t_24 (<= 0.25; t_25 = 0.25000000000000006)
  # get 1, the other 75 get 4/5: AP = (25 + 60) / 100 = 0.85.
  r = _perfect_detections(ev.DenseCaptioningEvaluator(meteor_fn=constant_meteor(1.0)), 0.95)
  np.testing.assert_allclose(all_aps(r), 0.85, rtol=1e-12)
  # Clean: 26 of the 101 values are <= 0.25 -> (26 + 75 * 0.8) / 101.
  r = _perfect_detections(
      ev.DenseCaptioningEvaluator(meteor_fn=constant_meteor(1.0), quirks=False), 0.95)
  np.testing.assert_allclose(all_aps(r), 86 / 101, rtol=1e-12)


# ------------------------------------------ against a loop-by-loop reference


def _reference_evaluate(images, meteor_fn):
  """Loop-by-loop port of eval_utils.lua addResult + evaluate (released rules)."""

  def overlap(bb, gt):
    iw = min(bb[2], gt[2]) - max(bb[0], gt[0]) + 1
    ih = min(bb[3], gt[3]) - max(bb[1], gt[1]) + 1
    if iw > 0 and ih > 0:
      ua = (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + (gt[2] - gt[0] + 1) * (gt[3] - gt[1] + 1)
      return iw * ih / (ua - iw * ih)
    return 0.0

  records, npos = [], 0
  for scores, boxes, captions, gt_boxes, gt_captions in images:
    dets = [[float(v) for v in b] for b in box_ops.xcycwh_to_x1y1x2y2_np(boxes, np.float32)]
    gts = [[float(v) for v in b] for b in box_ops.xcycwh_to_x1y1x2y2_np(gt_boxes, np.float32)]
    n = len(gts)
    d = [[1.0 if i == j else overlap(gts[i], gts[j]) for j in range(n)] for i in range(n)]
    merged, merged_caps = [], []
    while True:
      counts = [sum(d[i][j] >= 0.7 for i in range(n)) for j in range(n)]
      top = max(range(n), key=lambda j: (counts[j], -j))
      if counts[top] == 0:
        break
      group = [i for i in range(n) if d[top][i] >= 0.7]
      merged.append(np.mean(np.array([gts[i] for i in group], np.float32), 0).tolist())
      merged_caps.append([gt_captions[i] for i in group])
      for i in group:
        for j in range(n):
          d[i][j] = d[j][i] = 0.0
    used = [0] * len(merged)
    for ii in sorted(range(len(dets)), key=lambda i: -float(scores[i])):
      ovmax, jmax = 0.0, -1
      for j, gt in enumerate(merged):
        ov = overlap(dets[ii], gt)
        if ov > ovmax:
          ovmax, jmax = ov, j
      ok = used[jmax] == 0  # Python's used[-1] is Torch's
      used[jmax] = 1
      records.append((float(scores[ii]), ok, ovmax, captions[ii],
                      merged_caps[jmax] if jmax >= 0 else []))
    npos += len(merged)
  meteor = [meteor_fn([r[3]], [r[4]])[0] for r in records]
  ranked = sorted(range(len(records)), key=lambda k: -records[k][0])
  thresholds, t = [], 0.0
  while t <= 1:
    thresholds.append(t)
    t += 0.01
  aps = {}
  for ov_t in (0.3, 0.4, 0.5, 0.6, 0.7):
    for m_t in (-1, 0, 0.05, 0.1, 0.15, 0.2, 0.25):
      tp = fp = 0
      rec, prec = [], []
      for k in ranked:
        _, ok, ov, _, _ = records[k]
        if ov >= ov_t and ok and meteor[k] > m_t:
          tp += 1
        else:
          fp += 1
        rec.append(tp / npos)
        prec.append(tp / (tp + fp))
      ap = sum(max([p for p, r in zip(prec, rec) if r >= th], default=0.0)
               for th in thresholds) / len(thresholds)
      aps[(ov_t, m_t)] = ap
  return aps


def _word_overlap_meteor(candidates, references):
  """A stand-in METEOR: fraction of candidate words found in the references."""
  scores = []
  for cand, refs in zip(candidates, references):
    words, ref_words = set(cand.split()), set(" ".join(refs).split())
    scores.append(len(words & ref_words) / max(len(words), 1))
  return scores


def test_matches_a_loop_by_loop_port_on_random_images():
  rng = np.random.default_rng(3)
  vocab = "a man red car tree white sky dog on the".split()
  text = random.Random(3)
  images = []
  for _ in range(4):
    m = int(rng.integers(5, 10))
    gt = np.concatenate([rng.uniform(20, 300, (m, 2)), rng.uniform(20, 120, (m, 2))], 1)
    gt[1::3] = gt[0::3][:len(gt[1::3])] + rng.normal(0, 4, (len(gt[1::3]), 4))  # near-duplicates
    jitter = gt[rng.integers(0, m, 25)] + rng.normal(0, 15, (25, 4))
    jitter[:, 2:] = np.abs(jitter[:, 2:]) + 2
    dets = np.concatenate([jitter, np.concatenate(
        [rng.uniform(0, 400, (10, 2)), rng.uniform(5, 100, (10, 2))], 1)])
    caption = lambda: " ".join(text.choices(vocab, k=text.randint(1, 4)))
    images.append((rng.normal(size=len(dets)).astype(np.float32), dets.astype(np.float32),
                   [caption() for _ in dets], gt.astype(np.float32), [caption() for _ in gt]))

  e = ev.DenseCaptioningEvaluator(meteor_fn=_word_overlap_meteor)
  for image in images:
    e.add_result(*image)
  r = e.evaluate()
  expected = _reference_evaluate(images, _word_overlap_meteor)
  for (ov_t, m_t), ap in expected.items():
    got = r["det_breakdown"][ev.ap_key(ov_t, m_t)] if m_t == -1 else \
        r["ap_breakdown"][ev.ap_key(ov_t, m_t)]
    assert got == pytest.approx(ap, abs=1e-12), (ov_t, m_t)
  assert len(set(expected.values())) > 5  # the data exercise many thresholds
  assert r["map"] == pytest.approx(np.mean([v for k, v in expected.items() if k[1] != -1]))


# --------------------------------------------------------- API and bad input


def test_result_keys_follow_the_original():
  e = ev.DenseCaptioningEvaluator(meteor_fn=constant_meteor(1.0))
  e.add_result(np.array([1.0]), xcycwh(G), ["a"], xcycwh(G), ["a"])
  r = e.evaluate()
  assert sorted(r["det_breakdown"]) == ["ov0.3", "ov0.4", "ov0.5", "ov0.6", "ov0.7"]
  assert len(r["ap_breakdown"]) == 30
  assert {"ov0.3_score0", "ov0.5_score0.05", "ov0.7_score0.25"} <= set(r["ap_breakdown"])
  table = ev.format_results(r)
  assert "mAP 100.00" in table and len(table.splitlines()) == 7


def test_probabilities_distinct_in_float64_but_equal_in_float32_keep_their_order():
  # One ground-truth box (0, 0)-(10, 10) "a cat". The far box (50, 50)-(60, 60)
  # is listed first at 0.99999999, the exact box second at 0.999999999: both
  # are 1.0 in float32. Ranked in float64 the exact box comes first, claims
  # the box with IoU 1 and a METEOR of 1: TP at rank 1, every AP 1 (the far box
  # after it overlaps nothing; the only box is claimed already). Ranked as a
  # float32 tie, the far box would come first and claim the last box
  # (used[-1]) with IoU 0, leaving the exact box not ok: every AP 0.
  scores = np.array([0.99999999, 0.999999999])
  assert np.float32(scores[0]) == np.float32(scores[1]) and scores[0] < scores[1]
  e = ev.DenseCaptioningEvaluator(meteor_fn=constant_meteor(1.0))
  e.add_result(scores, xcycwh((50, 50, 60, 60), (0, 0, 10, 10)), ["a cat", "a cat"],
               xcycwh((0, 0, 10, 10)), ["a cat"])
  r = e.evaluate()
  assert r["map"] == 1.0 and r["detmap"] == 1.0
  np.testing.assert_array_equal(e.records()["score"], scores[::-1])


def test_image_without_ground_truth_and_without_detections():
  e = ev.DenseCaptioningEvaluator(meteor_fn=constant_meteor(1.0))
  e.add_result(np.array([5.0]), xcycwh(G), ["a"], np.zeros((0, 4)), [])
  with pytest.raises(ValueError, match="no ground-truth boxes"):
    e.evaluate()
  e.add_result(np.zeros(0), np.zeros((0, 4)), [], xcycwh(G), ["a"])
  r = e.evaluate()
  # One FP (score 5, no GT in its image) and no TP: every AP 0.
  assert r["map"] == 0.0 and r["num_ground_truth"] == 1


@pytest.mark.parametrize("args, message", [
    ((np.ones((2, 1)), xcycwh(G, G), ["a", "b"], xcycwh(G), ["g"]),
     r"scores: expected shape \(2,\)"),
    ((np.ones(1), np.ones((1, 3)), ["a"], xcycwh(G), ["g"]), r"boxes: expected shape \(N, 4\)"),
    ((np.ones(1), xcycwh(G), ["a", "b"], xcycwh(G), ["g"]), "captions: expected 1 captions"),
    ((np.ones(1), xcycwh(G), ["a"], xcycwh(G), [3]), r"gt_captions\[0\] must be a str"),
    ((np.array([np.nan]), xcycwh(G), ["a"], xcycwh(G), ["g"]), "logits must be finite"),
    ((np.ones(1), xcycwh(G), ["a"], np.full((1, 4), np.inf), ["g"]),
     "gt_boxes: boxes must be finite"),
])
def test_bad_input_is_a_clear_error(args, message):
  with pytest.raises(ValueError, match=message):
    ev.DenseCaptioningEvaluator(meteor_fn=constant_meteor(1.0)).add_result(*args)


def test_meteor_fn_returning_the_wrong_length_is_an_error():
  e = ev.DenseCaptioningEvaluator(meteor_fn=lambda c, r: [1.0])
  e.add_result(np.array([1.0, 0.5]), xcycwh(G0, G1), ["a", "b"], xcycwh(G0, G1), ["a", "b"])
  with pytest.raises(ValueError, match=r"meteor_fn returned shape \(1,\) for 2 pairs"):
    e.evaluate()
