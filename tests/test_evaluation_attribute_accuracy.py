"""``evaluation.attribute_accuracy`` on hand-worked images."""

import numpy as np
import pytest

from densecap_jax.evaluation import attribute_accuracy

WORDS = {"colour": ("red", "blue", "green", "yellow", "pink"),
         "shape": ("circle", "square", "star"),
         "size": ("small", "large")}


def add_images(measure, box_format="x1y1x2y2"):
  """Two images; boxes x1y1x2y2 (converted when ``box_format`` asks for another)."""
  convert = {"x1y1x2y2": lambda b: np.asarray(b, float),
             "xcycwh": lambda b: np.stack([(np.asarray(b)[:, 0] + np.asarray(b)[:, 2]) / 2,
                                           (np.asarray(b)[:, 1] + np.asarray(b)[:, 3]) / 2,
                                           np.asarray(b)[:, 2] - np.asarray(b)[:, 0] + 1,
                                           np.asarray(b)[:, 3] - np.asarray(b)[:, 1] + 1], 1)}
  to = convert[box_format]
  # Image 1. Regions: a red circle (eligible, matched), two pairs (two colours,
  # or one colour and shape named twice: not eligible), a green star
  # (eligible, unmatched), a group ("stars" names no shape word: not eligible).
  gt = [[1, 1, 10, 10], [21, 1, 30, 10], [1, 21, 10, 30], [21, 21, 30, 30], [1, 41, 30, 50]]
  refs = ["a red circle", "a blue square above a red circle", "a green star",
          "three yellow stars", "a red circle left of a red circle"]
  # The red circle: overlapped by a wrong caption at IoU 1 (score 2) and a
  # right one at IoU 100/110 (score 3): the higher score is taken. The star's
  # only detection overlaps it by 100/210 < 0.5.
  dets = [[1, 1, 10, 10], [1, 1, 10, 11], [1, 21, 10, 41]]
  measure.add_result(np.array([2.0, 3.0, 5.0]), to(dets),
                     ["a red square", "the circle is red.", "a green star"], to(gt), refs,
                     box_format=box_format)
  # Image 2: two captions of one box, merged into one region that names red,
  # circle and small; its detection names pink, circle and large.
  box = [[1, 1, 20, 20]]
  measure.add_result(np.array([1.0]), to(box), ["a large pink circle"], to(box * 2),
                     ["a small red circle", "the circle is red"], box_format=box_format)


@pytest.mark.parametrize("box_format", ["x1y1x2y2", "xcycwh"])
def test_shares_of_hand_worked_images(box_format):
  measure = attribute_accuracy.AttributeAccuracy(WORDS, required=("colour", "shape"))
  add_images(measure, box_format)
  results = measure.evaluate()
  assert results == {
      "eligible": 3, "matched": 2, "matched_share": 2 / 3,
      "colour_shape": 1 / 2,  # the circle of image 1 only
      "colour": 1 / 2, "colour_regions": 2, "colour_named": 1.0, "colour_right_of_named": 1 / 2,
      "shape": 1.0, "shape_regions": 2, "shape_named": 1.0, "shape_right_of_named": 1.0,
      # Only image 2's region names a size; its detection names the wrong one.
      "size": 0.0, "size_regions": 1, "size_named": 1.0, "size_right_of_named": 0.0}


def test_every_attribute_required_by_default():
  measure = attribute_accuracy.AttributeAccuracy(WORDS)
  add_images(measure)
  results = measure.evaluate()
  # Image 1's circle names no size: only image 2's region is eligible; its caption is wrong.
  assert (results["eligible"], results["matched"]) == (1, 1)
  assert results["colour_shape_size"] == 0.0 and results["shape"] == 1.0


def test_without_merging_each_box_is_a_region():
  measure = attribute_accuracy.AttributeAccuracy(WORDS, required=("colour", "shape"),
                                                 merge_thresh=None)
  add_images(measure)
  results = measure.evaluate()
  # Image 2 gives two eligible matched regions, both with the pink caption.
  assert (results["eligible"], results["matched"]) == (4, 3)
  assert results["colour_shape"] == 1 / 3 and results["colour"] == 1 / 3
  assert results["size_regions"] == 1


def test_naming_two_words_of_an_attribute_is_not_right():
  measure = attribute_accuracy.AttributeAccuracy(WORDS, required=("colour", "shape"))
  box = np.array([[5.5, 5.5, 10.0, 10.0]])  # xcycwh
  measure.add_result([1.0], box, ["a red and blue circle"], box, ["a red circle"])
  results = measure.evaluate()
  assert results["colour"] == 0.0 and results["colour_named"] == 1.0
  assert results["shape"] == 1.0 and results["colour_shape"] == 0.0


def test_no_regions_give_zero_shares():
  measure = attribute_accuracy.AttributeAccuracy(WORDS)
  measure.add_result(np.zeros(0), np.zeros((0, 4)), [], np.zeros((0, 4)), [])
  results = measure.evaluate()
  assert results["eligible"] == results["matched"] == 0
  assert results["matched_share"] == results["colour_shape_size"] == results["colour"] == 0.0


def test_tokens_are_whole_words():
  assert attribute_accuracy.caption_tokens("Three stars, red.") == {"three", "stars", "red"}
  assert attribute_accuracy.true_word(["three stars", "a star"], {"star": "star"}) == "star"
  assert attribute_accuracy.true_word(["three stars"], {"star": "star"}) is None
  words = {"red": "red", "blue": "blue"}
  assert attribute_accuracy.true_word(["a red star", "the star is red"], words) == "red"
  assert attribute_accuracy.true_word(["a red star", "a blue star"], words) is None
  assert attribute_accuracy.true_word(["a red star above a red star"], words) is None
  assert attribute_accuracy.true_word(["a star"], words) is None


TEXTURE = {"solid": "solid", "dotted": "dotted", "dots": "dotted", "striped": "striped",
           "stripes": "striped"}


def test_synonyms_name_the_same_value():
  assert attribute_accuracy.true_word(["a red circle with dots", "a dotted red circle"],
                                      TEXTURE) == "dotted"
  assert attribute_accuracy.true_word(["a dotted circle with stripes"], TEXTURE) is None
  assert attribute_accuracy.named_values("a red circle with dots", TEXTURE) == {"dotted"}
  measure = attribute_accuracy.AttributeAccuracy(
      {"colour": ("red", "blue"), "shape": ("circle", "square"), "texture": TEXTURE},
      required=("colour", "shape"), merge_thresh=None)
  boxes = np.array([[1, 1, 10, 10], [21, 1, 30, 10], [1, 21, 10, 30]], float)
  # Three dotted or striped objects; the captions say "with dots" (right),
  # "striped" for a dotted one (wrong), and "with dots" and "dotted" together
  # for a dotted one (one value, right).
  measure.add_result(np.ones(3), boxes, ["a red circle with dots", "a striped blue square",
                                         "a dotted red circle with dots"], boxes,
                     ["a dotted red circle", "a blue square with dots",
                      "a red circle with dots"])
  results = measure.evaluate()
  assert (results["texture"], results["texture_named"], results["texture_regions"]) == (
      2 / 3, 1.0, 3)
  assert results["colour_shape"] == 1.0


@pytest.mark.parametrize("kwargs, message", [
    (dict(attribute_words={}), "attribute_words is empty"),
    (dict(attribute_words={"colour": ()}), "non-empty list of single words"),
    (dict(attribute_words={"colour": ("dark red",)}), "non-empty list of single words"),
    (dict(attribute_words={"colour": "red"}), "non-empty list of single words"),
    (dict(attribute_words={"a": ("red",), "b": ("red",)}), "share the words"),
    (dict(attribute_words={"a": {"red": "red"}, "b": {"red": "rot"}}), "share the words"),
    (dict(attribute_words={"colour": {"dark red": "red"}}), "mapping"),
    (dict(attribute_words={"colour": {"red": ""}}), "mapping"),
    (dict(attribute_words=WORDS, required=("texture",)), "required attributes"),
    (dict(attribute_words=WORDS, iou_threshold=0), "iou_threshold"),
])
def test_bad_arguments_are_one_line_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    attribute_accuracy.AttributeAccuracy(**kwargs)


def test_bad_results_are_one_line_errors():
  measure = attribute_accuracy.AttributeAccuracy(WORDS)
  box = np.array([[5.5, 5.5, 10.0, 10.0]])
  with pytest.raises(ValueError, match="box_format"):
    measure.add_result([1.0], box, ["a"], box, ["a"], box_format="cxcywh")
  with pytest.raises(ValueError, match="one of each per detection"):
    measure.add_result([1.0, 2.0], box, ["a"], box, ["a"])
  with pytest.raises(ValueError, match="one caption per box"):
    measure.add_result([1.0], box, ["a"], box, ["a", "b"])
