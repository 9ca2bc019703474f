"""Output paths made from stored or given names stay inside their folders.

``files.contained_name`` and ``files.inside``; the search page's copies of an
index's images (``search.page``, the ``search`` command) and
``predict``'s pictures (``--output_vis_dir``, ``--output_dir``) under names
that are paths, absolute, ``..``, hold NUL or control characters, or are long.
"""

import json
import os

import numpy as np
import pytest
from PIL import Image
import small_model
from test_regions_index import square_scenes
from test_regions_index import write_scenes

from densecap_jax import files
from densecap_jax.commands import predict
from densecap_jax.search import ranking as search_lib
from densecap_jax.commands import search as search_command
from densecap_jax.search import page
from densecap_jax.search import reader


def _tree(folder):
  """Every path under ``folder``, relative to it (folders end in ``/``)."""
  out = set()
  for root, dirs, names in os.walk(folder):
    rel = os.path.relpath(root, folder)
    out.update(os.path.normpath(os.path.join(rel, d)) + "/" for d in dirs)
    out.update(os.path.normpath(os.path.join(rel, n)) for n in names)
  return out


@pytest.mark.parametrize("name, expected", [
    ("photo.jpg", "photo.jpg"),
    ("..", "unnamed"),
    (".", "unnamed"),
    ("", "unnamed"),
    ("../../escape_test.jpg", "escape_test.jpg"),
    ("/etc/x.jpg", "x.jpg"),
    ("a\x00b.jpg", "a_b.jpg"),
    ("tab\tand\nnewline.png", "tab_and_newline.png"),
    ("back\\slash.jpg", "back_slash.jpg"),
    ("sub/dir/1.jpg", "1.jpg"),
    ("sub/..", "unnamed"),
    ("dir/", "unnamed"),
    ("café.jpg", "café.jpg"),
])
def test_contained_name_hand_worked(name, expected):
  assert files.contained_name(name) == expected


def test_contained_name_cuts_long_names_keeping_the_extension():
  name = "x" * 300 + ".jpg"
  assert files.contained_name(name) == "x" * 196 + ".jpg"  # 200 bytes
  # Two-byte characters are never split: 98 of them (196 bytes) + ".jpeg" = 201 > 200.
  assert files.contained_name("é" * 150 + ".jpeg") == "é" * 97 + ".jpeg"
  assert len(files.contained_name("é" * 150 + ".jpeg").encode()) == 199
  # An "extension" longer than a quarter of the limit is part of the name.
  assert files.contained_name("a." + "b" * 300) == "a." + "b" * 198
  assert files.contained_name("y" * 30 + ".jpg", limit=20) == "y" * 16 + ".jpg"
  assert files.contained_name("y" * 30 + ".jpg", limit=12) == "y" * 12  # .jpg > 12 // 4


def test_contained_name_makes_names_unique():
  used = set()
  names = ["a/x.jpg", "b/x.jpg", "x.jpg", "x-2.jpg", "..", "", "y.png"]
  assert [files.contained_name(n, used) for n in names] == [
      "x.jpg", "x-2.jpg", "x-3.jpg", "x-2-2.jpg", "unnamed", "unnamed-2", "y.png"]
  assert used == {"x.jpg", "x-2.jpg", "x-3.jpg", "x-2-2.jpg", "unnamed", "unnamed-2", "y.png"}
  used = set()
  long = [files.contained_name("z" * 300 + ".jpg", used) for _ in range(3)]
  assert long == ["z" * 196 + ".jpg", "z" * 194 + "-2.jpg", "z" * 194 + "-3.jpg"]


def test_inside_refuses_paths_that_leave_the_folder(tmp_path):
  folder = str(tmp_path / "hits")
  assert files.inside(folder, "a.jpg") == os.path.join(folder, "a.jpg")
  assert files.inside(folder, "images/a.jpg") == os.path.join(folder, "images", "a.jpg")
  for name in ("../a.jpg", "/etc/a.jpg", "images/../../a.jpg", ".", "a\x00b.jpg"):
    with pytest.raises(ValueError, match="leads outside the folder") as e:
      files.inside(folder, name)
    assert "\n" not in str(e.value)
  with pytest.raises(ValueError) as e:
    files.inside(folder, "../" + "x" * 1000)
  assert len(str(e.value)) < 200 and "(1,003 characters)" in str(e.value)


def _jpeg(path, color, size=(40, 30)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.new("RGB", size, color).save(path, quality=95)


def _hit(rank, name, path):
  return search_lib.Hit(rank=rank, image=name, path=path, box=[3.0, 4.0, 10.0, 8.0],
                        score=-1.0 - rank, log_likelihood=-3.0, caption=f"caption {rank}",
                        objectness=1.0, width=40, height=30)


def test_search_page_copies_stay_in_its_folder_whatever_the_names(tmp_path, capsys):
  root = tmp_path / "root"
  photos = root / "data" / "photos"  # the indexed folder
  out = root / "out"
  out.mkdir(parents=True)
  folder = out / "hits"
  absolute = str(root / "elsewhere" / "abs.jpg")
  names = ["../../escape_test.jpg", "..", absolute, "a\x00b.jpg", "n" * 300 + ".jpg",
           "sub/dir/1.jpg", "1.jpg", "back\\slash.jpg"]
  sources = []
  for k, name in enumerate(names):  # the image each name leads to, as Index.image_path gives
    source = str(tmp_path / "sources" / f"{k}.jpg")
    _jpeg(source, (30 * k, 255 - 30 * k, 90))
    sources.append(source)
  result = search_lib.SearchResult(
      query="a red circle", words=["a", "red", "circle"], unknown=[],
      hits=[_hit(k + 1, n, s) for k, (n, s) in enumerate(zip(names, sources))],
      regions_scored=8, candidates=0, seconds=0.0)
  before = _tree(root)
  written_page = page.write_search_page(str(folder), result)
  assert written_page == str(folder / page.PAGE)
  written = _tree(root) - before
  assert all(p.startswith("out/hits/") for p in written), sorted(written)
  expected = ["escape_test.jpg", "unnamed", "abs.jpg", "a_b.jpg", "n" * 196 + ".jpg", "1.jpg",
              "1-2.jpg", "back_slash.jpg"]
  assert sorted(os.listdir(folder / "images")) == sorted(expected)
  assert page.outputs(result)[3:] == [f"images/{n}" for n in expected]
  data = json.load(open(folder / page.DATA))
  html = (folder / page.PAGE).read_text()
  for hit, name, source in zip(data["hits"], expected, sources):
    assert hit["src"] == f"images/{name}"
    assert (folder / hit["src"]).read_bytes() == open(source, "rb").read()
    assert f'src="images/{name}"' in html  # every name here is safe in a URL as it is
  assert [h["image"] for h in data["hits"]] == names  # the index's names, shown as they are
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("warning: 6 image names in the index are not plain")
  assert "'../../escape_test.jpg' as images/escape_test.jpg" in err[0] and "3 more" in err[0]


def test_search_page_quotes_names_in_its_links(tmp_path, capsys):
  source = str(tmp_path / "src.jpg")
  _jpeg(source, (1, 2, 3))
  result = search_lib.SearchResult(query="q", words=["q"], unknown=[],
                                   hits=[_hit(1, "50% #1?.jpg", source)], regions_scored=1,
                                   candidates=0, seconds=0.0)
  page.write_search_page(str(tmp_path / "hits"), result)
  assert 'src="images/50%25%20%231%3F.jpg"' in (tmp_path / "hits" / page.PAGE).read_text()
  assert os.listdir(tmp_path / "hits" / "images") == ["50% #1?.jpg"]
  assert capsys.readouterr().err == ""  # a plain file name: no warning


def test_search_command_with_a_crafted_index_writes_only_into_output_vis_dir(
    tmp_path, monkeypatch, capsys):
  from densecap_jax import predictor  # pylint: disable=g-import-not-at-top
  from densecap_jax.search import builder as index_lib  # pylint: disable=g-import-not-at-top
  root = tmp_path / "x"
  photos = root / "data" / "photos"
  write_scenes(str(photos), square_scenes(3, seed=3))
  index_path = str(root / "data" / "photos.index")
  index_lib.build_index(predictor.load_model(batch_size=1), str(photos), index_path,
                        progress=False)
  # The crafted images.json names, as a reader of the index sees them; each leads to a real
  # image outside the indexed folder, so that the page has something to copy.
  crafted = ["../../escape_test.jpg", "../../../x/e2.jpg", str(root / "elsewhere" / "abs.jpg")]
  opened = reader.open_index

  def open_crafted(path):
    index = opened(path)
    for k, name in enumerate(crafted):
      original = index.image_path(k)
      index.image_names[k] = name
      target = index.image_path(k)
      os.makedirs(os.path.dirname(target), exist_ok=True)
      if not os.path.exists(target):
        os.link(original, target)
    return index

  monkeypatch.setattr(reader, "open_index", open_crafted)
  out = root / "out"
  out.mkdir()
  open_crafted(index_path)  # the targets exist before the listing
  before = _tree(root)
  search_command.main(["--index", index_path, "--query", "a red circle", "--top", "3",
                       "--output_vis_dir", str(out / "hits")])
  written = _tree(root) - before
  assert written and all(p.startswith("out/hits/") for p in written), sorted(written)
  assert not (out / "escape_test.jpg").exists() and not (root / "x" / "e2.jpg").exists()
  captured = capsys.readouterr()
  assert "page: " in captured.out
  assert captured.err.count("warning: 3 image names in the index are not plain") == 1
  data = json.load(open(out / "hits" / page.DATA))
  assert sorted(h["image"] for h in data["hits"]) == sorted(crafted)
  for hit in data["hits"]:
    name = files.contained_name(hit["image"])
    assert hit["src"] == f"images/{name}" and len(name.encode()) <= 200
    source = os.path.join(str(photos), hit["image"])
    assert (out / "hits" / hit["src"]).read_bytes() == open(source, "rb").read()


VOCAB = [None, "a", "red", "circle", "square", "blue"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return small_model.save_random_tiny_model(tmp_path_factory.mktemp("model") / "m", VOCAB,
                                            image_size=64)


def _photo(path, size, seed):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(seed)
  Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(path)


def _resized(size):
  """``(width, height)`` of an image ``size = (height, width)`` with its longer side 64.

  Only for sizes where both sides come out whole (no rounding rule involved).
  """
  h, w = size
  assert (w * 64) % max(h, w) == 0 and (h * 64) % max(h, w) == 0, size
  return w * 64 // max(h, w), h * 64 // max(h, w)


def test_predict_gives_two_inputs_of_one_name_two_pictures(model_dir, tmp_path):
  root = tmp_path / "vg"
  sizes = {"a": (90, 120), "b": (120, 60)}
  for sub, size in sizes.items():
    _photo(str(root / sub / "1.jpg"), size, seed=len(sub))
  splits = tmp_path / "splits.json"
  splits.write_text(json.dumps({"test": ["a/1", "b/1"]}))
  vis_dir, drawn_dir = tmp_path / "out" / "vis", tmp_path / "out" / "drawn"
  predict.main(["--input_split", "test", "--splits_json", str(splits), "--vg_img_root_dir",
                str(root), "--checkpoint", model_dir, "--output_vis_dir", str(vis_dir),
                "--output_dir", str(drawn_dir), "--max_detections", "3"])
  results = json.load(open(vis_dir / "results.json"))["results"]
  assert [r["img_name"] for r in results] == ["1.jpg", "1-2.jpg"]
  for r, size in zip(results, sizes.values()):
    assert Image.open(vis_dir / r["img_name"]).size == _resized(size)
    assert Image.open(drawn_dir / r["img_name"]).size == (size[1], size[0])
  assert sorted(os.listdir(drawn_dir)) == ["1-2.jpg", "1.jpg"]
  assert sorted(os.listdir(tmp_path / "out")) == ["drawn", "vis"]


def test_predict_names_long_and_control_character_files_inside_its_folders(model_dir, tmp_path):
  photos = tmp_path / "photos"
  long_name = "n" * 240 + ".jpg"  # a valid name; with the temporary file's 14 bytes, 258
  odd_name = "tab\tand\nnewline.jpg"
  _photo(str(photos / long_name), (45, 60), seed=1)
  _photo(str(photos / odd_name), (60, 45), seed=2)
  out = tmp_path / "out"
  out.mkdir()
  predict.main(["--input_dir", str(photos), "--checkpoint", model_dir, "--output_vis_dir",
                str(out / "vis"), "--output_dir", str(out / "drawn"), "--max_detections", "3"])
  names = ["n" * 196 + ".jpg", "tab_and_newline.jpg"]
  results = json.load(open(out / "vis" / "results.json"))["results"]
  assert [r["img_name"] for r in results] == names
  assert sorted(os.listdir(out)) == ["drawn", "vis"]
  assert sorted(os.listdir(out / "drawn")) == names
  assert Image.open(out / "vis" / names[0]).size == _resized((45, 60))
  assert Image.open(out / "drawn" / names[1]).size == (45, 60)
  # A second run finds its own pictures under the same names and refuses to replace them.
  (out / "vis" / "results.json").unlink()
  with pytest.raises(SystemExit, match="already holds 2 of the images"):
    predict.main(["--input_dir", str(photos), "--checkpoint", model_dir, "--output_vis_dir",
                  str(out / "vis"), "--max_detections", "3"])
