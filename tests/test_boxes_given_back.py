"""A model's own boxes, given back, are taken everywhere boxes are taken (``ops.boxes``).

The bundled model does not clip its final boxes (as the original does not):
on the real photos of ``tests/photos.py`` some detections lie partly outside
the image. A model may also return boxes wholly outside (the previous bundled
model did, on ``rocket``); on ``rocket`` (640 x 427) two of its detections
moved wholly beyond the right border are given back with them
(``OUTSIDE_SHIFT``). These boxes go back through every entry point that takes boxes
-- ``caption_regions``, ``score_phrases``, the server's ``/api/caption`` and
``/api/score``, and ``extract_features``, ``predict`` and ``score`` with
``--boxes_json`` -- and the boxes used are checked against a plain-Python
clamp of each corner to the image, boxes inside coming back unchanged.

Also here: ``--boxes_json`` runs where some images have no entry (they get
detections), counts printed in the right number, inputs that exclude each
other, and ``index`` refusing another model's index before loading the model.
"""

import json
import os
import shutil

import h5py
import numpy as np
import pytest

import photos as photos_lib
import small_model
from test_serve import app_server
from test_serve import multipart

import densecap_jax
from densecap_jax.commands import flags as cli
from densecap_jax.commands import extract_features
from densecap_jax import predictor
from densecap_jax import runtime
from densecap_jax.commands import predict
from densecap_jax.search import builder as index_lib
from densecap_jax.commands import index as index_command
from densecap_jax.commands import score as score_command
from densecap_jax.commands import search as search_command
from densecap_jax.search import page
from densecap_jax.server import app as app_lib
from densecap_jax.server import captioner as captioner_lib
from densecap_jax.ops import boxes as boxes_lib
from densecap_jax.search import reader

# name -> (file name in the test folder, source): sizes 640x427, 451x300, 512x512 and a phone
# portrait 427x640 stored sideways; three shape buckets of the bundled model.
PHOTOS = ("rocket", "chelsea", "astronaut", "portrait")
PHRASES = ["a red circle", "a blue square"]


# ------------------------------------------------------------------ references


def clamp_reference(boxes, width, height):
  """Plain-Python reference of the clipping rule: ``(boxes float32, clipped, outside)``.

  A box keeps its values when all its pixels ``x .. x + w - 1``, ``y .. y + h - 1``
  lie in ``[1, W] x [1, H]``; otherwise each corner is clamped to the image.
  """
  out, clipped, outside = [], [], []
  for x, y, w, h in np.asarray(boxes, np.float64).tolist():
    x2, y2 = x + w - 1, y + h - 1
    is_outside = x > width or y > height or x2 < 1 or y2 < 1
    is_inside = x >= 1 and y >= 1 and x2 <= width and y2 <= height
    if is_inside:
      out.append([x, y, w, h])
    else:
      cx1, cx2 = min(max(x, 1), width), min(max(x2, 1), width)
      cy1, cy2 = min(max(y, 1), height), min(max(y2, 1), height)
      out.append([cx1, cy1, cx2 - cx1 + 1, cy2 - cy1 + 1])
    clipped.append(not is_inside)
    outside.append(is_outside)
  return np.asarray(out, np.float32).reshape(-1, 4), np.array(clipped), np.array(outside)


# ------------------------------------------------------------------ by hand


def test_check_boxes_clamps_each_corner_worked_by_hand():
  boxes = [
      [10.5, 20.25, 100.125, 50.0],       # inside: unchanged
      [-9, -4, 20, 10],                   # partly left and above: pixels 1..10 x 1..5
      [600, 400, 50, 40],                 # partly right and below: 600..640 x 400..427
      [640.148, 260.833, 3.06129, 109.3],  # the rocket's detection beyond its right border
      [-20, -20, 10, 10],                 # wholly above-left: the corner pixel
      [630, 500, 20, 30],                 # wholly below: the bottom row, x clipped to 640
      [640, 427, 5, 5],                   # its first pixel is the image's last: partly
  ]
  got, clipped, outside = boxes_lib.check_boxes(boxes, (427, 640))
  f32 = np.float32
  want = np.array([[10.5, 20.25, 100.125, 50.0], [1, 1, 10, 5], [600, 400, 41, 28],
                   [640, f32(260.833), 1, f32(109.3)], [1, 1, 1, 1], [630, 427, 11, 1],
                   [640, 427, 1, 1]], np.float32)
  np.testing.assert_array_equal(got, want)
  assert got.dtype == np.float32
  np.testing.assert_array_equal(clipped, [False, True, True, True, True, True, True])
  np.testing.assert_array_equal(outside, [False, False, False, True, True, True, False])
  # Inside boxes come back bit for bit (float32 given, float32 returned).
  given = np.array([[1.1, 2.2, 3.3, 4.4], [1, 1, 640, 427]], np.float32)
  np.testing.assert_array_equal(boxes_lib.check_boxes(given, (427, 640))[0], given)
  empty = boxes_lib.check_boxes(np.zeros((0, 4)), (427, 640))
  assert [a.shape for a in empty] == [(0, 4), (0,), (0,)]


@pytest.mark.parametrize("box, message", [
    ([float("nan"), 1, 5, 5], "boxes of a: box 1: x is nan"),
    ([1, float("-inf"), 5, 5], "boxes of a: box 1: y is -inf"),
    ([1e9, 1e9, 0, 5], "boxes of a: box 1: w and h must be positive, got w=0, h=5"),
    ([1, 1, 5, -1], "boxes of a: box 1: w and h must be positive, got w=5, h=-1"),
])
def test_check_boxes_refuses_what_is_no_box_naming_its_index(box, message):
  with pytest.raises(ValueError) as e:
    boxes_lib.check_boxes([[5000, 5000, 5, 5], box], (427, 640), name="boxes of a")
  assert str(e.value) == message


# ------------------------------------------------------------------ real photos


@pytest.fixture(scope="module")
def model():
  return densecap_jax.load_model()


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
  """A folder of the four photos; file names are the keys of ``PHOTOS``."""
  folder = tmp_path_factory.mktemp("photos")
  for name in PHOTOS[:3]:
    source = photos_lib.photo_path(name)
    shutil.copy(source, folder / (name + os.path.splitext(source)[1]))
  photos_lib.phone_portrait(str(folder / "portrait.jpg"))
  return folder


def photo_file(photo_dir, name):
  (found,) = [f for f in os.listdir(photo_dir) if os.path.splitext(f)[0] == name]
  return str(photo_dir / found)


OUTSIDE_SHIFT = {"rocket": 2}  # photo: how many detections are also given moved beyond its right


def given_boxes(detected, name):
  """The detections' xywh boxes, then ``OUTSIDE_SHIFT[name]`` of them moved wholly beyond the right."""
  boxes = np.asarray(detected["boxes"], np.float32)
  moved = boxes[:OUTSIDE_SHIFT.get(name, 0)].copy()
  moved[:, 0] = detected["width"] + 10 + 5 * np.arange(len(moved))
  return np.concatenate([boxes, moved])


class GivenBack(dict):
  """Per photo (computed on first use) its detections (image pixels), the boxes
  given back (``given_boxes``) and ``caption_regions`` of them, with codes."""

  def __init__(self, model, photo_dir):
    super().__init__()
    self.model, self.photo_dir = model, photo_dir

  def __missing__(self, name):
    path = photo_file(self.photo_dir, name)
    (detected,) = self.model.predict([path])
    boxes = given_boxes(detected, name)
    (captioned,) = self.model.caption_regions([path], [boxes], with_codes=True)
    self[name] = {"path": path, "detected": detected, "boxes": boxes, "captioned": captioned}
    return self[name]


@pytest.fixture(scope="module")
def given_back(model, photo_dir):
  return GivenBack(model, photo_dir)


def test_the_photos_have_detections_partly_and_wholly_outside(given_back):
  sizes = {name: (given_back[name]["detected"]["width"], given_back[name]["detected"]["height"])
           for name in PHOTOS}
  assert sizes == {"rocket": (640, 427), "chelsea": (451, 300), "astronaut": (512, 512),
                   "portrait": (427, 640)}
  counts = {}
  for name in PHOTOS:
    _, clipped, outside = clamp_reference(given_back[name]["boxes"], *sizes[name])
    counts[name] = (int(clipped.sum()), int(outside.sum()))
  assert all(c[0] > 0 for c in counts.values()), counts
  assert counts["rocket"][1] == 2, counts  # two boxes beyond the right border
  rocket = np.asarray(given_back["rocket"]["boxes"])
  assert np.all(rocket[clamp_reference(rocket, 640, 427)[2], 0] > 640)


@pytest.mark.parametrize("name", PHOTOS)
def test_caption_regions_and_score_phrases_take_the_detections_back(model, given_back, name):
  g = given_back[name]
  detected, captioned = g["detected"], g["captioned"]
  boxes = np.asarray(g["boxes"])
  want, clipped, outside = clamp_reference(boxes, detected["width"], detected["height"])
  np.testing.assert_array_equal(captioned["clipped"], clipped)
  np.testing.assert_array_equal(captioned["outside"], outside)
  np.testing.assert_array_equal(captioned["boxes"][~clipped], boxes[~clipped])  # unchanged
  np.testing.assert_allclose(captioned["boxes"], want, rtol=1e-6)
  assert len(captioned["captions"]) == len(boxes) and all(captioned["captions"])
  # A box outside is captioned as the box it was clipped to: the boxes as used, given
  # again, are all inside, unchanged, with the same captions.
  if outside.any():
    (again,) = model.caption_regions([g["path"]], [captioned["boxes"]])
    assert not again["clipped"].any()
    np.testing.assert_array_equal(again["boxes"], captioned["boxes"])
    assert again["captions"] == captioned["captions"]
  (scored,) = model.score_phrases(g["path"], PHRASES, boxes=boxes)
  np.testing.assert_array_equal(scored["boxes"], captioned["boxes"])
  np.testing.assert_array_equal(scored["clipped"], clipped)
  np.testing.assert_array_equal(scored["outside"], outside)
  assert scored["captions"] == captioned["captions"]
  reference = model.score_codes(captioned["codes"], PHRASES)
  np.testing.assert_allclose(scored["log_likelihood"], reference["log_likelihood"], rtol=1e-5,
                             atol=1e-5)


def _post(client, route, fields):
  body, content_type = multipart(fields)
  return client.json("POST", route, body, {"Content-Type": content_type})


def test_the_server_takes_back_its_own_detections(model, given_back):
  captioner = captioner_lib.Captioner(model, max_batch=1)
  app = app_lib.create_app(captioner, model_name="bundled", max_upload_bytes=20_000_000,
                           max_pixels=2_000_000, batch_wait_ms=1)
  with app_server(app) as client:
    for name in ("rocket", "portrait"):
      g = given_back[name]
      with open(g["path"], "rb") as f:
        data = f.read()
      upload = (os.path.basename(g["path"]), data)
      status, detected = _post(client, "/api/caption", {"image": upload})
      assert status == 200, detected
      np.testing.assert_allclose(detected["boxes"], g["detected"]["boxes"], rtol=1e-5, atol=1e-3)
      captioned = g["captioned"]
      status, answer = _post(client, "/api/caption",
                             {"image": upload, "boxes": json.dumps(g["boxes"].tolist())})
      assert status == 200, answer
      assert answer["clipped"] == captioned["clipped"].tolist()
      assert answer["outside"] == captioned["outside"].tolist()
      assert sum(answer["outside"]) == (2 if name == "rocket" else 0)
      np.testing.assert_allclose(answer["boxes"], captioned["boxes"], rtol=1e-5, atol=1e-3)
      # The page's phrase search: the phrase against the detections shown.
      status, scored = _post(client, "/api/score",
                             {"image": upload, "boxes": json.dumps(g["boxes"].tolist()),
                              "phrases": json.dumps(PHRASES)})
      assert status == 200, scored
      assert scored["outside"] == answer["outside"]
      reference = model.score_codes(captioned["codes"], PHRASES)
      np.testing.assert_allclose(scored["log_likelihood"], reference["log_likelihood"],
                                 rtol=1e-4, atol=1e-3)


def _boxes_json(path, given_back, names):
  with open(path, "w") as f:
    json.dump({os.path.basename(given_back[n]["path"]): given_back[n]["boxes"].tolist()
               for n in names}, f)
  return str(path)


def test_commands_take_back_the_detections(model, photo_dir, given_back, tmp_path, capsys):
  boxes_json = _boxes_json(tmp_path / "boxes.json", given_back, PHOTOS)
  order = sorted(PHOTOS, key=lambda n: os.path.basename(given_back[n]["path"]))

  extract_features.main(["--input_dir", str(photo_dir), "--boxes_json", boxes_json,
                         "--boxes_per_image", "128", "--output_h5", str(tmp_path / "f.h5")])
  with h5py.File(tmp_path / "f.h5") as h5:
    assert [os.path.basename(p.decode()) for p in h5["image_paths"][:]] == [
        os.path.basename(given_back[n]["path"]) for n in order]
    np.testing.assert_array_equal(h5["given"][:], [1, 1, 1, 1])
    assert "proposal_boxes" not in h5
    for row, name in enumerate(order):
      captioned = given_back[name]["captioned"]
      n = len(captioned["boxes"])
      assert h5["num_boxes"][row] == n
      np.testing.assert_array_equal(h5["boxes"][row, :n], captioned["boxes"])
      np.testing.assert_allclose(h5["feats"][row, :n], captioned["codes"], rtol=1e-4, atol=1e-4)

  vis = tmp_path / "vis"
  predict.main(["--input_dir", str(photo_dir), "--boxes_json", boxes_json,
                "--output_vis_dir", str(vis)])
  with open(vis / "results.json") as f:
    results = json.load(f)["results"]
  assert [r["img_name"] for r in results] == [os.path.basename(given_back[n]["path"])
                                              for n in order]
  for r, name in zip(results, order):
    captioned = given_back[name]["captioned"]
    prepared = model.prepare(given_back[name]["path"])
    assert r["captions"] == captioned["captions"]
    np.testing.assert_allclose(r["boxes"], boxes_lib.to_resized(
        captioned["boxes"], prepared.original_size, prepared.size), rtol=1e-5, atol=1e-4)

  score_command.main(["--input_dir", str(photo_dir), "--phrase", PHRASES[0], "--boxes_json",
                      boxes_json, "--output_json", str(tmp_path / "s.json")])
  with open(tmp_path / "s.json") as f:
    images = json.load(f)["images"]
  for entry, name in zip(images, order):
    captioned = given_back[name]["captioned"]
    np.testing.assert_array_equal(np.asarray(entry["boxes"], np.float32), captioned["boxes"])
    assert entry["outside"] == captioned["outside"].tolist()
    reference = model.score_codes(captioned["codes"], PHRASES[:1])["log_likelihood"]
    np.testing.assert_allclose(entry["log_likelihood"], reference, rtol=1e-4, atol=1e-4)
  capsys.readouterr()


# ------------------------------------------------------------------ mixed runs


def test_images_without_an_entry_get_detections(model, photo_dir, given_back, tmp_path,
                                                 capsys):
  boxes_json = _boxes_json(tmp_path / "boxes.json", given_back, ["chelsea"])
  folder = tmp_path / "two"
  folder.mkdir()
  for name in ("rocket", "chelsea"):
    shutil.copy(photo_file(photo_dir, name), folder)
  # results.json: chelsea's given boxes with caption_log_probs, rocket's detections as
  # without --boxes_json (resized-image pixels).
  vis = tmp_path / "vis"
  predict.main(["--input_dir", str(folder), "--boxes_json", boxes_json, "--output_vis_dir",
                str(vis), "--output_dir", str(tmp_path / "drawn")])
  err = capsys.readouterr().err
  assert (f"note: --boxes_json {boxes_json} has no entry for 1 of 2 images (rocket.jpg); they "
          f"get the model's detections") in err
  with open(vis / "results.json") as f:
    chelsea, rocket = json.load(f)["results"]
  assert (chelsea["img_name"], rocket["img_name"]) == ("chelsea.png", "rocket.jpg")
  (detected,) = model.predict([photo_file(photo_dir, "rocket")], coords="resized")
  assert "caption_log_probs" not in rocket
  assert rocket["captions"] == detected["captions"]
  np.testing.assert_allclose(rocket["boxes"], detected["boxes"], rtol=1e-6)
  np.testing.assert_allclose(rocket["scores"], detected["scores"], rtol=1e-5, atol=1e-5)
  captioned = given_back["chelsea"]["captioned"]
  assert chelsea["captions"] == captioned["captions"]
  np.testing.assert_allclose(chelsea["caption_log_probs"], captioned["caption_log_probs"],
                             rtol=1e-4, atol=1e-4)
  assert sorted(os.listdir(tmp_path / "drawn")) == ["chelsea.png", "rocket.jpg"]

  # extract_features: /given tells the rows apart; detected rows are those of a run
  # without --boxes_json, given rows those of caption_regions.
  mixed, plain = str(tmp_path / "mixed.h5"), str(tmp_path / "plain.h5")
  extract_features.main(["--input_dir", str(folder), "--boxes_json", boxes_json,
                         "--boxes_per_image", "128", "--output_h5", mixed])
  extract_features.main(["--input_dir", str(folder), "--boxes_per_image", "128",
                         "--output_h5", plain])
  capsys.readouterr()
  with h5py.File(mixed) as m, h5py.File(plain) as p:
    np.testing.assert_array_equal(m["given"][:], [1, 0])
    assert "given" not in p
    for key in ("boxes", "resized_boxes", "proposal_boxes", "scores", "feats", "num_boxes"):
      np.testing.assert_allclose(m[key][1], p[key][1], rtol=1e-5, atol=1e-5, err_msg=key)
    n = len(captioned["boxes"])
    assert m["num_boxes"][0] == n
    np.testing.assert_array_equal(m["boxes"][0, :n], captioned["boxes"])
    np.testing.assert_array_equal(m["proposal_boxes"][0, :n], captioned["boxes"])
    np.testing.assert_allclose(m["feats"][0, :n], captioned["codes"], rtol=1e-4, atol=1e-4)

  # score: the image without an entry is scored on its detections (no "clipped").
  score_command.main(["--input_dir", str(folder), "--phrase", PHRASES[0], "--boxes_json",
                      boxes_json, "--output_json", str(tmp_path / "s.json")])
  capsys.readouterr()
  with open(tmp_path / "s.json") as f:
    chelsea, rocket = json.load(f)["images"]
  (want,) = model.score_phrases(photo_file(photo_dir, "rocket"), PHRASES[:1])
  assert "clipped" not in rocket and rocket["captions"] == want["captions"]
  np.testing.assert_allclose(rocket["boxes"], want["boxes"], rtol=1e-5, atol=1e-4)
  assert chelsea["clipped"] == captioned["clipped"].tolist() and any(chelsea["clipped"])


# ------------------------------------------------------------------ small ones


def test_counts_are_printed_in_the_right_number(tmp_path, capsys):
  assert [runtime.count(n, "image") for n in (0, 1, 2)] == ["0 images", "1 image", "2 images"]
  assert runtime.count(1, "box", "boxes") == "1 box" and runtime.count(3, "box", "boxes") == "3 boxes"
  path = photos_lib.photo_path("rocket")
  boxes_json = tmp_path / "boxes.json"
  boxes_json.write_text(json.dumps({"rocket.jpg": [[100, 100, 50, 50]]}))
  predict.main(["--input_image", path, "--boxes_json", str(boxes_json), "--output_vis_dir",
                str(tmp_path / "vis")])
  assert "captioned 1 image, 1 box, in " in capsys.readouterr().out
  listed = tmp_path / "images.txt"
  listed.write_text(path + "\n")
  extract_features.main(["--input_txt", str(listed), "--boxes_json", str(boxes_json),
                         "--output_h5", str(tmp_path / "f.h5")])
  out = capsys.readouterr().out
  assert "wrote 1 box of 1 image (256-d features) " in out, out


@pytest.mark.parametrize("command, flags", [
    (predict.main, ["--input_image", "a.jpg", "--input_dir", "photos"]),
    (predict.main, ["--input_dir", "photos", "--input_split", "test"]),
    (score_command.main, ["--input_image", "a.jpg", "--input_dir", "photos", "--phrase", "a"]),
    (extract_features.main, ["--input_txt", "list.txt", "--input_dir", "photos",
                             "--output_h5", "x.h5"]),
])
def test_inputs_that_exclude_each_other_are_a_usage_error(command, flags, capsys):
  with pytest.raises(SystemExit) as e:
    command(flags)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert err.endswith(f"error: argument {flags[2]}: not allowed with argument {flags[0]}"), err


def test_index_of_another_model_is_refused_before_the_model_loads(tmp_path, capsys,
                                                                   monkeypatch):
  folder = tmp_path / "one"
  folder.mkdir()
  shutil.copy(photos_lib.photo_path("chelsea"), folder)
  tiny = small_model.save_random_tiny_model(tmp_path / "tiny", [None, "a", "red"],
                                            image_size=64)
  output = str(tmp_path / "p.index")
  index_command.main(["--input_dir", str(folder), "--output", output, "--max_boxes", "5",
                      "--checkpoint", tiny])
  built = capsys.readouterr().out
  copy = str(shutil.copytree(tiny, tmp_path / "tiny_copy"))

  loaded = []
  load = cli.load_model_from_flags
  monkeypatch.setattr(cli, "load_model_from_flags",
                      lambda *a, **k: loaded.append(a) or load(*a, **k))
  with pytest.raises(SystemExit) as e:  # the bundled model
    index_command.main(["--input_dir", str(folder), "--output", output, "--max_boxes", "5"])
  assert e.value.code == (f"error: index {output} was built with another model ({tiny}); give "
                          f"that model with --checkpoint, or build a new index with this one")
  assert not loaded
  # The same model in another folder is the same model: the index is brought up to date.
  index_command.main(["--input_dir", str(folder), "--output", output, "--max_boxes", "5",
                      "--checkpoint", copy])
  assert "indexed 0 images, kept 1, dropped 0" in capsys.readouterr().out and len(loaded) == 1

  # One image, in the right number (index and search).
  assert "indexed 1 image, kept 0, dropped 0 (deleted or changed) in " in built
  regions = reader.open_index(output).num_regions
  assert f": 1 image, {runtime.count(regions, 'region')}" in built and regions > 1
  search_command.main(["--index", output, "--query", "a red", "--checkpoint", tiny,
                       "--output_vis_dir", str(tmp_path / "hits")])
  assert f"1 of 1 image; all of {regions} regions scored" in capsys.readouterr().out
  assert ">1 image, best first;" in (tmp_path / "hits" / page.PAGE).read_text()


@pytest.mark.parametrize("precision", [None, "bfloat16"])
def test_stored_model_fingerprint_is_the_loaded_models(precision):
  path = predictor.bundled_model_path()
  loaded = predictor.load_model(path, precision=precision)
  assert (index_command.stored_model_fingerprint(path, precision)
          == index_lib.model_fingerprint(loaded))
