"""The demo page in headless Chromium against a real server: upload, drawn boxes, phrases, live
webcam, no network.

Chromium (Debian's ``chromium`` package) is driven over the DevTools protocol
with a small WebSocket client written here on the standard library. The live
mode uses Chromium's fake camera (``--use-fake-device-for-media-stream``).
"""

import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

from densecap_jax.server import app as app_lib
from test_serve import (ServerProcess, StubCaptioner, app_server, image_bytes, make_model_dir,
                        random_image)

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium")
                                        else None)
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")]


class WebSocket:
  """A minimal client WebSocket (RFC 6455) for text messages on 127.0.0.1."""

  def __init__(self, url, timeout=30):
    parts = urllib.parse.urlsplit(url)
    self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    key = base64.b64encode(os.urandom(16)).decode()
    self.sock.sendall((f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                       f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                       f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
      chunk = self.sock.recv(4096)
      if not chunk:
        raise ConnectionError("WebSocket handshake: connection closed")
      response += chunk
    head, self.buffer = response.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 101"):
      raise ConnectionError(f"WebSocket handshake refused: {head.decode(errors='replace')}")

  def send(self, text):
    payload = text.encode()
    header = bytes([0x81])  # FIN, text frame
    if len(payload) < 126:
      header += bytes([0x80 | len(payload)])
    elif len(payload) < 1 << 16:
      header += bytes([0x80 | 126]) + struct.pack(">H", len(payload))
    else:
      header += bytes([0x80 | 127]) + struct.pack(">Q", len(payload))
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    self.sock.sendall(header + mask + masked)

  def _read(self, size):
    while len(self.buffer) < size:
      chunk = self.sock.recv(65536)
      if not chunk:
        raise ConnectionError("WebSocket closed")
      self.buffer += chunk
    data, self.buffer = self.buffer[:size], self.buffer[size:]
    return data

  def receive(self):
    """The next text message (fragments joined; control frames skipped)."""
    message = b""
    while True:
      first, second = self._read(2)
      size = second & 0x7F
      if size == 126:
        size = struct.unpack(">H", self._read(2))[0]
      elif size == 127:
        size = struct.unpack(">Q", self._read(8))[0]
      payload = self._read(size)
      opcode = first & 0x0F
      if opcode == 0x8:
        raise ConnectionError("WebSocket closed by the browser")
      if opcode in (0x0, 0x1):
        message += payload
        if first & 0x80:
          return message.decode()

  def close(self):
    self.sock.close()


class Browser:
  """Headless Chromium showing one page, with DevTools calls on it."""

  def __init__(self, url, profile_dir):
    self.proc = subprocess.Popen(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = self._devtools_port(os.path.join(profile_dir, "DevToolsActivePort"))
    pages = []
    deadline = time.monotonic() + 30
    while not pages and time.monotonic() < deadline:
      with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
        pages = [t for t in json.load(response) if t["type"] == "page"]
      time.sleep(0.1)
    self.socket = WebSocket(pages[0]["webSocketDebuggerUrl"])
    self.next_id = 0

  def _devtools_port(self, path, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      if os.path.exists(path):
        with open(path) as f:
          first = f.readline().strip()
        if first.isdigit():
          return int(first)
      if self.proc.poll() is not None:
        raise RuntimeError(f"chromium exited with status {self.proc.returncode}")
      time.sleep(0.1)
    raise RuntimeError("chromium did not open its DevTools port")

  def call(self, method, **params):
    self.next_id += 1
    self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
    while True:
      message = json.loads(self.socket.receive())
      if message.get("id") == self.next_id:
        if "error" in message:
          raise RuntimeError(f"{method}: {message['error']}")
        return message["result"]

  def evaluate(self, expression):
    result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                       awaitPromise=True, userGesture=True)
    if "exceptionDetails" in result:
      raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
    return result["result"].get("value")

  def wait_for(self, expression, timeout=60):
    """Polls ``expression`` until it is truthy (errors count as false); returns its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      try:
        value = self.evaluate(expression)
      except RuntimeError:  # e.g. the page has not loaded yet
        value = None
      if value:
        return value
      time.sleep(0.1)
    state = self.evaluate("[document.body.dataset.state, "
                          "document.getElementById('status').textContent]")
    raise AssertionError(f"timed out waiting for {expression}; page state, status: {state}")

  def close(self):
    self.socket.close()
    self.proc.terminate()
    try:
      self.proc.wait(10)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  model_dir = make_model_dir(tmp_path_factory.mktemp("browser_model") / "tiny_random")
  process = ServerProcess(model_dir, tmp_path_factory.getbasetemp() / "jax_cache",
                          "--max_batch", "1").wait_ready()
  yield process
  process.stop()


@pytest.fixture
def browser(server, tmp_path):
  page = Browser(server.url, str(tmp_path / "profile"))
  yield page
  page.close()


# The page has asked /healthz and enabled its controls (the HTML starts "idle" already).
PAGE_READY = ("document.body.dataset.state === 'idle' && "
              "document.getElementById('model').textContent.includes('tiny_random')")


def post_png(server, png):
  status, answer = server.json("POST", "/api/caption", png, {"Content-Type": "image/png"})
  assert status == 200
  return answer


def test_upload_shows_boxes_and_captions(server, browser, tmp_path):
  rgb = random_image(21, 48, 64)
  path = tmp_path / "shapes.png"
  path.write_bytes(image_bytes(rgb, "PNG"))
  expected = post_png(server, path.read_bytes())
  assert expected["captions"]

  browser.wait_for(PAGE_READY)
  document = browser.call("DOM.getDocument")
  node = browser.call("DOM.querySelector", nodeId=document["root"]["nodeId"], selector="#file")
  browser.call("DOM.setFileInputFiles", files=[str(path)], nodeId=node["nodeId"])
  browser.wait_for("document.body.dataset.state === 'ready'")

  shown = browser.evaluate("""(() => {
    const rects = [...document.querySelectorAll('#overlay .box')];
    rects.sort((a, b) => a.dataset.rank - b.dataset.rank);
    return {
      viewBox: document.getElementById('overlay').getAttribute('viewBox'),
      rects: rects.map(r => ['x', 'y', 'width', 'height'].map(k => Number(r.getAttribute(k)))),
      labels: document.querySelectorAll('#overlay .label').length,
      captions: [...document.querySelectorAll('#captions .caption')].map(e => e.textContent),
      name: document.getElementById('image-name').textContent,
      canvas: [document.getElementById('picture').width, document.getElementById('picture').height],
      slider: [document.getElementById('num-boxes').value, document.getElementById('num-boxes').max],
    };
  })()""")
  count = min(10, len(expected["captions"]))
  assert shown["viewBox"] == "0 0 64 48" and shown["canvas"] == [64, 48]
  assert shown["name"].startswith("shapes.png")
  assert shown["captions"] == expected["captions"][:count]
  assert shown["labels"] == count
  assert shown["slider"] == [str(count), str(len(expected["captions"]))]
  # Boxes are 1-based xywh: drawn at (x - 1, y - 1), w x h.
  want = [[x - 1, y - 1, w, h] for x, y, w, h in expected["boxes"][:count]]
  np.testing.assert_allclose(shown["rects"], want, atol=1e-3)
  # Every resource the page used came from the server.
  loaded = browser.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
  assert loaded and all(url.startswith(server.url) for url in loaded), loaded

  # The slider shows fewer boxes; hovering a caption highlights its box.
  browser.evaluate("""(() => {
    const slider = document.getElementById('num-boxes');
    slider.value = 1;
    slider.dispatchEvent(new Event('input'));
    document.querySelector('#captions li').dispatchEvent(
        new MouseEvent('mouseover', {bubbles: true}));
  })()""")
  assert browser.evaluate("document.querySelectorAll('#overlay .box').length") == 1
  assert browser.evaluate("document.querySelector('#overlay .box').classList.contains('highlight')")


def upload(browser, path):
  browser.wait_for(PAGE_READY)
  document = browser.call("DOM.getDocument")
  node = browser.call("DOM.querySelector", nodeId=document["root"]["nodeId"], selector="#file")
  browser.call("DOM.setFileInputFiles", files=[str(path)], nodeId=node["nodeId"])
  browser.wait_for("document.body.dataset.state === 'ready'")


def drag(browser, start, end):
  """Drags the mouse from ``start`` to ``end``, fractions ``(x, y)`` of the shown image."""
  rect = browser.evaluate("(() => { const r = document.getElementById('overlay')"
                          ".getBoundingClientRect(); "
                          "return [r.left, r.top, r.width, r.height]; })()")
  points = [(rect[0] + fx * rect[2], rect[1] + fy * rect[3]) for fx, fy in (start, end)]
  browser.call("Input.dispatchMouseEvent", type="mousePressed", x=points[0][0], y=points[0][1],
               button="left", buttons=1, clickCount=1)
  middle = [(a + b) / 2 for a, b in zip(*points)]
  for x, y in (middle, points[1]):
    browser.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y, button="left", buttons=1)
  browser.call("Input.dispatchMouseEvent", type="mouseReleased", x=points[1][0], y=points[1][1],
               button="left", buttons=0, clickCount=1)


def test_a_drawn_box_is_captioned_and_a_phrase_highlights_regions(server, browser, tmp_path):
  rgb = random_image(22, 48, 64)
  path = tmp_path / "draw.png"
  path.write_bytes(image_bytes(rgb, "PNG"))
  png = path.read_bytes()
  detected = post_png(server, png)
  upload(browser, path)

  drag(browser, (0.1, 0.2), (0.6, 0.7))
  browser.wait_for("document.querySelectorAll('#overlay .box.given').length === 1")
  shown = browser.evaluate("""(() => {
    const rect = document.querySelector('#overlay .box.given');
    const first = document.querySelector('#captions li');
    return {box: ['x', 'y', 'width', 'height'].map(k => Number(rect.getAttribute(k))),
            rank: rect.dataset.rank, caption: first.querySelector('.caption').textContent,
            given: first.classList.contains('given'),
            status: document.getElementById('status').textContent,
            boxes: document.querySelectorAll('#overlay .box').length};
  })()""")
  x, y, w, h = shown["box"]
  box = [x + 1, y + 1, w, h]  # drawn at (x - 1, y - 1)
  np.testing.assert_allclose(box, [0.1 * 64 + 1, 0.2 * 48 + 1, 0.5 * 64, 0.5 * 48], atol=0.5)
  status, mine = server.json("POST", "/api/caption?" + urllib.parse.urlencode(
      {"boxes": json.dumps([box])}), png, {"Content-Type": "image/png"})
  assert status == 200
  assert shown["rank"] == "0" and shown["given"] and shown["caption"] == mine["captions"][0]
  assert shown["status"].startswith(f"Your box: \u201c{mine['captions'][0]}\u201d")
  assert shown["boxes"] == min(10, len(detected["boxes"])) + 1

  # A phrase: every box is scored, the three best are highlighted, the others dimmed.
  browser.evaluate("document.getElementById('phrase').focus()")
  browser.call("Input.insertText", text="red square")
  browser.wait_for("document.querySelectorAll('#overlay .box.match').length === 3")
  shown = browser.evaluate("""(() => ({
    matched: [...document.querySelectorAll('#captions li.match .caption')].map(e => e.textContent),
    scores: [...document.querySelectorAll('#captions li .score')].map(e => Number(e.textContent)),
    dimmed: document.getElementById('overlay').classList.contains('has-matches'),
    status: document.getElementById('status').textContent,
  }))()""")
  boxes = [box] + detected["boxes"]
  status, scored = server.json("POST", "/api/score?" + urllib.parse.urlencode(
      {"phrases": json.dumps(["red square"]), "boxes": json.dumps(boxes)}), png,
      {"Content-Type": "image/png"})
  assert status == 200
  mean = np.asarray(scored["mean_log_likelihood"])[:, 0]
  best = np.argsort(-mean, kind="stable")[:3]
  assert sorted(shown["matched"]) == sorted(scored["captions"][i] for i in best)
  assert shown["dimmed"] and shown["status"].startswith("\u201cred square\u201d: the 3 best")
  # The list is ranked by the phrase: its scores descend from the best match's.
  assert shown["scores"] == sorted(shown["scores"], reverse=True)
  np.testing.assert_allclose(shown["scores"][0], mean.max(), atol=0.006)

  # Unknown words are named in the status; a phrase of which the model knows only function
  # words ("a") highlights nothing and says it is not ranked.
  def submit(phrase):
    browser.evaluate(f"""(() => {{
      const input = document.getElementById('phrase');
      input.value = {json.dumps(phrase)};
      input.form.requestSubmit();
    }})()""")

  submit("a red zebra square")
  browser.wait_for("document.getElementById('status').textContent.includes('zebra')")
  assert browser.evaluate("document.getElementById('status').textContent").startswith(
      "\u201ca red zebra square\u201d: the model does not know \u201czebra\u201d; scored as "
      "\u201ca red square\u201d. The 3 best-matching regions are highlighted")
  assert browser.evaluate("document.querySelectorAll('#overlay .box.match').length") == 3
  submit("a man riding a horse")
  browser.wait_for("document.getElementById('status').classList.contains('error')")
  assert browser.evaluate("document.getElementById('status').textContent") == (
      "\u201ca man riding a horse\u201d: the model does not know \u201cman\u201d, "
      "\u201criding\u201d, \u201chorse\u201d; scored as \u201ca a\u201d. Not ranked: of this "
      "phrase the model knows only function words (\u201ca\u201d, \u201ca\u201d), which do "
      "not say what to look for.")
  assert browser.evaluate("document.querySelectorAll('#overlay .box.match').length") == 0
  assert not browser.evaluate("document.getElementById('overlay').classList.contains("
                              "'has-matches')")
  if os.environ.get("DENSECAP_SCREENSHOT_DIR"):  # to look at the page
    shot = browser.call("Page.captureScreenshot", format="png")
    with open(os.path.join(os.environ["DENSECAP_SCREENSHOT_DIR"], "not_ranked.png"), "wb") as f:
      f.write(base64.b64decode(shot["data"]))

  # A phrase of unknown words is a one-line error in the status; clearing it restores the view.
  browser.evaluate("""(() => {
    const input = document.getElementById('phrase');
    input.value = 'zebra';
    input.form.requestSubmit();
  })()""")
  browser.wait_for("document.getElementById('status').textContent.includes('(zebra)')")
  assert "none of its words (zebra)" in browser.evaluate(
      "document.getElementById('status').textContent")
  assert browser.evaluate("document.querySelectorAll('#overlay .box.match').length") == 0
  assert browser.evaluate("document.body.dataset.state") == "ready"


def test_live_mode_captions_fake_camera_frames(server, browser):
  _, before = server.json("GET", "/healthz")
  browser.wait_for(PAGE_READY)
  browser.evaluate("document.getElementById('live').click()")
  frames = browser.wait_for(
      "Number(document.getElementById('fps').dataset.frames) >= 5 && "
      "Number(document.getElementById('fps').dataset.frames)", timeout=90)
  shown = browser.evaluate("""(() => ({
    state: document.body.dataset.state,
    fps: document.getElementById('fps').textContent,
    viewBox: document.getElementById('overlay').getAttribute('viewBox'),
    canvas: [document.getElementById('picture').width, document.getElementById('picture').height],
    pressed: document.getElementById('live').getAttribute('aria-pressed'),
  }))()""")
  browser.evaluate("document.getElementById('live').click()")
  _, after = server.json("GET", "/healthz")
  assert shown["state"] == "live" and shown["pressed"] == "true"
  fps, counted = re.fullmatch(r"(\d+\.\d) fps \u00b7 (\d+) frames", shown["fps"]).groups()
  assert float(fps) > 0 and int(counted) >= frames
  # The fake camera is 640 x 480; frames go to the server at the model's 32-pixel size.
  assert shown["canvas"] == [640, 480] and shown["viewBox"] == "0 0 32 24"
  assert after["batches"]["requests"] - before["batches"]["requests"] >= frames
  assert browser.evaluate("document.getElementById('live').getAttribute('aria-pressed')") == "false"


def test_page_says_warming_up_until_the_server_is_ready(tmp_path):
  release = threading.Event()
  app = app_lib.create_app(StubCaptioner(), model_name="stub", max_upload_bytes=1 << 20,
                           max_pixels=1 << 20, batch_wait_ms=1, warm_up=release.wait)
  with app_server(app) as client:
    page = Browser(f"http://127.0.0.1:{client.port}/", str(tmp_path / "profile"))
    try:
      page.wait_for("document.body.dataset.state === 'starting'")
      shown = page.evaluate("""(() => ({
        status: document.getElementById('status').textContent,
        file: document.getElementById('file').disabled,
        live: document.getElementById('live').disabled,
      }))()""")
      assert shown["status"].startswith("Warming up") and shown["file"] and shown["live"], shown
      release.set()
      page.wait_for("document.body.dataset.state === 'idle'")
      shown = page.evaluate("""(() => ({
        status: document.getElementById('status').textContent,
        model: document.getElementById('model').textContent,
        file: document.getElementById('file').disabled,
        live: document.getElementById('live').disabled,
      }))()""")
      assert shown == {"status": "", "model": "model stub (tiny config, images resized to 32 px)",
                       "file": False, "live": False}, shown
    finally:
      page.close()


def test_labels_of_a_photo_stay_inside_apart_and_readable(server, browser):
  from photos import photo_path
  from svg_labels import LABELS_JS, check_labels

  # A narrow window shows the 600 x 400 photo scaled down; labels keep 15 px text on screen.
  browser.call("Emulation.setDeviceMetricsOverride", width=520, height=700, deviceScaleFactor=1,
               mobile=False)
  upload(browser, photo_path("coffee"))
  shown = browser.evaluate(LABELS_JS)
  assert (shown["width"], shown["height"]) == (600, 400)
  assert shown["shownWidth"] < 500
  drawn = [rank for rank, caption in shown["captions"].items() if caption.strip()]
  total = int(browser.evaluate("document.getElementById('num-boxes').max"))
  assert len(shown["labels"]) == len(drawn) == len(shown["boxes"]) == min(10, total) >= 3

  labels = check_labels(shown)
  assert any(len(label["lines"]) > 1 for label in labels)  # the model's long captions wrap
  sizes = browser.evaluate("[...document.querySelectorAll('#overlay .label text')]"
                           ".map(t => Number(t.getAttribute('font-size')))")
  scale = shown["shownWidth"] / shown["width"]
  np.testing.assert_allclose(np.array(sizes) * scale, 15, rtol=1e-3)

  # Hover and phrase matching still dim the other labels.
  browser.evaluate("document.querySelector('#captions li[data-rank=\"2\"]').dispatchEvent("
                   "new MouseEvent('mouseover', {bubbles: true}))")
  opacities = browser.evaluate("""[...document.querySelectorAll('#overlay .label')].map(
      g => [Number(g.dataset.rank), Number(getComputedStyle(g).opacity)])""")
  assert sorted(rank for rank, opacity in opacities if opacity == 1) == [2]
  assert browser.evaluate("document.querySelector('#overlay .labels').lastChild.dataset.rank") \
      == "2"
