"""Tests for scoring predictions files: densecap_jax.evaluation.predictions, .predictions_eval,
.ground_truth and the ``--predictions`` command.

The bundled model's detections on a small synthetic test split, recorded as
``split_eval.evaluate_split`` scores them, are written in every format; each
file must give exactly the in-process mAP.
"""

import json
import os
import shutil
import zlib

import numpy as np
import pytest

from densecap_jax import model_dir
from densecap_jax import predictor
from densecap_jax.data import loader
from densecap_jax.data import visual_genome as preprocess
from densecap_jax.data import synthetic_world as synthetic
from densecap_jax.commands import evaluate as evaluation_main
from densecap_jax.evaluation import ground_truth
from densecap_jax.evaluation import meteor
from densecap_jax.evaluation import metric
from densecap_jax.evaluation import predictions as predictions_lib
from densecap_jax.evaluation import predictions_eval
from densecap_jax.evaluation import split_eval
from densecap_jax.ops import boxes as boxes_lib

SIZE = 256  # the bundled model's image size


def fake_meteor(candidates, references):
  """A deterministic stand-in for METEOR: 1 for an exact match, else a checksum in [0, 0.3]."""
  return [1.0 if c in r else zlib.crc32((c + "|" + "|".join(r)).encode()) % 7 / 20
          for c, r in zip(candidates, references)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """Synthetic split, the bundled model's recorded detections and the in-process results."""
  folder = tmp_path_factory.mktemp("predictions")
  # 30 scenes hold every word of the bundled model's vocabulary.
  paths = synthetic.generate_dataset(str(folder / "vg"), 30, seed=0, image_size=160,
                                     val_fraction=0.0, test_fraction=0.5, progress=False)
  h5, js = str(folder / "d.h5"), str(folder / "d.json")
  preprocess.preprocess(paths["region_data"], paths["image_dir"], paths["split_json"], h5, js,
                        image_size=SIZE, min_token_instances=1, num_workers=2, progress=False,
                        log=lambda *a: None)
  data = loader.DenseCapH5(h5, js)
  params, config, vocab = model_dir.load_model(predictor.bundled_model_path())
  assert vocab == data.vocab
  config.buckets = ((SIZE, SIZE),)  # one compiled program for every image
  recorded = []
  original_add = metric.DenseCaptioningEvaluator.add_result

  def recording_add(self, scores, boxes, captions, gt_boxes, gt_captions):
    recorded.append((np.asarray(scores), np.asarray(boxes), list(captions)))
    return original_add(self, scores, boxes, captions, gt_boxes, gt_captions)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(metric.DenseCaptioningEvaluator, "add_result", recording_add)
    reference = split_eval.evaluate_split(params, data, "test", split_eval.make_predict_fn(config),
                                          config=config, meteor_fn=fake_meteor, progress=False)
  indices = data.split_indices("test")
  assert len(recorded) == len(indices) == reference["num_images"] >= 10
  assert reference["map"] > 0.05 and reference["detmap"] > 0.2
  detections = []
  for index, (scores, boxes, captions) in zip(indices, recorded):
    xywh = np.asarray(boxes_lib.xcycwh_to_xywh(boxes))  # as inference / predict write them
    scale = SIZE / max(data.original_sizes[index])
    original = np.concatenate([(xywh[:, :2] - 1) / scale + 1, xywh[:, 2:] / scale], axis=1)
    detections.append({"filename": data.filenames[index], "scores": scores.tolist(),
                       "xcycwh": boxes.tolist(),
                       "resized": xywh.tolist(), "original": original.tolist(),
                       "captions": captions})
  return {"folder": folder, "h5": h5, "json": js, "vg": paths, "reference": reference,
          "detections": detections}


def results_json(detections, boxes="resized", image_size=SIZE):
  return {"results": [{"img_name": d["filename"], "boxes": d[boxes], "scores": d["scores"],
                       "captions": d["captions"]} for d in detections],
          "opt": {"image_size": image_size}}


def coco_list(detections, boxes="original"):
  return [{"image_id": int(d["filename"].split(".")[0]), "bbox": box, "caption": caption,
           "score": score}
          for d in detections for box, caption, score in zip(d[boxes], d["captions"], d["scores"])]


def write(path, obj, lines=False):
  with open(path, "w") as f:
    if lines:
      f.writelines(json.dumps(row) + "\n" for row in obj)
    else:
      json.dump(obj, f)
  return str(path)


def h5_flags(setup):
  return ["--data_h5", setup["h5"], "--data_json", setup["json"], "--split", "test"]


def vg_flags(setup, sizes="image_data"):
  vg = setup["vg"]
  source = (["--image_data", vg["image_data"]] if sizes == "image_data" else
            ["--image_dir", vg["image_dir"]])
  return ["--region_data", vg["region_data"], "--split_json", vg["split_json"], *source,
          "--image_size", str(SIZE), "--min_token_instances", "1", "--split", "test"]


def run(argv, tmp_path, capsys, meteor_fn=fake_meteor):
  """The command with ``argv``; returns its JSON output and the captured stdout / stderr."""
  output = str(tmp_path / f"out{len(os.listdir(tmp_path))}.json")
  evaluation_main.main([*argv, "--output", output], meteor_fn=meteor_fn)
  captured = capsys.readouterr()
  with open(output) as f:
    return json.load(f), captured


def prepared_warnings(setup, obj, lines=False, name="p.json", **flags):
  read = predictions_lib.read_predictions(write(setup["folder"] / name, obj, lines),
                                          box_format=flags.pop("box_format", "xywh"))
  gt = ground_truth.from_h5(setup["h5"], setup["json"], "test")
  return predictions_eval.prepare(read, gt, **flags).warnings


def test_every_format_gives_the_in_process_map(setup, tmp_path, capsys):
  dets = setup["detections"]
  files = {
      "results": write(tmp_path / "results.json", results_json(dets)),
      "results_list": write(tmp_path / "list.json", results_json(dets)["results"]),
      "coco": write(tmp_path / "coco.json", coco_list(dets)),
      "jsonl_detections": write(tmp_path / "d.jsonl", coco_list(dets), lines=True),
      "jsonl_images": write(tmp_path / "i.jsonl", results_json(dets)["results"], lines=True),
  }
  reference = setup["reference"]
  for name, path in files.items():
    output, captured = run(["--predictions", path, *h5_flags(setup)], tmp_path, capsys)
    assert output["results"]["map"] == reference["map"], name
    assert output["results"]["detmap"] == reference["detmap"], name
    assert output["results"]["num_detections"] == reference["num_detections"], name
    assert "warning" not in captured.err, (name, captured.err)
    assert f"mAP {100 * reference['map']:.2f}" in captured.out
  assert output["checks"]["format"] == "jsonl" and output["checks"]["boxes_in"] == "resized"


def test_probabilities_near_1_rank_as_the_logits_do(setup, tmp_path, capsys):
  # sigmoid(logit) in float64 keeps the logits' order; logits above ~16.6
  # give probabilities that float32 rounds to 1.0, where they would tie and
  # rank in file order. The model's logits are shifted (same order, same
  # mAP) so that its highest reach 18.
  shift = 18.0 - max(np.max(d["scores"]) for d in setup["detections"])
  dets = [dict(d, scores=(1 / (1 + np.exp(-(np.asarray(d["scores"], np.float64) + shift))))
               .tolist()) for d in setup["detections"]]
  probabilities = np.concatenate([d["scores"] for d in dets])
  logits = np.concatenate([d["scores"] for d in setup["detections"]])
  assert (np.float32(probabilities) == 1).sum() > 1 and len(np.unique(probabilities)) == (
      len(np.unique(logits)))
  path = write(tmp_path / "probabilities.json", results_json(dets))
  output, _ = run(["--predictions", path, *h5_flags(setup)], tmp_path, capsys)
  assert output["results"]["map"] == setup["reference"]["map"]
  assert output["results"]["detmap"] == setup["reference"]["detmap"]


def test_without_output_nothing_is_written(setup, tmp_path, capsys, monkeypatch):
  path = write(setup["folder"] / "quiet.json", results_json(setup["detections"]))
  monkeypatch.chdir(tmp_path)
  evaluation_main.main(["--predictions", path, *h5_flags(setup)], meteor_fn=fake_meteor)
  out = capsys.readouterr().out
  assert f"mAP {100 * setup['reference']['map']:.2f}" in out and "written" not in out
  assert os.listdir(tmp_path) == []
  with pytest.raises(SystemExit):
    evaluation_main.parse_args(["--help"])
  assert "(default: nothing is written" in " ".join(capsys.readouterr().out.split())


def test_visual_genome_ground_truth_equals_the_preprocessed_one(setup, tmp_path, capsys):
  from_h5 = ground_truth.from_h5(setup["h5"], setup["json"], "test")
  vg = setup["vg"]
  for sizes in ({"image_data": vg["image_data"]}, {"image_dir": vg["image_dir"]}):
    from_vg = ground_truth.from_visual_genome(vg["region_data"], vg["split_json"], "test",
                                              image_size=SIZE, min_token_instances=1, **sizes)
    assert from_vg.image_size == from_h5.image_size == SIZE
    assert [i.key for i in from_vg.images] == [i.key for i in from_h5.images]
    for a, b in zip(from_vg.images, from_h5.images):
      np.testing.assert_array_equal(a.boxes, b.boxes)
      assert a.captions == b.captions
      assert a.original_size == b.original_size and a.resized_size == b.resized_size
  coco = write(tmp_path / "coco.json", coco_list(setup["detections"]))
  output, captured = run(["--predictions", coco, *vg_flags(setup)], tmp_path, capsys)
  assert output["results"]["map"] == setup["reference"]["map"]
  assert "warning" not in captured.err


def test_rare_words_become_unk_as_in_preprocessing(setup, tmp_path):
  vg = setup["vg"]
  h5, js = str(tmp_path / "d.h5"), str(tmp_path / "d.json")
  preprocess.preprocess(vg["region_data"], vg["image_dir"], vg["split_json"], h5, js,
                        image_size=SIZE, min_token_instances=40, num_workers=2, progress=False,
                        log=lambda *a: None)
  from_h5 = ground_truth.from_h5(h5, js, "test")
  from_vg = ground_truth.from_visual_genome(vg["region_data"], vg["split_json"], "test",
                                            image_dir=vg["image_dir"], image_size=SIZE,
                                            min_token_instances=40)
  captions = [c for i in from_vg.images for c in i.captions]
  assert any("<UNK>" in c for c in captions)
  assert captions == [c for i in from_h5.images for c in i.captions]


@pytest.mark.parametrize("kind", ["results", "coco"])
def test_boxes_in_the_other_frame_are_flagged(setup, kind):
  dets = setup["detections"]
  if kind == "results":  # original-image pixels where resized ones are expected
    warnings = prepared_warnings(setup, results_json(dets, boxes="original"))
    fix = "--boxes_in original"
    seen = "look like xywh in original-image pixels, but are read as xywh in resized-image"
  else:  # resized-image pixels where original ones are expected
    warnings = prepared_warnings(setup, coco_list(dets, boxes="resized"))
    fix = "--boxes_in resized"
    seen = f"look like xywh in resized-image pixels (the {SIZE}-px frame), but are read as xywh " \
           "in original-image pixels"
  assert len(warnings) == 1, warnings
  assert seen in warnings[0] and warnings[0].endswith(f"pass {fix}")
  # The flag the warning names fixes it.
  assert not prepared_warnings(setup, results_json(dets, boxes="original"), boxes_in="original")


def test_x1y1x2y2_boxes_given_as_xywh_are_flagged(setup):
  dets = []
  for d in setup["detections"]:
    corners = [[x, y, x + w - 1, y + h - 1] for x, y, w, h in d["resized"]]
    dets.append(dict(d, resized=corners))
  warnings = prepared_warnings(setup, results_json(dets))
  assert len(warnings) == 1, warnings
  assert "look like x1y1x2y2 in resized-image pixels" in warnings[0]
  assert warnings[0].endswith("pass --box_format x1y1x2y2")
  assert not prepared_warnings(setup, results_json(dets), box_format="x1y1x2y2")


def test_missing_and_unknown_images_are_counted_and_named(setup, tmp_path, capsys):
  dets = setup["detections"]
  kept = dets[3:] + [dict(dets[0], filename="9999.jpg")]
  path = write(tmp_path / "partial.json", results_json(kept))
  output, captured = run(["--predictions", path, *h5_flags(setup)], tmp_path, capsys)
  names = [repr(d["filename"].split(".")[0]) for d in dets[:3]]
  n = len(dets)
  assert (f"warning: 3 of {n} images of the test split have no predictions in the file and count "
          f"as detecting nothing: {', '.join(names)}; --only_images_in_file scores just the "
          f"images the file has") in captured.err
  assert (f"warning: 1 of {n - 2} images in the file are not among the {n} scored images of the "
          f"test split of {setup['h5']} and are ignored: '9999.jpg'") in captured.err
  assert output["checks"]["images_without_predictions"] == 3
  assert output["results"]["map"] < setup["reference"]["map"]
  output, _ = run(["--predictions", path, *h5_flags(setup), "--only_images_in_file"],
                  tmp_path, capsys)
  assert output["results"]["num_images"] == n - 3

  elsewhere = write(tmp_path / "elsewhere.json", [{"image_id": 5000 + i, "bbox": [1, 1, 5, 5],
                                                   "caption": "a", "score": 1.0}
                                                  for i in range(7)])
  with pytest.raises(SystemExit) as exit_info:
    evaluation_main.main(["--predictions", elsewhere, *h5_flags(setup)], meteor_fn=fake_meteor)
  assert str(exit_info.value.code).startswith(
      "error: none of the 7 images in " + elsewhere + f" is among the {n} scored images")
  assert "check --split and the image names" in str(exit_info.value.code)


def test_malformed_entries_are_named_by_position(setup, tmp_path):
  good = {"image_id": 1, "bbox": [1, 1, 5, 5], "caption": "a red square", "score": 0.5}
  entries = [good, dict(good, score=None), {"image_id": 1, "bbox": [1, 2, 3], "caption": "a",
                                            "score": 1},
             dict(good, bbox=[1, 1, float("nan"), 5]), dict(good, bbox=[1, 1, -4, 5]),
             dict(good, caption=7), {"bbox": [1, 1, 2, 2], "caption": "a", "score": 1},
             {key: value for key, value in good.items() if key != "score"}]
  path = write(tmp_path / "bad.json", entries)
  with pytest.raises(predictions_lib.PredictionsError) as error:
    predictions_lib.read_predictions(path)
  assert str(error.value) == (
      f"{path}: 7 malformed entries: [1]: field 'score' must be a finite number, got None; "
      "[2]: field 'bbox' must be a list of 4 numbers [x, y, w, h], got [1, 2, 3]; "
      "[3].bbox is not 4 finite numbers: [1.0, 1.0, nan, 5.0]; "
      "[4].bbox has a negative width or height (read as xywh): [1.0, 1.0, -4.0, 5.0]; "
      "[5]: field 'caption' must be a string, got int; and 2 more")

  image = {"img_name": "1.jpg", "boxes": [[1, 1, 5, 5]], "scores": [1.0], "captions": ["a"]}
  cases = {
      "lengths": ({"results": [dict(image, scores=[1.0, 2.0])]},
                  "results[0]: 1 boxes, 2 scores and 1 captions (one of each per detection)"),
      "twice": ({"results": [image, image]},
                "results[1]: image '1.jpg' has a second entry (the first is results[0])"),
      "box": ({"results": [dict(image, boxes=[[1, 1, 5]])]},
              "results[0]: field 'boxes' must be a list of [x, y, w, h] lists of 4 numbers"),
      "detection": ({"results": [good]},
                    "results[0]: no field 'boxes', 'scores', 'captions' (a detection? use "
                    "--format coco)"),
  }
  for name, (obj, message) in cases.items():
    with pytest.raises(predictions_lib.PredictionsError, match="malformed entr") as error:
      predictions_lib.read_predictions(write(tmp_path / f"{name}.json", obj))
    assert str(error.value).endswith(message), name

  lines = tmp_path / "bad.jsonl"
  lines.write_text(json.dumps(good) + "\n" + json.dumps(good)[:-3] + "\n")
  with pytest.raises(predictions_lib.PredictionsError,
                     match=r"bad.jsonl: line 2 is not valid JSON: Expecting"):
    predictions_lib.read_predictions(str(lines))
  corners = write(tmp_path / "corners.json", [dict(good, bbox=[10, 10, 5, 20])])
  with pytest.raises(predictions_lib.PredictionsError,
                     match=r"\[0\]\.bbox has a negative width or height \(x2 < x1 - 1"):
    predictions_lib.read_predictions(corners, box_format="x1y1x2y2")
  with pytest.raises(predictions_lib.PredictionsError, match="expected the original's results"):
    predictions_lib.read_predictions(write(tmp_path / "obj.json", {"annotations": []}))

  # The command: one error line, non-zero exit, before METEOR.
  with pytest.raises(SystemExit) as exit_info:
    evaluation_main.main(["--predictions", path, *h5_flags(setup)], meteor_fn=fake_meteor)
  assert str(exit_info.value.code).startswith(f"error: {path}: 7 malformed entries: [1]")
  assert "\n" not in str(exit_info.value.code)


def test_empty_captions_and_equal_scores_are_warned(setup):
  dets = [dict(d, scores=[1.0] * len(d["scores"])) for d in setup["detections"]]
  dets[0] = dict(dets[0], captions=[""] + dets[0]["captions"][1:])
  warnings = prepared_warnings(setup, results_json(dets))
  total = sum(len(d["scores"]) for d in dets)
  assert warnings[0] == (f"1 of {total} detections have an empty caption "
                         "('results[0].captions[0]'); they count for the detection mAP only")
  assert warnings[1].startswith(f"all {total} scores are equal (1): the ranking is lost")
  assert len(warnings) == 2


def test_per_image_rows_are_each_image_scored_alone(setup, tmp_path, capsys):
  path = write(tmp_path / "results.json", results_json(setup["detections"]))
  output, captured = run(["--predictions", path, *h5_flags(setup), "--per_image"],
                         tmp_path, capsys)
  rows = output["per_image"]
  gt = ground_truth.from_h5(setup["h5"], setup["json"], "test")
  assert [r["image"] for r in rows] == [i.key for i in gt.images]
  for row, image, det in zip(rows, gt.images, setup["detections"]):
    alone = metric.DenseCaptioningEvaluator(meteor_fn=fake_meteor)
    xcycwh = boxes_lib.xywh_to_model(det["resized"], np.float64).astype(np.float32)
    alone.add_result(det["scores"], xcycwh, det["captions"], image.boxes, image.captions)
    results = alone.evaluate()
    assert row["map"] == results["map"] and row["detmap"] == results["detmap"]
    assert row["num_ground_truth"] == results["num_ground_truth"]
    assert row["num_detections"] == len(det["scores"])
  # The recalls add up to the split's: each image's found boxes over all ground truth.
  total = sum(r["num_ground_truth"] for r in rows)
  assert total == output["results"]["num_ground_truth"]
  assert 0 < sum(r["det_recall"] * r["num_ground_truth"] for r in rows) / total <= 1
  assert "lowest per-image mAP" in captured.out


def test_clean_variant_and_flag_combinations(setup, tmp_path, capsys):
  path = write(tmp_path / "results.json", results_json(setup["detections"]))
  output, _ = run(["--predictions", path, *h5_flags(setup), "--clean"], tmp_path, capsys)
  clean = metric.DenseCaptioningEvaluator(meteor_fn=fake_meteor, quirks=False)
  gt = ground_truth.from_h5(setup["h5"], setup["json"], "test")
  for image, det in zip(gt.images, setup["detections"]):
    xcycwh = boxes_lib.xywh_to_model(det["resized"], np.float64).astype(np.float32)
    clean.add_result(det["scores"], xcycwh, det["captions"], image.boxes, image.captions)
  assert output["results"]["map"] == clean.evaluate()["map"]
  for argv, message in (
      (["--predictions", path], "give the ground truth as --data_h5"),
      (["--predictions", path, "--checkpoint", "m", *h5_flags(setup)], "one of them"),
      (["--predictions", path, *vg_flags(setup)[:4]], "needs the original image sizes"),
      (["--checkpoint", "m", *h5_flags(setup), "--per_image"], "--per_image applies to"),
  ):
    with pytest.raises(SystemExit):
      evaluation_main.parse_args(argv)
    assert message in capsys.readouterr().err


def _no_java_path(tmp_path, monkeypatch):
  """Sets PATH to an empty folder, so that no ``java`` is found."""
  empty = tmp_path / "bin"
  empty.mkdir()
  monkeypatch.setenv("PATH", str(empty))
  assert shutil.which("java") is None


def test_without_java_both_modes_stop_before_any_work(setup, tmp_path, monkeypatch):
  path = write(tmp_path / "results.json", results_json(setup["detections"]))
  _no_java_path(tmp_path, monkeypatch)

  def must_not_run(*args, **kwargs):
    raise AssertionError("the model ran although METEOR cannot")

  monkeypatch.setattr(split_eval, "evaluate_split", must_not_run)
  monkeypatch.setattr(ground_truth, "from_h5", must_not_run)
  for argv in (["--checkpoint", predictor.bundled_model_path(), "--data_h5", setup["h5"],
                "--data_json", setup["json"]],
               ["--predictions", path, "--data_h5", setup["h5"], "--data_json", setup["json"]]):
    with pytest.raises(SystemExit) as exit_info:
      evaluation_main.main(argv)
    assert str(exit_info.value.code).startswith("error: METEOR needs Java, but no 'java' "
                                                "executable is on PATH")


class _SharedMeteor:
  """``Meteor()`` as the evaluator opens it, backed by one process that outlives the block."""

  def __init__(self, process):
    self._process = process

  def __enter__(self):
    return self._process

  def __exit__(self, *exc_info):
    pass


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs Java")
def test_with_java_the_file_gets_the_evaluators_meteor_map(setup, tmp_path, capsys, monkeypatch):
  path = write(tmp_path / "coco.json", coco_list(setup["detections"]))
  with meteor.Meteor() as process:  # one Java start for the command and the reference
    monkeypatch.setattr(metric, "Meteor", lambda: _SharedMeteor(process))
    output, _ = run(["--predictions", path, *h5_flags(setup)], tmp_path, capsys, meteor_fn=None)
    reference = metric.DenseCaptioningEvaluator()  # the Java METEOR, as evaluate_split uses it
    gt = ground_truth.from_h5(setup["h5"], setup["json"], "test")
    for image, det in zip(gt.images, setup["detections"]):
      reference.add_result(det["scores"], det["xcycwh"], det["captions"], image.boxes,
                           image.captions)
    expected = reference.evaluate()
  assert output["results"]["map"] == expected["map"] > 0
  assert output["results"]["detmap"] == setup["reference"]["detmap"]


@pytest.mark.parametrize("layout", ["results", "coco", "jsonl_results", "jsonl_coco"])
def test_a_file_nested_100000_levels_deep_is_one_error_line(setup, tmp_path, layout):
  deep = "[" * 100_000 + "]" * 100_000
  image = {"img_name": "1.jpg", "boxes": [[1, 1, 5, 5]], "scores": [1.0], "captions": ["a"]}
  detection = {"image_id": 1, "bbox": [1, 1, 5, 5], "caption": "a", "score": 0.5}
  entry = image if layout.endswith("results") else detection
  field = "boxes" if layout.endswith("results") else "bbox"
  bad = json.dumps(dict(entry, **{field: "DEEP"})).replace('"DEEP"', deep)
  if layout == "results":
    text = '{"results": [' + bad + "]}"
  elif layout == "coco":
    text = "[" + bad + "]"
  else:
    text = json.dumps(entry) + "\n" + bad + "\n"
  path = tmp_path / "deep.json"
  path.write_text(text)
  for fmt in ("auto", "jsonl" if layout.startswith("jsonl") else layout.split("_")[0]):
    with pytest.raises(predictions_lib.PredictionsError) as error:
      predictions_lib.read_predictions(str(path), fmt)
    levels = 100_000 + 1 + {"results": 2, "coco": 1}.get(layout, 0)  # the entry, then outside it
    where = f"{path}: line 2 is" if fmt == "jsonl" else f"{path} is"
    assert str(error.value) == (f"{where} nested {levels:,} levels deep, more than the limit "
                                f"of {predictions_lib.MAX_JSON_DEPTH}")
  with pytest.raises(SystemExit) as exit_info:
    evaluation_main.main(["--predictions", str(path), *h5_flags(setup)], meteor_fn=fake_meteor)
  message = str(exit_info.value.code)
  assert message.startswith(f"error: {path} ") and "nested" in message and "\n" not in message


def test_huge_numbers_and_long_values_are_named_briefly(tmp_path):
  good = {"image_id": 1, "bbox": [1, 1, 5, 5], "caption": "a red square", "score": 0.5}
  huge = "1" + "0" * 400
  text = json.dumps([dict(good, score="HUGE"), dict(good, bbox=[1, "HUGE", 5, 5]),
                     dict(good, score="s" * 10_000), dict(good, image_id=" " * 5000),
                     dict(good, bbox=[[1, 2]] * 2000)]).replace('"HUGE"', huge)
  path = tmp_path / "huge.json"
  path.write_text(text)
  with pytest.raises(predictions_lib.PredictionsError) as error:
    predictions_lib.read_predictions(str(path))
  blank = "' " + " " * 59 + "...' (5,000 characters)"
  listed = repr([[1, 2]] * 2000)
  assert str(error.value) == (
      f"{path}: 5 malformed entries: [0]: field 'score' must be a finite number, got inf; "
      f"[1].bbox is not 4 finite numbers: [1.0, inf, 5.0, 5.0]; "
      f"[2]: field 'score' must be a finite number, got '{'s' * 60}...' (10,000 characters); "
      f"[3]: an image id must name an image, got {blank}; "
      f"[4]: field 'bbox' must be a list of 4 numbers [x, y, w, h], got {listed[:60]}... "
      f"({len(listed):,} characters)")
