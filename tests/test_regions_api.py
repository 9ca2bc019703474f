"""caption_regions, score_phrases and the one coordinate convention (densecap_jax.regions).

The language-model scores are checked against a NumPy reference of the
torch-rnn LSTM run on a converted original checkpoint's own weights
(tests/convert_fixtures.py); region captions against the detection path's
captions of the same regions; coordinates against the same photo at twice
its size.
"""

import jax
import numpy as np
import pytest
from PIL import Image

import convert_fixtures as cf
from densecap_jax import predictor as predictor_lib
from densecap_jax.commands import convert as convert_cli
from densecap_jax.convert import t7
from densecap_jax.data import synthetic_world as synthetic
from densecap_jax.data import vocab as vocab_lib
from densecap_jax.models import densecap
from densecap_jax.models import detection
from densecap_jax.models import given_boxes
from densecap_jax.ops import boxes as boxes_lib
from densecap_jax.regions import api
from densecap_jax.regions import phrases as phrases_lib


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """``(weights, predictor)`` of a down-sized checkpoint in the released structure."""
  directory = tmp_path_factory.mktemp("t7")
  tree, weights = cf.densecap_checkpoint(seed=3)
  t7.save(directory / "m.t7", tree)
  assert convert_cli.main(["--input", str(directory / "m.t7"),
                           "--output", str(directory / "model")]) == 0
  return weights, predictor_lib.load_model(directory / "model", image_size=64, num_proposals=16)


@pytest.fixture(scope="module")
def bundled():
  return predictor_lib.load_model()


@pytest.fixture(scope="module")
def photo():
  """A synthetic scene cut to ``(256, 192, 3)`` uint8: its long side is the bundled model's image_size."""
  rgb, _ = synthetic.render_scene(synthetic.make_scene(7, 0, image_size=256))
  return np.asarray(Image.fromarray(rgb).resize((192, 256), Image.BILINEAR))


def _reference_steps(weights, codes, tokens):
  """NumPy log-softmax scores of the image step, then each input token (float64)."""
  x = np.maximum(cf.torch_linear(codes, *weights["image_encoder"]), 0)
  h = c = np.zeros((codes.shape[0], weights["lstm"][1].size // 4))
  out = []
  for x in [x] + [weights["lookup"][tokens[:, t] - 1] for t in range(tokens.shape[1])]:
    h, c = cf.torch_rnn_lstm_step(x, h, c, *weights["lstm"])
    scores = cf.torch_linear(h, *weights["output_proj"])
    out.append(scores - np.log(np.exp(scores - scores.max(-1, keepdims=True)).sum(-1,
                                                                                   keepdims=True))
               - scores.max(-1, keepdims=True))
  return np.stack(out, axis=1)


def _reference_log_likelihood(weights, codes, words):
  """``log p(words, END | code)`` of one phrase for every code, teacher-forced, in NumPy."""
  end = weights["output_proj"][1].size  # V + 1
  inputs = np.array([[end] + list(words)] * len(codes))  # START, then the words
  steps = _reference_steps(weights, codes, inputs)[:, 1:]  # after START: words, then END
  targets = list(words) + [end]
  return sum(steps[:, t, target - 1] for t, target in enumerate(targets))


def test_phrase_log_likelihood_equals_a_numpy_lstm(converted):
  weights, predictor = converted
  config = predictor.config
  v, length = config.vocab_size, config.seq_length
  rng = np.random.default_rng(0)
  codes = (rng.random((5, config.fc_dim)) * 2).astype(np.float32)
  phrases = [[3], [1, 7, 2], list(rng.integers(1, v + 1, length))]  # one of full length
  labels = np.zeros((4, length), np.int32)  # a padding row too
  for i, words in enumerate(phrases):
    labels[i, :len(words)] = words
  ll = np.asarray(given_boxes.phrase_log_likelihood(predictor.params, codes, labels, config))
  assert ll.shape == (5, 4, length + 1)
  for j, words in enumerate(phrases):
    np.testing.assert_allclose(ll[:, j].sum(-1), _reference_log_likelihood(weights, codes, words),
                               rtol=1e-5, atol=1e-4)
    assert np.all(ll[:, j, len(words) + 1:] == 0)  # steps past END
  # Cutting the rows to the longest phrase changes nothing.
  short = np.asarray(given_boxes.phrase_log_likelihood(predictor.params, codes, labels[:2, :3],
                                                       config))
  np.testing.assert_allclose(short.sum(-1), ll[:, :2].sum(-1), rtol=1e-6, atol=1e-5)


def test_score_codes_sum_and_mean(converted):
  weights, predictor = converted
  vocab = predictor.vocab
  rng = np.random.default_rng(1)
  codes = (rng.random((40, predictor.config.fc_dim)) * 2).astype(np.float32)
  phrases = [f"{vocab[2]} {vocab[5]}", vocab[1].upper() + "!"]  # tokenised as captions are
  scored = predictor.score_codes(codes, phrases)
  total, mean = scored["log_likelihood"], scored["mean_log_likelihood"]
  assert total.shape == mean.shape == (40, 2)
  assert set(scored) == {"log_likelihood", "mean_log_likelihood", "phrases", "unknown_words",
                         "no_known_content_words"}
  assert scored["phrases"] == [f"{vocab[2]} {vocab[5]}", vocab[1]]
  assert scored["unknown_words"] == [[], []]
  np.testing.assert_allclose(total[:, 0], _reference_log_likelihood(weights, codes, [2, 5]),
                             rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(total[:, 1], _reference_log_likelihood(weights, codes, [1]),
                             rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(mean, total / np.array([3, 2]), rtol=1e-6)


def test_greedy_log_probs_are_those_of_the_sampled_tokens(converted):
  weights, predictor = converted
  rng = np.random.default_rng(2)
  codes = (rng.random((6, predictor.config.fc_dim)) * 2).astype(np.float32)
  model = densecap.build_model(predictor.config)
  tokens, log_probs = model.apply({"params": predictor.params}, codes,
                                  method=densecap.DenseCap.sample_captions_scored)
  plain = model.apply({"params": predictor.params}, codes,
                      method=densecap.DenseCap.sample_captions)
  np.testing.assert_array_equal(tokens, plain)
  end = predictor.config.vocab_size + 1
  inputs = np.concatenate([np.full((6, 1), end), np.asarray(tokens)[:, :-1]], axis=1)
  steps = _reference_steps(weights, codes, inputs)[:, 1:]
  expected = np.take_along_axis(steps, np.asarray(tokens)[..., None] - 1, axis=-1)[..., 0]
  np.testing.assert_allclose(log_probs, expected, rtol=1e-5, atol=1e-4)
  # The caption's log-probability stops at its END.
  tokens = np.array([[4, end, 3], [2, 2, 2]])
  lp = np.array([[-1.0, -2.0, -4.0], [-1.0, -1.0, -1.0]], np.float32)
  np.testing.assert_array_equal(api.caption_log_prob(tokens, lp, end), [-3.0, -3.0])


def _proposals(predictor, image):
  """xywh proposals (resized image) of the kept detections, and the detection path's captions."""
  prepared = [predictor.prepare(image)]
  _, images, sizes = next(predictor.batches(prepared))
  det = jax.device_get(jax.jit(lambda p, i, s: detection.detect_with_codes(
      p, i, s, predictor.config, predictor.num_proposals,
      num_proposals=predictor.num_proposals))(predictor.params, images, sizes))
  n = int(det["valid"][0].sum())
  (detected,) = predictor.predict_prepared(prepared)
  assert len(detected["captions"]) == n
  return np.asarray(boxes_lib.xcycwh_to_xywh(det["proposals"][0][:n])), detected, det


def test_caption_regions_reproduce_the_detection_path_on_a_converted_model(converted):
  _, predictor = converted
  image = np.random.default_rng(5).integers(0, 256, (48, 64, 3), np.uint8)
  proposals, detected, det = _proposals(predictor, image)
  (out,) = predictor.caption_regions(image, proposals, coords="resized", with_codes=True)
  assert out["captions"] == detected["captions"]
  np.testing.assert_allclose(out["codes"], det["codes"][0][:len(proposals)], rtol=1e-4,
                             atol=1e-4)
  assert not out["clipped"].any() and out["boxes"].shape == proposals.shape
  assert np.all(out["caption_log_probs"] <= 0)


def test_caption_regions_on_the_bundled_model_and_its_examples(bundled):
  path = sorted(p for p in __import__("os").listdir(predictor_lib.bundled_examples_path()))[0]
  path = f"{predictor_lib.bundled_examples_path()}/{path}"
  proposals, detected, _ = _proposals(bundled, path)
  prepared = bundled.prepare(path)
  # Given in the image's own pixels, the same regions get the same captions.
  image_boxes = boxes_lib.to_image(proposals, prepared.original_size, prepared.size)
  (out,) = bundled.caption_regions([path], [image_boxes])
  assert out["captions"] == detected["captions"]
  np.testing.assert_allclose(out["boxes"], image_boxes)
  assert (out["width"], out["height"]) == prepared.original_size[::-1]


def test_same_photo_twice_as_large_gives_boxes_twice_as_large(bundled, photo):
  big = np.asarray(Image.fromarray(photo).resize((photo.shape[1] * 2, photo.shape[0] * 2),
                                                 Image.NEAREST))
  one, two = bundled.predict([photo, big])
  assert len(one["boxes"]) > 0 and len(one["boxes"]) == len(two["boxes"])
  np.testing.assert_allclose(two["boxes"], 2 * one["boxes"], atol=1.0)
  assert (two["width"], two["height"]) == (2 * one["width"], 2 * one["height"])
  boxes = [[10, 20, 60, 40], [100, 5, 80, 150]]
  small, large = bundled.caption_regions([photo, big], [boxes, 2 * np.array(boxes)])
  assert small["captions"] == large["captions"]
  np.testing.assert_allclose(large["boxes"], 2 * small["boxes"], atol=1.0)
  (resized,) = bundled.predict([photo], coords="resized")  # long side = image_size: factor 1
  np.testing.assert_allclose(resized["boxes"], one["boxes"])


@pytest.mark.parametrize("box, message", [
    ([1, 2, 3], r"expected shape \(k, 4\)"),
    ([float("nan"), 1, 5, 5], "box 1: x is nan"),
    ([1, 1, 0, 5], "box 1: w and h must be positive"),
    ([1, 1, 5, -2], "box 1: w and h must be positive"),
    ([1, 1, 5, float("inf")], "box 1: h is inf"),
])
def test_bad_boxes_are_named_by_index(bundled, photo, box, message):
  boxes = [[1, 1, 10, 10], box] if len(box) == 4 else [box]
  if len(box) != 4:
    message = message.replace("box 1", "box 0")
  with pytest.raises(ValueError, match=message):
    bundled.caption_regions([photo], [boxes])


def test_boxes_partly_outside_are_clipped(bundled, photo):
  (out,) = bundled.caption_regions(photo, [[-9, 100, 20, 500], [5, 5, 10, 10]])
  np.testing.assert_allclose(out["boxes"], [[1, 100, 10, 157], [5, 5, 10, 10]])
  np.testing.assert_array_equal(out["clipped"], [True, False])
  np.testing.assert_array_equal(out["outside"], [False, False])
  (inside,) = bundled.caption_regions(photo, [[1, 100, 10, 157]])
  assert inside["captions"][0] == out["captions"][0]
  (empty,) = bundled.caption_regions(photo, np.zeros((0, 4)))
  assert empty["captions"] == [] and empty["boxes"].shape == (0, 4)
  with pytest.raises(ValueError, match="got 1 images and boxes for 2"):
    bundled.caption_regions([photo], [[[1, 1, 5, 5]], [[1, 1, 5, 5]]])


def test_score_phrases_on_detections_and_given_boxes(bundled, photo):
  (det,) = bundled.score_phrases(photo, ["a red circle", "zebra stripes"])
  (ref,) = bundled.predict([photo])
  np.testing.assert_allclose(det["boxes"], ref["boxes"])
  assert det["captions"] == ref["captions"]
  assert det["log_likelihood"].shape == (len(ref["captions"]), 2)
  assert det["unknown_words"] == [[], ["zebra"]] and det["phrases"] == ["a red circle", "stripes"]
  boxes = [[10, 20, 60, 40], [100, 5, 80, 150]]
  (given,) = bundled.score_phrases([photo], ["a red circle"], [boxes])
  (regions,) = bundled.caption_regions(photo, boxes, with_codes=True)
  scored = bundled.score_codes(regions["codes"], ["a red circle"])
  np.testing.assert_allclose(given["log_likelihood"], scored["log_likelihood"], rtol=1e-6)
  np.testing.assert_allclose(given["mean_log_likelihood"], scored["mean_log_likelihood"],
                             rtol=1e-6)
  assert scored["phrases"] == ["a red circle"] and scored["unknown_words"] == [[]]
  assert scored["no_known_content_words"] == [False]


def test_a_phrase_of_unknown_content_words_is_flagged(bundled, photo):
  # The bundled vocabulary has no <UNK> and none of "man", "riding", "horse", "car":
  # the first phrase is scored as "a a" and ranks nothing; "car" leaves "a red".
  phrases = ["a man riding a horse", "a red car", "on the"]
  boxes = [[10, 20, 60, 40], [100, 5, 80, 150], [1, 1, 192, 256]]
  (given,) = bundled.score_phrases(photo, phrases, boxes)
  assert given["phrases"] == ["a a", "a red", "on the"]
  assert given["unknown_words"] == [["man", "riding", "horse"], ["car"], []]
  assert given["no_known_content_words"] == [True, False, True]
  (regions,) = bundled.caption_regions(photo, boxes, with_codes=True)
  same = bundled.score_codes(regions["codes"], ["a a", "a red", "on the"])
  np.testing.assert_allclose(given["log_likelihood"], same["log_likelihood"], rtol=1e-6)
  (det,) = bundled.score_phrases(photo, phrases)
  assert det["no_known_content_words"] == [True, False, True]
  scored = bundled.score_codes(regions["codes"], phrases)
  assert scored["no_known_content_words"] == [True, False, True]
  assert scored["unknown_words"] == given["unknown_words"]


def test_phrase_errors_and_unknown_words():
  vocab = [None, "a", "dog", "red", vocab_lib.UNK]
  encoded = phrases_lib.encode_phrases(["A red zebra.", "dog"], vocab, seq_length=5)
  assert encoded.words == [["a", "red", vocab_lib.UNK], ["dog"]]
  assert encoded.unknown == [["zebra"], []]
  assert encoded.texts == ["A red zebra.", "dog"]
  assert encoded.no_known_content_words == [False, False]
  assert encoded.notes(0) == ['"A red zebra.": the model does not know "zebra"; scored as '
                              '"a red <UNK>"']
  assert encoded.notes(1) == []
  assert encoded.labels.shape == (2, 4)
  np.testing.assert_array_equal(encoded.labels, [[1, 3, 4, 0], [2, 0, 0, 0]])
  np.testing.assert_array_equal(encoded.lengths, [4, 2])
  with pytest.raises(ValueError, match="phrase 1 'a a a a a a' has 6 words, more than the "
                                       "model's seq_length 5"):
    phrases_lib.encode_phrases(["dog", "a a a a a a"], vocab, seq_length=5)
  with pytest.raises(ValueError, match="phrase 0 '...': it has no words"):
    phrases_lib.encode_phrases(["..."], vocab, seq_length=5)
  no_unk = vocab[:-1]
  with pytest.raises(ValueError, match=r"none of its words \(zebra\) is in the model's vocab"):
    phrases_lib.encode_phrases(["zebra"], no_unk, seq_length=5)
  with pytest.raises(ValueError, match="phrase 0: non-ASCII character"):
    phrases_lib.encode_phrases(["caf\u00ee"], no_unk, seq_length=5)
  with pytest.raises(ValueError, match="phrase 1 must be a string"):
    phrases_lib.encode_phrases(["dog", 3], no_unk, seq_length=5)
  # A phrase whose known words are all function words is scored but flagged; <UNK> is no
  # content word, and a phrase of function words only is flagged as well.
  encoded = phrases_lib.encode_phrases(["a man riding a dog", "a man riding a horse", "A zebra",
                                        "on the"], vocab + ["on", "the"], seq_length=5)
  assert encoded.words == [["a", "<UNK>", "<UNK>", "a", "dog"],
                           ["a", "<UNK>", "<UNK>", "a", "<UNK>"], ["a", "<UNK>"], ["on", "the"]]
  assert encoded.no_known_content_words == [False, True, True, True]
  encoded = phrases_lib.encode_phrases(["a man riding a horse", "on the left"],
                                       [None, "a", "on", "the", "left"], seq_length=5)
  assert encoded.words == [["a", "a"], ["on", "the", "left"]]
  assert encoded.no_known_content_words == [True, False]
  assert encoded.notes(0) == [
      '"a man riding a horse": the model does not know "man", "riding", "horse"; scored as "a a"',
      'not ranked: of this phrase the model knows only function words ("a", "a"), which do not '
      'say what to look for']
  assert encoded.fields() == {"phrases": ["a a", "on the left"],
                              "unknown_words": [["man", "riding", "horse"], []],
                              "no_known_content_words": [True, False]}
  assert [phrases_lib.static_size(n, cap=15, floor=4) for n in (1, 4, 5, 9, 15)] == [
      4, 4, 8, 15, 15]


def test_varied_box_and_phrase_counts_compile_nothing_new(bundled, photo, record_compiles):
  bundled.caption_regions(photo, [[1, 1, 30, 30]] * 3)
  bundled.score_phrases(photo, ["a red circle", "a blue star", "two shapes"])
  with record_compiles() as compiled:
    bundled.caption_regions(photo, [[5, 5, 40, 30]] * 9)
    bundled.score_phrases(photo, ["a red", "a blue star on", "shapes", "a"])
  assert compiled == []


def test_coords_round_trip_and_model_boxes():
  boxes = np.array([[1, 1, 10, 20], [33.5, 7.25, 3, 4]], np.float32)
  there = boxes_lib.to_image(boxes, (480, 640), (192, 256))
  np.testing.assert_allclose(there, [[1, 1, 25, 50], [82.25, 16.625, 7.5, 10]], rtol=1e-6)
  np.testing.assert_allclose(boxes_lib.to_resized(there, (480, 640), (192, 256)), boxes, rtol=1e-6)
  centred = boxes_lib.xywh_to_model(boxes)
  np.testing.assert_allclose(np.asarray(boxes_lib.xcycwh_to_xywh(centred)), boxes, rtol=1e-6)


def test_max_detections_minus_one_or_none_scores_all_and_other_negatives_are_refused(
    bundled, photo):
  (ref,) = bundled.predict([photo])
  count = len(ref["captions"])
  assert count > 2
  for limit, expected in ((None, count), (-1, count), (2, 2), (0, 0)):
    (out,) = bundled.score_phrases(photo, ["a red circle"], max_detections=limit)
    assert out["log_likelihood"].shape == (expected, 1), limit
    np.testing.assert_allclose(out["boxes"], ref["boxes"][:expected])
  for limit, message in ((-2, r"^max_detections must be non-negative, or -1 \(or None\) for "
                              r"all, got -2$"),
                         (1.5, "^max_detections must be an integer")):
    with pytest.raises(ValueError, match=message):
      bundled.score_phrases(photo, ["a red circle"], max_detections=limit)
  np.testing.assert_array_equal(api.kept_detections(np.arange(5.0), 1.5, -1), [2, 3, 4])
  (every,) = bundled.predict([photo], max_detections=-1)  # predict counts the same way
  assert len(every["captions"]) == count
  with pytest.raises(ValueError, match="max_detections must be non-negative"):
    bundled.predict([photo], max_detections=-3)


def test_caption_regions_without_boxes_is_one_line_error(bundled, photo):
  for boxes, got in ((None, "None"), (7, "int")):
    with pytest.raises(ValueError, match=rf"^boxes must be a list of \[x, y, w, h\] per image, "
                                         rf"got {got}"):
      bundled.caption_regions(photo, boxes)
  with pytest.raises(ValueError, match=r"^boxes of image 0: expected shape \(k, 4\)"):
    bundled.caption_regions([photo], [None])


def test_phrase_errors_quote_long_phrases_briefly():
  vocab = [None, "a", "dog"]
  long_phrase = "zebra " * 40_000
  with pytest.raises(ValueError) as error:
    phrases_lib.encode_phrases(["dog", long_phrase], vocab, seq_length=5)
  assert str(error.value) == (
      f"phrase 1 '{long_phrase[:60]}...' (240,000 characters): none of its words "
      f"({', '.join(['zebra'] * 40_000)[:60]}... (40,000 words)) is in the model's vocabulary")
  with pytest.raises(ValueError) as error:
    phrases_lib.encode_phrases(["a " * 100], vocab, seq_length=5)
  assert str(error.value) == (f"phrase 0 '{('a ' * 100)[:60]}...' (200 characters) has 100 "
                              f"words, more than the model's seq_length 5")
  accented = "caf\u00ee " + "x" * 10_000
  with pytest.raises(ValueError) as error:
    phrases_lib.encode_phrases([accented], vocab, seq_length=5)
  assert str(error.value) == (f"phrase 0: non-ASCII character '\u00ee' (U+00EE) in phrase "
                              f"'{accented[:60]}...' (10,005 characters)")
