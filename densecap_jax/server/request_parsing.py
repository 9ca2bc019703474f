"""What a request to the server sends, read and checked: the body and its multipart form, the
uploaded image, the option fields and the ``boxes`` and ``phrases`` fields.

A bad request raises ``RequestError`` (its status and one line); ``app``
answers it as JSON. The rules are listed in ``app``'s docstring.
"""

import json
import math
import os

import numpy as np
from starlette import formparsers, requests

from densecap_jax import files
from densecap_jax import settings
from densecap_jax.data import images as images_lib
from densecap_jax.ops import boxes as boxes_lib
from densecap_jax.server import captioner as captioner_lib

# Decoders accepted for uploads; other Pillow plugins (EPS, PSD, ...) are never tried.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
OPTION_FIELDS = ("final_nms_thresh", "max_boxes", "min_score")
BOXES_FIELD = "boxes"
PHRASES_FIELD = "phrases"
# Most boxes and phrases in one request, and the most bytes of one form field.
MAX_GIVEN_BOXES = 1024
MAX_PHRASES = 64
MAX_FIELD_BYTES = 256 * 1024
# Deepest nesting of the JSON of ``boxes`` and ``phrases`` (they need 2 and 1).
MAX_JSON_DEPTH = 8
# Longest query string (longer fields go in a multipart form: MAX_FIELD_BYTES),
# and the most bytes of a request's line and headers that the HTTP server reads
# (``serve`` gives it to uvicorn): a request line longer than that is refused
# by uvicorn itself with a plain-text 400 before it reaches the application.
MAX_QUERY_BYTES = 64 * 1024
MAX_REQUEST_HEAD_BYTES = 1024 * 1024


class RequestError(Exception):
  """A bad request: answered with ``status`` and ``{"error": message}``."""

  def __init__(self, status, message):
    super().__init__(message)
    self.status = status
    self.message = message


def decode_image(data, max_pixels):
  """Upload bytes -> a loaded ``PIL.Image``, upright as browsers show it.

  ``data.images.load_user_image``, the reader of ``predict``,
  ``extract_features`` and the Python API: the pixel count is checked from the
  header before any pixel is decoded, and the EXIF orientation is applied so
  that boxes line up with the image a browser displays (phone photos are
  often stored sideways). The image keeps its decoded mode; the captioner
  makes it RGB as for any user image.

  Raises:
    RequestError: 413 over ``max_pixels``; 400 not an image of
      ``IMAGE_FORMATS``, truncated or corrupt.
  """
  try:
    return images_lib.load_user_image(data, name="the upload", max_pixels=max_pixels,
                                      formats=IMAGE_FORMATS)
  except images_lib.ImageTooLargeError as e:
    size = f"{e.size[0]}x{e.size[1]} = {e.pixels}" if e.size else e.pixels or "more"
    raise RequestError(413, f"image of {size} pixels is over the limit of {e.limit} "
                            f"pixels") from None
  except images_lib.UnsupportedImageError:
    raise RequestError(400, f"the upload is not an image of a supported format "
                            f"({', '.join(IMAGE_FORMATS)})") from None
  except ValueError as e:
    message = str(e).removeprefix("cannot read image the upload: ")
    raise RequestError(400, f"cannot decode the image: {message}") from None


def parse_fields(fields, defaults, json_fields=()):
  """Query / form fields -> ``(CaptionOptions, {JSON field: text})``; unknown fields are errors.

  Args:
    fields: ``(name, value)`` string pairs, later ones win.
    defaults: ``CaptionOptions`` for fields not given.
    json_fields: the other fields the route takes (``BOXES_FIELD``,
      ``PHRASES_FIELD``), returned as given.

  Raises:
    RequestError: 400 naming the field and what it must be; options given
      with ``boxes`` (they choose among detections).
  """
  known = OPTION_FIELDS + tuple(json_fields)
  given = {}
  for name, value in fields:
    if name not in known:
      raise RequestError(400, f"unknown field {files.quoted(name)}; expected 'image' and "
                              f"optionally "
                              f"{', '.join(repr(f) for f in known)}")
    if not isinstance(value, str):
      raise RequestError(400, f"field {name!r} must be a plain value, not a file")
    given[name] = value.strip()
  texts = {name: given.pop(name) for name in json_fields if name in given}
  if BOXES_FIELD in texts and given:
    raise RequestError(400, f"{', '.join(sorted(given))}: not with 'boxes' (these options "
                            f"choose among the model's detections)")
  values = {}
  if "final_nms_thresh" in given:
    thresh = _number(given, "final_nms_thresh", float)
    try:
      settings.check_settings(final_nms_thresh=thresh)
    except ValueError as e:
      raise RequestError(400, str(e)) from None
    values["final_nms_thresh"] = thresh
  if "max_boxes" in given:
    max_boxes = _number(given, "max_boxes", int)
    if max_boxes < 0:
      raise RequestError(400, f"max_boxes must be non-negative, got {max_boxes}")
    values["max_boxes"] = max_boxes
  if "min_score" in given:
    values["min_score"] = _number(given, "min_score", float)
  return captioner_lib.CaptionOptions(**{
      "final_nms_thresh": defaults.final_nms_thresh, "max_boxes": defaults.max_boxes,
      "min_score": defaults.min_score, **values}), texts


def _json_field(name, text, what):
  """``text`` parsed as JSON nested at most ``MAX_JSON_DEPTH`` deep (``files.loads_json``:
  integers beyond a float's range read as ``inf``, which the box checks refuse)."""
  try:
    return files.loads_json(text, MAX_JSON_DEPTH)
  except ValueError as e:
    raise RequestError(400, f"{name} must be {what} in JSON; cannot parse it: {e}") from None


def _shown(value):
  """A JSON value of a request for a message: its JSON text, cut by ``files.quoted``."""
  text = json.dumps(value)
  return text if len(text) <= files.MAX_QUOTED else files.quoted(text)


def parse_boxes(text):
  """The ``boxes`` field -> a ``(k, 4)`` float64 array of ``[x, y, w, h]`` (values unchecked).

  Raises:
    RequestError: 400 for text that is not a JSON list of lists of 4
      numbers (naming the box index) or has more than ``MAX_GIVEN_BOXES``.
  """
  what = "a list of [x, y, w, h] boxes"
  boxes = _json_field("boxes", text, what)
  if not isinstance(boxes, list):
    raise RequestError(400, f"boxes must be {what}, got {type(boxes).__name__}")
  if len(boxes) > MAX_GIVEN_BOXES:
    raise RequestError(400, f"boxes: {len(boxes)} boxes are more than the limit of "
                            f"{MAX_GIVEN_BOXES}")
  for i, box in enumerate(boxes):
    if not boxes_lib.is_box_numbers(box):
      raise RequestError(400, f"boxes: box {i} must be [x, y, w, h], 4 numbers, got "
                              f"{_shown(box)}")
  return np.asarray(boxes, np.float64).reshape(-1, 4)


def parse_phrases(text):
  """The ``phrases`` field -> a list of strings (tokenised later, ``regions.phrases``).

  Raises:
    RequestError: 400 for text that is not a non-empty JSON list of at most
      ``MAX_PHRASES`` strings (naming the phrase index).
  """
  what = "a list of strings"
  phrases = _json_field("phrases", text, what)
  if not isinstance(phrases, list) or not phrases:
    raise RequestError(400, f"phrases must be a non-empty list of strings, got "
                            f"{_shown(phrases)}")
  if len(phrases) > MAX_PHRASES:
    raise RequestError(400, f"phrases: {len(phrases)} phrases are more than the limit of "
                            f"{MAX_PHRASES}")
  for i, phrase in enumerate(phrases):
    if not isinstance(phrase, str):
      raise RequestError(400, f"phrase {i} must be a string, got {_shown(phrase)}")
  return phrases


def _number(given, name, kind):
  try:
    value = kind(given[name])
  except ValueError:
    raise RequestError(400, f"{name} must be {'an integer' if kind is int else 'a number'}, "
                            f"got {files.quoted(given[name])}") from None
  if not math.isfinite(value):
    raise RequestError(400, f"{name} must be finite, got {files.quoted(given[name])}")
  return value


async def read_body(request, limit):
  """The request body, refusing (413) more than ``limit`` bytes before reading them all."""
  declared = request.headers.get("content-length")
  if declared and declared.isdigit() and int(declared) > limit:
    raise RequestError(413, f"upload of {declared} bytes is over the limit of {limit} bytes")
  chunks, size = [], 0
  try:
    async for chunk in request.stream():
      size += len(chunk)
      if size > limit:
        raise RequestError(413, f"upload is over the limit of {limit} bytes")
      chunks.append(chunk)
  except requests.ClientDisconnect:
    raise RequestError(400, "the client disconnected during the upload") from None
  return b"".join(chunks)


async def read_upload(request, limit):
  """``(image bytes, image name, option fields)`` from a multipart or raw-image request.

  Raises:
    RequestError: 414 query string over ``MAX_QUERY_BYTES``; 413 body over
      ``limit``; 415 neither multipart nor ``image/*``; 400 malformed
      multipart, no ``image`` file field, empty body.
  """
  query = request.scope.get("query_string", b"")
  if len(query) > MAX_QUERY_BYTES:
    raise RequestError(414, f"query string of {len(query):,} bytes is over the limit of "
                            f"{MAX_QUERY_BYTES:,} bytes; send long fields ('boxes', 'phrases') "
                            f"as multipart/form-data fields")
  content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
  if content_type != "multipart/form-data" and not content_type.startswith("image/"):
    shown = files.quoted(content_type or "(none)")
    raise RequestError(415, f"unsupported Content-Type {shown}: send "
                            f"multipart/form-data with an 'image' file field, or the image "
                            f"itself with Content-Type image/jpeg, image/png, ...")
  body = await read_body(request, limit)
  fields = list(request.query_params.multi_items())
  if content_type.startswith("image/"):
    data, name = body, "image"
  else:
    form = await _parse_multipart(request.headers, body, limit)
    try:
      uploads = form.getlist("image")
      if len(uploads) != 1 or isinstance(uploads[0], str):
        raise RequestError(400, "multipart upload needs exactly one file field named 'image'")
      data = await uploads[0].read()
      name = os.path.basename((uploads[0].filename or "image").replace("\\", "/")) or "image"
      fields += [(k, v) for k, v in form.multi_items() if k != "image"]
    finally:
      await form.close()
  if not data:
    raise RequestError(400, "the image is empty (0 bytes)")
  return data, name, fields


async def _parse_multipart(headers, body, limit):
  async def one_chunk():
    yield body

  parser = formparsers.MultiPartParser(headers, one_chunk(), max_files=1,
                                       max_fields=len(OPTION_FIELDS) + 2,
                                       max_part_size=MAX_FIELD_BYTES)
  parser.spool_max_size = limit  # the body is in memory already; keep the file part there too
  try:
    return await parser.parse()
  except formparsers.MultiPartException as e:
    raise RequestError(400, f"malformed multipart upload: {e.message}") from None
