"""Real photographs for tests: the colour photos scikit-image ships in its package.

They are read from ``skimage/data`` as files (nothing is downloaded), and span
the sizes and aspect ratios users bring: square, landscape 3:2 and 4:3, a
wide 741 x 500 photo, a large 1000 x 872 one, and a phone-style portrait
stored sideways with an EXIF orientation tag (:func:`phone_portrait`).
"""

import importlib.util
import os

import numpy as np
from PIL import Image

# name -> (file in skimage/data, (W, H) as stored)
PHOTOS = {
    "astronaut": ("astronaut.png", (512, 512)),
    "chelsea": ("chelsea.png", (451, 300)),
    "coffee": ("coffee.png", (600, 400)),
    "rocket": ("rocket.jpg", (640, 427)),
    "motorcycle": ("motorcycle_left.png", (741, 500)),
    "hubble": ("hubble_deep_field.jpg", (1000, 872)),
}


def data_dir():
  spec = importlib.util.find_spec("skimage")
  if spec is None:
    raise RuntimeError("scikit-image is not installed (make install installs the test extras)")
  return os.path.join(os.path.dirname(spec.origin), "data")


def photo_path(name):
  """Path of one of :data:`PHOTOS`."""
  return os.path.join(data_dir(), PHOTOS[name][0])


def photo_paths(names=None):
  """``{name: path}`` of the named photos (default: all six)."""
  return {n: photo_path(n) for n in (names or PHOTOS)}


def phone_portrait(path, name="rocket"):
  """Writes ``name`` as a phone does a portrait shot: stored sideways, EXIF Orientation 6.

  The upright picture is the photo turned to portrait (its transpose, H > W);
  the file holds it turned 90° counter-clockwise with the tag that tells a
  viewer to turn it back. Returns ``(path, upright)`` with ``upright`` the
  ``(H, W, 3)`` uint8 picture a viewer shows (up to JPEG rounding).
  """
  rgb = np.asarray(Image.open(photo_path(name)).convert("RGB"))
  upright = np.ascontiguousarray(np.transpose(rgb, (1, 0, 2)))  # portrait: H > W
  stored = np.rot90(upright, k=1)  # Orientation 6 turns it 90° clockwise to view
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(np.ascontiguousarray(stored)).save(path, format="JPEG", quality=95,
                                                     exif=exif.tobytes())
  return path, upright
