"""Tests for collection search (``search.ranking``, the page, the ``search`` command)."""

import json
import os
import shutil

import numpy as np
import pytest
from test_regions_index import square_scenes
from test_regions_index import write_scenes

from densecap_jax import predictor
from densecap_jax.search import builder as index_lib
from densecap_jax.search import ranking as search_lib
from densecap_jax.commands import search as search_command
from densecap_jax.search import page
from densecap_jax.search import reader

NUM_IMAGES = 12


@pytest.fixture(scope="module")
def model():
  return predictor.load_model(batch_size=1)


@pytest.fixture(scope="module")
def collection(model, tmp_path_factory):
  """``(index, {name: scene})``: an index of square synthetic scenes."""
  folder = tmp_path_factory.mktemp("collection")
  scenes = square_scenes(NUM_IMAGES, seed=7)
  write_scenes(str(folder / "photos"), scenes)
  output = str(folder / "photos.index")
  index_lib.build_index(model, str(folder / "photos"), output, shard_size=5, progress=False)
  return reader.open_index(output), {f"{i}.jpg": s for i, s in scenes}


def test_search_finds_the_image_a_caption_came_from(model, collection):
  index, scenes = collection
  fingerprint = index_lib.model_fingerprint(model)
  found = []
  for name, scene in scenes.items():
    for phrase, _ in scene.regions[:4]:
      result = search_lib.search(model, index, phrase, top=5, candidates=0,
                                 fingerprint=fingerprint)
      found.append(name in [h.image for h in result.hits])
  chance = 5 / NUM_IMAGES
  assert np.mean(found) > chance + 0.2, (np.mean(found), chance)


def test_hits_are_the_best_region_of_each_image(model, collection):
  index, _ = collection
  result = search_lib.search(model, index, "a red circle", top=NUM_IMAGES, candidates=0)
  assert result.regions_scored == index.num_regions and result.words == ["a", "red", "circle"]
  assert [h.rank for h in result.hits] == list(range(1, NUM_IMAGES + 1))
  assert len({h.image for h in result.hits}) == NUM_IMAGES
  mean = model.regions.score_codes(index.concatenated("codes"),
                                    ["a red circle"])["mean_log_likelihood"]
  boxes = index.concatenated("boxes")
  for hit in result.hits:
    image = index.image_names.index(hit.image)
    rows = np.flatnonzero(index.image_of_region == image)
    best = rows[np.argmax(mean[rows, 0])]
    assert hit.score == pytest.approx(float(mean[best, 0]), abs=1e-6)
    np.testing.assert_allclose(hit.box, boxes[best])
    assert hit.caption == index.captions([best])[0]
    assert hit.path == os.path.join(index.input_dir, hit.image)
  scores = [h.score for h in result.hits]
  assert scores == sorted(scores, reverse=True)


def test_candidate_stage_scores_the_captions_most_like_the_query(model, collection):
  index, _ = collection
  caption = index.captions([3])[0]
  encoded = model.regions.encode_phrases([caption])
  similarity = search_lib.caption_similarity(index, encoded.labels[0], 56)
  assert similarity[3] == pytest.approx(1.0) and similarity.max() == pytest.approx(1.0)
  assert np.all((similarity >= 0) & (similarity <= 1 + 1e-6))
  result = search_lib.search(model, index, caption, top=3, candidates=20)
  assert result.regions_scored == 20
  rows = search_lib.candidate_rows(index, encoded.labels[0], 56, 20)
  assert 3 in rows or np.sum(similarity >= similarity[3] - 1e-6) > 20
  exhaustive = search_lib.search(model, index, caption, top=3, candidates=0)
  assert result.hits[0].score <= exhaustive.hits[0].score + 1e-6


def test_query_errors_and_unknown_words(model, collection, tmp_path):
  index, _ = collection
  with pytest.raises(ValueError, match="the query is empty"):
    search_lib.search(model, index, "  ")
  with pytest.raises(ValueError, match="none of its words .*zebra.* vocabulary"):
    search_lib.search(model, index, "zebra giraffe")
  # The errors name the query as given, not the position of a phrase in a list.
  long_query = " ".join(["red"] * 40)
  for query, shown, why in [
      ("zebra giraffe", "'zebra giraffe'", ": none of its words (zebra, giraffe) is in"),
      ("a red \u2603", "'a red \u2603'", ": non-ASCII character '\u2603' (U+2603) in phrase"),
      (long_query, f"'{long_query[:60]}...' (159 characters)",
       " has 40 words, more than the model's seq_length")]:
    with pytest.raises(ValueError) as e:
      search_lib.search(model, index, query)
    assert str(e.value).startswith(f"query {shown}{why}"), str(e.value)
    assert "phrase 0" not in str(e.value)
  result = search_lib.search(model, index, "a red zebra circle", top=2)
  assert result.unknown == ["zebra"] and result.words == ["a", "red", "circle"]
  assert not result.no_known_content_words and len(result.hits) == 2
  assert result.notes == ['"a red zebra circle": the model does not know "zebra"; scored as '
                          '"a red circle"']
  # Only function words known: no ranking, and the notes say why.
  result = search_lib.search(model, index, "a man riding a horse", top=2)
  assert result.words == ["a", "a"] and result.unknown == ["man", "riding", "horse"]
  assert result.no_known_content_words and result.hits == [] and result.regions_scored == 0
  assert result.notes[1].startswith('not ranked: of this phrase the model knows only function '
                                    'words ("a", "a")')
  other = _with_fingerprint(index, tmp_path, "sha256:0")
  with pytest.raises(ValueError, match="built with another model"):
    search_lib.search(model, reader.open_index(other), "a red circle")


def _with_fingerprint(index, tmp_path, fingerprint):
  """A copy of the index whose manifest names another model."""
  copy = str(tmp_path / "other.index")
  shutil.copytree(index.path, copy)
  path = os.path.join(copy, reader.MANIFEST)
  manifest = json.load(open(path))
  manifest["model"]["fingerprint"] = fingerprint
  json.dump(manifest, open(path, "w"))
  return copy


def _run(argv, capsys):
  search_command.main(argv)
  return capsys.readouterr().out


def _error(argv):
  with pytest.raises(SystemExit) as e:
    search_command.main(argv)
  message = str(e.value.code)
  assert message.startswith("error: ") and "\n" not in message, message
  return message


def test_command_prints_the_table_and_writes_the_page(collection, tmp_path, capsys):
  index, _ = collection
  page_dir = tmp_path / "hits"
  out = _run(["--index", index.path, "--query", "a red circle", "--top", "3",
              "--output_vis_dir", str(page_dir)], capsys)
  lines = out.splitlines()
  assert lines[0].split() == ["rank", "image", "box", "(x,", "y,", "w,", "h)", "score", "caption"]
  data = json.load(open(page_dir / page.DATA))
  assert [h["rank"] for h in data["hits"]] == [1, 2, 3] and data["query"] == "a red circle"
  for line, hit in zip(lines[1:4], data["hits"]):
    assert line.split()[:2] == [str(hit["rank"]), hit["image"]]
    assert line.endswith(hit["caption"]) and f"{hit['score']:.3f}" in line
    assert (page_dir / hit["src"]).read_bytes() == open(
        os.path.join(index.input_dir, hit["image"]), "rb").read()
  assert "of 12 images" in lines[4] and "page: " in lines[5]
  html = (page_dir / page.PAGE).read_text()
  assert "a red circle" in html and html.count('<rect class="box"') == 3
  assert all(f'src="images/{h["image"]}"' in html for h in data["hits"])
  assert (page_dir / "boxes.css").is_file()
  # Nothing is replaced without --overwrite.
  (page_dir / page.PAGE).write_text("mine")
  assert "already holds" in _error(["--index", index.path, "--query", "a red circle", "--top",
                                    "3", "--output_vis_dir", str(page_dir)])
  assert (page_dir / page.PAGE).read_text() == "mine"
  _run(["--index", index.path, "--query", "a red circle", "--top", "3", "--output_vis_dir",
        str(page_dir), "--overwrite"], capsys)
  assert "a red circle" in (page_dir / page.PAGE).read_text()


def test_command_names_unknown_words_and_does_not_rank_function_words(collection, tmp_path,
                                                                       capsys):
  index, _ = collection
  lines = _run(["--index", index.path, "--query", "a red car", "--top", "2"], capsys).splitlines()
  assert lines[0] == '"a red car": the model does not know "car"; scored as "a red"'
  assert lines[1].split()[0] == "rank" and len(lines) == 5  # the table, then the summary
  page_dir = tmp_path / "hits"
  out = _run(["--index", index.path, "--query", "a man riding a horse", "--output_vis_dir",
              str(page_dir)], capsys)
  assert out.splitlines() == [
      '"a man riding a horse": the model does not know "man", "riding", "horse"; scored as '
      '"a a"',
      'not ranked: of this phrase the model knows only function words ("a", "a"), which do not '
      'say what to look for',
      f"page: {page_dir / page.PAGE}"]
  data = json.load(open(page_dir / page.DATA))
  assert data["hits"] == [] and data["no_known_content_words"] and data["words"] == ["a", "a"]
  html = (page_dir / page.PAGE).read_text()
  assert "the model does not know &quot;man&quot;, &quot;riding&quot;" in html
  assert "not ranked" in html and '<rect class="box"' not in html
  assert os.listdir(page_dir / page.IMAGES) == []


def test_command_errors_are_one_line(collection, tmp_path):
  index, _ = collection
  assert "index not found" in _error(["--index", str(tmp_path / "none"), "--query", "a"])
  assert "not an index" in _error(["--index", str(tmp_path), "--query", "a"])
  assert "--query is empty" in _error(["--index", index.path, "--query", " "])
  assert "--top must be positive" in _error(["--index", index.path, "--query", "a", "--top", "0"])
  other = _with_fingerprint(index, tmp_path, "sha256:0")
  assert "built with another model" in _error(["--index", other, "--query", "a red circle"])
  assert "vocabulary" in _error(["--index", index.path, "--query", "zebra"])
  # A damaged index (codes cut by a region) is refused, naming the shard and the repair.
  damaged = str(tmp_path / "damaged.index")
  shutil.copytree(index.path, damaged)
  codes = os.path.join(damaged, "shards", "000001", "codes.npy")
  np.save(codes, np.load(codes)[:-1])
  message = _error(["--index", damaged, "--query", "a red circle"])
  rows = index.manifest["shards"][1]["regions"]
  assert message == (f"error: index {damaged} is damaged: shard 000001: codes.npy has "
                     f"{rows - 1} rows, the manifest records {rows}; re-index it with "
                     f"densecap-index --input_dir {index.input_dir} --output {damaged}")
