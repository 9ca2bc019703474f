"""Synthetic dense-captioning scenes written in the Visual Genome format.

Usage::

  python -m densecap_jax.data.synthetic --out data/synthetic --num_images 500 --seed 0

Each scene holds 2-6 flat shapes (circle, square, triangle, star, diamond,
hexagon, cross) in eight colours, three sizes and four textures (solid,
striped, dotted, checkered) on a light or dark background (plain, gradient or
noisy). Regions are captioned from templates:

* one object: "a small red circle", "a striped blue square",
  "a green star with dots", "the triangle is yellow", "an orange cross on the left";
* two objects: "a blue square above a green triangle" (box = union of both);
* a group of objects of one colour and shape: "three yellow stars" (box = union);
* the whole image: "four shapes on a dark background".

Captions have 3-10 words over a vocabulary of about 55 words. Every box is the
tight box of the drawn pixels (1-based upper-left corner ``x, y``, ``width``,
``height``, as §8.1 reads them). Scene ``i`` depends only on ``(seed, i)``.

Output folder: ``images/<id>.jpg``, ``region_descriptions.json``,
``image_data.json`` and ``densecap_splits.json`` (ids 1..N), ready for
``python -m densecap_jax.data.preprocess``, and ``objects.json``, what each
object is (``python -m densecap_jax.train.pretrain --labels`` reads it)::

  {"attributes": {"colour": [8 words], "shape": [7], "texture": [4], "size": [3]},
   "images": {"<id>": [{"x": .., "y": .., "width": .., "height": ..,
                        "colour": "red", "shape": "circle", "texture": "solid",
                        "size": "small"}, ...]}}

with the objects in drawing order and their tight boxes as in
``region_descriptions.json``.
"""

import dataclasses
import os

import numpy as np
import tqdm
from PIL import Image, ImageDraw

from densecap_jax import files

SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon", "cross")
PLURALS = {s: s + ("es" if s == "cross" else "s") for s in SHAPES}
COLORS = {
    "red": (215, 35, 35),
    "green": (40, 165, 60),
    "blue": (35, 80, 215),
    "yellow": (240, 205, 30),
    "purple": (135, 55, 175),
    "orange": (245, 135, 25),
    "pink": (245, 125, 185),
    "cyan": (35, 200, 210),
}
SIZES = {"small": (0.10, 0.14), "medium": (0.17, 0.22), "large": (0.26, 0.32)}  # side / long side
TEXTURES = ("solid", "striped", "dotted", "checkered")
TEXTURE_NOUNS = {"striped": "stripes", "dotted": "dots", "checkered": "checks"}
NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
BACKGROUND_KINDS = ("plain", "gradient", "noise")
TONES = ("light", "dark")
ASPECTS = (1.0, 0.75, 2 / 3, 0.5625)
# What an object is, attribute by attribute (``object_attributes`` numbers the values in this order).
ATTRIBUTES = {"colour": tuple(COLORS), "shape": SHAPES, "texture": TEXTURES, "size": tuple(SIZES)}
# The words captions use for each attribute's values, ``{word: value}``: the
# values themselves and the texture nouns ("a red circle with dots").
ATTRIBUTE_WORDS = {name: {**dict(zip(values, values)),
                          **({noun: t for t, noun in TEXTURE_NOUNS.items()}
                             if name == "texture" else {})}
                   for name, values in ATTRIBUTES.items()}
# The ``SceneObject`` field of each attribute.
ATTRIBUTE_FIELDS = {"colour": "color", "shape": "shape", "texture": "texture", "size": "size"}


@dataclasses.dataclass(frozen=True)
class SceneObject:
  """One drawn shape: its attributes, the square it is drawn in, and its tight xywh box."""
  shape: str
  color: str
  size: str
  texture: str
  x0: int  # 0-based left column of the drawing square
  y0: int  # 0-based top row of the drawing square
  side: int
  box: tuple  # (x, y, width, height), 1-based, tight around the drawn pixels


@dataclasses.dataclass(frozen=True)
class Scene:
  """A scene: canvas size, background, objects in drawing order and captioned regions."""
  width: int
  height: int
  background: dict
  objects: tuple
  regions: tuple  # (phrase, (x, y, width, height)) pairs


def shape_mask(shape, x0, y0, side, height, width):
  """``(height, width)`` bool mask of ``shape`` drawn in ``[x0, x0 + side) x [y0, y0 + side)``."""
  img = Image.new("L", (width, height), 0)
  draw = ImageDraw.Draw(img)
  x1, y1 = x0 + side - 1, y0 + side - 1
  cx, cy, r = x0 + (side - 1) / 2, y0 + (side - 1) / 2, (side - 1) / 2
  if shape == "circle":
    draw.ellipse([x0, y0, x1, y1], fill=1)
  elif shape == "square":
    draw.rectangle([x0, y0, x1, y1], fill=1)
  elif shape == "triangle":
    draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=1)
  elif shape == "diamond":
    draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=1)
  elif shape == "star":
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, r, 0.42 * r)
    draw.polygon(list(zip(cx + radii * np.cos(angles), cy + radii * np.sin(angles))), fill=1)
  elif shape == "hexagon":
    angles = np.arange(6) * np.pi / 3
    draw.polygon(list(zip(cx + r * np.cos(angles), cy + r * np.sin(angles))), fill=1)
  elif shape == "cross":
    t = side / 3
    draw.rectangle([x0 + t, y0, x1 - t, y1], fill=1)
    draw.rectangle([x0, y0 + t, x1, y1 - t], fill=1)
  else:
    raise ValueError(f"unknown shape {shape!r}, expected one of {SHAPES}")
  return np.asarray(img, bool)


def _texture_is_secondary(texture, x0, y0, side, height, width):
  """``(height, width)`` bool: where the texture uses the secondary (darker) colour."""
  yy, xx = np.mgrid[0:height, 0:width]
  period = max(2, side // 5)
  if texture == "solid":
    return np.zeros((height, width), bool)
  if texture == "striped":
    return ((xx - x0 + yy - y0) // period) % 2 == 1
  if texture == "dotted":
    dx = (xx - x0) % (2 * period) - period
    dy = (yy - y0) % (2 * period) - period
    return dx * dx + dy * dy <= (0.5 * period) ** 2
  if texture == "checkered":
    return ((xx - x0) // period + (yy - y0) // period) % 2 == 1
  raise ValueError(f"unknown texture {texture!r}, expected one of {TEXTURES}")


def render_background(background, height, width):
  """``(height, width, 3)`` uint8 background of a scene."""
  base = np.asarray(background["color"], np.float64)
  if background["kind"] == "plain":
    img = np.broadcast_to(base, (height, width, 3))
  elif background["kind"] == "gradient":
    yy, xx = np.mgrid[0:height, 0:width]
    angle = background["angle"]
    t = (xx * np.cos(angle) + yy * np.sin(angle)) / max(height, width)
    img = base + background["delta"] * t[..., None]
  else:
    noise = np.random.default_rng(background["noise_seed"]).normal(0, 6, (height, width, 1))
    img = base + noise
  return np.clip(np.round(img), 0, 255).astype(np.uint8)


def render_scene(scene):
  """Draws a scene.

  Returns:
    ``(rgb, masks)``: ``(H, W, 3)`` uint8 image and one ``(H, W)`` bool mask
    per object (the pixels it covers in the final image).
  """
  rgb = render_background(scene.background, scene.height, scene.width).copy()
  masks = []
  for obj in scene.objects:
    mask = shape_mask(obj.shape, obj.x0, obj.y0, obj.side, scene.height, scene.width)
    primary = np.asarray(COLORS[obj.color], np.uint8)
    secondary = (primary * 0.45).astype(np.uint8)
    second = _texture_is_secondary(obj.texture, obj.x0, obj.y0, obj.side, scene.height, scene.width)
    rgb[mask & ~second] = primary
    rgb[mask & second] = secondary
    masks.append(mask)
  return rgb, masks


def object_attributes(scene):
  """The objects of ``scene`` as boxes and attribute classes.

  Returns:
    ``(boxes, classes)``: ``(n, 4)`` float64 xywh boxes (1-based, tight) and
    ``(n, 4)`` int32 positions in ``ATTRIBUTES``' colour, shape, texture and
    size tuples.
  """
  boxes = np.asarray([obj.box for obj in scene.objects], np.float64).reshape(-1, 4)
  classes = np.asarray([[values.index(getattr(obj, ATTRIBUTE_FIELDS[name]))
                         for name, values in ATTRIBUTES.items()] for obj in scene.objects],
                       np.int32).reshape(-1, len(ATTRIBUTES))
  return boxes, classes


def _tight_box(mask):
  rows = np.flatnonzero(mask.any(axis=1))
  cols = np.flatnonzero(mask.any(axis=0))
  return (int(cols[0]) + 1, int(rows[0]) + 1,
          int(cols[-1] - cols[0]) + 1, int(rows[-1] - rows[0]) + 1)


def union_box(boxes):
  """Smallest xywh box (1-based, inclusive pixels) holding all ``boxes``."""
  x1 = min(b[0] for b in boxes)
  y1 = min(b[1] for b in boxes)
  x2 = max(b[0] + b[2] - 1 for b in boxes)
  y2 = max(b[1] + b[3] - 1 for b in boxes)
  return (x1, y1, x2 - x1 + 1, y2 - y1 + 1)


def _box_centre(box):
  return (box[0] + (box[2] - 1) / 2, box[1] + (box[3] - 1) / 2)


def relation(first, second):
  """Where box ``first`` is relative to ``second``: above, below, to the left / right of.

  The axis with the larger centre offset decides.
  """
  (ax, ay), (bx, by) = _box_centre(first), _box_centre(second)
  if abs(ay - by) >= abs(ax - bx):
    return "above" if ay < by else "below"
  return "to the left of" if ax < bx else "to the right of"


def _place_objects(rng, width, height):
  """Samples 2-6 non-overlapping objects (a group of one colour and shape in some scenes)."""
  long_side = max(width, height)
  count = int(rng.integers(2, 7))
  specs = []
  if rng.random() < 0.35:
    shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
    specs += [(shape, color)] * int(rng.integers(2, min(4, count) + 1))
  while len(specs) < count:
    specs.append((rng.choice(SHAPES), rng.choice(list(COLORS))))
  objects, taken = [], []
  for shape, color in specs:
    size = str(rng.choice(list(SIZES)))
    side = max(6, int(round(rng.uniform(*SIZES[size]) * long_side)))
    texture = str(rng.choice(TEXTURES))
    for _ in range(50):
      x0 = int(rng.integers(0, width - side + 1))
      y0 = int(rng.integers(0, height - side + 1))
      if all(x0 + side + 2 <= a or a + s + 2 <= x0 or y0 + side + 2 <= b or b + s + 2 <= y0
             for a, b, s in taken):
        break
    else:
      continue
    taken.append((x0, y0, side))
    box = _tight_box(shape_mask(str(shape), x0, y0, side, height, width))
    objects.append(SceneObject(str(shape), str(color), size, texture, x0, y0, side, box))
  return objects


def _position_phrase(box, width, height):
  """'on the left' / 'on the right' / 'at the top' / 'at the bottom', or None near the centre."""
  cx, cy = _box_centre(box)
  dx, dy = (cx - (width - 1) / 2) / width, (cy - (height - 1) / 2) / height
  if max(abs(dx), abs(dy)) < 1 / 6:
    return None
  if abs(dx) >= abs(dy):
    return "on the left" if dx < 0 else "on the right"
  return "at the top" if dy < 0 else "at the bottom"


def _article(phrase):
  """``phrase`` with "a" or "an" in front."""
  return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _object_captions(obj, width, height):
  """All template captions that describe one object."""
  c, s = obj.color, obj.shape
  captions = [_article(f"{obj.size} {c} {s}"), _article(f"{obj.texture} {c} {s}"),
              f"the {s} is {c}", _article(f"{obj.size} {obj.texture} {c} {s}")]
  if obj.texture in TEXTURE_NOUNS:
    captions.append(_article(f"{c} {s} with {TEXTURE_NOUNS[obj.texture]}"))
  position = _position_phrase(obj.box, width, height)
  if position:
    captions.append(_article(f"{c} {s} {position}"))
  return captions


def _regions(rng, objects, width, height, tone):
  regions = []
  for obj in objects:
    captions = _object_captions(obj, width, height)
    for k in rng.choice(len(captions), size=2, replace=False):
      regions.append((captions[k], obj.box))
  pairs = [(i, j) for i in range(len(objects)) for j in range(len(objects)) if i != j]
  for k in rng.permutation(len(pairs))[:3]:
    a, b = objects[pairs[k][0]], objects[pairs[k][1]]
    phrase = (f"{_article(f'{a.color} {a.shape}')} {relation(a.box, b.box)} "
              f"{_article(f'{b.color} {b.shape}')}")
    regions.append((phrase, union_box([a.box, b.box])))
  groups = {}
  for obj in objects:
    groups.setdefault((obj.color, obj.shape), []).append(obj)
  for (color, shape), members in groups.items():
    if len(members) > 1:
      regions.append((f"{NUMBERS[len(members)]} {color} {PLURALS[shape]}",
                      union_box([m.box for m in members])))
  if len(objects) > 1:
    regions.append((f"{NUMBERS[len(objects)]} shapes on a {tone} background",
                    (1, 1, width, height)))
  return regions


def _background(rng, image_id, seed):
  tone = str(rng.choice(TONES))
  level = rng.uniform(195, 235) if tone == "light" else rng.uniform(30, 70)
  color = tuple(float(level + t) for t in rng.uniform(-12, 12, 3))
  kind = str(rng.choice(BACKGROUND_KINDS))
  background = {"kind": kind, "tone": tone, "color": color}
  if kind == "gradient":
    background["angle"] = float(rng.uniform(0, 2 * np.pi))
    background["delta"] = float(rng.uniform(15, 30)) * (-1 if tone == "light" else 1)
  elif kind == "noise":
    background["noise_seed"] = [seed, image_id, 1]
  return background


def make_scene(seed, image_id, image_size=320):
  """The scene of image ``image_id`` for ``seed``; long side in ``[0.8 image_size, image_size]``."""
  rng = np.random.default_rng([seed, image_id])
  long_side = int(rng.integers(int(round(0.8 * image_size)), image_size + 1))
  short_side = int(round(long_side * rng.choice(ASPECTS)))
  width, height = (long_side, short_side) if rng.random() < 0.6 else (short_side, long_side)
  background = _background(rng, image_id, seed)
  objects = _place_objects(rng, width, height)
  regions = _regions(rng, objects, width, height, background["tone"])
  return Scene(width, height, background, tuple(objects), tuple(regions))


def split_ids(num_images, seed, val_fraction=0.1, test_fraction=0.1):
  """Seeded split of ids ``1..num_images`` as ``{"train": [...], "val": [...], "test": [...]}``.

  Val and test get ``round(fraction * N)`` images, at least one each when ``N >= 3``.
  """
  order = np.random.default_rng([seed, 0]).permutation(num_images) + 1
  minimum = 1 if num_images >= 3 else 0
  n_val = max(minimum, int(round(val_fraction * num_images)))
  n_test = max(minimum, int(round(test_fraction * num_images)))
  return {"train": sorted(int(i) for i in order[n_val + n_test:]),
          "val": sorted(int(i) for i in order[:n_val]),
          "test": sorted(int(i) for i in order[n_val:n_val + n_test])}


def write_objects_json(out_dir, num_images, seed, image_size=320, scenes=None):
  """Writes ``out_dir/objects.json`` (module docstring) for images ``1..num_images``.

  ``scenes``: the scenes of those ids, in order, when already made (else
  ``make_scene(seed, id, image_size)`` makes them). Returns the file's path.
  """
  if scenes is None:
    scenes = [make_scene(seed, image_id, image_size) for image_id in range(1, num_images + 1)]
  images = {}
  for image_id, scene in zip(range(1, num_images + 1), scenes):
    images[str(image_id)] = [
        dict(zip(("x", "y", "width", "height"), obj.box),
             **{name: getattr(obj, field) for name, field in ATTRIBUTE_FIELDS.items()})
        for obj in scene.objects]
  path = os.path.join(out_dir, "objects.json")
  files.write_json(path, {"attributes": {k: list(v) for k, v in ATTRIBUTES.items()},
                          "images": images})
  return path


def _save_jpeg(rgb, path, quality):
  with files.atomic_output(path) as tmp_path:
    Image.fromarray(rgb).save(tmp_path, format="JPEG", quality=quality)


def generate_dataset(out_dir, num_images, seed, *, image_size=320, val_fraction=0.1,
                     test_fraction=0.1, jpeg_quality=90, progress=True):
  """Writes a synthetic dataset in the Visual Genome format to ``out_dir``.

  Returns:
    Dict of the written paths: ``image_dir``, ``region_data``, ``image_data``,
    ``split_json``, ``objects``.
  """
  if num_images < 1:
    raise ValueError(f"--num_images must be positive, got {num_images}")
  if image_size < 32:
    raise ValueError(f"--image_size must be at least 32, got {image_size}")
  image_dir = os.path.join(out_dir, "images")
  os.makedirs(image_dir, exist_ok=True)
  region_data, image_data, scenes = [], [], []
  for image_id in tqdm.trange(1, num_images + 1, desc="scenes", disable=not progress):
    scene = make_scene(seed, image_id, image_size)
    scenes.append(scene)
    rgb, _ = render_scene(scene)
    _save_jpeg(rgb, os.path.join(image_dir, f"{image_id}.jpg"), jpeg_quality)
    region_data.append({"id": image_id, "regions": [
        {"id": image_id * 1000 + k, "image": image_id, "phrase": phrase,
         "x": box[0], "y": box[1], "width": box[2], "height": box[3]}
        for k, (phrase, box) in enumerate(scene.regions)]})
    image_data.append({"image_id": image_id, "id": image_id, "width": scene.width,
                       "height": scene.height, "url": f"images/{image_id}.jpg",
                       "coco_id": None, "flickr_id": None})
  paths = {
      "image_dir": image_dir,
      "region_data": os.path.join(out_dir, "region_descriptions.json"),
      "image_data": os.path.join(out_dir, "image_data.json"),
      "split_json": os.path.join(out_dir, "densecap_splits.json"),
  }
  files.write_json(paths["region_data"], region_data)
  files.write_json(paths["image_data"], image_data)
  files.write_json(paths["split_json"], split_ids(num_images, seed, val_fraction, test_fraction))
  paths["objects"] = write_objects_json(out_dir, num_images, seed, image_size, scenes)
  return paths
