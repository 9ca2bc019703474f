"""Tests for densecap_jax.vis: draw_results against hand-worked pixels of vis_utils.lua,
draw_labelled's readable labels, and the drawings of the predict command."""

import json

import numpy as np
import photos as photos_lib
import pytest
from PIL import Image
import small_model

from densecap_jax.commands import predict
from densecap_jax import vis
from densecap_jax.data import images as images_lib
from densecap_jax.data import image_stream
from densecap_jax.ops import boxes as boxes_lib

BLUE = (42, 75, 215)
DARK_GRAY = (87, 87, 87)
BLACK = (0, 0, 0)
RED = (173, 35, 25)
GREY_BACKGROUND = (100, 110, 120)


def _canvas(height, width, color=GREY_BACKGROUND):
  pixels = np.empty((height, width, 3), np.uint8)
  pixels[...] = color
  return pixels


def _painted(before, after):
  """``(H, W)`` mask of pixels that changed."""
  return np.any(np.asarray(before) != np.asarray(after), axis=-1)


def test_palette_follows_lua_one_based_rule():
  # Lua box i (1-based) takes WAD_COLORS[i % 13 + 1]: box 1 -> 2nd colour (blue),
  # box 2 -> dark gray, box 12 -> 13th (black), box 13 -> 1st (red), box 14 -> blue.
  assert len(vis.WAD_COLORS) == 13
  assert vis.box_color(0) == BLUE
  assert vis.box_color(1) == DARK_GRAY
  assert vis.box_color(11) == BLACK
  assert vis.box_color(12) == RED
  assert vis.box_color(13) == BLUE


def test_first_boxes_drawn_in_palette_order():
  # 14 boxes, one per column of 10 px: 1-based x = 10k + 3, y = 3, w = 4, h = 4.
  image = _canvas(12, 140)
  boxes = [[10 * k + 3, 3, 4, 4] for k in range(14)]
  drawn = np.asarray(vis.draw_results(image, boxes, [""] * 14, num_to_draw=14, box_width=1))
  # The top band of box k covers 1-based row 2..4, so 0-based (row 2, column 10k + 2).
  got = [tuple(drawn[2, 10 * k + 2]) for k in range(14)]
  assert got[0] == BLUE and got[1] == DARK_GRAY and got[11] == BLACK
  assert got[12] == RED and got[13] == BLUE
  assert got == [vis.WAD_COLORS[(k + 1) % 13] for k in range(14)]


def test_outline_bands_hand_worked():
  # 16 x 20 image, box x=5, y=4, w=8, h=6, box_width=1. 1-based inclusive bands:
  #   top    rows 3..5,   cols 4..14      bottom rows 9..11, cols 4..14
  #   left   rows 3..11,  cols 4..6       right  rows 3..11, cols 12..14
  # 0-based: subtract one from each bound.
  image = _canvas(16, 20)
  drawn = np.asarray(vis.draw_results(image, [[5, 4, 8, 6]], [""], box_width=1))
  expected = np.zeros((16, 20), bool)
  expected[2:5, 3:14] = True
  expected[8:11, 3:14] = True
  expected[2:11, 3:6] = True
  expected[2:11, 11:14] = True
  np.testing.assert_array_equal(_painted(image, drawn), expected)
  assert (drawn[expected] == BLUE).all()


def test_fractional_box_truncates_clamped_bounds():
  # x=5.6, y=4.5, w=8.2, h=5.7, box_width=1 -> 1-based bands (bounds truncated):
  #   top rows 3.5..5.5 -> 3..5, cols 4.6..14.8 -> 4..14
  #   bottom rows 9.2..11.2 -> 9..11; left cols 4.6..6.6 -> 4..6; right cols 12.8..14.8 -> 12..14
  #   rows of the sides 3.5..11.2 -> 3..11
  image = _canvas(16, 20)
  drawn = np.asarray(vis.draw_results(image, [[5.6, 4.5, 8.2, 5.7]], [""], box_width=1))
  expected = np.zeros((16, 20), bool)
  expected[2:5, 3:14] = True
  expected[8:11, 3:14] = True
  expected[2:11, 3:6] = True
  expected[2:11, 11:14] = True
  np.testing.assert_array_equal(_painted(image, drawn), expected)


def test_outline_clamped_at_image_borders():
  # 16 x 20 image, box x=-3, y=-2, w=10, h=50, box_width=2 (default):
  #   top    rows -4..0  -> 1..1,   cols -5..9 -> 1..9
  #   bottom rows 46..50 -> 16..16, cols 1..9
  #   left   rows -4..50 -> 1..16,  cols -5..-1 -> 1..1
  #   right  rows 1..16,            cols 5..9
  image = _canvas(16, 20)
  drawn = np.asarray(vis.draw_results(image, [[-3, -2, 10, 50]], [""]))
  expected = np.zeros((16, 20), bool)
  expected[0, 0:9] = True
  expected[15, 0:9] = True
  expected[:, 0] = True
  expected[:, 4:9] = True
  np.testing.assert_array_equal(_painted(image, drawn), expected)


def test_box_beyond_right_and_bottom_draws_on_last_pixels():
  # x=30 > W=20: every column bound clamps to 20, so only 0-based column 19 changes;
  # y=2, h=3, box_width=1 -> rows 1..6 (top 1..3, bottom 4..6, sides 1..6).
  image = _canvas(16, 20)
  drawn = np.asarray(vis.draw_results(image, [[30, 2, 4, 3]], [""], box_width=1))
  expected = np.zeros((16, 20), bool)
  expected[0:6, 19] = True
  np.testing.assert_array_equal(_painted(image, drawn), expected)


def test_caption_drawn_in_box_colour_from_its_anchor():
  # Box x=11, y=21, box_width=2: the caption starts at 0-based (14, 24).
  image = _canvas(100, 200, (0, 0, 0))
  box = [11, 21, 170, 70]
  outline_only = np.asarray(vis.draw_results(image, [box], [""]))
  drawn = np.asarray(vis.draw_results(image, [box], ["hello there"]))
  text = _painted(outline_only, drawn)
  rows, cols = np.nonzero(text)
  assert text.sum() > 30
  assert rows.min() >= 24 and cols.min() >= 14
  assert rows.max() < 24 + 16  # one line, 8 * text_size pixels high
  assert (drawn[text] == BLUE).all()  # no anti-aliasing: every text pixel is the colour


def test_text_size_scales_caption():
  image = _canvas(100, 300, (0, 0, 0))
  box = [11, 11, 280, 80]
  outline_only = np.asarray(vis.draw_results(image, [box], [""]))
  small = _painted(outline_only, np.asarray(vis.draw_results(image, [box], ["hello"], text_size=1)))
  large = _painted(outline_only, np.asarray(vis.draw_results(image, [box], ["hello"], text_size=3)))
  width = lambda mask: np.ptp(np.nonzero(mask)[1])
  assert width(large) > 2 * width(small)


def test_long_caption_wraps_to_left_border():
  image = _canvas(60, 80, (0, 0, 0))
  box = [41, 3, 30, 50]
  outline_only = np.asarray(vis.draw_results(image, [box], [""], box_width=0))
  drawn = np.asarray(vis.draw_results(image, [box], ["wrap wrap wrap"], box_width=0))
  rows, cols = np.nonzero(_painted(outline_only, drawn))
  # First line from column 42; the continuation starts at column 0 one line (16 px) lower.
  assert cols.min() < 10
  assert rows[cols < 10].min() >= 4 + 16 - 4


def test_black_box_caption_hidden_like_the_original():
  # The 12th box is black; the original composites non-zero text pixels only.
  image = _canvas(40, 400, (200, 200, 200))
  boxes = [[30 * k + 2, 2, 20, 30] for k in range(12)]
  captions = ["xx"] * 12
  drawn_default = np.asarray(vis.draw_results(image, boxes, captions, num_to_draw=12, box_width=0))
  drawn_clean = np.asarray(vis.draw_results(image, boxes, captions, num_to_draw=12, box_width=0,
                                            hide_black_captions=False))
  # Interior of the black box (0-based rows 2..30, cols 333..351): untouched by default.
  interior = (slice(3, 30), slice(333, 351))
  assert (drawn_default[interior] == 200).all()
  assert (drawn_clean[interior] == 0).all(axis=-1).any()


def test_input_not_modified():
  array = _canvas(30, 40)
  array_copy = array.copy()
  pil = Image.fromarray(array_copy.copy())
  for image in (array, pil):
    out = vis.draw_results(image, [[5, 5, 20, 15]], ["a cat"])
    assert isinstance(out, Image.Image) and out.size == (40, 30) and out.mode == "RGB"
  np.testing.assert_array_equal(array, array_copy)
  np.testing.assert_array_equal(np.asarray(pil), array_copy)


def test_num_to_draw_respected():
  image = _canvas(12, 60)
  boxes = [[10 * k + 3, 3, 4, 4] for k in range(5)]
  drawn = np.asarray(vis.draw_results(image, boxes, ["", "", "", "", ""], num_to_draw=3,
                                      box_width=1))
  painted = _painted(image, drawn)
  assert painted[:, 0:30].any()
  assert not painted[:, 30:].any()
  assert np.asarray(vis.draw_results(image, boxes, [""] * 5, num_to_draw=0)).tolist() == (
      image.tolist())


def test_non_rgb_pil_image_converted():
  grey = Image.new("L", (20, 10), 50)
  out = vis.draw_results(grey, [[3, 3, 5, 4]], [""], box_width=0)
  assert out.mode == "RGB" and tuple(np.asarray(out)[2, 2]) == BLUE


@pytest.mark.parametrize("kwargs, message", [
    (dict(image=np.zeros((4, 4), np.uint8)), "uint8 array"),
    (dict(image=np.zeros((4, 4, 3), np.float32)), "uint8 array"),
    (dict(boxes=[[1, 2, 3]]), "shape \\(N, 4\\)"),
    (dict(boxes=[[1, np.nan, 3, 4]]), "NaN"),
    (dict(captions=["a", "b"]), "1 boxes but 2 captions"),
])
def test_bad_input_raises_one_line_error(kwargs, message):
  args = dict(image=_canvas(10, 10), boxes=[[1, 1, 3, 3]], captions=["a"])
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    vis.draw_results(args["image"], args["boxes"], args["captions"])


def test_save_image_atomic(tmp_path):
  image = Image.fromarray(_canvas(8, 9))
  path = tmp_path / "out" / "picture.png"
  vis.save_image_atomic(image, str(path))
  np.testing.assert_array_equal(np.asarray(Image.open(path)), _canvas(8, 9))
  assert [p.name for p in path.parent.iterdir()] == ["picture.png"]
  vis.save_image_atomic(_canvas(8, 9, (1, 2, 3)), str(path))
  assert tuple(np.asarray(Image.open(path))[0, 0]) == (1, 2, 3)
  with pytest.raises(ValueError, match="unknown image file extension"):
    vis.save_image_atomic(image, str(tmp_path / "picture.notanimage"))
  assert not (tmp_path / "picture.notanimage").exists()


# draw_labelled: readable drawings on the picture at its own size.

CAPTION = "a large striped orange circle"
WHITE = (255, 255, 255)


class TenPixelFont:
  """A font whose every character is 10 pixels wide, for hand-worked wrapping."""

  def getlength(self, text):
    return 10.0 * len(text)


@pytest.mark.parametrize("caption, max_width, lines", [
    # 10 px a character: "a large" is 70 px, "a large striped" 150 px.
    (CAPTION, 100, ["a large", "striped", "orange", "circle"]),
    (CAPTION, 150, ["a large striped", "orange circle"]),
    (CAPTION, 290, [CAPTION]),
    ("a  red\ncar ", 1000, ["a red car"]),
    # A word wider than a line gets a line of its own, cut to fit with the ellipsis:
    # 9 letters + the ellipsis = 100 px.
    ("a supercalifragilistic cat", 100, ["a", "supercali\u2026", "cat"]),
    ("abc", 15, ["\u2026"]),  # not even "a\u2026" (20 px) fits
    ("", 100, []),
    ("  ", 100, []),
])
def test_wrap_caption_breaks_lines_only_between_words(caption, max_width, lines):
  got = vis.wrap_caption(caption, TenPixelFont(), max_width)
  assert got == lines
  for line in got:
    assert 10 * len(line) <= max_width or line == "\u2026"


def test_wrap_caption_never_splits_a_word_that_fits():
  # The original breaks "a large striped orange circle" mid-word at the border
  # ("a large striped orange cir" / "cle"); every word here fits a line.
  font = vis._label_font(16)
  for max_width in range(80, 400, 7):
    lines = vis.wrap_caption(CAPTION, font, max_width)
    assert " ".join(lines).split() == CAPTION.split()
    assert all(font.getlength(line) <= max_width for line in lines)


def _ink(drawn, background):
  """``(H, W)`` mask of caption text: pixels neither the canvas grey nor the label colour."""
  drawn = np.asarray(drawn)
  return ~(np.all(drawn == GREY_BACKGROUND, axis=-1) | np.all(drawn == background, axis=-1))


@pytest.mark.parametrize("box", [
    [1, 1, 30, 20], [131, 1, 30, 20], [1, 101, 30, 20], [131, 101, 30, 20],  # corners
    [66, 1, 30, 20], [66, 101, 30, 20], [1, 50, 30, 20], [131, 50, 30, 20],  # edges
    [-15, -12, 30, 20], [150, 112, 30, 20],  # partly outside
    [200, 50, 30, 20],  # wholly outside, beyond the right border
])
def test_label_lies_wholly_inside_the_picture(box):
  # 120 x 160 picture: the caption wraps to 0.4 * 160 = 64 px, about 3 lines.
  # Drawn whole, it shows as many text pixels as the same box drawn in the middle.
  image = _canvas(120, 160)
  reference = _ink(vis.draw_labelled(image, [[66, 50, 30, 20]], [CAPTION]), BLUE)
  drawn = vis.draw_labelled(image, [box], [CAPTION])
  ink = _ink(drawn, BLUE)
  assert reference.sum() > 100
  assert ink.sum() == reference.sum()
  font = vis._label_font(vis.text_pixels((120, 160), 2))
  band = vis.outline_half_width((120, 160), 2)
  [(left, top, width, height, lines)] = vis.layout_labels((120, 160), [box], [CAPTION], font,
                                                          box_width=band)
  assert 0 <= left and left + width <= 160 and 0 <= top and top + height <= 120
  assert " ".join(lines) == CAPTION and len(lines) > 1
  rows, cols = np.nonzero(ink)
  assert rows.min() >= top and rows.max() < top + height
  assert cols.min() >= left and cols.max() < left + width


def _contrast(a, b):
  """WCAG contrast ratio of two sRGB colours, from the WCAG 2 definitions."""
  def luminance(color):
    c = np.asarray(color, np.float64) / 255
    c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]
  high, low = sorted((luminance(a), luminance(b)), reverse=True)
  return (high + 0.05) / (low + 0.05)


def test_label_text_contrasts_with_its_background():
  # One box per palette colour, 100 px apart. Each label is filled with its box's
  # colour; its text is the pixel furthest from it in contrast. WCAG asks 4.5 of text.
  image = _canvas(80, 1300)
  boxes = [[100 * k + 11, 31, 80, 40] for k in range(13)]
  captions = ["ab"] * 13
  drawn = np.asarray(vis.draw_labelled(image, boxes, captions, num_to_draw=13))
  font = vis._label_font(vis.text_pixels((80, 1300), 2))
  labels = vis.layout_labels((80, 1300), boxes, captions, font,
                             box_width=vis.outline_half_width((80, 1300), 2))
  text_colors = []
  for k, (left, top, width, height, _) in enumerate(labels):
    patch = drawn[top:top + height, left:left + width].reshape(-1, 3)
    colors, counts = np.unique(patch, axis=0, return_counts=True)
    background = tuple(colors[counts.argmax()])
    assert background == vis.box_color(k)
    text = max(map(tuple, colors), key=lambda c: _contrast(c, background))
    assert _contrast(text, background) >= 4.5
    text_colors.append(text)
  # Hand-checked: white on the blue first box and the black 12th, black on yellow (10th).
  assert text_colors[0] == WHITE and text_colors[11] == WHITE
  assert text_colors[9] == BLACK


def test_labels_of_overlapping_boxes_do_not_overlap():
  # Two nearly coincident boxes: the second label goes inside its box, not over the first.
  font = vis._label_font(16)
  boxes = [[50, 60, 100, 60], [53, 63, 100, 60]]
  labels = vis.layout_labels((300, 300), boxes, ["a red circle", "a blue square"], font,
                             box_width=2)
  (l0, t0, w0, h0, _), (l1, t1, w1, h1, _) = labels
  assert t0 + h0 == 60 - 1 - 2  # above the first box's outline (0-based top 57)
  assert t1 == 63 - 1 - 2  # the second, inside its box's top-left corner
  assert t0 + h0 <= t1 or t1 + h1 <= t0 or l0 + w0 <= l1 or l1 + w1 <= l0


def test_outline_and_text_scale_with_the_picture():
  # box_width 2 on the picture scaled to a 720-pixel long side: 2 * round(2 * s) + 1 rows.
  for (height, width), thickness in (((1000, 1440), 9), ((540, 720), 5), ((300, 360), 3)):
    image = _canvas(height, width)
    drawn = vis.draw_labelled(image, [[101, 101, 150, 100]], [""])
    painted = _painted(image, drawn)
    assert painted[:, 175].sum() == 2 * thickness  # top and bottom bands, through the middle
  assert [vis.outline_half_width(size, 2) for size in ((1000, 1440), (300, 360), (120, 160))] == [
      4, 1, 0]
  assert vis.text_pixels((1000, 1440), 2) == 32  # 16 px on the 720-pixel picture, doubled
  assert vis.text_pixels((540, 720), 2) == 16
  assert vis.text_pixels((300, 360), 2) == vis.MIN_TEXT_PIXELS  # 8 px, too small to read
  assert vis.text_pixels((400, 4000), 1) == 44


def test_draw_labelled_keeps_size_and_input():
  array = _canvas(90, 70)
  array_copy = array.copy()
  out = vis.draw_labelled(array, [[5, 5, 40, 30], [20, 30, 40, 50]], ["a cat", ""])
  assert isinstance(out, Image.Image) and out.size == (70, 90) and out.mode == "RGB"
  np.testing.assert_array_equal(array, array_copy)
  assert np.asarray(vis.draw_labelled(array, [[5, 5, 40, 30]], ["a cat"],
                                      num_to_draw=0)).tolist() == array.tolist()


@pytest.mark.parametrize("kwargs, message", [
    (dict(image=np.zeros((4, 4), np.uint8)), "draw_labelled: image must be"),
    (dict(boxes=[[1, 2, 3]]), "draw_labelled: boxes must have shape \\(N, 4\\)"),
    (dict(boxes=[[1, np.inf, 3, 4]]), "NaN or infinite"),
    (dict(captions=["a", "b"]), "1 boxes but 2 captions"),
])
def test_draw_labelled_bad_input_raises_one_line_error(kwargs, message):
  args = dict(image=_canvas(10, 10), boxes=[[1, 1, 3, 3]], captions=["a"])
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    vis.draw_labelled(args["image"], args["boxes"], args["captions"])


# The predict command's drawings (--output_dir), with a small random model.


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return small_model.save_random_tiny_model(tmp_path_factory.mktemp("model") / "m",
                                            [None, "a", "red", "circle", "square", "blue"],
                                            image_size=64)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """A 120 x 60 (H x W) PNG and a phone portrait stored sideways (upright 640 x 427)."""
  folder = tmp_path_factory.mktemp("inputs")
  rows, cols = np.mgrid[0:120, 0:60]
  rgb = np.stack([rows * 2, cols * 4, (rows + cols) % 256], axis=-1).astype(np.uint8)
  Image.fromarray(rgb).save(folder / "b.png")
  _, upright = photos_lib.phone_portrait(str(folder / "portrait.jpg"))
  return folder, rgb, upright


def _run_predict(model_dir, folder, tmp_path, *flags):
  vis_dir, drawn_dir = tmp_path / "vis", tmp_path / "drawn"
  predict.main(["--input_dir", str(folder), "--checkpoint", model_dir, "--output_vis_dir",
                str(vis_dir), "--output_dir", str(drawn_dir), *flags])
  with open(vis_dir / "results.json") as f:
    results = {r["img_name"]: r for r in json.load(f)["results"]}
  return vis_dir, drawn_dir, results


def test_cli_draws_on_each_image_at_its_own_size(model_dir, inputs, tmp_path):
  folder, rgb, upright = inputs
  vis_dir, drawn_dir, results = _run_predict(model_dir, folder, tmp_path)
  # b.png: 120 x 60 drawn at 120 x 60 (the resized image is 64 x 32), boxes scaled by 120 / 64.
  resized_size = Image.open(vis_dir / "b.png").size[::-1]
  assert resized_size == (64, 32)
  drawn = Image.open(drawn_dir / "b.png")
  assert drawn.size == (60, 120)
  r = results["b.png"]
  assert r["boxes"]
  want = vis.draw_labelled(rgb, boxes_lib.to_image(r["boxes"], (120, 60), resized_size),
                           r["captions"])
  np.testing.assert_array_equal(np.asarray(drawn), np.asarray(want))
  # The portrait is drawn upright, at its own 640 x 427 (H x W), not as stored (427 x 640).
  drawn = np.asarray(Image.open(drawn_dir / "portrait.jpg").convert("RGB"), np.int16)
  assert drawn.shape == upright.shape == (640, 427, 3)
  assert np.median(np.abs(drawn - upright)) <= 4  # the photo itself, up to JPEG and the boxes


def test_cli_draw_on_resized_is_the_original_drawing(model_dir, inputs, tmp_path):
  folder, _, _ = inputs
  vis_dir, drawn_dir, results = _run_predict(model_dir, folder, tmp_path, "--draw_on", "resized",
                                             "--box_width", "1", "--text_size", "1")
  resized = Image.open(vis_dir / "b.png")
  drawn = Image.open(drawn_dir / "b.png")
  assert drawn.size == resized.size == (32, 64)
  r = results["b.png"]
  want = vis.draw_results(resized, r["boxes"], r["captions"], box_width=1, text_size=1)
  np.testing.assert_array_equal(np.asarray(drawn), np.asarray(want))
  assert Image.open(drawn_dir / "portrait.jpg").size == Image.open(vis_dir / "portrait.jpg").size


def test_draw_reads_images_resized_on_the_host_again(inputs):
  # With --preprocess host only the resized image is kept: the picture is decoded
  # again from its file, upright. Boxes in the 64 x 43 resized image scale by 640 / 64.
  folder, _, upright = inputs
  path = str(folder / "portrait.jpg")
  prepared = image_stream.PreparedImage(np.zeros((64, 43, 3), np.float32),
                                     np.zeros((64, 43, 3), np.uint8), (640, 427))
  result = {"boxes": np.array([[3, 5, 20, 30]], np.float32), "captions": ["a red circle"]}
  args = predict.parse_args(["--input_image", path])
  drawn = predict.draw(prepared, result, path, args)
  assert drawn.size == (427, 640)
  want = vis.draw_labelled(images_lib.user_rgb(path), [[21, 41, 200, 300]], ["a red circle"])
  np.testing.assert_array_equal(np.asarray(drawn), np.asarray(want))
  assert np.median(np.abs(np.asarray(drawn, np.int16) - upright)) <= 4
  args = predict.parse_args(["--input_image", path, "--draw_on", "resized"])
  assert predict.draw(prepared, result, path, args).size == (43, 64)
