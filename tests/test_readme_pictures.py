"""Tests for tools/make_readme_pictures.py: the README's drawn example and viewer screenshot."""

import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import densecap_jax
from densecap_jax import predictor
from densecap_jax import vis
from densecap_jax.data import images as images_lib
from tools import make_readme_pictures as pictures


def _fake_screenshot(browser, url, path):
  """Stands in for Chromium: a 2x2 PNG naming nothing, written to ``path``."""
  del browser, url
  Image.new("RGB", (2, 2), (1, 2, 3)).save(path, format="PNG")


def test_drawn_example_is_what_predict_draws_for_the_image(tmp_path, monkeypatch):
  # One example of the bundled ones, so that one program compiles.
  path = os.path.join(predictor.bundled_examples_path(), "synthetic_13.jpg")
  os.mkdir(tmp_path / "examples")
  shutil.copyfile(path, tmp_path / "examples" / "synthetic_13.jpg")
  monkeypatch.setattr(predictor, "bundled_examples_path", lambda: str(tmp_path / "examples"))
  monkeypatch.setattr(pictures, "find_browser", lambda: "/no/browser")
  pages = []
  monkeypatch.setattr(pictures, "check_page", lambda browser, url, image: pages.append(url))
  monkeypatch.setattr(pictures, "screenshot", _fake_screenshot)
  drawn, shot = pictures.make_pictures(None, str(tmp_path / "docs"), image="synthetic_13.jpg")

  assert (drawn, shot) == (str(tmp_path / "docs" / "drawn_example.jpg"),
                           str(tmp_path / "docs" / "example.png"))
  assert sorted(os.listdir(tmp_path / "docs")) == ["drawn_example.jpg", "example.png"]
  assert pages and pages[0].startswith("file://") and pages[0].endswith(
      "/view_results.html?labels=1")
  assert np.asarray(Image.open(shot)).tolist() == [[[1, 2, 3]] * 2] * 2
  # The bundled model through the Python API, drawn as make predict draws
  # (--num_to_draw 5 --text_size 1, default box width) and saved as a JPEG.
  (result,) = densecap_jax.load_model().predict([path], coords="image")
  expected = vis.draw_labelled(images_lib.user_rgb(path), result["boxes"], result["captions"],
                               num_to_draw=5, text_size=1, box_width=2)
  encoded = io.BytesIO()
  expected.save(encoded, format="JPEG")
  with Image.open(drawn) as written:
    assert written.format == "JPEG" and written.size == (299, 199)
    np.testing.assert_array_equal(np.asarray(written),
                                  np.asarray(Image.open(io.BytesIO(encoded.getvalue()))))


def test_viewer_opens_on_the_chosen_image(tmp_path):
  entries = [{"boxes": [[1, 1, 4, 4]], "scores": [float(i)], "captions": [f"caption {i}"],
              "img_name": name} for i, name in enumerate(["a.jpg", "b.jpg", "c.jpg"])]
  vis.write_viewer(str(tmp_path), {"results": entries, "opt": {"num_to_draw": 5}})
  pictures.open_viewer_on(str(tmp_path), "c.jpg")
  with open(tmp_path / "results.json") as f:
    data = json.load(f)
  assert [r["img_name"] for r in data["results"]] == ["c.jpg", "a.jpg", "b.jpg"]
  assert [r["captions"] for r in data["results"]] == [["caption 2"], ["caption 0"], ["caption 1"]]
  assert data["opt"] == {"num_to_draw": 5}
  script = (tmp_path / "results.js").read_text()
  assert json.loads(script[script.index("{"):script.rindex("}") + 1]) == data
  with pytest.raises(ValueError, match=r"^results\.json has no image 'd\.jpg': c\.jpg, a\.jpg, b\.jpg$"):
    pictures.open_viewer_on(str(tmp_path), "d.jpg")


def test_missing_browser_is_a_one_line_error_and_writes_nothing(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(shutil, "which", lambda name: None)
  out_dir = tmp_path / "docs"
  with pytest.raises(SystemExit) as exited:
    pictures.main(["--out_dir", str(out_dir)])
  message = str(exited.value.code)
  assert message.startswith("error: no headless browser found (chromium, chromium-browser, "
                            "google-chrome)")
  assert "apt-get install chromium" in message and "\n" not in message
  assert not out_dir.exists()
  assert capsys.readouterr().out == ""


def test_browser_is_the_first_installed_of_the_known_names(monkeypatch):
  installed = {"chromium-browser": "/opt/bin/chromium-browser", "google-chrome": "/opt/chrome"}
  monkeypatch.setattr(shutil, "which", installed.get)
  assert pictures.find_browser() == "/opt/bin/chromium-browser"


@pytest.mark.parametrize("flag,value", [("--image", "photo.jpg"), ("--drawn_image", "x.png")])
def test_unknown_example_is_a_one_line_error(tmp_path, flag, value):
  with pytest.raises(SystemExit) as exited:
    pictures.main(["--out_dir", str(tmp_path / "docs"), flag, value])
  assert exited.value.code == (f"error: {flag} {value!r} is not one of the bundled examples: "
                               f"synthetic_12.jpg, synthetic_13.jpg, synthetic_29.jpg")
  assert not (tmp_path / "docs").exists()


@pytest.mark.slow
@pytest.mark.skipif(not any(shutil.which(b) for b in pictures.BROWSERS),
                    reason="needs a headless browser (apt-get install -y chromium)")
def test_screenshot_is_the_viewer_page_at_its_size(tmp_path):
  _, shot = pictures.make_pictures(None, str(tmp_path), image="synthetic_29.jpg")
  with Image.open(shot) as picture:
    assert picture.format == "PNG" and picture.size == (900, 760)
    pixels = np.asarray(picture.convert("RGB"))
  # A white page with dark title text, coloured boxes and captions.
  assert (pixels == 255).all(axis=2).mean() > 0.5
  assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500
  # The image area (square synthetic_29, 256 px resized, centred near y 325) is not page white.
  assert (pixels[220:430, 340:560] != 255).any(axis=2).mean() > 0.9
