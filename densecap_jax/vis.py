"""Drawing detections onto images and writing the results viewer page.

``draw_labelled`` draws boxes and captions readably on a picture of any size
(the image at its own size): captions wrapped at spaces on labels of the box
colour, with black or white text, kept inside the picture and apart.
``draw_results`` bakes them in the way the released ``vis_utils.densecap_draw``
does on the resized image (reference §10.3). ``write_viewer`` writes the
static results browser (``viewer/view_results.html``, reference §10.4) with its
data into one folder that opens from disk with no network access.

Boxes are xywh in 1-based pixel coordinates of the image they are drawn on
(reference §0.2): the top-left pixel is ``(x, y)``, 0-based ``(x - 1, y - 1)``.
"""

import importlib.resources
import json
import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from densecap_jax.files import atomic_output

# The 13 colours of vis_utils.lua, in its order (red, blue, dark gray, green,
# brown, light green, light blue, cyan, orange, yellow, tan, pink, black).
WAD_COLORS = (
    (173, 35, 25),
    (42, 75, 215),
    (87, 87, 87),
    (29, 105, 20),
    (129, 74, 25),
    (129, 197, 122),
    (157, 175, 255),
    (41, 208, 208),
    (255, 146, 51),
    (255, 238, 51),
    (233, 222, 187),
    (255, 205, 243),
    (0, 0, 0),
)

VIEWER_PAGE = "view_results.html"
VIEWER_FILES = (VIEWER_PAGE, "viewer.js", "viewer.css", "boxes.js", "boxes.css")
RESULT_FIELDS = ("boxes", "scores", "captions", "img_name")

# image.drawText draws 6 x 8 pixel character cells scaled by the text size.
_CELL_HEIGHT = 8

# draw_labelled measures box_width and text_size on the picture scaled to this
# long side, the image_size of the original's released model (reference §1.2),
# so a drawing looks alike whichever model made it and whatever the picture's size.
REFERENCE_LONG_SIDE = 720
MIN_TEXT_PIXELS = 12  # smallest caption font size of draw_labelled, in pixels
WRAP_FRACTION = 0.4  # labels may be as wide as their box or this part of the picture


def box_color(index):
  """RGB colour of the box at 0-based ``index`` in score order.

  vis_utils.lua gives 1-based box ``i`` the 1-based colour ``i % 13 + 1``, so the
  first box is blue and red comes thirteenth (reference §10.3).
  """
  return WAD_COLORS[(index + 1) % len(WAD_COLORS)]


def draw_results(image, boxes_xywh, captions, *, num_to_draw=10, box_width=2, text_size=2,
                 hide_black_captions=True):
  """Draws the first ``num_to_draw`` boxes and their captions onto a copy of ``image``.

  Reproduces ``vis_utils.densecap_draw`` (reference §10.3): box ``i`` (0-based)
  gets ``box_color(i)``; its outline is four bands ``2 * box_width + 1`` pixels
  thick centred on the edges ``x``, ``x + w``, ``y``, ``y + h`` and clamped to
  the image; its caption starts at 0-based pixel
  ``(x + box_width + 1, y + box_width + 1)`` (truncated) in the box colour,
  wrapping to the left border when a character would cross the right border.
  Captions are drawn after all boxes, later ones over earlier ones, in Pillow's
  bundled font without anti-aliasing (the original scales a 6 x 8 bitmap font).
  Characters falling outside the image are clipped (the original stops a
  caption at its first such pixel).

  Args:
    image: PIL image (converted to RGB) or ``(H, W, 3)`` uint8 RGB array; not modified.
    boxes_xywh: ``(N, 4)`` float xywh boxes, 1-based, in the image's pixels, in
      score order.
    captions: ``N`` strings.
    num_to_draw: how many of the first boxes to draw.
    box_width: half-thickness of the outline bands, in pixels.
    text_size: caption scale; text lines are ``8 * text_size`` pixels apart.
    hide_black_captions: the original composites text per colour channel where
      the text is non-zero, so captions of black boxes (the 12th, 25th, ...)
      never show; ``False`` draws them in black (reference §10.3).

  Returns:
    ``PIL.Image`` in RGB mode, the same size as ``image``.
  """
  pixels = _rgb_pixels(image)
  boxes = _checked_boxes(boxes_xywh)
  if len(captions) != len(boxes):
    raise ValueError(f"draw_results: got {len(boxes)} boxes but {len(captions)} captions")
  text_layer = Image.new("RGB", (pixels.shape[1], pixels.shape[0]))
  text_mask = Image.new("L", text_layer.size)
  text_draw, mask_draw = ImageDraw.Draw(text_layer), ImageDraw.Draw(text_mask)
  text_draw.fontmode = mask_draw.fontmode = "1"  # no anti-aliasing, as the original's bitmap font
  font = _caption_font(text_size)
  line_height = _CELL_HEIGHT * text_size
  for i in range(min(num_to_draw, len(boxes))):
    color = box_color(i)
    _draw_outline(pixels, boxes[i], color, box_width)
    origin = (math.trunc(boxes[i, 0] + box_width + 1), math.trunc(boxes[i, 1] + box_width + 1))
    for x, y, text in _caption_runs(captions[i], origin, pixels.shape[1], font, line_height):
      text_draw.text((x, y), text, fill=color, font=font)
      mask_draw.text((x, y), text, fill=255, font=font)
  text = np.asarray(text_layer)
  if hide_black_captions:  # per-channel "text != 0" compositing hides black text (§10.3)
    written = text != 0
  else:
    written = np.broadcast_to((np.asarray(text_mask) != 0)[..., None], text.shape)
  pixels[written] = text[written]
  return Image.fromarray(pixels)


def _rgb_pixels(image, caller="draw_results"):
  """A writable ``(H, W, 3)`` uint8 copy of a PIL image or an RGB uint8 array."""
  if isinstance(image, Image.Image):
    return np.array(image.convert("RGB"))
  pixels = np.asarray(image)
  if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
    raise ValueError(f"{caller}: image must be a PIL image or an (H, W, 3) uint8 array, "
                     f"got shape {pixels.shape} dtype {pixels.dtype}")
  return pixels.copy()


def _checked_boxes(boxes_xywh, caller="draw_results"):
  """``(N, 4)`` float64 array of finite boxes, or a ValueError naming the problem."""
  boxes = np.asarray(boxes_xywh, np.float64)
  if boxes.size == 0:
    boxes = boxes.reshape(0, 4)
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise ValueError(f"{caller}: boxes must have shape (N, 4), got {boxes.shape}")
  if not np.isfinite(boxes).all():
    raise ValueError(f"{caller}: boxes contain NaN or infinite coordinates")
  return boxes


def _band(low, high, size):
  """0-based slice for the 1-based inclusive pixel range ``[low, high]`` clamped to ``[1, size]``.

  Torch indexing truncates the clamped (hence positive) bounds to integers.
  """
  first = int(min(max(low, 1), size))
  last = int(min(max(high, 1), size))
  return slice(first - 1, last)


def _draw_outline(pixels, box, color, width):
  """Paints the four outline bands of one xywh box into ``pixels`` ``(H, W, 3)`` in place."""
  height, image_width = pixels.shape[:2]
  x, y, w, h = box
  columns = _band(x - width, x + w + width, image_width)
  rows = _band(y - width, y + h + width, height)
  pixels[_band(y - width, y + width, height), columns] = color
  pixels[_band(y + h - width, y + h + width, height), columns] = color
  pixels[rows, _band(x - width, x + width, image_width)] = color
  pixels[rows, _band(x + w - width, x + w + width, image_width)] = color


def _caption_font(text_size):
  """Pillow's bundled font, sized so that one text line is ``8 * text_size`` pixels."""
  return _label_font(max(1, _CELL_HEIGHT * text_size))


def _caption_runs(caption, origin, image_width, font, line_height):
  """Splits a caption into ``(x, y, text)`` runs, wrapping as ``image.drawText`` does.

  A newline starts a new line at the origin's x; a character whose advance
  would reach the image's right border starts a new line at x = 0.
  """
  if not caption or not caption.strip():
    return []
  runs = []
  line_x, cursor_x, cursor_y = origin[0], origin[0], origin[1]
  line = ""
  for char in caption:
    if char == "\r":
      continue
    advance = 0.0 if char == "\n" else font.getlength(char)
    if char == "\n" or cursor_x + advance >= image_width:
      runs.append((line_x, cursor_y, line))
      line_x = origin[0] if char == "\n" else 0
      cursor_x, cursor_y, line = line_x, cursor_y + line_height, ""
    if char != "\n":
      line += char
      cursor_x += advance
  runs.append((line_x, cursor_y, line))
  return [run for run in runs if run[2]]


def drawing_scale(size):
  """Picture pixels per pixel of the same picture scaled to ``REFERENCE_LONG_SIDE``.

  ``size`` is ``(H, W)``; the scale is ``max(H, W) / 720``.
  """
  return max(size) / REFERENCE_LONG_SIDE


def outline_half_width(size, box_width):
  """Outline half-thickness (pixels) of ``draw_labelled`` on a picture of ``size`` ``(H, W)``.

  ``box_width`` pixels on the picture scaled to a 720-pixel long side:
  ``round(box_width * max(H, W) / 720)``; the bands are twice that plus one thick.
  """
  return round(box_width * drawing_scale(size))


def text_pixels(size, text_size):
  """Caption font size (pixels) of ``draw_labelled`` on a picture of ``size`` ``(H, W)``.

  ``8 * text_size`` pixels (the original's line height) on the picture scaled
  to a 720-pixel long side, hence ``round(8 * text_size * max(H, W) / 720)``,
  and never below ``MIN_TEXT_PIXELS``.
  """
  return max(MIN_TEXT_PIXELS, round(_CELL_HEIGHT * text_size * drawing_scale(size)))


def label_colors(color):
  """``(background, text)`` RGB of a label on a box of ``color``.

  The background is the box colour; the text is black or white, whichever
  has the larger WCAG contrast ratio with it (at least 4.58 for any colour).
  """
  luminance = relative_luminance(color)
  return tuple(color), ((0, 0, 0) if (luminance + 0.05) ** 2 > 1.05 * 0.05 else (255, 255, 255))


def relative_luminance(color):
  """WCAG 2 relative luminance in ``[0, 1]`` of an sRGB ``(r, g, b)`` in 0..255."""
  c = np.asarray(color, np.float64) / 255.0
  linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
  return float(linear @ np.array([0.2126, 0.7152, 0.0722]))


def wrap_caption(caption, font, max_width, ellipsis="\u2026"):
  """Lines of ``caption`` no wider than ``max_width`` pixels, broken only between words.

  Words are the caption's whitespace-separated parts; each line holds as many
  whole words, joined by single spaces, as fit. A word that does not fit on a
  line alone gets a line of its own, cut to its longest beginning that fits
  with ``ellipsis`` appended (the ellipsis alone when none does).

  Args:
    caption: a string.
    font: anything with ``getlength(text)`` in pixels (a Pillow font).
    max_width: widest line, in pixels.
    ellipsis: the mark of a cut word.

  Returns:
    A list of strings, ``[]`` for an empty or blank caption.
  """
  lines, line = [], ""
  for word in caption.split():
    joined = f"{line} {word}" if line else word
    if font.getlength(joined) <= max_width:
      line = joined
      continue
    if line:
      lines.append(line)
    line = word
    if font.getlength(word) > max_width:
      cut = len(word) - 1
      while cut > 0 and font.getlength(word[:cut] + ellipsis) > max_width:
        cut -= 1
      lines.append(word[:cut] + ellipsis)
      line = ""
  if line:
    lines.append(line)
  return lines


def layout_labels(size, boxes_xywh, captions, font, *, box_width):
  """Where ``draw_labelled`` puts each caption: ``[(left, top, width, height, lines)]``.

  Label ``i`` (0-based pixels, ``lines`` from :func:`wrap_caption`) goes to
  the first of these places, moved into the picture, that overlaps no
  label placed before it (labels are placed in box order), or to the one
  overlapping them least: on top of the box's outline when there is room
  above it, inside the box's top-left corner, under the box when there is
  room below it, inside its bottom-left corner. A label is at most as wide
  as the picture; its text is wrapped to the box's visible width or
  ``WRAP_FRACTION`` of the picture's, whichever is larger. Blank captions get
  ``None``.

  Args:
    size: ``(H, W)`` of the picture.
    boxes_xywh: ``(N, 4)`` float xywh boxes, 1-based, in the picture's pixels.
    captions: ``N`` strings.
    font: a Pillow font.
    box_width: half-thickness of the outline bands, in pixels.
  """
  boxes = _checked_boxes(boxes_xywh, "layout_labels")
  if len(captions) != len(boxes):
    raise ValueError(f"layout_labels: got {len(boxes)} boxes but {len(captions)} captions")
  height, width = size
  pad = _label_pad(font)
  line_height = _line_height(font)
  ellipsis = "\u2026" if isinstance(font, ImageFont.FreeTypeFont) else "..."
  placed, labels = [], []
  for (x, y, w, h), caption in zip(boxes, captions):
    left, top = math.trunc(x) - 1 - box_width, math.trunc(y) - 1 - box_width
    right, bottom = math.trunc(x + w) + box_width, math.trunc(y + h) + box_width
    visible = min(right, width) - max(left, 0)
    wrap = min(width - 2 * pad, max(visible - 2 * pad, WRAP_FRACTION * width))
    lines = wrap_caption(caption, font, wrap, ellipsis)
    if not lines:
      labels.append(None)
      continue
    label_w = min(width, math.ceil(max(font.getlength(line) for line in lines)) + 2 * pad)
    label_h = len(lines) * line_height + 2 * pad
    tops = ([top - label_h] if top - label_h >= 0 else []) + [top]
    tops += ([bottom] if bottom + label_h <= height else []) + [bottom - label_h]
    candidates = [(max(0, min(left, width - label_w)), max(0, min(t, height - label_h)),
                   label_w, label_h) for t in tops]
    overlaps = [sum(_overlap(c, other) for other in placed) for c in candidates]
    best = candidates[overlaps.index(min(overlaps))]
    placed.append(best)
    labels.append((*best, lines))
  return labels


def draw_labelled(image, boxes_xywh, captions, *, num_to_draw=10, box_width=2, text_size=2):
  """Draws the first ``num_to_draw`` boxes and their captions readably onto a copy of ``image``.

  Made for the picture at its own size: ``box_width`` and ``text_size`` keep
  their meaning on the picture scaled to a 720-pixel long side (the
  original's image size): the outline bands are ``2 * b + 1`` pixels thick
  with ``b`` = :func:`outline_half_width` (placed as by :func:`draw_results`,
  in ``box_color(i)``), and captions are set in Pillow's bundled font at
  :func:`text_pixels`. Each caption sits on a label filled with its box's
  colour, in black or white text (:func:`label_colors`), wrapped at spaces
  and placed by :func:`layout_labels` inside the picture. Labels are drawn
  after all outlines, the first box's last (on top).

  Args:
    image: PIL image (converted to RGB) or ``(H, W, 3)`` uint8 RGB array; not modified.
    boxes_xywh: ``(N, 4)`` float xywh boxes, 1-based, in the image's pixels, in
      score order.
    captions: ``N`` strings.
    num_to_draw: how many of the first boxes to draw.
    box_width: outline half-thickness on the picture scaled to a 720-pixel long side.
    text_size: caption scale on that picture, where its font is ``8 * text_size``
      pixels (and at least ``MIN_TEXT_PIXELS`` on the picture itself).

  Returns:
    ``PIL.Image`` in RGB mode, the same size as ``image``.
  """
  pixels = _rgb_pixels(image, "draw_labelled")
  boxes = _checked_boxes(boxes_xywh, "draw_labelled")
  if len(captions) != len(boxes):
    raise ValueError(f"draw_labelled: got {len(boxes)} boxes but {len(captions)} captions")
  size = pixels.shape[:2]
  count = max(0, min(num_to_draw, len(boxes)))
  band = outline_half_width(size, box_width)
  for i in range(count):
    _draw_outline(pixels, boxes[i], box_color(i), band)
  font = _label_font(text_pixels(size, text_size))
  labels = layout_labels(size, boxes[:count], captions[:count], font, box_width=band)
  picture = Image.fromarray(pixels)
  draw = ImageDraw.Draw(picture)
  pad, line_height = _label_pad(font), _line_height(font)
  for i in reversed(range(count)):
    if labels[i] is None:
      continue
    left, top, label_w, label_h, lines = labels[i]
    background, text = label_colors(box_color(i))
    draw.rectangle((left, top, left + label_w - 1, top + label_h - 1), fill=background)
    for k, line in enumerate(lines):
      draw.text((left + pad, top + pad + k * line_height), line, fill=text, font=font)
  return picture


def _label_font(pixels):
  """Pillow's bundled font at ``pixels`` (its fixed bitmap font when built without FreeType)."""
  try:
    return ImageFont.load_default(size=pixels)
  except (ImportError, OSError):
    return ImageFont.load_default()


def _label_pad(font):
  """Pixels between a label's edge and its text: a fifth of the font size, at least 1."""
  return max(1, round(0.2 * getattr(font, "size", _CELL_HEIGHT)))


def _line_height(font):
  """Pixels between text lines: the font's ascent plus descent."""
  if hasattr(font, "getmetrics"):
    return sum(font.getmetrics())
  return font.getbbox("Ag")[3] + 1


def _overlap(a, b):
  """Overlapping area of two ``(left, top, width, height)`` rectangles."""
  w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
  h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
  return max(0, w) * max(0, h)


def save_image_atomic(image, path):
  """Saves a PIL image (or ``(H, W, 3)`` uint8 array) to ``path`` atomically.

  The format follows the file extension; the picture is written to a temporary
  file in the same directory and moved onto ``path`` with ``os.replace``.
  """
  extension = os.path.splitext(path)[1].lower()
  image_format = Image.registered_extensions().get(extension)
  if image_format is None:
    raise ValueError(f"cannot save image {path}: unknown image file extension {extension!r}")
  if not isinstance(image, Image.Image):
    image = Image.fromarray(_rgb_pixels(image, "save_image_atomic"))
  with atomic_output(path) as tmp_path:
    image.save(tmp_path, format=image_format)


def write_viewer(output_dir, results):
  """Writes the results browser and its data into ``output_dir``; returns the page's path.

  Copies the page's ``VIEWER_FILES`` (``view_results.html``, ``viewer.js``,
  ``viewer.css``, and ``boxes.js`` and ``boxes.css``, the drawing it shares
  with the web demo) and writes ``results.json`` (reference §10.2 schema) and
  ``results.js`` (the same object assigned to ``window.DENSECAP_RESULTS``,
  which a page opened from disk can load). The images named by ``img_name``
  are expected beside them, at the size the boxes refer to. Every file is
  written atomically.

  Args:
    output_dir: folder to write into (created if missing).
    results: ``{"results": [{"boxes": [[x, y, w, h], ...], "scores": [...],
      "captions": [...], "img_name": str}, ...], "opt": {...}}``; lists or
      NumPy arrays; boxes xywh, 1-based, in the saved image's pixels.
  """
  _check_results(results)
  os.makedirs(output_dir, exist_ok=True)
  # Encoded piece by piece into the files (json.dump), never as one string in
  # memory; results.json first, so that data JSON cannot hold (NaN) writes nothing.
  for name, prefix, suffix in (("results.json", "", ""),
                               ("results.js", "window.DENSECAP_RESULTS = ", ";\n")):
    with atomic_output(os.path.join(output_dir, name)) as tmp_path:
      with open(tmp_path, "w", encoding="utf-8") as f:
        f.write(prefix)
        json.dump(results, f, default=_json_value, allow_nan=False)
        f.write(suffix)
  page_dir = importlib.resources.files("densecap_jax.viewer")
  for name in VIEWER_FILES:
    _write_bytes_atomic(os.path.join(output_dir, name), page_dir.joinpath(name).read_bytes())
  return os.path.join(output_dir, VIEWER_PAGE)


def _check_results(results):
  """Raises a one-line ValueError when ``results`` does not follow the §10.2 schema."""
  if not isinstance(results, dict) or not isinstance(results.get("results"), (list, tuple)):
    raise ValueError("write_viewer: results must be a dict with a 'results' list")
  for i, entry in enumerate(results["results"]):
    if not isinstance(entry, dict):
      raise ValueError(f"write_viewer: results[{i}] must be a dict, got {type(entry).__name__}")
    missing = [field for field in RESULT_FIELDS if field not in entry]
    if missing:
      raise ValueError(f"write_viewer: results[{i}] lacks {', '.join(missing)}")
    if not isinstance(entry["img_name"], str) or not entry["img_name"]:
      raise ValueError(f"write_viewer: results[{i}].img_name must be a non-empty string")
    boxes = np.asarray(entry["boxes"], np.float64)
    if boxes.size and (boxes.ndim != 2 or boxes.shape[1] != 4):
      raise ValueError(f"write_viewer: results[{i}].boxes must be N x 4, got shape {boxes.shape}")
    counts = {field: len(entry[field]) for field in ("boxes", "scores", "captions")}
    if len(set(counts.values())) != 1:
      raise ValueError(f"write_viewer: results[{i}] has unequal lengths {counts}")


def _json_value(value):
  """JSON encoder hook for NumPy arrays and scalars."""
  if isinstance(value, (np.ndarray, np.generic)):
    return value.tolist()
  raise TypeError(f"write_viewer: cannot write {type(value).__name__} to JSON")


def _write_bytes_atomic(path, data):
  with atomic_output(path) as tmp_path:
    with open(tmp_path, "wb") as f:
      f.write(data)
