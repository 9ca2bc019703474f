"""What the commands take as input: image folders, the max-images rule and a boxes JSON."""

import os
import sys

import numpy as np

from densecap_jax import files
from densecap_jax import runtime
from densecap_jax.ops import boxes as boxes_lib


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


MAX_IMAGES_HELP = "at most N images (of a folder, split or list); -1 = all"


def check_max_images(max_images):
  """Raises ValueError unless ``--max_images`` is positive or -1 (all)."""
  if max_images == 0 or max_images < -1:
    raise ValueError(f"--max_images must be positive, or -1 for all, got {max_images}")


def image_files(folder):
  """Sorted paths of the image files in ``folder`` (names not starting with ``.``)."""
  if not os.path.isdir(folder):
    raise ValueError(f"--input_dir is not a folder: {folder}")
  names = sorted(n for n in os.listdir(folder)
                 if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS))
  if not names:
    raise ValueError(f"--input_dir has no image files ({', '.join(IMAGE_EXTENSIONS)}): {folder}")
  return [os.path.join(folder, n) for n in names]


def read_given_boxes(args, paths, boxes_per_image=sys.maxsize):
  """Per path the ``--boxes_json`` boxes, ``None`` for a path without an entry; None without it.

  ``read_boxes_json``; prints a note on stderr naming the
  images without an entry (they get the model's detections).
  """
  if not args.boxes_json:
    return None
  given = read_boxes_json(args.boxes_json, paths, boxes_per_image)
  missing = [os.path.basename(p) for p, g in zip(paths, given) if g is None]
  if missing:
    shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
    print(f"note: --boxes_json {args.boxes_json} has no entry for {len(missing)} of "
          f"{runtime.count(len(paths), 'image')} ({shown}); they get the model's detections",
          file=sys.stderr)
  return given


def _check_boxes(entry, where):
  """The ``[x, y, w, h]`` list of one image of the boxes JSON -> ``(k, 4)`` float32.

  The checks that need no image (``ops.boxes.box_faults``: 4 numbers, finite,
  positive size) run here, before any image is read; clipping to the image
  as each image is read, by ``ops.boxes.check_boxes``.

  Raises:
    ValueError: naming ``where`` and the box index.
  """
  faults = boxes_lib.box_faults(entry)
  if faults:
    j, fault = faults[0]
    box = entry[j]
    where = f"{where} box {j}"
    if fault == "numbers":
      raise ValueError(f"{where}: expected [x, y, w, h] (4 numbers), got {box!r}")
    if fault == "size":
      raise ValueError(f"{where}: w and h must be positive, got w={box[2]}, h={box[3]}")
    raise ValueError(f"{where}: {fault} is {boxes_lib.json_number(box['xywh'.index(fault)])}")
  return np.asarray([[float(v) for v in box] for box in entry], np.float32).reshape(-1, 4)


def read_boxes_json(path, image_paths, boxes_per_image):
  """The given boxes of each listed image, from a ``--boxes_json`` file.

  Args:
    path: JSON file ``{"image path or name": [[x, y, w, h], ...]}`` (1-based
      xywh in the original image's pixels).
    image_paths: the listed images; each is looked up by its path, then by
      its file name.
    boxes_per_image: the most boxes an image may have.

  Returns:
    Per listed image a ``(k, 4)`` float32 xywh array, or ``None`` when the
    file has no entry for it (the image gets detections).

  Raises:
    ValueError: one line naming the file, the image and the field at fault.
  """
  table = files.read_json(path, "--boxes_json")
  if not isinstance(table, dict):
    raise ValueError(f"--boxes_json {path} must hold an object {{image: [[x, y, w, h], ...]}}, "
                     f"got {type(table).__name__}")
  boxes = {}
  for key, entry in table.items():
    if not isinstance(entry, list):
      raise ValueError(f"--boxes_json {path}: {key!r}: expected a list of [x, y, w, h], "
                       f"got {type(entry).__name__}")
    if len(entry) > boxes_per_image:
      raise ValueError(f"--boxes_json {path}: {key!r} has {len(entry)} boxes, more than "
                       f"--boxes_per_image {boxes_per_image}")
    boxes[key] = _check_boxes(entry, f"--boxes_json {path}: {key!r}")
  given = []
  for image_path in image_paths:
    key = image_path if image_path in boxes else os.path.basename(image_path)
    given.append(boxes.get(key))
  return given
