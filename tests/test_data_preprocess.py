"""Tests for densecap_jax.data.preprocess and the tokeniser / vocabulary (reference §8)."""

import json
import os

import h5py
import numpy as np
import pytest
from PIL import Image

from densecap_jax.data import images
from densecap_jax.data import visual_genome as preprocess
from densecap_jax.data import vocab
from densecap_jax.commands import preprocess as preprocess_command


# --- tokenisation (§8.3 step 4) -------------------------------------------------------------

@pytest.mark.parametrize("phrase, expected", [
    ("\u00bd cup", ["half", "cup"]),
    ("red\u2014blue", ["redblue"]),              # em dash -> "-" -> deleted as punctuation
    ("Brand\u2122 shoe", ["brand", "shoe"]),
    ("5\u00a2 coin", ["5cent", "coin"]),
    ("fa\u00e7ade", ["facade"]),
    ("cr\u00fbte", ["crute"]),
    ("caf\u00e9", ["cafe"]),
    ("90\u00b0 angle", ["90", "degree", "angle"]),
    ("cr\u00e8me", ["creme"]),
    ("wait\u2026 now", ["wait", "now"]),
])
def test_tokenize_replacements(phrase, expected):
  assert vocab.tokenize_phrase(phrase) == expected


def test_tokenize_punctuation_case_whitespace():
  assert vocab.tokenize_phrase("The man's T-shirt.") == ["the", "mans", "tshirt"]
  assert vocab.tokenize_phrase("A RED Car!!") == ["a", "red", "car"]
  assert vocab.tokenize_phrase(" a\tb\nc  d\r\x0be\x0cf ") == ["a", "b", "c", "d", "e", "f"]
  assert vocab.tokenize_phrase("(x) [y] {z} @#$%&*+/:;<=>?\\^_`|~\"") == ["x", "y", "z"]
  assert vocab.tokenize_phrase("...") == []
  assert vocab.tokenize_phrase("") == []
  # Python-2 byte strings split on ASCII whitespace only; \x1c is not whitespace there.
  assert vocab.tokenize_phrase("a\x1cb") == ["a\x1cb"]


def test_tokenize_non_ascii():
  with pytest.raises(ValueError, match="U\\+00EF"):
    vocab.tokenize_phrase("na\u00efve")
  assert vocab.tokenize_phrase("na\u00efve caf\u00e9", non_ascii="drop") == ["nave", "cafe"]
  with pytest.raises(ValueError, match="string"):
    vocab.tokenize_phrase(None)


def test_length_filter_and_zero_quirk():
  assert vocab.keep_by_length(["w"] * 15, 15)
  assert not vocab.keep_by_length(["w"] * 16, 15)
  assert vocab.keep_by_length([], 15)
  assert not vocab.keep_by_length([], 0)
  assert not vocab.keep_by_length(["w"], 0)


def test_vocab_threshold_order_and_unk():
  captions = [["b", "a", "c"], ["a", "b"], ["a", "d"]]
  words, counts = vocab.build_vocab(captions, 2)
  assert words == ["a", "b", "<UNK>"]
  assert counts["a"] == 3 and counts["c"] == 1
  words, _ = vocab.build_vocab(captions, 1)
  assert words == ["a", "b", "c", "d"]  # nothing dropped: no <UNK>
  token_to_idx, idx_to_token = vocab.vocab_dicts(["a", "b", "<UNK>"])
  assert token_to_idx == {"a": 1, "b": 2, "<UNK>": 3}
  assert idx_to_token == {"1": "a", "2": "b", "3": "<UNK>"}
  assert vocab.encode_tokens(["b", "zebra", "a"], token_to_idx, 5) == [2, 3, 1, 0, 0]
  with pytest.raises(ValueError, match="no <UNK>"):
    vocab.encode_tokens(["zebra"], {"a": 1}, 3)


# --- box encoding (§8.3 step 8), numbers worked by hand ------------------------------------

def test_encode_boxes_hand_numbers():
  # 300 x 400 image, canvas 720: s = 1.8.
  boxes, clamped = preprocess.encode_boxes([[1, 1, 100, 50], [11, 21, 15, 7]], [[300, 400]] * 2,
                                           720)
  # x = round(1.8*0 + 1) = 1, w = 180, h = 90 -> (1 + 90, 1 + 45, 180, 90).
  # x = round(1.8*10 + 1) = 19, y = round(1.8*20 + 1) = 37, w = round(27) = 27, h = round(12.6) = 13
  #   -> (19 + 13, 37 + 6, 27, 13).
  np.testing.assert_array_equal(boxes, [[91, 46, 180, 90], [32, 43, 27, 13]])
  assert boxes.dtype == np.int32
  assert clamped.tolist() == [0, 0, 0, 0]


def test_encode_boxes_round_half_away_from_zero():
  # 200-pixel long side, canvas 100: s = 0.5. x = 0.5*3 + 1 = 2.5 -> 3; y = 0.5*1 + 1 = 1.5 -> 2;
  # w = 2.5 -> 3; h = 3.5 -> 4 (Python 3 round would give 2, 2, 2, 4).
  boxes, _ = preprocess.encode_boxes([[4, 2, 5, 7]], [[100, 200]], 100)
  np.testing.assert_array_equal(boxes, [[3 + 1, 2 + 2, 3, 4]])
  np.testing.assert_array_equal(
      preprocess.round_half_away_from_zero([-0.5, -1.5, 0.5, 2.5, 0.49999999999999994]),
      [-1, -2, 1, 3, 0])


def test_encode_boxes_clamping():
  # s = 0.5, canvas 100.
  # x = 0.5*198 + 1 = 100 > 99 -> 99; w = 5 and 99 + 5 > 100 -> w = 1.
  # y = 0.5*(-6) + 1 = -2 -> 1; h = 10.
  # second box: x = round(0.5*(-3) + 1) = round(-0.5) = -1 -> 1; y = 0.5*150 + 1 = 76, h = 30,
  #   76 + 30 > 100 -> h = 24.
  boxes, clamped = preprocess.encode_boxes([[199, -5, 10, 20], [-2, 151, 8, 60]],
                                           [[100, 200]] * 2, 100)
  np.testing.assert_array_equal(boxes, [[99 + 0, 1 + 5, 1, 10], [1 + 2, 76 + 12, 4, 24]])
  assert clamped.tolist() == [1, 0, 1, 1]


def test_encode_boxes_zero_area_kept_negative_rejected():
  boxes, _ = preprocess.encode_boxes([[5, 5, 0, 3]], [[10, 10]], 10)
  np.testing.assert_array_equal(boxes, [[5, 6, 0, 3]])
  with pytest.raises(ValueError, match="negative"):
    preprocess.encode_boxes([[5, 5, -4, 3]], [[10, 10]], 10)


# --- resize sizes (§1.1 step 2) ------------------------------------------------------------

def test_pil_resize_size_and_719_quirk():
  assert images.pil_resize_size(400, 600, 720) == (480, 720)
  assert images.pil_resize_size(156, 100, 720)[0] == 719  # 156 * (720 / 156) = 719.999...
  assert images.pil_resize_size(300, 571, 720)[1] == 719
  # 49 * (64 / 49) = 63.999...; 30 * 1.306 = 39.18.
  assert images.pil_resize_size(49, 30, 64) == (63, 39)
  rgb = np.full((49, 30, 3), 77, np.uint8)
  out = images.resize_long_side_pil(rgb, 64)
  assert out.shape == (63, 39, 3) and (out == 77).all()
  with pytest.raises(ValueError, match="resized to"):
    images.resize_long_side_pil(np.zeros((1, 2000, 3), np.uint8), 720)


# --- end to end on a tiny Visual Genome folder -----------------------------------------------

LONG = " ".join(["word"] * 16)


def _region(phrase, x, y, w, h):
  return {"id": 0, "image": 0, "phrase": phrase, "x": x, "y": y, "width": w, "height": h}


def _save(img, path, fmt="PNG"):
  img.save(path, format=fmt)


@pytest.fixture
def vg(tmp_path):
  """A tiny VG folder: five usable images of different modes plus images preprocess must skip."""
  image_dir = tmp_path / "images"
  image_dir.mkdir()
  _save(Image.new("RGB", (40, 30), (255, 0, 0)), image_dir / "1.jpg")     # RGB, 30 x 40
  _save(Image.new("L", (20, 50), 100), image_dir / "2.jpg")               # grey, 50 x 20
  _save(Image.new("RGBA", (49, 49), (0, 0, 255, 128)), image_dir / "3.jpg")  # RGBA, 49 x 49
  _save(Image.new("CMYK", (16, 16), (0, 0, 0, 0)), image_dir / "4.jpg", "JPEG")  # CMYK white
  _save(Image.fromarray(np.full((10, 20), 65535, np.uint16)), image_dir / "5.jpg")  # 16-bit grey
  _save(Image.new("RGB", (8, 8)), image_dir / "6.jpg")
  regions = [
      {"id": 1, "regions": [_region("A red Car.", 1, 1, 10, 5), _region(LONG, 1, 1, 2, 2),
                            _region("the red car's door", 6, 3, 20, 11)]},
      {"id": 6, "regions": [_region("not in a split", 1, 1, 2, 2)]},
      {"id": 2, "regions": [_region("a car", 2, 2, 5, 5), _region("...", 1, 1, 20, 50)]},
      {"id": 7, "regions": []},
      {"id": 3, "regions": [_region("a zebra", 1, 1, 49, 49)]},
      {"id": 4, "regions": [_region("red red", 3, 3, 4, 4)]},
      {"id": 5, "regions": [_region("caf\u00e9 car", 1, 1, 20, 10)]},
  ]
  splits = {"train": [1, 2, 4, 7], "val": [3, 8], "test": [5]}
  (tmp_path / "regions.json").write_text(json.dumps(regions))
  (tmp_path / "splits.json").write_text(json.dumps(splits))
  return tmp_path


def _run(folder, **kwargs):
  kwargs.setdefault("min_token_instances", 2)
  return preprocess.preprocess(
      str(folder / "regions.json"), str(folder / "images"), str(folder / "splits.json"),
      str(folder / "out.h5"), str(folder / "out.json"), image_size=64, num_workers=2,
      progress=False, log=lambda line: None, **kwargs)


def test_hdf5_layout(vg):
  counts = _run(vg)
  kept_tokens = [["a", "red", "car"], ["the", "red", "cars", "door"], ["a", "car"], [],
                 ["a", "zebra"], ["red", "red"], ["cafe", "car"]]
  # Words seen at least twice: a (3), car (3), red (4); the others map to <UNK>.
  expected_vocab = ["a", "car", "red", "<UNK>"]
  with h5py.File(vg / "out.h5", "r") as f:
    assert set(f.keys()) == {
        "images", "image_heights", "image_widths", "original_heights", "original_widths", "split",
        "labels", "lengths", "boxes", "img_to_first_box", "img_to_last_box", "box_to_img"}
    n, m = 5, 7
    expected = {
        "images": (np.uint8, (n, 3, 64, 64)), "image_heights": (np.int32, (n,)),
        "image_widths": (np.int32, (n,)), "original_heights": (np.int32, (n,)),
        "original_widths": (np.int32, (n,)), "split": (np.float64, (n,)),
        "labels": (np.int32, (m, 15)), "lengths": (np.int32, (m,)), "boxes": (np.int32, (m, 4)),
        "img_to_first_box": (np.int32, (n,)), "img_to_last_box": (np.int32, (n,)),
        "box_to_img": (np.int32, (m,)),
    }
    for name, (dtype, shape) in expected.items():
      assert f[name].dtype == dtype, name
      assert f[name].shape == shape, name
    d = {name: f[name][()] for name in f}
  # Input order kept; image 6 (no split), 7 (no regions) dropped.
  np.testing.assert_array_equal(d["original_heights"], [30, 50, 49, 16, 10])
  np.testing.assert_array_equal(d["original_widths"], [40, 20, 49, 16, 20])
  np.testing.assert_array_equal(d["image_heights"], [48, 64, 63, 64, 32])  # 63: §1.1 quirk
  np.testing.assert_array_equal(d["image_widths"], [64, 25, 63, 64, 64])
  np.testing.assert_array_equal(d["split"], [0, 0, 1, 0, 2])
  np.testing.assert_array_equal(d["img_to_first_box"], [1, 3, 5, 6, 7])
  np.testing.assert_array_equal(d["img_to_last_box"], [2, 4, 5, 6, 7])
  np.testing.assert_array_equal(d["box_to_img"], [1, 1, 2, 2, 3, 4, 5])
  np.testing.assert_array_equal(d["lengths"], [len(t) for t in kept_tokens])
  ids = {t: i + 1 for i, t in enumerate(expected_vocab)}
  for row, tokens in zip(d["labels"], kept_tokens):
    want = [ids.get(t, ids["<UNK>"]) for t in tokens]
    np.testing.assert_array_equal(row, want + [0] * (15 - len(want)))
  # Image 1, s = 1.6: (1, 1, 10, 5) -> x = y = 1, w = 16, h = 8 -> (9, 5, 16, 8);
  # (6, 3, 20, 11) -> x = round(9) = 9, y = round(4.2) = 4, w = 32, h = round(17.6) = 18.
  np.testing.assert_array_equal(d["boxes"][:2], [[9, 5, 16, 8], [9 + 16, 4 + 9, 32, 18]])
  # BGR, top-left aligned, zero padded.
  img = d["images"]
  assert (img[0, 2, :48, :64] == 255).all() and (img[0, :2, :48, :64] == 0).all()
  assert (img[0, :, 48:, :] == 0).all()
  assert (img[1, :, :64, :25] == 100).all() and (img[1, :, :, 25:] == 0).all()
  assert (img[2, 0, :63, :63] == 255).all() and (img[2, 1:, :63, :63] == 0).all()  # alpha dropped
  assert (img[2, :, 63:, :] == 0).all() and (img[2, :, :, 63:] == 0).all()
  assert (img[3] >= 250).all()  # CMYK white
  assert (img[4, :, :32, :] == 255).all() and (img[4, :, 32:, :] == 0).all()  # 16-bit grey
  info = json.loads((vg / "out.json").read_text())
  assert (vg / "out.json").read_text().count("\n") == 0
  assert info["idx_to_token"] == {str(i + 1): t for i, t in enumerate(expected_vocab)}
  assert info["token_to_idx"] == ids
  assert info["idx_to_filename"] == {str(i): f"{i}.jpg" for i in range(1, 6)}
  assert info["filename_to_idx"] == {"1.jpg": 1, "2.jpg": 2, "3.jpg": 3, "4.jpg": 4, "5.jpg": 5}
  assert counts["images_not_in_a_split"] == 1
  assert counts["images_without_regions"] == 1
  assert counts["split_ids_without_region_data"] == 1
  assert counts["regions_dropped_by_length"] == 1
  assert counts["regions_with_empty_caption"] == 1
  assert not [p for p in os.listdir(vg) if p.endswith(".tmp")]


def test_max_images_and_max_token_length(vg):
  counts = _run(vg, max_images=2, max_token_length=3)
  with h5py.File(vg / "out.h5", "r") as f:
    assert f["images"].shape == (2, 3, 64, 64)
    assert f["labels"].shape == (3, 3)  # "the red car's door" (4 words) and LONG dropped
    np.testing.assert_array_equal(f["lengths"][()], [3, 2, 0])
  assert counts["images_beyond_max_images"] == 3
  assert counts["regions_dropped_by_length"] == 2


def test_max_token_length_zero_drops_everything(vg):
  with pytest.raises(ValueError, match="no region left.*0 drops every region"):
    _run(vg, max_token_length=0)
  assert not os.path.exists(vg / "out.h5")


def test_errors_are_one_line_and_leave_no_output(vg):
  os.remove(vg / "images" / "3.jpg")
  with pytest.raises(ValueError, match=r"1 of 5 images are missing, e.g. .*3\.jpg"):
    _run(vg)
  (vg / "images" / "3.jpg").write_bytes(b"not an image")
  with pytest.raises(ValueError, match=r"cannot read image .*3\.jpg"):
    _run(vg)
  assert not os.path.exists(vg / "out.h5") and not os.path.exists(vg / "out.json")
  assert not [p for p in os.listdir(vg) if p.endswith(".tmp")]


def test_bad_json_inputs(vg):
  regions = json.loads((vg / "regions.json").read_text())
  regions[0]["regions"][0]["x"] = "abc"
  (vg / "regions.json").write_text(json.dumps(regions))
  with pytest.raises(ValueError, match="image 1, region 0: field 'x' must be a finite number"):
    _run(vg)
  regions[0]["regions"][0]["x"] = 1
  regions[0]["regions"][0]["phrase"] = "na\u00efve"
  (vg / "regions.json").write_text(json.dumps(regions))
  with pytest.raises(ValueError, match="image 1, region 0: non-ASCII"):
    _run(vg)
  (vg / "regions.json").write_bytes(b"[{\"id\": 1, \"regions\": [\xff]}]")
  with pytest.raises(ValueError, match="not valid UTF-8"):
    _run(vg)
  (vg / "regions.json").write_text("[{\"id\": 1,")
  with pytest.raises(ValueError, match="not valid JSON"):
    _run(vg)
  (vg / "regions.json").write_text(json.dumps([{"id": 1, "regions": []}]))
  (vg / "splits.json").write_text(json.dumps({"train": [1], "val": [1]}))
  with pytest.raises(ValueError, match="more than one split"):
    _run(vg)
  (vg / "splits.json").write_text(json.dumps({"training": [1]}))
  with pytest.raises(ValueError, match="unknown split 'training'"):
    _run(vg)


def test_cli(vg, capsys):
  argv = ["--region_data", str(vg / "regions.json"), "--image_dir", str(vg / "images"),
          "--split_json", str(vg / "splits.json"), "--h5_output", str(vg / "cli.h5"),
          "--json_output", str(vg / "cli.json"), "--image_size", "64", "--min_token_instances", "2",
          "--num_workers", "3"]
  preprocess_command.main(argv)
  assert "images_kept: 5" in capsys.readouterr().out
  with h5py.File(vg / "cli.h5", "r") as f:
    assert f["images"].shape == (5, 3, 64, 64)
  with pytest.raises(SystemExit,
                     match=r"^preprocess: error: region data not found: .*missing\.json$"):
    preprocess_command.main(argv[:1] + [str(vg / "missing.json")] + argv[2:])


def test_defaults_match_the_original():
  args = preprocess_command.parse_args([])
  assert (args.region_data, args.image_dir, args.split_json) == (
      "data/visual-genome/region_descriptions.json", "data/visual-genome/images",
      "info/densecap_splits.json")
  assert (args.h5_output, args.json_output) == ("data/VG-regions.h5", "data/VG-regions-dicts.json")
  assert (args.image_size, args.max_token_length, args.min_token_instances, args.num_workers,
          args.max_images) == (720, 15, 15, 5, -1)
