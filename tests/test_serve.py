"""Tests for the web demo server: micro-batching, the model side, and the API of a real server.

The server tests start ``python -m densecap_jax.serve`` on 127.0.0.1 (a free
port) with a small random model and talk to it over HTTP; expected answers
come from ``DenseCapPredictor.predict_prepared`` in this process, with the
boxes scaled to the upload in NumPy, and from ``caption_regions`` and
``score_phrases`` for given boxes and phrases.
"""

import asyncio
import concurrent.futures
import contextlib
import http.client
import io
import json
import os
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import types
import urllib.parse
import uuid
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image
import small_model
from test_data_images import write_orientation_6_jpeg

from densecap_jax.commands import flags as cli
from densecap_jax import predictor as predictor_lib
from densecap_jax.commands import predict
from densecap_jax.commands import serve
from densecap_jax.server import app as app_lib
from densecap_jax.server import request_parsing as parsing
from densecap_jax.server import batching
from densecap_jax.server import captioner as captioner_lib
from densecap_jax.server import programs as programs_lib
from densecap_jax.data import image_stream

VOCAB = [None, "a", "red", "circle", "square", "blue"]
IMAGE_SIZE = 32
MAX_UPLOAD_BYTES = 60_000
MAX_PIXELS = 100_000
SERVER_START_TIMEOUT_S = 300


# ------------------------------------------------------------------ helpers


def _end_unlikely(params):
  """Makes END unlikely so that captions have words (class V is END)."""
  bias = np.array(params["language_model"]["output_proj"]["bias"])
  bias[-1] = -3.0
  params["language_model"]["output_proj"]["bias"] = bias
  return params


def make_model_dir(path):
  """A tiny random model (32-pixel images, one 32 x 32 bucket) whose captions are words."""
  return small_model.save_random_tiny_model(path, VOCAB, image_size=IMAGE_SIZE,
                                            buckets=((IMAGE_SIZE, IMAGE_SIZE),),
                                            adjust_params=_end_unlikely)


def image_bytes(array, fmt):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
  return buffer.getvalue()


def random_image(seed, height, width):
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


class ServerProcess:
  """``python -m densecap_jax.serve`` in a child process; ``url`` once it is ready."""

  def __init__(self, model_dir, cache_dir, *flags):
    """Starts the server; ``wait_ready()`` blocks until it has compiled and listens."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", DENSECAP_JAX_CACHE_DIR=str(cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env.pop("XLA_FLAGS", None)
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "densecap_jax.serve", "--checkpoint", model_dir, "--port", "0",
         *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    self.lines = queue.Queue()
    self.output = []
    threading.Thread(target=self._read, daemon=True).start()
    self.url = self.host = self.port = None

  def _read(self):
    for line in self.proc.stdout:
      self.lines.put(line)
    self.lines.put(None)

  def wait_line(self, pattern, timeout=SERVER_START_TIMEOUT_S):
    """The match of the next output line matching ``pattern`` (``re.match``); sets ``url``.

    Raises RuntimeError (after stopping the server) if it exits or times out first.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      try:
        line = self.lines.get(timeout=1)
      except queue.Empty:
        continue
      if line is None:
        break
      self.output.append(line)
      found = re.match(pattern, line)
      if found:
        url = re.search(r"https?://[^:/\s]+:\d+/", line)
        if url:
          self.url = url.group(0)
          self.host, self.port = re.match(r"https?://([^:/]+):(\d+)/", self.url).groups()
        return found
    self.stop()
    raise RuntimeError(f"server printed no line matching {pattern!r}:\n" + "".join(self.output))

  def wait_ready(self):
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    self.wait_line(r"ready: (\S+)")
    return self._wait_healthy(deadline)

  def _wait_healthy(self, deadline):
    while time.monotonic() < deadline:
      try:
        if self.request("GET", "/healthz", timeout=5)[0] == 200:
          return self
      except OSError:
        pass
      time.sleep(0.1)
    self.stop()
    raise RuntimeError("server printed ready but /healthz does not answer")

  def wait_exit(self, timeout):
    """The exit status, once every output line is in ``output``."""
    status = self.proc.wait(timeout)
    while (line := self.lines.get(timeout=timeout)) is not None:
      self.output.append(line)
    return status

  def request(self, method, path, body=None, headers=None, timeout=60):
    """``(status, headers dict, body bytes)`` of one request on a new connection."""
    connection = http.client.HTTPConnection(self.host, int(self.port), timeout=timeout)
    try:
      connection.request(method, path, body=body, headers=headers or {})
      response = connection.getresponse()
      return response.status, dict(response.getheaders()), response.read()
    finally:
      connection.close()

  def json(self, method, path, body=None, headers=None):
    status, response_headers, data = self.request(method, path, body, headers)
    assert response_headers.get("content-type") == "application/json", (status, data)
    return status, json.loads(data)

  def stop(self):
    if self.proc.poll() is None:
      self.proc.terminate()
      try:
        self.proc.wait(10)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()


def multipart(fields):
  """``(body, content type)`` for ``fields``: name -> str, or name -> (file name, bytes)."""
  boundary = uuid.uuid4().hex
  parts = []
  for name, value in fields.items():
    if isinstance(value, tuple):
      head = (f'Content-Disposition: form-data; name="{name}"; filename="{value[0]}"\r\n'
              "Content-Type: application/octet-stream\r\n\r\n")
      data = value[1]
    else:
      head = f'Content-Disposition: form-data; name="{name}"\r\n\r\n'
      data = value.encode()
    parts.append(f"--{boundary}\r\n{head}".encode() + data + b"\r\n")
  body = b"".join(parts) + f"--{boundary}--\r\n".encode()
  return body, f"multipart/form-data; boundary={boundary}"


def expected_answer(predictor, rgb, *, final_nms_thresh=0.3, max_boxes=None, min_score=None):
  """The answer for ``rgb`` from ``predict_prepared``, filtered and scaled to the upload in NumPy."""
  prepared = predictor.prepare(rgb)
  predictor.final_nms_thresh = final_nms_thresh
  (output,) = predictor.predict_prepared([prepared])
  keep = [i for i, s in enumerate(output["scores"]) if min_score is None or s >= min_score]
  keep = keep[:max_boxes]
  frac = rgb.shape[0] / prepared.model_input.shape[0]  # webcam daemon: original H / resized H
  boxes = np.asarray(output["boxes"], np.float64)[keep]
  scaled = np.stack([(boxes[:, 0] - 1) * frac + 1, (boxes[:, 1] - 1) * frac + 1,
                     boxes[:, 2] * frac, boxes[:, 3] * frac], axis=1)
  return {"boxes": scaled, "scores": np.asarray(output["scores"])[keep],
          "captions": [output["captions"][i] for i in keep],
          "width": rgb.shape[1], "height": rgb.shape[0]}


def assert_same_answer(answer, expected):
  assert answer["width"] == expected["width"] and answer["height"] == expected["height"]
  assert answer["captions"] == expected["captions"]
  np.testing.assert_allclose(np.reshape(answer["boxes"], (-1, 4)), expected["boxes"],
                             rtol=1e-4, atol=2e-3)
  np.testing.assert_allclose(answer["scores"], expected["scores"], rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return make_model_dir(tmp_path_factory.mktemp("serve_model") / "tiny_random")


@pytest.fixture(scope="module")
def started_server(model_dir, tmp_path_factory):
  process = ServerProcess(model_dir, tmp_path_factory.getbasetemp() / "jax_cache",
                          "--max_batch", "4", "--batch_wait_ms", "30",
                          "--max_upload_bytes", str(MAX_UPLOAD_BYTES),
                          "--max_pixels", str(MAX_PIXELS))
  yield process
  process.stop()


@pytest.fixture(scope="module")
def predictor(model_dir, started_server):
  """The same model in this process, compiled while the server compiles its own."""
  del started_server
  model = predictor_lib.load_model(model_dir)
  model.predict([np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)])
  return model


@pytest.fixture(scope="module")
def server(started_server, predictor):
  del predictor
  return started_server.wait_ready()


# --------------------------------------------------------- micro-batching


def test_micro_batcher_batches_concurrent_items_in_order():
  calls = []

  def run_batch(items):
    calls.append(list(items))
    time.sleep(0.02)
    return [item * 10 for item in items]

  async def scenario():
    batcher = batching.MicroBatcher(run_batch, max_batch=3, wait_s=0.2, max_pending=100)
    await batcher.start()
    results = await asyncio.gather(*(batcher.submit(i) for i in range(7)))
    await batcher.stop()
    return results, batcher.stats

  results, stats = asyncio.run(scenario())
  assert results == [i * 10 for i in range(7)]
  # All seven arrive within the wait: batches fill to max_batch, in submission order.
  assert calls == [[0, 1, 2], [3, 4, 5], [6]]
  assert (stats.items, stats.batches, stats.largest_batch) == (7, 3, 3)


def test_micro_batcher_does_not_wait_past_wait_s_and_survives_errors():
  def run_batch(items):
    if "bad" in items:
      raise RuntimeError("model failed")
    return [item.upper() for item in items]

  async def scenario():
    batcher = batching.MicroBatcher(run_batch, max_batch=8, wait_s=0.05, max_pending=1)
    await batcher.start()
    start = time.monotonic()
    alone = await batcher.submit("x")  # no other item comes: answered after ~wait_s
    waited = time.monotonic() - start
    with pytest.raises(RuntimeError, match="model failed"):
      await batcher.submit("bad")
    after = await batcher.submit("y")  # the worker keeps serving
    first = asyncio.ensure_future(batcher.submit("z"))
    await asyncio.sleep(0)
    with pytest.raises(batching.QueueFullError):
      await batcher.submit("w")
    full = await first
    await batcher.stop()
    return alone, waited, after, full

  alone, waited, after, full = asyncio.run(scenario())
  assert (alone, after, full) == ("X", "Y", "Z")
  assert 0.04 <= waited < 1.0


def test_micro_batcher_skips_cancelled_requests():
  seen = []

  def run_batch(items):
    seen.extend(items)
    return items

  async def scenario():
    batcher = batching.MicroBatcher(run_batch, max_batch=4, wait_s=0.05, max_pending=10)
    await batcher.start()
    gone = asyncio.ensure_future(batcher.submit("gone"))
    await asyncio.sleep(0)
    gone.cancel()  # a client that disconnected before its batch ran
    kept = await batcher.submit("kept")
    await batcher.stop()
    return kept

  assert asyncio.run(scenario()) == "kept"
  assert seen == ["kept"]


# ------------------------------------------------------------ model side


class FakePredictor:
  """Stands in for DenseCapPredictor: records calls, answers boxes derived from the image size."""

  def __init__(self, calls):
    self.buckets = ((16, 32), (32, 16), (32, 32))
    self.image_size = 32
    self.num_proposals = 5
    self.batch_size = 1
    self.final_nms_thresh = 0.3
    self.calls = calls

  def predict_prepared(self, prepared, max_detections=None):
    del max_detections
    assert len(prepared) <= self.batch_size
    self.calls.append((self.batch_size, self.final_nms_thresh,
                       [p.model_input.shape[:2] for p in prepared]))
    results = []
    for p in prepared:
      h, w = p.model_input.shape[:2]
      results.append({
          "boxes": np.array([[1, 1, w, h], [2, 3, 4, 5], [w / 2, h / 2, 2, 2]], np.float32),
          "scores": np.array([2.0, 0.5, -1.0], np.float32),
          "captions": [f"{h}x{w} a", f"{h}x{w} b", f"{h}x{w} c"],
      })
    return results


def fake_request(height, width, original, **options):
  prepared = image_stream.PreparedImage(np.zeros((height, width, 3), np.float32), None, original)
  return captioner_lib.CaptionRequest(
      prepared, captioner_lib.CaptionOptions(**{"final_nms_thresh": 0.3, **options}))


def test_captioner_groups_by_bucket_and_threshold_and_pads_to_two_sizes():
  calls = []
  captioner = captioner_lib.Captioner(FakePredictor(calls), max_batch=4)
  assert captioner.batch_sizes == (1, 4)
  requests = [fake_request(16, 32, (48, 96)), fake_request(32, 16, (64, 32)),
              fake_request(16, 32, (32, 64)), fake_request(32, 32, (100, 100)),
              fake_request(16, 32, (16, 32), final_nms_thresh=0.5),
              fake_request(16, 32, (24, 48)), fake_request(16, 32, (8, 16)),
              fake_request(16, 32, (40, 80))]
  # Nothing compiled yet: every image runs alone through the batch-1 program of its
  # bucket, which the first request compiles; the batch-4 programs stay pending.
  first = captioner.run(requests)
  assert sorted(calls) == sorted([(1, 0.3, [(16, 32)])] * 5 + [
      (1, 0.3, [(32, 16)]), (1, 0.3, [(32, 32)]), (1, 0.5, [(16, 32)])])
  status = captioner.programs.status()
  assert (status["total"], status["ready"], status["in_cache"]) == (6, 3, 0)
  assert {(p.bucket, p.batch_size) for p in captioner.programs.pending()} == {
      ((16, 32), 4), ((32, 16), 4), ((32, 32), 4)}
  captioner.warm_up()
  calls.clear()
  results = captioner.run(requests)
  assert first == results
  # Five 16x32 images at 0.3: a batch of 4 and one of 1; every other group alone.
  assert sorted(calls) == sorted([
      (4, 0.3, [(16, 32)] * 4), (1, 0.3, [(16, 32)]), (1, 0.3, [(32, 16)]),
      (1, 0.3, [(32, 32)]), (1, 0.5, [(16, 32)])])
  for request, result in zip(requests, results):
    h, w = request.prepared.model_input.shape[:2]
    original_h, original_w = request.prepared.original_size
    frac = original_h / h
    assert result["captions"] == [f"{h}x{w} a", f"{h}x{w} b", f"{h}x{w} c"]
    assert (result["width"], result["height"]) == (original_w, original_h)
    np.testing.assert_allclose(result["boxes"][1], [1 * frac + 1, 2 * frac + 1, 4 * frac,
                                                    5 * frac], rtol=1e-6)
    np.testing.assert_allclose(result["boxes"][0], [1, 1, w * frac, h * frac], rtol=1e-6)


def test_captioner_filters_by_min_score_then_max_boxes():
  captioner = captioner_lib.Captioner(FakePredictor([]), max_batch=1)
  assert captioner.batch_sizes == (1,)
  (a, b, c, d) = captioner.run([
      fake_request(32, 32, (32, 32), min_score=0.0), fake_request(32, 32, (32, 32), max_boxes=1),
      fake_request(32, 32, (32, 32), min_score=-5.0, max_boxes=2),
      fake_request(32, 32, (32, 32), max_boxes=0)])
  assert a["scores"] == [2.0, 0.5] and a["captions"] == ["32x32 a", "32x32 b"]
  assert b["scores"] == [2.0] and len(b["boxes"]) == 1
  assert c["scores"] == [2.0, 0.5]
  assert d == {"boxes": [], "scores": [], "captions": [], "width": 32, "height": 32}


def test_captioner_warm_up_runs_every_bucket_and_batch_size():
  calls = []
  captioner = captioner_lib.Captioner(FakePredictor(calls), max_batch=3)
  assert captioner.warm_up(max_workers=2) == 6
  assert sorted(calls) == sorted((size, 0.3, [bucket] * size)
                                 for bucket in ((16, 32), (32, 16), (32, 32)) for size in (1, 3))
  assert captioner.programs.status()["ready"] == 6 and not captioner.programs.pending()
  assert {p.by for p in captioner.programs.programs.values()} == {"start"}


def test_programs_compile_common_photo_and_webcam_buckets_first():
  # The bundled model's buckets (256 px). Resized to 256: 480x640 -> 192x256,
  # 720x1280 -> 144x256 (bucket 160x256), 427x640 -> 170x256 (192x256 again),
  # 512x512 -> 256x256, 640x480 -> 256x192, 640x427 -> 256x170 (256x192 again).
  buckets = ((64, 256), (128, 256), (160, 256), (192, 256), (224, 256), (256, 64),
             (256, 128), (256, 160), (256, 192), (256, 224), (256, 256))
  assert programs_lib.priority_order(buckets, 256) == [
      (192, 256), (160, 256), (256, 256), (256, 192), (64, 256), (128, 256), (224, 256),
      (256, 64), (256, 128), (256, 160), (256, 224)]
  programs = programs_lib.ProgramSet(buckets, (1, 4), 256)
  order = [(p.bucket, p.batch_size) for p in programs.pending()]
  assert order[:2] == [((192, 256), 1), ((160, 256), 1)]
  assert [size for _, size in order] == [1] * 11 + [4] * 11


class BlockingPredictor(FakePredictor):
  """A ``FakePredictor`` whose calls from the background thread wait for ``release``."""

  def __init__(self, calls):
    super().__init__(calls)
    self.config = types.SimpleNamespace(name="fake", seq_length=15)  # what create_app reads
    self.release = threading.Event()
    self.background_started = threading.Event()

  def prepare(self, image):
    height, width = (16, 32) if image.width > image.height else (32, 16)
    return image_stream.PreparedImage(np.zeros((height, width, 3), np.float32), None,
                                   image.size[::-1])

  def predict_prepared(self, prepared, max_detections=None):
    if threading.current_thread().name == "background-compile":
      self.background_started.set()
      assert self.release.wait(30)
    return super().predict_prepared(prepared, max_detections)


def test_a_request_compiles_its_own_program_while_the_background_compiles_another():
  calls = []
  predictor = BlockingPredictor(calls)
  captioner = captioner_lib.Captioner(predictor, max_batch=2)
  background = threading.Thread(target=captioner.background_warm_up, name="background-compile")
  background.start()
  try:
    assert predictor.background_started.wait(30)
    status = captioner.programs.status()
    assert status["background"] == "running" and status["ready"] == 0
    # The first program in the background's order is the 32x32 bucket (square photos
    # come first among these buckets); a 16x32 request does not wait for it.
    assert status["busy"] == [{"bucket": [32, 32], "batch_size": 1, "action": "compiling"}]
    (result,) = captioner.run([fake_request(16, 32, (16, 32))])
    assert result["captions"][0] == "16x32 a"
    assert captioner.programs.status()["ready"] == 1
    assert captioner.programs[((16, 32), 1)].by == "request"
  finally:
    predictor.release.set()
    background.join(30)
  assert captioner.programs.status() == {
      "total": 6, "ready": 6, "in_cache": 0, "background": "done", "busy": [], "waiting": []}
  # Every program ran once: the request's own and five dummy batches.
  assert sorted((size, shapes[0]) for size, _, shapes in calls) == sorted(
      (size, bucket) for bucket in ((16, 32), (32, 16), (32, 32)) for size in (1, 2))


def test_a_request_waits_for_the_program_the_background_is_compiling_and_says_so():
  calls = []
  predictor = BlockingPredictor(calls)
  captioner = captioner_lib.Captioner(predictor, max_batch=2)
  program = captioner.programs[((32, 32), 1)]
  program.in_cache = True  # as if the cache held it: the message says "loading"
  background = threading.Thread(target=captioner.background_warm_up, name="background-compile")
  background.start()
  answers = []
  request = threading.Thread(
      target=lambda: answers.extend(captioner.run([fake_request(32, 32, (64, 64))])))
  try:
    assert predictor.background_started.wait(30)
    request.start()
    _wait_for(lambda: captioner.programs.status()["waiting"])
    assert captioner.programs.status()["waiting"] == [
        {"bucket": [32, 32], "batch_size": 1, "action": "loading", "requests": 1,
         "message": programs_lib.MESSAGES["loading"]}]
    assert not answers and len(calls) == 0
  finally:
    predictor.release.set()
    background.join(30)
    request.join(30)
  assert answers[0]["captions"][0] == "32x32 a"
  # The program was compiled once, by the background; the request then ran on it.
  assert [c for c in calls if c[0] == 1 and c[2] == [(32, 32)]] == [(1, 0.3, [(32, 32)])] * 2
  assert program.by == "background" and program.ready
  assert programs_lib.MESSAGES["compiling"].startswith("compiling the model for this image size")


def test_the_background_waits_while_a_request_compiles():
  captioner = captioner_lib.Captioner(FakePredictor([]), max_batch=1)
  compiling, release, started = threading.Event(), threading.Event(), []

  def slow_request():
    compiling.set()
    assert release.wait(30)

  request = threading.Thread(target=captioner.programs.run,
                             args=(captioner.programs[((16, 32), 1)], slow_request))
  request.start()
  assert compiling.wait(30)
  background = threading.Thread(
      target=captioner.programs.background, args=(lambda p: started.append(p.bucket),))
  background.start()
  time.sleep(0.3)
  assert not started  # nothing begins while the request compiles
  release.set()
  request.join(30)
  background.join(30)
  assert started == [(32, 32), (32, 16)]  # the other two buckets, square first


# --------------------------------------------------------------- uploads


def png_with_size(width, height):
  """A PNG whose header claims ``width x height`` but whose pixel data are for 1 x 1."""
  data = bytearray(image_bytes(np.zeros((1, 1, 3), np.uint8), "PNG"))
  ihdr = data.index(b"IHDR")
  data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
  crc = zlib.crc32(bytes(data[ihdr:ihdr + 17]))
  data[ihdr + 17:ihdr + 21] = struct.pack(">I", crc)
  return bytes(data)


def test_decode_image_checks_pixels_from_the_header_before_decoding():
  with pytest.raises(parsing.RequestError, match="8000x8000 = 64000000 pixels") as e:
    parsing.decode_image(png_with_size(8000, 8000), max_pixels=40_000_000)
  assert e.value.status == 413
  rgb = random_image(0, 30, 40)
  assert np.array_equal(np.asarray(parsing.decode_image(image_bytes(rgb, "PNG"), 1200)), rgb)
  with pytest.raises(parsing.RequestError, match="over the limit of 1199 pixels"):
    parsing.decode_image(image_bytes(rgb, "PNG"), 1199)


def test_decode_image_gives_its_pixel_limit_instead_of_pillows_bomb_warning_or_error():
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # Pillow's DecompressionBombWarning would fail the test
    for width, height, size in ((10000, 9500, "10000x9500 = 95000000"),
                                (15000, 15000, "225000000")):
      with pytest.raises(parsing.RequestError) as e:
        parsing.decode_image(png_with_size(width, height), max_pixels=40_000_000)
      assert e.value.status == 413
      assert e.value.message == f"image of {size} pixels is over the limit of 40000000 pixels"


def test_decode_image_refuses_truncated_and_non_images_and_applies_orientation():
  jpeg = image_bytes(random_image(1, 64, 48), "JPEG")
  for data, message in ((jpeg[:len(jpeg) // 2], "cannot decode the image"),
                        (b"GIF89a but not really", "cannot decode the image|not an image"),
                        (b"plain text", "not an image of a supported format")):
    with pytest.raises(parsing.RequestError, match=message) as e:
      parsing.decode_image(data, 10**6)
    assert e.value.status == 400
  # Stored 30 wide x 20 high, EXIF orientation 6 (rotate 90 degrees clockwise to view).
  stored = Image.fromarray(random_image(2, 20, 30))
  exif = Image.Exif()
  exif[0x0112] = 6
  buffer = io.BytesIO()
  stored.save(buffer, format="JPEG", exif=exif.tobytes())
  assert parsing.decode_image(buffer.getvalue(), 10**6).size == (20, 30)


def test_parse_fields_defaults_values_and_errors():
  defaults = captioner_lib.CaptionOptions(final_nms_thresh=0.3)
  assert parsing.parse_fields([], defaults) == (defaults, {})
  assert parsing.parse_fields(
      [("max_boxes", "5"), ("min_score", "-1.5"), ("final_nms_thresh", " 0.5 ")],
      defaults) == (captioner_lib.CaptionOptions(0.5, 5, -1.5), {})
  assert parsing.parse_fields([("phrases", '["a"]'), ("max_boxes", "2")], defaults,
                              ("boxes", "phrases")) == (
                                  captioner_lib.CaptionOptions(0.3, 2), {"phrases": '["a"]'})
  for fields, message in (([("max_boxes", "2.5")], "max_boxes must be an integer, got '2.5'"),
                          ([("max_boxes", "-1")], "max_boxes must be non-negative"),
                          ([("final_nms_thresh", "1.5")], r"final_nms_thresh must be in \[0, 1\]"),
                          ([("min_score", "nan")], "min_score must be finite"),
                          ([("min_score", "high")], "min_score must be a number"),
                          ([("maxboxes", "3")], "unknown field 'maxboxes'"),
                          ([("phrases", "[]")], "unknown field 'phrases'; expected 'image' and "
                                                "optionally .*'boxes'$"),
                          ([("boxes", "[]"), ("min_score", "1")], "min_score: not with 'boxes'")):
    with pytest.raises(parsing.RequestError, match=message) as e:
      parsing.parse_fields(fields, defaults, ("boxes",))
    assert e.value.status == 400


def test_parse_boxes_and_phrases():
  np.testing.assert_array_equal(parsing.parse_boxes("[[1, 2.5, 3, 4]]"), [[1, 2.5, 3, 4]])
  assert parsing.parse_boxes("[]").shape == (0, 4)
  assert parsing.parse_phrases('["a red", "b"]') == ["a red", "b"]
  too_many = json.dumps([[1, 1, 2, 2]] * (parsing.MAX_GIVEN_BOXES + 1))
  for parse, text, message in (
      (parsing.parse_boxes, "[[1, 2", "boxes must be a list of .* in JSON; cannot parse it"),
      (parsing.parse_boxes, '{"x": 1}', "boxes must be a list of .*, got dict"),
      (parsing.parse_boxes, "[1, 2, 3, 4]", r"boxes: box 0 must be \[x, y, w, h\], 4 numbers"),
      (parsing.parse_boxes, '[[1, 1, 2, 2], [1, "2", 3, 4]]', "boxes: box 1 must be"),
      (parsing.parse_boxes, "[[1, 1, true, 2]]", "boxes: box 0 must be"),
      (parsing.parse_boxes, too_many, "1025 boxes are more than the limit of 1024"),
      (parsing.parse_phrases, "a red", "phrases must be a list of strings in JSON"),
      (parsing.parse_phrases, '"a red"', "phrases must be a non-empty list"),
      (parsing.parse_phrases, "[]", "phrases must be a non-empty list"),
      (parsing.parse_phrases, '["a", 3]', "phrase 1 must be a string, got 3"),
      (parsing.parse_phrases, json.dumps(["a"] * 65), "65 phrases are more than the limit")):
    with pytest.raises(parsing.RequestError, match=message) as e:
      parse(text)
    assert e.value.status == 400 and "\n" not in e.value.message


# ---------------------------------------------------------- real server


def test_healthz_and_page(server):
  status, health = server.json("GET", "/healthz")
  assert status == 200 and health["status"] == "ok"
  assert health["model"] == "tiny_random" and health["config"] == "tiny"
  assert health["buckets"] == [[IMAGE_SIZE, IMAGE_SIZE]] and health["batch_sizes"] == [1, 4]
  assert health["image_size"] == IMAGE_SIZE and health["max_pixels"] == MAX_PIXELS
  assert health["regions"]["max_boxes"] == parsing.MAX_GIVEN_BOXES
  assert health["regions"]["max_phrase_words"] == 15
  package = os.path.join(os.path.dirname(app_lib.__file__), os.pardir)
  for path, name, media in (("/", "static/index.html", "text/html"),
                            ("/static/app.js", "static/app.js", "text/javascript"),
                            ("/static/app.css", "static/app.css", "text/css"),
                            ("/static/boxes.js", "viewer/boxes.js", "text/javascript"),
                            ("/static/boxes.css", "viewer/boxes.css", "text/css")):
    status, headers, body = server.request("GET", path)
    with open(os.path.join(package, name), "rb") as f:
      assert status == 200 and body == f.read()
    assert headers["content-type"].startswith(media)
    assert "default-src 'self'" in headers["content-security-policy"]
  _, _, page = server.request("GET", "/")
  assert not re.search(rb"""(src|href)=["']?(https?:)?//""", page)  # no outside assets


def test_caption_multipart_and_raw_body_match_predict_prepared(server, predictor):
  rgb = random_image(3, 45, 60)
  jpeg = image_bytes(rgb, "JPEG")
  decoded = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
  body, content_type = multipart({"image": ("dir/photo.jpg", jpeg), "max_boxes": "3"})
  status, answer = server.json("POST", "/api/caption?min_score=-50", body,
                               {"Content-Type": content_type})
  assert status == 200 and answer["img_name"] == "photo.jpg"
  assert 0 < len(answer["captions"]) <= 3
  assert_same_answer(answer, expected_answer(predictor, decoded, max_boxes=3, min_score=-50))

  png = image_bytes(rgb, "PNG")
  status, answer = server.json("POST", "/api/caption?final_nms_thresh=0.6", png,
                               {"Content-Type": "image/png"})
  assert status == 200 and answer["img_name"] == "image"
  assert_same_answer(answer, expected_answer(predictor, rgb, final_nms_thresh=0.6))
  assert all(caption.split() and set(caption.split()) <= set(VOCAB[1:])
             for caption in answer["captions"])


def test_a_sideways_phone_photo_is_upright_in_the_cli_the_api_and_the_server(
    server, predictor, model_dir, tmp_path):
  path = tmp_path / "phone.jpg"
  stored = write_orientation_6_jpeg(path, height=30, width=40)  # stored landscape, EXIF 6
  upright = np.rot90(stored, k=-1)  # 40 high, 30 wide
  predictor.final_nms_thresh = 0.3  # the default of the CLI and the server
  # Python API: a path, an opened PIL image and the upright pixels agree.
  prepared = predictor.prepare(str(path))
  assert prepared.original_size == (40, 30) and prepared.display.shape == (32, 24, 3)
  (api,) = predictor.predict(str(path))
  with Image.open(path) as img:
    (from_pil,) = predictor.predict(img)
  (from_pixels,) = predictor.predict(upright)
  assert 0 < len(api["captions"])
  for other in (from_pil, from_pixels):
    np.testing.assert_array_equal(other["boxes"], api["boxes"])
    assert other["captions"] == api["captions"]
  # predict command: the same boxes and captions, on the upright resized image (results.json
  # keeps the resized image's pixels).
  vis_dir = tmp_path / "vis"
  predict.main(["--input_image", str(path), "--checkpoint", model_dir, "--output_vis_dir",
                str(vis_dir)])
  with open(vis_dir / "results.json") as f:
    (entry,) = json.load(f)["results"]
  assert Image.open(vis_dir / "phone.jpg").size == (24, 32)
  (resized,) = predictor.predict(str(path), coords="resized")
  np.testing.assert_allclose(np.reshape(entry["boxes"], (-1, 4)), resized["boxes"], rtol=1e-6,
                             atol=1e-5)
  assert entry["captions"] == api["captions"]
  # Server: the upright size, and the boxes of the API (in the upload's pixels).
  status, answer = server.json("POST", "/api/caption", path.read_bytes(),
                               {"Content-Type": "image/jpeg"})
  assert status == 200 and (answer["width"], answer["height"]) == (30, 40)
  assert_same_answer(answer, expected_answer(predictor, upright))
  assert answer["captions"] == api["captions"]
  np.testing.assert_allclose(answer["boxes"], api["boxes"], rtol=1e-5, atol=1e-4)


def test_32_concurrent_requests_are_batched_and_all_correct(server, predictor):
  images = [random_image(10 + i, h, w) for i, (h, w) in
            enumerate(((45, 60), (60, 40), (32, 32), (20, 70)))]
  expected = [expected_answer(predictor, rgb) for rgb in images]
  _, before = server.json("GET", "/healthz")
  jobs = [i % len(images) for i in range(32)]

  def post(i):
    return server.json("POST", "/api/caption", image_bytes(images[i], "PNG"),
                       {"Content-Type": "image/png"})

  with concurrent.futures.ThreadPoolExecutor(32) as pool:
    answers = list(pool.map(post, jobs))
  for i, (status, answer) in zip(jobs, answers):
    assert status == 200, answer
    assert_same_answer(answer, expected[i])
  _, after = server.json("GET", "/healthz")
  requests = after["batches"]["requests"] - before["batches"]["requests"]
  batches = after["batches"]["batches"] - before["batches"]["batches"]
  assert requests == 32 and batches < 32 and after["batches"]["largest"] > 1


def bad_upload(case):
  """``(body, headers)`` of a bad request to ``/api/caption``."""
  png = image_bytes(random_image(5, 20, 30), "PNG")
  as_png = {"Content-Type": "image/png"}
  if case == "text as png":
    return b"this is text", as_png
  if case == "garbage after a JPEG marker":
    return b"\xff\xd8\xff\xe0" + b"\0" * 100, {"Content-Type": "image/jpeg"}
  if case == "truncated JPEG":
    return image_bytes(random_image(6, 64, 64), "JPEG")[:400], {"Content-Type": "image/jpeg"}
  if case == "body over the byte limit":
    return b"\0" * (MAX_UPLOAD_BYTES + 1000), as_png
  if case == "image over the pixel limit":
    return image_bytes(np.zeros((300, 400, 3), np.uint8), "PNG"), as_png
  if case == "header claiming 2000 x 2000":
    return png_with_size(2000, 2000), as_png
  if case == "header claiming 50000 x 50000":
    return png_with_size(50_000, 50_000), as_png
  if case == "text/plain":
    return png, {"Content-Type": "text/plain"}
  if case == "application/json":
    return png, {"Content-Type": "application/json"}
  if case == "no content type":
    return png, {}
  if case == "empty body":
    return b"", as_png
  if case == "no image field":
    body, content_type = multipart({"photo": ("a.png", png)})
  elif case == "image field is text":
    body, content_type = multipart({"image": "not a file"})
  elif case == "two image files":
    body, content_type = multipart({"image": ("a.png", png), "other": ("b.png", png)})
  elif case == "bad option":
    body, content_type = multipart({"image": ("a.png", png), "max_boxes": "many"})
  elif case == "multipart without parts":
    body, content_type = b"garbage", "multipart/form-data; boundary=xyz"
  elif case == "multipart without boundary":
    body, content_type = b"garbage", "multipart/form-data"
  return body, {"Content-Type": content_type}


@pytest.mark.parametrize("case, status, message", [
    ("text as png", 400, "not an image of a supported format"),
    ("garbage after a JPEG marker", 400, "cannot decode the image|not an image"),
    ("truncated JPEG", 400, "cannot decode the image"),
    ("body over the byte limit", 413, f"over the limit of {MAX_UPLOAD_BYTES} bytes"),
    ("image over the pixel limit", 413, f"400x300 = 120000 pixels is over the limit of {MAX_PIXELS}"),
    ("header claiming 2000 x 2000", 413, f"4000000 pixels is over the limit of {MAX_PIXELS}"),
    ("header claiming 50000 x 50000", 413, f"over the limit of {MAX_PIXELS} pixels"),
    ("text/plain", 415, "unsupported Content-Type 'text/plain'"),
    ("application/json", 415, "multipart/form-data with an 'image' file field"),
    ("no content type", 415, r"unsupported Content-Type '\(none\)'"),
    ("empty body", 400, "the image is empty"),
    ("no image field", 400, "unknown field 'photo'|exactly one file field named 'image'"),
    ("image field is text", 400, "exactly one file field named 'image'"),
    ("two image files", 400, "malformed multipart upload: Too many files"),
    ("bad option", 400, "max_boxes must be an integer, got 'many'"),
    ("multipart without parts", 400, "malformed multipart|exactly one file field"),
    ("multipart without boundary", 400, "malformed multipart upload: Missing boundary"),
])
def test_bad_uploads_get_a_clear_json_error_and_the_server_keeps_serving(
    server, case, status, message):
  got_status, answer = server.json("POST", "/api/caption", *bad_upload(case))
  assert got_status == status and re.search(message, answer["error"]), answer
  assert set(answer) == {"error"}
  png = image_bytes(random_image(5, 20, 30), "PNG")
  status, answer = server.json("POST", "/api/caption", png, {"Content-Type": "image/png"})
  assert status == 200 and answer["width"] == 30


# ------------------------------------------------------- boxes and phrases


def fields_query(**fields):
  return "?" + urllib.parse.urlencode(fields)


def assert_close(got, want, **tolerance):
  np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64),
                             **({"rtol": 1e-4, "atol": 2e-3} | tolerance))


def test_caption_given_boxes_matches_caption_regions(server, predictor):
  rgb = random_image(40, 45, 60)
  boxes = [[5, 5, 20, 15], [-5, 10, 30, 30], [30.5, 20.25, 12, 9], [50, 40, 30, 30]]
  (want,) = predictor.caption_regions(rgb, boxes)
  body, content_type = multipart({"image": ("box.png", image_bytes(rgb, "PNG")),
                                  "boxes": json.dumps(boxes)})
  status, answer = server.json("POST", "/api/caption", body, {"Content-Type": content_type})
  assert status == 200, answer
  assert set(answer) == {"boxes", "clipped", "outside", "captions", "caption_log_probs", "scores",
                         "width", "height", "img_name"}
  assert (answer["width"], answer["height"], answer["img_name"]) == (60, 45, "box.png")
  assert answer["clipped"] == [False, True, False, True] == want["clipped"].tolist()
  assert answer["captions"] == want["captions"]
  assert_close(answer["boxes"], want["boxes"], atol=1e-4)
  assert answer["boxes"][1] == [1, 10, 24, 30]
  assert_close(answer["caption_log_probs"], want["caption_log_probs"], atol=1e-3)
  assert_close(answer["scores"], want["scores"], atol=1e-4)
  # The same as a query field, one box: the same caption.
  status, one = server.json("POST", "/api/caption" + fields_query(boxes=json.dumps(boxes[:1])),
                            image_bytes(rgb, "PNG"), {"Content-Type": "image/png"})
  assert status == 200 and one["captions"] == want["captions"][:1]


def test_score_matches_score_phrases_over_detections_and_given_boxes(server, predictor):
  rgb = random_image(41, 45, 60)
  phrases = ["a red circle", "Blue square, zebra!", "square", "a man riding a horse"]
  predictor.final_nms_thresh = 0.3  # the server's default
  (want,) = predictor.score_phrases(rgb, phrases)
  status, answer = server.json("POST", "/api/score" + fields_query(phrases=json.dumps(phrases)),
                               image_bytes(rgb, "PNG"), {"Content-Type": "image/png"})
  assert status == 200, answer
  assert set(answer) == {"boxes", "scores", "captions", "log_likelihood", "mean_log_likelihood",
                         "phrases", "unknown_words", "no_known_content_words", "width", "height",
                         "img_name"}
  assert answer["phrases"] == ["a red circle", "blue square", "square", "a a"]
  assert answer["unknown_words"] == [[], ["zebra"], [], ["man", "riding", "horse"]]
  # Only "a" known of the last phrase: flagged, so that the page ranks nothing by it.
  assert answer["no_known_content_words"] == [False, False, False, True]
  assert len(answer["boxes"]) == len(want["boxes"]) > 0
  assert answer["captions"] == want["captions"]
  assert np.shape(answer["log_likelihood"]) == (len(want["boxes"]), 4)
  assert_close(answer["boxes"], want["boxes"])
  assert_close(answer["scores"], want["scores"], atol=1e-4)
  assert_close(answer["log_likelihood"], want["log_likelihood"], atol=1e-3)
  assert_close(answer["mean_log_likelihood"], want["mean_log_likelihood"], atol=1e-3)

  boxes = [[2, 3, 30, 20], [40, 30, 40, 40]]
  (want,) = predictor.score_phrases(rgb, phrases[:1], boxes)
  body, content_type = multipart({"image": ("s.png", image_bytes(rgb, "PNG")),
                                  "phrases": json.dumps(phrases[:1]), "boxes": json.dumps(boxes)})
  status, answer = server.json("POST", "/api/score", body, {"Content-Type": content_type})
  assert status == 200, answer
  assert answer["clipped"] == [False, True] and answer["captions"] == want["captions"]
  assert np.shape(answer["mean_log_likelihood"]) == (2, 1)
  assert_close(answer["boxes"], want["boxes"], atol=1e-4)
  assert_close(answer["log_likelihood"], want["log_likelihood"], atol=1e-3)
  assert_close(answer["mean_log_likelihood"], want["mean_log_likelihood"], atol=1e-3)
  # The detection options choose among the detections scored.
  status, top = server.json("POST", "/api/score" + fields_query(
      phrases=json.dumps(["a"]), max_boxes=1), image_bytes(rgb, "PNG"),
      {"Content-Type": "image/png"})
  assert status == 200 and len(top["boxes"]) == 1


def test_boxes_scale_with_the_uploaded_image(server):
  blocks = np.random.default_rng(42).integers(0, 256, (6, 8, 3), dtype=np.uint8)
  small = np.repeat(np.repeat(blocks, 4, axis=0), 4, axis=1)  # 24 x 32: the model's size
  large = np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)  # the same photo at 2x
  answers = []
  for rgb in (small, large):
    status, answer = server.json("POST", "/api/caption", image_bytes(rgb, "PNG"),
                                 {"Content-Type": "image/png"})
    assert status == 200
    answers.append(answer)
  one, two = answers
  assert (two["width"], two["height"]) == (2 * one["width"], 2 * one["height"])
  assert one["captions"] and two["captions"] == one["captions"]
  np.testing.assert_allclose(two["boxes"], 2 * np.asarray(one["boxes"]), atol=1.0)
  # Given boxes: the same region at either size has the same caption.
  box = [5, 3, 12, 10]
  given = []
  for rgb, scaled in ((small, box), (large, [2 * box[0] - 1, 2 * box[1] - 1, 24, 20])):
    status, answer = server.json("POST", "/api/caption" + fields_query(boxes=json.dumps([scaled])),
                                 image_bytes(rgb, "PNG"), {"Content-Type": "image/png"})
    assert status == 200
    given.append(answer)
  assert given[0]["captions"] == given[1]["captions"]
  assert_close(given[0]["scores"], given[1]["scores"], atol=1e-4)


@pytest.mark.parametrize("route, fields, message", [
    ("caption", {"boxes": "[[NaN, 1, 5, 5]]"}, r"^boxes: box 0: x is nan$"),
    ("caption", {"boxes": "[[1, 1, 5, 5], [3, 3, 0, 5]]"},
     r"^boxes: box 1: w and h must be positive, got w=0, h=5$"),
    ("caption", {"boxes": "[[1, 2, 3]]"}, r"^boxes: box 0 must be \[x, y, w, h\], 4 numbers"),
    ("caption", {"boxes": "[[1, 2, 3, 4"}, r"^boxes must be a list of .* cannot parse it"),
    ("caption", {"boxes": "[[1, 2, 3, 4]]", "max_boxes": "2"}, "max_boxes: not with 'boxes'"),
    ("caption", {"phrases": '["a"]'}, "unknown field 'phrases'"),
    ("score", {"phrases": '[""]'}, r"^phrase 0 '': it has no words$"),
    ("score", {"phrases": '["a", "' + "red " * 16 + '"]'},
     r"^phrase 1 .* has 16 words, more than the model's seq_length 15$"),
    ("score", {"phrases": '["zebra giraffe"]'},
     r"^phrase 0 'zebra giraffe': none of its words \(zebra, giraffe\) is in the model's"),
    ("score", {"phrases": "a red"}, r"^phrases must be a list of strings in JSON"),
    ("score", {}, r"^give the phrases to score: field 'phrases'"),
    ("score", {"phrases": '["a"]', "boxes": "[[1, 1, 5, -5]]"}, r"^boxes: box 0: w and h must"),
])
def test_bad_boxes_and_phrases_get_a_one_line_400(server, route, fields, message):
  _assert_one_line_400(server, route, fields, message)


def _assert_one_line_400(server, route, fields, message):
  """Posts a small PNG with ``fields``; the 400 answer's error: one line matching ``message``."""
  png = image_bytes(random_image(5, 20, 30), "PNG")
  status, headers, body = server.request("POST", f"/api/{route}" + fields_query(**fields), png,
                                         {"Content-Type": "image/png"})
  answer = json.loads(body)
  assert status == 400 and set(answer) == {"error"} and b"\n" not in body, answer
  assert re.search(message, answer["error"]), answer
  assert headers["content-type"] == "application/json"
  return answer["error"]


def _new_output(process):
  """The lines ``process`` printed since this was last called."""
  lines = []
  while True:
    try:
      line = process.lines.get_nowait()
    except queue.Empty:
      return lines
    if line is None:
      process.lines.put(None)
      return lines
    lines.append(line)


HUGE = "1" + "0" * 400


@pytest.mark.parametrize("route, fields, message", [
    ("caption", {"boxes": "[" * 5000}, r"^boxes must be a list of \[x, y, w, h\] boxes in JSON; "
     r"cannot parse it: nested 5,000 levels deep, more than the limit of 8$"),
    ("score", {"phrases": "[" * 5000 + "]" * 5000},
     r"^phrases must be a list of strings in JSON; cannot parse it: nested 5,000 levels deep"),
    ("score", {"phrases": '["a"]', "boxes": "[" * 5000 + "1"},
     r"^boxes must be .* nested 5,000 levels deep"),
    ("caption", {"boxes": f"[[{HUGE}, 1, 5, 5]]"}, r"^boxes: box 0: x is inf$"),
    ("caption", {"boxes": f"[[1, 1, 5, -{HUGE}]]"}, r"^boxes: box 0: h is -inf$"),
    ("score", {"phrases": '["a"]', "boxes": f"[[1, 1, {HUGE}, 5]]"}, r"^boxes: box 0: w is inf$"),
    ("score", {"phrases": f"[{HUGE}]"}, r"^phrase 0 must be a string, got Infinity$"),
    ("caption", {"boxes": f'[[1, 1, 5, "{"x" * 1000}"]]'},
     r"^boxes: box 0 must be \[x, y, w, h\], 4 numbers, got '\[1, 1, 5, \"x{49}\.\.\.' "
     r"\(1,013 characters\)$"),
    ("caption", {"max_boxes": "9" * 10_000 + "x"},
     r"^max_boxes must be an integer, got '9{60}\.\.\.' \(10,001 characters\)$"),
    ("caption", {"z" * 10_000: "1"}, r"^unknown field 'z{60}\.\.\.' \(10,000 characters\); "),
])
def test_deep_json_huge_numbers_and_long_values_are_a_short_one_line_400_and_log_nothing(
    server, route, fields, message):
  _new_output(server)
  assert len(_assert_one_line_400(server, route, fields, message)) < 300
  png = image_bytes(random_image(5, 20, 30), "PNG")
  status, answer = server.json("POST", "/api/caption", png, {"Content-Type": "image/png"})
  assert status == 200 and answer["width"] == 30
  assert not [line for line in _new_output(server) if "Traceback" in line or "ERROR" in line]


def test_a_long_phrase_in_a_form_gets_a_short_error(server):
  _new_output(server)
  phrase = "zebra " * 9000 + "giraffe"  # under the test server's 60,000-byte upload limit
  body, content_type = multipart({"image": ("a.png", image_bytes(random_image(5, 20, 30), "PNG")),
                                  "phrases": json.dumps(["a red", phrase])})
  status, answer = server.json("POST", "/api/score", body, {"Content-Type": content_type})
  words = ", ".join(["zebra"] * 9000 + ["giraffe"])
  assert status == 400 and answer == {"error": (
      f"phrase 1 '{phrase[:60]}...' (54,007 characters): none of its words ({words[:60]}... "
      f"(9,001 words)) is in the model's vocabulary")}
  assert not [line for line in _new_output(server) if "Traceback" in line]


@pytest.mark.parametrize("size", [180_000, 900_000])
def test_a_long_query_string_is_a_json_414(server, size):
  png = image_bytes(random_image(5, 20, 30), "PNG")
  query = fields_query(boxes=json.dumps([[1, 1, 5, 5]]), phrases="x" * size)
  status, headers, body = server.request("POST", "/api/score" + query, png,
                                         {"Content-Type": "image/png"})
  assert status == 414 and headers["content-type"] == "application/json", (status, body[:200])
  assert json.loads(body) == {"error": (
      f"query string of {len(query) - 1:,} bytes is over the limit of "
      f"{parsing.MAX_QUERY_BYTES:,} bytes; send long fields ('boxes', 'phrases') as "
      f"multipart/form-data fields")}
  # Just under the limit the fields are read as usual.
  query = fields_query(phrases='["a"]', boxes="[[1, 1, 5, 5]" + " " * 60_000 + "]")
  assert len(query) - 1 < parsing.MAX_QUERY_BYTES
  status, answer = server.json("POST", "/api/score" + query, png, {"Content-Type": "image/png"})
  assert status == 200 and answer["log_likelihood"] and answer["width"] == 30


def test_unknown_routes_and_methods_are_json_errors(server):
  assert server.json("GET", "/api/caption") == (405, {"error": "method not allowed"})
  assert server.json("POST", "/healthz") == (405, {"error": "method not allowed"})
  assert server.json("GET", "/nothing/here") == (404, {"error": "not found"})


@pytest.mark.parametrize("path", [
    "/static/..%2f..%2fserve.py", "/static/..%2F..%2Fserver%2Fapp.py", "/..%2fserve.py",
    "/static/../serve.py", "/static/%2e%2e/%2e%2e/serve.py", "/static/app.js/../../serve.py",
    "/static/..%5c..%5cserve.py", "//etc/passwd", "/static//etc/passwd", "/static/",
    "/static/index.html/..%2f..%2f..%2fsetup.cfg", "/static/%2e%2e%2f%2e%2e%2fsetup.cfg",
    "/static/__init__.py",
])
def test_no_path_reaches_the_file_system(server, path):
  status, _, body = server.request("GET", path)
  assert status == 404
  assert json.loads(body) == {"error": "not found"}


# ------------------------------------------------------------------ CLI


def test_cli_refuses_bad_flags_before_loading_a_model(tmp_path):
  (tmp_path / "cert.pem").write_text("not a certificate")
  for argv, message in (
      (["--certfile", str(tmp_path / "cert.pem")], "give both --certfile and --keyfile"),
      (["--certfile", str(tmp_path / "none.pem"), "--keyfile", str(tmp_path / "none.pem")],
       "--certfile not found: .*none.pem"),
      (["--certfile", str(tmp_path / "cert.pem"), "--keyfile", str(tmp_path / "cert.pem")],
       "cannot use --certfile .*cert.pem with --keyfile"),
      (["--max_batch", "0"], "--max_batch must be positive, got 0"),
      (["--max_pixels", "-5"], "--max_pixels must be positive"),
      (["--batch_wait_ms", "-1"], "--batch_wait_ms must be non-negative"),
      (["--final_nms_thresh", "2"], r"--final_nms_thresh must be in \[0, 1\]"),
      (["--num_proposals", "0"], "--num_proposals must be a positive integer, got 0"),
      (["--port", "70000"], r"--port must be in \[0, 65535\]")):
    with pytest.raises(SystemExit, match=f"^error: {message}"):
      serve.main(argv)


def test_cli_refuses_a_port_in_use_and_defaults_to_the_bundled_model(tmp_path, monkeypatch,
                                                                        capsys):
  with socket.socket() as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    with pytest.raises(SystemExit, match=f"^error: cannot listen on 127.0.0.1:{port}"):
      serve.main(["--port", str(port)])
  missing = str(tmp_path / "bundled" / "tiny_synthetic")
  monkeypatch.setattr(predictor_lib, "bundled_model_path", lambda: missing)
  with pytest.raises(SystemExit, match=f"^error: .*{re.escape(missing)}"):
    serve.main(["--port", "0"])
  assert cli.BUNDLED_NOTICE in capsys.readouterr().err
  with pytest.raises(SystemExit, match=f"^error: .*{re.escape(str(tmp_path / 'other'))}"):
    serve.main(["--port", "0", "--checkpoint", str(tmp_path / "other")])
  assert cli.BUNDLED_NOTICE not in capsys.readouterr().err


def test_captioner_after_warm_up_compiles_no_model_for_new_thresholds(predictor,
                                                                      record_compiles):
  rgb = random_image(30, 45, 60)
  captioner = captioner_lib.Captioner(predictor, max_batch=1)
  captioner.warm_up()
  request = captioner_lib.CaptionRequest(
      captioner.prepare(Image.fromarray(rgb)), captioner_lib.CaptionOptions(final_nms_thresh=0.45))
  with record_compiles() as names:
    (result,) = captioner.run([request])
  assert "jit(run)" not in names, names
  assert_same_answer(result, expected_answer(predictor, rgb, final_nms_thresh=0.45))


def test_region_requests_of_other_box_and_phrase_counts_compile_nothing(predictor,
                                                                        record_compiles):
  captioner = captioner_lib.Captioner(predictor, max_batch=1)
  prepared = captioner.prepare(Image.fromarray(random_image(31, 45, 60)))
  options = captioner.default_options()

  def requests(boxes, phrases):
    given = captioner.check_boxes(prepared, boxes)
    encoded = captioner.encode_phrases(phrases)
    return (captioner.caption_boxes(prepared, given),
            captioner.score(prepared, encoded, given, options),
            captioner.score(prepared, encoded, None, options))

  requests([[1, 1, 10, 10]] * 3, ["a red", "blue"])
  with record_compiles() as names:
    caption, score, detected = requests([[2, 3, 20, 10]] * 11, ["a red circle", "square blue a"])
  assert not names, names
  assert len(caption["captions"]) == 11 and np.shape(score["log_likelihood"]) == (11, 2)
  assert np.shape(detected["log_likelihood"]) == (len(detected["boxes"]), 2)


# ---------------------------------------------------------- start-up and shutdown


class StubCaptioner:
  """Just what ``create_app`` reads of a ``Captioner``; captions nothing."""

  batch_sizes = (1,)
  max_batch = 1
  predictor = types.SimpleNamespace(config=types.SimpleNamespace(name="tiny", seq_length=15),
                                    image_size=32, buckets=((32, 32),), final_nms_thresh=0.3)

  def default_options(self):
    return captioner_lib.CaptionOptions(final_nms_thresh=0.3)

  def prepare(self, image):
    return image_stream.PreparedImage(np.zeros((32, 32, 3), np.float32), None, image.size[::-1])

  def run(self, requests):
    return [{"boxes": [], "scores": [], "captions": [], "width": 1, "height": 1}
            for _ in requests]


@contextlib.contextmanager
def app_server(app):
  """Serves ``app`` with uvicorn in a thread on 127.0.0.1; yields a ``ServerProcess``-like client."""
  import uvicorn  # pylint: disable=g-import-not-at-top
  sock = serve.bind("127.0.0.1", 0)
  sock.listen(16)
  server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
  thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
  thread.start()
  client = ServerProcess.__new__(ServerProcess)
  client.host, client.port = "127.0.0.1", sock.getsockname()[1]
  try:
    yield client
  finally:
    server.should_exit = True
    thread.join(10)
    sock.close()


def _wait_for(condition, timeout=30):
  deadline = time.monotonic() + timeout
  while not condition():
    assert time.monotonic() < deadline, "timed out"
    time.sleep(0.05)


def test_app_answers_503_starting_until_warm_up_returns_then_serves():
  release, ready = threading.Event(), []
  app = app_lib.create_app(StubCaptioner(), model_name="stub", max_upload_bytes=MAX_UPLOAD_BYTES,
                           max_pixels=MAX_PIXELS, batch_wait_ms=1, warm_up=release.wait,
                           on_ready=lambda: ready.append(True))
  png = image_bytes(random_image(0, 20, 30), "PNG")
  with app_server(app) as client:
    status, health = client.json("GET", "/healthz")
    assert status == 503 and health["status"] == "starting" and health["model"] == "stub"
    status, headers, body = client.request("POST", "/api/caption", png,
                                           {"Content-Type": "image/png"})
    assert status == 503 and headers["retry-after"] == "1"
    assert json.loads(body) == {"error": app_lib.STARTING_MESSAGE} and b"\n" not in body
    assert client.json("POST", "/api/score?phrases=[]", png, {"Content-Type": "image/png"}) == (
        503, {"error": app_lib.STARTING_MESSAGE})
    assert not ready
    release.set()
    _wait_for(lambda: client.json("GET", "/healthz")[0] == 200)
    assert client.json("GET", "/healthz")[1]["status"] == "ok" and ready == [True]
    status, answer = client.json("POST", "/api/caption", png, {"Content-Type": "image/png"})
    assert status == 200 and answer["captions"] == []


def test_app_is_ready_at_once_and_answers_while_the_background_compiles():
  predictor = BlockingPredictor([])
  captioner = captioner_lib.Captioner(predictor, max_batch=2)
  app = app_lib.create_app(captioner, model_name="fake", max_upload_bytes=MAX_UPLOAD_BYTES,
                           max_pixels=MAX_PIXELS, batch_wait_ms=1,
                           background=captioner.background_warm_up)
  png = image_bytes(random_image(0, 20, 30), "PNG")
  try:
    with app_server(app) as client:
      assert predictor.background_started.wait(30)
      status, health = client.json("GET", "/healthz")
      assert status == 200 and health["status"] == "ok"
      assert health["programs"] == {
          "total": 6, "ready": 0, "in_cache": 0, "background": "running",
          "busy": [{"bucket": [32, 32], "batch_size": 1, "action": "compiling"}], "waiting": []}
      status, answer = client.json("POST", "/api/caption", png, {"Content-Type": "image/png"})
      assert status == 200 and answer["captions"][0] == "16x32 a"
      programs = client.json("GET", "/healthz")[1]["programs"]
      assert (programs["ready"], programs["background"]) == (1, "running")
      predictor.release.set()
      _wait_for(lambda: client.json("GET", "/healthz")[1]["programs"]["ready"] == 6)
      assert client.json("GET", "/healthz")[1]["programs"]["background"] == "done"
  finally:
    predictor.release.set()


def test_app_reports_a_failed_warm_up_as_503_failed():
  failures = []

  def warm_up():
    raise RuntimeError("out of memory\nmore detail")

  app = app_lib.create_app(StubCaptioner(), model_name="stub", max_upload_bytes=MAX_UPLOAD_BYTES,
                           max_pixels=MAX_PIXELS, batch_wait_ms=1, warm_up=warm_up,
                           on_failure=failures.append)
  with app_server(app) as client:
    _wait_for(lambda: failures)
    status, health = client.json("GET", "/healthz")
    assert (status, health["status"], health["error"]) == (
        503, "failed", "RuntimeError: out of memory")
    status, answer = client.json("POST", "/api/caption", b"x", {"Content-Type": "image/png"})
    assert status == 503 and "failed to start: RuntimeError: out of memory" in answer["error"]


def _watch_health(process, seen, stop):
  """Appends every ``/healthz`` answer's ``programs`` to ``seen`` until ``stop`` is set."""
  while not stop.is_set():
    try:
      seen.append(process.json("GET", "/healthz")[1]["programs"])
    except (OSError, ValueError):
      pass
    time.sleep(0.02)


def _caption_watching_health(process, body):
  """``(status, answer, programs seen by /healthz while the request ran)``."""
  seen, stop = [], threading.Event()
  watcher = threading.Thread(target=_watch_health, args=(process, seen, stop), daemon=True)
  watcher.start()
  try:
    status, answer = process.json("POST", "/api/caption", body, {"Content-Type": "image/png"})
  finally:
    stop.set()
    watcher.join(10)
  return status, answer, seen


@pytest.mark.slow
def test_server_is_ready_before_compiling_and_tells_compiling_from_loading(model_dir, tmp_path):
  cache = tmp_path / "cache"
  png = image_bytes(random_image(5, 30, 40), "PNG")
  # First start, empty cache, programs compiled only when a request needs one.
  process = ServerProcess(model_dir, cache, "--max_batch", "2", "--warm_up", "first_use")
  try:
    process.wait_ready()
    assert any(re.match(r"compiling 2 programs on first use \(1 shape bucket x batch sizes "
                        r"1, 2; first run only\)", line) for line in process.output), process.output
    assert any(re.match(r"ready: .*0 of 2 programs ready, the others compile on first use",
                        line) for line in process.output), process.output
    status, health = process.json("GET", "/healthz")
    assert status == 200 and health["status"] == "ok"
    assert (health["programs"]["ready"], health["programs"]["in_cache"]) == (0, 0)
    status, answer, seen = _caption_watching_health(process, png)
    assert status == 200 and len(answer["boxes"]) == len(answer["captions"])
    # The request compiled the one program it needed, and /healthz said so meanwhile.
    compiling = {"bucket": [IMAGE_SIZE, IMAGE_SIZE], "batch_size": 1, "action": "compiling",
                 "requests": 1, "message": programs_lib.MESSAGES["compiling"]}
    assert any(s["waiting"] == [compiling] for s in seen), seen
    assert process.json("GET", "/healthz")[1]["programs"]["ready"] == 1
  finally:
    process.stop()

  # Second start: the batch-1 program loads from the cache, the other compiles in the
  # background.
  again = ServerProcess(model_dir, cache, "--max_batch", "2")
  try:
    again.wait_ready()
    assert any(line.startswith("loading 1 compiled program from the cache and compiling 1 in "
                               "the background") for line in again.output), again.output
    assert again.json("GET", "/healthz")[1]["programs"]["in_cache"] == 1
    assert again.wait_line(r"warmed up: 2 programs \(1 compiled, 1 loaded from the cache; 0 of "
                           r"them by a request\) in \d+\.\d s$")
    status, health = again.json("GET", "/healthz")
    assert health["programs"]["ready"] == 2 and health["programs"]["background"] == "done"
  finally:
    again.stop()

  # Third start: both load, and a request waiting for one is told "loading".
  third = ServerProcess(model_dir, cache, "--max_batch", "2", "--warm_up", "first_use")
  try:
    third.wait_ready()
    assert any(line.startswith("loading 2 compiled programs from the cache on first use")
               for line in third.output), third.output
    assert not any("first run only" in line or "compiling" in line for line in third.output)
    status, answer, seen = _caption_watching_health(third, png)
    assert status == 200
    assert all(w["action"] == "loading" for s in seen for w in s["waiting"]), seen
  finally:
    third.stop()


@pytest.mark.slow
def test_server_with_warm_up_start_is_ready_after_compiling_and_exits_0_on_sigterm(model_dir,
                                                                                    tmp_path):
  cache = tmp_path / "cache"
  process = ServerProcess(model_dir, cache, "--max_batch", "2", "--warm_up", "start")
  try:
    process.wait_line(r"listening: ")
    assert any(re.match(r"compiling 2 programs before the server is ready \(1 shape bucket x "
                        r"batch sizes 1, 2; first run only\)", line)
               for line in process.output), process.output
    png = image_bytes(random_image(5, 30, 40), "PNG")
    status, answer = process.json("POST", "/api/caption", png, {"Content-Type": "image/png"})
    assert status == 503 and answer == {"error": app_lib.STARTING_MESSAGE}
    status, health = process.json("GET", "/healthz")
    assert status == 503 and health["status"] == "starting"
    process.wait_ready()
    status, health = process.json("GET", "/healthz")
    assert status == 200 and health["status"] == "ok" and health["programs"]["ready"] == 2
    assert process.json("POST", "/api/caption", png, {"Content-Type": "image/png"})[0] == 200
    process.proc.send_signal(signal.SIGTERM)
    assert process.wait_exit(30) == 0
    shutdown = [line for line in process.output if line.startswith("shutdown:")]
    assert shutdown == ["shutdown: SIGTERM received, server stopped\n"], process.output
    assert os.listdir(cache)  # the compiled programs
  finally:
    process.stop()

  again = ServerProcess(model_dir, cache, "--max_batch", "2", "--warm_up", "start")
  try:
    again.wait_ready()
    assert any(line.startswith("loading 2 compiled programs from the cache before the server "
                               "is ready") for line in again.output), again.output
    assert re.search(r"ready: .* 2 programs loaded;", "".join(again.output))
  finally:
    again.stop()


@pytest.mark.slow
def test_server_stopped_while_compiling_exits_0_at_once(model_dir, tmp_path):
  process = ServerProcess(model_dir, tmp_path / "cache", "--max_batch", "2")
  try:
    process.wait_line(r"ready: ")  # the background starts compiling
    process.proc.send_signal(signal.SIGTERM)
    assert process.wait_exit(30) == 0
    assert [line for line in process.output if line.startswith(("shutdown:", "warmed up:"))] == [
        "shutdown: SIGTERM received, server stopped\n"], process.output
  finally:
    process.stop()
