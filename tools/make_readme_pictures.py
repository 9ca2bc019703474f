"""Redraws the README's two pictures of the bundled model's output: ``make readme-pictures``.

Runs ``densecap_jax.predict`` on the bundled example images as ``make
predict`` does (``PREDICT_FLAGS``: drawings at each image's own size, 5 boxes,
text size 1, and the results viewer), in a temporary folder, then writes

- ``<out_dir>/drawn_example.jpg``: the drawing of ``--drawn_image``, as
  ``make predict`` writes it to ``out/predict/drawn/``;
- ``<out_dir>/example.png``: a ``SCREEN_SIZE`` (900 x 760) screenshot, taken
  with headless Chromium, of the results viewer (``view_results.html?labels=1``:
  captions on the boxes, 10 boxes) opened on ``--image``, which is moved to
  the front of ``results.json`` so that the page opens on it.

Each picture replaces the previous one atomically; nothing is written when a
step fails (a missing browser is reported before the model runs).
``tools/make_bundled_model.py`` can call :func:`make_pictures` after writing a
new bundled model.
"""

import argparse
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from densecap_jax import files  # pylint: disable=g-import-not-at-top
from densecap_jax import predictor
from densecap_jax import vis
from densecap_jax.commands import predict as predict_command
from densecap_jax.data import inputs

# The Makefile's predict target's drawing flags.
PREDICT_FLAGS = ("--num_to_draw", "5", "--text_size", "1")
IMAGE = "synthetic_12.jpg"          # the README's results viewer shows it
DRAWN_IMAGE = "synthetic_13.jpg"    # the README's drawn example
SCREEN_SIZE = (900, 760)            # (width, height) of the screenshot, pixels
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRAWN_NAME, VIEWER_NAME = "drawn_example.jpg", "example.png"


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default=predictor.bundled_model_path(),
                      help="model directory or name (default: the bundled model)")
  parser.add_argument("--out_dir", default=os.path.join(ROOT, "docs"),
                      help="folder of drawn_example.jpg and example.png (default: docs)")
  parser.add_argument("--image", default=IMAGE,
                      help="bundled example the results viewer shows (default: %(default)s)")
  parser.add_argument("--drawn_image", default=DRAWN_IMAGE,
                      help="bundled example of drawn_example.jpg (default: %(default)s)")
  return parser.parse_args(argv)


def find_browser():
  """The path of the first of ``BROWSERS`` on ``PATH``.

  Raises:
    RuntimeError: none is installed (one line saying how to install one).
  """
  for name in BROWSERS:
    path = shutil.which(name)
    if path:
      return path
  raise RuntimeError(f"no headless browser found ({', '.join(BROWSERS)}) to screenshot the "
                     f"results viewer: install chromium (apt-get install chromium)")


def check_example(name, flag):
  """Raises ValueError (one line) unless ``name`` is a file name of the bundled examples."""
  names = [os.path.basename(p) for p in inputs.image_files(predictor.bundled_examples_path())]
  if name not in names:
    raise ValueError(f"{flag} {name!r} is not one of the bundled examples: {', '.join(names)}")


def predict_examples(model, work_dir):
  """Runs ``densecap_jax.predict`` on the bundled examples as ``make predict`` does.

  Args:
    model: a model directory or name (``--checkpoint``).
    work_dir: an empty folder; gets ``drawn/`` (``--output_dir``) and ``vis/``
      (``--output_vis_dir``).

  Returns:
    ``(drawn_dir, vis_dir)``.

  Raises:
    SystemExit: the command's one-line error.
  """
  drawn_dir, vis_dir = os.path.join(work_dir, "drawn"), os.path.join(work_dir, "vis")
  predict_command.main(["--input_dir", predictor.bundled_examples_path(), "--checkpoint", model,
                        "--output_dir", drawn_dir, "--output_vis_dir", vis_dir, *PREDICT_FLAGS])
  return drawn_dir, vis_dir


def open_viewer_on(vis_dir, image):
  """Moves ``image``'s entry to the front of the viewer's results, so the page opens on it.

  The order of the other entries is kept; ``vis.write_viewer`` rewrites
  ``results.json`` and ``results.js``.

  Raises:
    ValueError: ``results.json`` has no entry named ``image``.
  """
  data = files.read_json(os.path.join(vis_dir, "results.json"), "results.json")
  results = data["results"]
  names = [r["img_name"] for r in results]
  if image not in names:
    raise ValueError(f"results.json has no image {image!r}: {', '.join(names)}")
  first = names.index(image)
  data["results"] = [results[first]] + results[:first] + results[first + 1:]
  vis.write_viewer(vis_dir, data)


def _chromium(browser, url, *flags):
  """Runs headless ``browser`` on ``url``; returns its stdout. RuntimeError (one line) on failure."""
  with tempfile.TemporaryDirectory() as profile:
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--force-device-scale-factor=1", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run",
               f"--user-data-dir={profile}", "--virtual-time-budget=10000", *flags, url]
    try:
      done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
      raise RuntimeError(f"{browser} did not finish within 120 s on {url}") from None
  if done.returncode:
    last = (done.stderr.strip().splitlines() or ["no message"])[-1]
    raise RuntimeError(f"{browser} failed (exit status {done.returncode}) on {url}: {last}")
  return done.stdout


def check_page(browser, url, image):
  """Raises RuntimeError (one line) unless the viewer at ``url`` loaded and shows ``image``."""
  dom = _chromium(browser, url, "--dump-dom", f"--window-size={SCREEN_SIZE[0]},{SCREEN_SIZE[1]}")
  state = re.search(r'<body[^>]*data-state="([^"]*)"', dom)
  shown = re.search(r'<figcaption id="image-name"[^>]*>([^<]*)<', dom)
  if not state or state.group(1) != "ready" or not shown or shown.group(1) != image:
    raise RuntimeError(f"the results viewer at {url} did not show {image} (page state "
                       f"{state.group(1) if state else 'unknown'!r}, image "
                       f"{shown.group(1) if shown else 'none'!r})")


def screenshot(browser, url, path):
  """Writes a ``SCREEN_SIZE`` PNG screenshot of ``url`` to ``path`` (atomically).

  Raises:
    RuntimeError: the browser failed, or its picture is not a PNG of
      ``SCREEN_SIZE`` or is one colour (a blank page).
  """
  with tempfile.TemporaryDirectory() as work:
    shot = os.path.join(work, "screenshot.png")
    _chromium(browser, url, f"--screenshot={shot}",
              f"--window-size={SCREEN_SIZE[0]},{SCREEN_SIZE[1]}")
    if not os.path.exists(shot):
      raise RuntimeError(f"{browser} wrote no screenshot of {url}")
    with Image.open(shot) as picture:
      if picture.format != "PNG" or picture.size != SCREEN_SIZE:
        raise RuntimeError(f"the screenshot of {url} is a {picture.format} of "
                           f"{picture.size[0]}x{picture.size[1]}, not a PNG of "
                           f"{SCREEN_SIZE[0]}x{SCREEN_SIZE[1]}")
      if all(lo == hi for lo, hi in picture.convert("RGB").getextrema()):
        raise RuntimeError(f"the screenshot of {url} is blank")
    with files.atomic_output(path) as tmp_path:
      shutil.copyfile(shot, tmp_path)


def make_pictures(model=None, out_dir=os.path.join(ROOT, "docs"), image=IMAGE,
                  drawn_image=DRAWN_IMAGE):
  """Writes ``drawn_example.jpg`` and ``example.png`` of ``model`` to ``out_dir``; returns their paths.

  Args:
    model: a model directory or name; ``None`` = the bundled model.
    out_dir: the folder to write into (created if missing).
    image: the bundled example (file name) the viewer's screenshot shows.
    drawn_image: the bundled example (file name) whose drawing is written.

  Raises:
    ValueError, RuntimeError: a one-line reason (an unknown example, no
      browser, a page that did not load); nothing is written then.
    SystemExit: ``densecap_jax.predict``'s one-line error.
  """
  check_example(image, "--image")
  check_example(drawn_image, "--drawn_image")
  browser = find_browser()
  model = model or predictor.bundled_model_path()
  drawn_path, viewer_path = os.path.join(out_dir, DRAWN_NAME), os.path.join(out_dir, VIEWER_NAME)
  with tempfile.TemporaryDirectory(prefix="readme-pictures-") as work:
    drawn_dir, vis_dir = predict_examples(model, work)
    open_viewer_on(vis_dir, image)
    url = pathlib.Path(vis_dir, "view_results.html").resolve().as_uri() + "?labels=1"
    check_page(browser, url, image)
    shot = os.path.join(work, VIEWER_NAME)
    screenshot(browser, url, shot)
    for source, target in ((os.path.join(drawn_dir, drawn_image), drawn_path),
                           (shot, viewer_path)):
      with files.atomic_output(target) as tmp_path:
        shutil.copyfile(source, tmp_path)
  return drawn_path, viewer_path


def main(argv=None):
  args = parse_args(argv)
  try:
    written = make_pictures(args.model, args.out_dir, image=args.image,
                            drawn_image=args.drawn_image)
  except (ValueError, RuntimeError) as e:
    sys.exit(f"error: {e}")
  print("wrote " + ", ".join(written))


if __name__ == "__main__":
  main()
