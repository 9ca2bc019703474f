"""Tests for the results viewer: the files write_viewer writes and the page in headless Chromium."""

import html
import functools
import html.parser
import http.server
import importlib.resources
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading

import numpy as np
import pytest
from PIL import Image

from densecap_jax import vis

# The original viewer's palette by score rank (vis/utils.js).
RANK_COLORS = ["rgb(173, 35, 35)", "rgb(42, 75, 215)", "rgb(87, 87, 87)"]
JS_PREFIX = "window.DENSECAP_RESULTS = "

needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None,
                                    reason="needs Debian's chromium (apt-get install -y chromium)")


def _results():
  """Two images: 12 detections with scores out of order, and 3 detections."""
  first_scores = np.array([0.5, 3.0, -1.0, 2.0, 1.5, 0.0, -0.5, 4.0, 1.0, -2.0, 2.5, -3.0])
  first_boxes = np.array([[10 + 20 * k, 5 + 10 * k, 60, 40] for k in range(12)], np.float32)
  return {
      "results": [
          {"boxes": first_boxes, "scores": first_scores.astype(np.float32),
           "captions": [f"caption {k}" for k in range(12)], "img_name": "first image.png"},
          {"boxes": [[1, 1, 30, 30], [50.5, 20.25, 100, 80], [200, 100, 50, 40]],
           "scores": [2.0, 1.0, 0.5], "captions": ["a red <b>bold</b> ball", "sky", "tree"],
           "img_name": "second.png"},
      ],
      "opt": {"image_size": 720, "box_width": 2},
  }


def _write_images(directory):
  Image.new("RGB", (720, 540), (200, 210, 220)).save(os.path.join(directory, "first image.png"))
  Image.new("RGB", (360, 480), (90, 90, 90)).save(os.path.join(directory, "second.png"))


def _as_lists(results):
  return json.loads(json.dumps(results, default=lambda value: value.tolist()))


def test_write_viewer_writes_page_and_data(tmp_path):
  page = vis.write_viewer(str(tmp_path / "vis"), _results())
  assert page == str(tmp_path / "vis" / "view_results.html")
  names = sorted(os.listdir(tmp_path / "vis"))
  assert names == ["boxes.css", "boxes.js", "results.js", "results.json", "view_results.html",
                   "viewer.css", "viewer.js"]
  package = importlib.resources.files("densecap_jax.viewer")
  for name in vis.VIEWER_FILES:
    assert (tmp_path / "vis" / name).read_bytes() == package.joinpath(name).read_bytes()


def test_results_json_and_js_round_trip(tmp_path):
  results = _results()
  vis.write_viewer(str(tmp_path), results)
  expected = _as_lists(results)
  from_json = json.loads((tmp_path / "results.json").read_text("utf-8"))
  assert from_json == expected
  assert from_json["results"][0]["boxes"][1] == [30.0, 15.0, 60.0, 40.0]
  assert from_json["results"][1]["captions"][0] == "a red <b>bold</b> ball"
  script = (tmp_path / "results.js").read_text("utf-8")
  assert script.startswith(JS_PREFIX) and script.endswith(";\n")
  assert json.loads(script[len(JS_PREFIX):-2]) == expected


def test_write_viewer_replaces_previous_results(tmp_path):
  vis.write_viewer(str(tmp_path), _results())
  vis.write_viewer(str(tmp_path), {"results": [], "opt": {}})
  assert json.loads((tmp_path / "results.json").read_text("utf-8")) == {"results": [], "opt": {}}
  assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.pop("results"), "'results' list"),
    (lambda r: r["results"][1].pop("scores"), r"results\[1\] lacks scores"),
    (lambda r: r["results"][1]["captions"].pop(), r"results\[1\] has unequal lengths"),
    (lambda r: r["results"][0].update(img_name=""), r"results\[0\].img_name"),
    (lambda r: r["results"][1].update(boxes=[[1, 2, 3]] * 3), r"results\[1\].boxes must be N x 4"),
])
def test_write_viewer_rejects_bad_results(tmp_path, edit, message):
  results = _results()
  edit(results)
  with pytest.raises(ValueError, match=message):
    vis.write_viewer(str(tmp_path), results)
  assert not (tmp_path / "results.json").exists()


def test_page_has_no_external_urls():
  package = importlib.resources.files("densecap_jax.viewer")
  for name in vis.VIEWER_FILES:
    text = package.joinpath(name).read_text("utf-8")
    assert not re.search(r"\b(https?|ftp|wss?)\s*:", text, re.I), name
    assert not re.search(r"""["'(=]\s*//""", text), name  # protocol-relative URL
    assert "@import" not in text and "url(" not in text, name
  page = package.joinpath(vis.VIEWER_PAGE).read_text("utf-8")
  referenced = re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']*)["']""", page)
  assert sorted(referenced) == ["boxes.css", "boxes.js", "viewer.css", "viewer.js"]


# --------------------------------------------------------------- in Chromium

class _Dom(html.parser.HTMLParser):
  """The elements of a page: tag, attributes and the text inside each."""

  def __init__(self, text):
    super().__init__()
    self.elements = []
    self._open = []
    self.feed(text)

  def handle_starttag(self, tag, attrs):
    element = {"tag": tag, "attrs": dict(attrs), "text": ""}
    self.elements.append(element)
    self._open.append(element)

  def handle_endtag(self, tag):
    while self._open and self._open.pop()["tag"] != tag:
      pass

  def handle_data(self, data):
    for element in self._open:
      element["text"] += data

  def find(self, tag, css_class=None):
    """Attribute dicts of the ``tag`` elements, those with ``css_class`` if given."""
    return [e["attrs"] for e in self._find(tag, css_class)]

  def texts(self, tag, css_class=None):
    return [e["text"] for e in self._find(tag, css_class)]

  def text(self, element_id):
    return next(e["text"] for e in self.elements if e["attrs"].get("id") == element_id)

  def _find(self, tag, css_class):
    return [e for e in self.elements if e["tag"] == tag and (
        css_class is None or css_class in e["attrs"].get("class", "").split())]


def _chromium(url, *args):
  """Loads ``url`` in headless Chromium; returns its stdout."""
  with tempfile.TemporaryDirectory() as profile:
    command = ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=10000",
               *args, url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
  return done.stdout


def _dump_dom(url, window_size="1000,1000"):
  return _Dom(_chromium(url, "--dump-dom", f"--window-size={window_size}"))


@pytest.fixture
def viewer_dir(tmp_path):
  vis.write_viewer(str(tmp_path), _results())
  _write_images(str(tmp_path))
  return tmp_path


@pytest.mark.slow
@needs_chromium
def test_page_from_disk_draws_top_boxes_and_captions(viewer_dir):
  dom = _dump_dom((viewer_dir / "view_results.html").as_uri())
  assert dom.find("body")[0]["data-state"] == "ready"
  assert dom.text("counter") == "image 1/2"
  boxes = {int(b["data-rank"]): b for b in dom.find("rect", "box")}
  assert sorted(boxes) == list(range(10))
  # Scores 4.0 (index 7), 3.0 (index 1), 2.5 (index 10) rank first: box [10 + 20k, 5 + 10k, 60, 40]
  # is drawn from (x - 1, y - 1).
  for rank, index in enumerate([7, 1, 10]):
    assert float(boxes[rank]["x"]) == 10 + 20 * index - 1
    assert float(boxes[rank]["y"]) == 5 + 10 * index - 1
    assert (float(boxes[rank]["width"]), float(boxes[rank]["height"])) == (60, 40)
    assert boxes[rank]["stroke"] == RANK_COLORS[rank]
  assert dom.find("svg")[0]["viewbox"] == "0 0 720 540"
  items = dom.find("li")
  assert [int(item["data-rank"]) for item in items] == list(range(10))
  captions = dom.texts("span", "caption")
  assert captions[:3] == ["caption 7", "caption 1", "caption 10"] and len(captions) == 10
  assert dom.texts("span", "score")[:3] == ["4.00", "3.00", "2.50"]
  assert dom.text("num-boxes-value") == "10/12"


@pytest.mark.slow
@needs_chromium
def test_page_served_over_http_reads_results_json(viewer_dir):
  os.remove(viewer_dir / "results.js")
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(viewer_dir))
  handler.log_message = lambda *args: None
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    dom = _dump_dom(f"http://127.0.0.1:{server.server_port}/view_results.html")
  finally:
    server.shutdown()
    server.server_close()
  assert dom.find("body")[0]["data-state"] == "ready"
  assert dom.text("counter") == "image 1/2"
  assert len(dom.find("rect", "box")) == 10


HARNESS = """
const log = {};
const press = key => document.dispatchEvent(new KeyboardEvent('keydown', {key, bubbles: true}));
const whenReady = next => (function poll() {
  document.body.dataset.state === 'ready' ? next() : setTimeout(poll, 20);
})();
const snapshot = () => ({
  counter: document.getElementById('counter').textContent,
  boxes: document.querySelectorAll('#overlay .box').length,
  captions: document.querySelectorAll('#captions li[data-rank]').length,
  labels: [...document.querySelectorAll('#overlay .label text')].map(t => t.textContent),
  highlighted: [...document.querySelectorAll('.highlight')].map(e => e.tagName.toLowerCase()),
  dimmed: document.getElementById('overlay').classList.contains('has-highlight'),
});
whenReady(() => {
  const image = document.getElementById('image').getBoundingClientRect();
  const top = document.querySelector('#overlay .box[data-rank="0"]').getBoundingClientRect();
  log.scale = {imageWidth: image.width, boxLeft: top.left - image.left, boxWidth: top.width};
  press('s'); press('s');
  log.fewer = snapshot();
  document.querySelectorAll('#captions li')[2].dispatchEvent(
      new MouseEvent('mouseover', {bubbles: true}));
  log.hoverCaption = snapshot();
  document.getElementById('captions').dispatchEvent(new MouseEvent('mouseleave'));
  document.querySelector('#overlay .box[data-rank="1"]').dispatchEvent(
      new MouseEvent('mouseover', {bubbles: true}));
  log.hoverBox = snapshot();
  const slider = document.getElementById('num-boxes');
  slider.value = 4;
  slider.dispatchEvent(new Event('input'));
  log.slider = snapshot();
  press('d');
  whenReady(() => {
    press('t');
    log.next = snapshot();
    press('a');
    whenReady(() => {
      log.back = snapshot();
      document.getElementById('log').textContent = JSON.stringify(log);
    });
  });
});
"""


@pytest.mark.slow
@needs_chromium
def test_page_keys_hover_slider_and_scaling(viewer_dir):
  (viewer_dir / "harness.js").write_text(HARNESS, "utf-8")
  page = (viewer_dir / "view_results.html").read_text("utf-8")
  page = page.replace("</body>", '<pre id="log"></pre><script src="harness.js"></script></body>')
  (viewer_dir / "harness.html").write_text(page, "utf-8")
  # A narrow window shows the 720 px image scaled down.
  dom = _dump_dom((viewer_dir / "harness.html").as_uri(), window_size="400,900")
  log = json.loads(html.unescape(dom.text("log")))

  scale = log["scale"]["imageWidth"] / 720
  assert scale < 0.7
  # Top box x = 10 + 20 * 7 = 150 (1-based) -> 149 px from the image's left edge, width 60.
  assert log["scale"]["boxLeft"] == pytest.approx(149 * scale, abs=2.5)
  assert log["scale"]["boxWidth"] == pytest.approx(60 * scale, abs=3.5)

  assert log["fewer"]["boxes"] == 8 and log["fewer"]["captions"] == 8
  assert sorted(log["hoverCaption"]["highlighted"]) == ["li", "rect"]
  assert log["hoverCaption"]["dimmed"]
  assert sorted(log["hoverBox"]["highlighted"]) == ["li", "rect"]
  assert log["slider"]["boxes"] == 4
  assert log["next"]["counter"] == "image 2/2"
  assert log["next"]["boxes"] == 3 and log["next"]["captions"] == 3
  assert sorted(log["next"]["labels"]) == ["a red <b>bold</b> ball", "sky", "tree"]
  assert log["back"]["counter"] == "image 1/2" and log["back"]["boxes"] == 4


@pytest.mark.slow
@needs_chromium
def test_page_without_results_says_so(tmp_path):
  for name in vis.VIEWER_FILES:
    shutil.copy(importlib.resources.files("densecap_jax.viewer").joinpath(name), tmp_path / name)
  dom = _dump_dom((tmp_path / "view_results.html").as_uri())
  assert dom.find("body")[0]["data-state"] == "error"
  assert "No results to show" in dom.text("status")
  assert "--output_vis_dir" in dom.text("status")


# Boxes (1-based xywh) on a 400 x 300 picture, by descending score: at the right edge, the
# bottom-left and bottom-right corners, sharing the first box's top-left corner, across the
# whole width with a caption wider than the picture, partly and wholly outside the picture.
EDGE_DETECTIONS = [
    ([300, 20, 101, 60], "a yellow square above a yellow square"),
    ([1, 250, 120, 51], "a large orange circle on the table"),
    ([280, 240, 121, 61], "a red ball"),
    ([300, 20, 60, 40], "a small cup"),
    ([1, 100, 400, 80], "a very long caption about the wooden table with a white cup of coffee "
                        "and a small spoon on a red saucer next to it"),
    ([350, 150, 100, 40], "a white sign on a pole"),
    ([420, 120, 30, 30], "a bird"),
]

LABELS_HARNESS = """
(function poll() {
  if (document.body.dataset.state !== 'ready') return setTimeout(poll, 20);
  document.getElementById('log').textContent = JSON.stringify(%s);
})();
"""


@pytest.mark.slow
@needs_chromium
def test_labels_stay_inside_the_picture_apart_and_readable(tmp_path):
  from svg_labels import LABELS_JS, check_labels

  boxes, captions = zip(*EDGE_DETECTIONS)
  vis.write_viewer(str(tmp_path), {"results": [{
      "boxes": list(boxes), "captions": list(captions),
      "scores": [10.0 - k for k in range(len(boxes))], "img_name": "edges.png"}], "opt": {}})
  Image.new("RGB", (400, 300), (135, 180, 230)).save(tmp_path / "edges.png")
  (tmp_path / "harness.js").write_text(LABELS_HARNESS % LABELS_JS, "utf-8")
  page = (tmp_path / "view_results.html").read_text("utf-8")
  page = page.replace("</body>", '<pre id="log"></pre><script src="harness.js"></script></body>')
  (tmp_path / "harness.html").write_text(page, "utf-8")
  # ?labels=1 starts with the captions on the boxes; the picture is shown at its own size.
  dom = _dump_dom((tmp_path / "harness.html").as_uri() + "?labels=1")
  toggle = next(b for b in dom.find("button") if b.get("id") == "toggle-inline")
  assert toggle["aria-pressed"] == "true"
  shown = json.loads(html.unescape(dom.text("log")))
  assert (shown["width"], shown["height"]) == (400, 300)
  assert shown["shownWidth"] == pytest.approx(400, abs=0.5)

  labels = check_labels(shown)
  assert [label["rank"] for label in labels] == list(range(len(EDGE_DETECTIONS)))
  by_caption = {" ".join(label["lines"]): label for label in labels}
  # Labels that would start at their box's left edge and run past the picture's right edge
  # are moved left to end at it.
  for caption in ("a yellow square above a yellow square", "a white sign on a pole", "a bird"):
    left, _, width, _ = by_caption[caption]["group"]
    assert left + width == pytest.approx(400, abs=1e-3), caption
  # The caption wider than the picture is wrapped between words onto several lines.
  long_label = by_caption[EDGE_DETECTIONS[4][1]]
  assert len(long_label["lines"]) >= 2 and long_label["group"][2] <= 400
  # There is room for every label here: none overlaps another.
  for i, a in enumerate(labels):
    for b in labels[i + 1:]:
      assert overlap_area(a["group"], b["group"]) == 0, (a["lines"], b["lines"])


def overlap_area(a, b):
  from svg_labels import overlap
  return overlap(a, b)
