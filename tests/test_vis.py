"""Tests for densecap_jax.vis.draw_results against hand-worked pixels of vis_utils.lua."""

import numpy as np
import pytest
from PIL import Image

from densecap_jax import vis

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
