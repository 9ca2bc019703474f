"""Drawing detections onto images and writing the results viewer page.

``draw_results`` bakes boxes and captions into a picture the way the released
``vis_utils.densecap_draw`` does (reference §10.3). ``write_viewer`` writes the
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


def _rgb_pixels(image):
  """A writable ``(H, W, 3)`` uint8 copy of a PIL image or an RGB uint8 array."""
  if isinstance(image, Image.Image):
    return np.array(image.convert("RGB"))
  pixels = np.asarray(image)
  if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
    raise ValueError(f"draw_results: image must be a PIL image or an (H, W, 3) uint8 array, "
                     f"got shape {pixels.shape} dtype {pixels.dtype}")
  return pixels.copy()


def _checked_boxes(boxes_xywh):
  """``(N, 4)`` float64 array of finite boxes, or a ValueError naming the problem."""
  boxes = np.asarray(boxes_xywh, np.float64)
  if boxes.size == 0:
    boxes = boxes.reshape(0, 4)
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise ValueError(f"draw_results: boxes must have shape (N, 4), got {boxes.shape}")
  if not np.isfinite(boxes).all():
    raise ValueError("draw_results: boxes contain NaN or infinite coordinates")
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
  size = max(1, _CELL_HEIGHT * text_size)
  try:
    return ImageFont.load_default(size=size)
  except (ImportError, OSError):  # Pillow built without FreeType: fixed bitmap font.
    return ImageFont.load_default()


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
    image = Image.fromarray(_rgb_pixels(image))
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
