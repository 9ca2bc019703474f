"""The score command (densecap_jax.score) on the bundled model and its example images."""

import json
import os

import numpy as np
import pytest

from densecap_jax import predictor
from densecap_jax import score
from densecap_jax.data import inputs

EXAMPLES = predictor.bundled_examples_path()
PHOTOS = [os.path.join(EXAMPLES, n) for n in ("synthetic_12.jpg", "synthetic_13.jpg")]


@pytest.fixture(scope="module")
def bundled():
  return predictor.load_model()


def _check_entry(entry, want, path):
  assert entry["image"] == path
  assert set(entry) == {"image", *want}
  for key, value in want.items():
    if isinstance(value, np.ndarray):
      np.testing.assert_allclose(entry[key], value, rtol=1e-5, atol=1e-5, err_msg=key)
    else:
      assert entry[key] == value, key


def test_scores_detections_as_score_phrases(bundled, tmp_path, capsys):
  phrases = ["a red circle", "a blue zebra square"]
  out_json = tmp_path / "scores.json"
  score.main(["--input_dir", EXAMPLES, "--phrase", phrases[0], "--phrase", phrases[1],
              "--top", "2", "--output_json", str(out_json)])
  out = capsys.readouterr()
  with open(out_json) as f:
    written = json.load(f)
  paths = inputs.image_files(EXAMPLES)
  assert written["phrases"] == phrases and written["box_coords"] == "image"
  want = bundled.score_phrases(paths, phrases)
  assert len(written["images"]) == len(paths) == 3
  for entry, w, path in zip(written["images"], want, paths):
    _check_entry(entry, w, path)
  assert want[0]["phrases"] == ["a red circle", "a blue square"]

  # The table: per image and phrase the top 2 regions, best mean log-likelihood first.
  blocks = out.out.split("\n\n")
  assert len(blocks) == 3 * 2
  header, _, first, second = blocks[0].splitlines()[:4]
  assert header == f"{paths[0]}: 'a red circle' ({len(want[0]['captions'])} regions)"
  mean = want[0]["mean_log_likelihood"][:, 0]
  best = int(np.argmax(mean))
  rank, *_ = first.split()
  assert rank == "1" and f"{mean[best]:.3f}" in first and first.endswith(want[0]["captions"][best])
  assert float(second.split("]")[1].split()[0]) <= float(first.split("]")[1].split()[0])
  assert len(blocks[0].splitlines()) == 4  # the header line, the column names, 2 rows
  # The phrase with an unknown word says so under its header, then is ranked as scored.
  header, note, columns, first, _ = blocks[1].splitlines()
  assert header == f"{paths[0]}: 'a blue zebra square' ({len(want[0]['captions'])} regions)"
  assert note == ('  "a blue zebra square": the model does not know "zebra"; scored as '
                  '"a blue square"')
  assert columns.split()[0] == "rank" and first.split()[0] == "1"


def test_a_phrase_of_unknown_content_words_is_not_ranked(bundled, tmp_path, capsys):
  # The bundled vocabulary lacks "man", "riding", "horse" (and has no <UNK>): "a a" is scored.
  phrases = ["a man riding a horse", "a red circle"]
  out_json = tmp_path / "scores.json"
  score.main(["--input_image", PHOTOS[0], "--phrase", phrases[0], "--phrase", phrases[1],
              "--top", "2", "--output_json", str(out_json)])
  out = capsys.readouterr().out
  (want,) = bundled.score_phrases(PHOTOS[:1], phrases)
  n = len(want["captions"])
  unknown, known = out.split("\n\n")[:2]
  assert unknown.splitlines() == [
      f"{PHOTOS[0]}: 'a man riding a horse' ({n} regions)",
      '  "a man riding a horse": the model does not know "man", "riding", "horse"; scored as '
      '"a a"',
      '  not ranked: of this phrase the model knows only function words ("a", "a"), which do not '
      'say what to look for']
  assert known.splitlines()[0] == f"{PHOTOS[0]}: 'a red circle' ({n} regions)"
  assert known.splitlines()[2].split()[0] == "1"  # the header, the column names, 2 rows
  assert known.splitlines()[4:] == [f"scores: {out_json}"]
  with open(out_json) as f:
    (entry,) = json.load(f)["images"]
  assert entry["phrases"] == ["a a", "a red circle"]
  assert entry["unknown_words"] == [["man", "riding", "horse"], []]
  assert entry["no_known_content_words"] == [True, False]
  np.testing.assert_allclose(entry["mean_log_likelihood"], want["mean_log_likelihood"],
                             rtol=1e-5, atol=1e-5)


def test_scores_given_boxes(bundled, tmp_path, capsys):
  boxes = [[10, 20, 100, 80], [150, 100, 200, 200], [1, 1, 192, 256]]
  (tmp_path / "boxes.json").write_text(json.dumps({"synthetic_12.jpg": boxes}))
  out_json = tmp_path / "scores.json"
  score.main(["--input_image", PHOTOS[0], "--phrase", "a red circle", "--boxes_json",
              str(tmp_path / "boxes.json"), "--output_json", str(out_json)])
  capsys.readouterr()
  with open(out_json) as f:
    (entry,) = json.load(f)["images"]
  (want,) = bundled.score_phrases(PHOTOS[:1], ["a red circle"], boxes=[boxes])
  _check_entry(entry, want, PHOTOS[0])
  assert entry["clipped"] == [False, True, False] and entry["outside"] == [False] * 3

  # An existing --output_json is kept unless --overwrite.
  with pytest.raises(SystemExit) as e:
    score.main(["--input_image", PHOTOS[0], "--phrase", "a red circle", "--output_json",
                str(out_json)])
  assert e.value.code == (f"error: --output_json {out_json} exists; pass --overwrite to replace "
                          f"it, or choose another file")


@pytest.mark.parametrize("flags, message", [
    (["--phrase", "zebra"], "phrase 0 'zebra': none of its words (zebra) is in the model's "
                            "vocabulary"),
    (["--phrase", "a red circle", "--phrase", " ".join(["a"] * 30)],
     "phrase 1 '" + " ".join(["a"] * 30) + "' has 30 words, more than the model's seq_length "),
    ([], 'give at least one --phrase, e.g. --phrase "a red car"'),
    (["--phrase", "a", "--top", "0"], "--top must be positive, got 0"),
    (["--phrase", "a", "--boxes_json", "BOXES"],
     "--boxes_json BOXES: 'synthetic_12.jpg' box 0: w and h must be positive, got w=0, h=20"),
])
def test_errors_are_one_line(tmp_path, flags, message):
  boxes = tmp_path / "boxes.json"
  boxes.write_text(json.dumps({"synthetic_12.jpg": [[300, 10, 0, 20]]}))
  flags = [str(boxes) if f == "BOXES" else f for f in flags]
  message = message.replace("BOXES", str(boxes))
  with pytest.raises(SystemExit) as e:
    score.main(["--input_image", PHOTOS[0], "--output_json", str(tmp_path / "scores.json"),
                *flags])
  assert e.value.code.startswith(f"error: {message}") and "\n" not in e.value.code
  assert not (tmp_path / "scores.json").exists()
