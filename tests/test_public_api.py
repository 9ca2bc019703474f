"""The documented public API: every name the README and the guides tell a user to import.

A move or rename that breaks one of these names fails here. The lists below
are the names the README, ``benchmarks/README.md`` and
``tools/convert_torch_weights/README.md`` document (the Python API, the
evaluator, the model, the kernels, the converters, photo search, drawing);
``test_every_dotted_name_in_the_guides_resolves`` and
``test_the_readme_python_imports_run`` also read the guides themselves, so a
name they mention that no longer exists fails too.
"""

import configparser
import importlib
import importlib.util
import inspect
import os
import re

import flax.linen as nn
import pytest

import densecap_jax
from densecap_jax import predictor
from densecap_jax.evaluation import metric

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUIDES = ("README.md", "benchmarks/README.md", "tools/convert_torch_weights/README.md")

# (module, name): functions a user calls, by the module the guides name.
FUNCTIONS = [
    ("densecap_jax", "load_model"),
    ("densecap_jax.predictor", "load_model"),
    ("densecap_jax.evaluation", "merge_boxes"),
    ("densecap_jax.evaluation", "average_precision"),
    ("densecap_jax.evaluation.metric", "merge_boxes"),
    ("densecap_jax.evaluation.metric", "average_precision"),
    ("densecap_jax.models", "build_model"),
    ("densecap_jax.models", "init_params"),
    ("densecap_jax.models", "infer"),
    ("densecap_jax.models", "train_forward"),
    ("densecap_jax.models.densecap", "build_model"),
    ("densecap_jax.models.densecap", "init_params"),
    ("densecap_jax.models.detection", "infer"),
    ("densecap_jax.models.detection", "detect_with_codes"),
    ("densecap_jax.models.given_boxes", "region_codes"),
    ("densecap_jax.models.given_boxes", "region_captions"),
    ("densecap_jax.models.given_boxes", "phrase_log_likelihood"),
    ("densecap_jax.models.training", "train_forward"),
    ("densecap_jax.ops.boxes", "xcycwh_to_x1y1x2y2"),
    ("densecap_jax.ops.boxes", "x1y1x2y2_to_xcycwh"),
    ("densecap_jax.ops.boxes", "xywh_to_x1y1x2y2"),
    ("densecap_jax.ops.boxes", "x1y1x2y2_to_xywh"),
    ("densecap_jax.ops.boxes", "xcycwh_to_xywh"),
    ("densecap_jax.ops.boxes", "xywh_to_xcycwh"),
    ("densecap_jax.ops.boxes", "clip_boxes"),
    ("densecap_jax.ops.boxes", "box_iou"),
    ("densecap_jax.ops.boxes", "apply_box_transform"),
    ("densecap_jax.ops.boxes", "invert_box_transform"),
    ("densecap_jax.ops.nms", "nms"),
    ("densecap_jax.ops.roi_pool", "bilinear_roi_pool"),
    ("densecap_jax.ops.sampler", "sample_boxes"),
    ("densecap_jax.ops.anchors", "make_anchors"),
    ("densecap_jax.convert", "convert"),
    ("densecap_jax.convert", "detect_format"),
    ("densecap_jax.convert.t7", "load"),
    ("densecap_jax.convert.t7", "save"),
    ("densecap_jax.convert.caffemodel", "load"),
    ("densecap_jax.convert.pth", "load"),
    ("densecap_jax.convert.densecap_t7", "convert"),
    ("densecap_jax.convert.imagenet", "convert"),
    ("densecap_jax.search", "build_index"),
    ("densecap_jax.search", "open_index"),
    ("densecap_jax.search", "search"),
    ("densecap_jax.data.images", "user_rgb"),
    ("densecap_jax.vis", "draw_results"),
    ("densecap_jax.vis", "draw_labelled"),
    ("densecap_jax.vis", "write_viewer"),
]

# (module, name, base class or None): the documented classes.
CLASSES = [
    ("densecap_jax.predictor", "DenseCapPredictor", None),
    ("densecap_jax.evaluation", "DenseCaptioningEvaluator", None),
    ("densecap_jax.evaluation.metric", "DenseCaptioningEvaluator", None),
    ("densecap_jax.models", "DenseCap", nn.Module),
    ("densecap_jax.models.vgg16", "VGG16", nn.Module),
    ("densecap_jax.models.localization", "LocalizationLayer", nn.Module),
    ("densecap_jax.models.recognition", "RecognitionNetwork", nn.Module),
    ("densecap_jax.models.language_model", "LanguageModel", nn.Module),
]

PREDICTOR_METHODS = ("predict", "predict_prepared", "caption_regions", "score_phrases",
                     "score_codes", "prepare", "read")

# Package-level names that are the same object as the module's they come from.
SAME_OBJECT = [
    ("densecap_jax.evaluation", "densecap_jax.evaluation.metric", "DenseCaptioningEvaluator"),
    ("densecap_jax.evaluation", "densecap_jax.evaluation.metric", "merge_boxes"),
    ("densecap_jax.evaluation", "densecap_jax.evaluation.metric", "average_precision"),
    ("densecap_jax.search", "densecap_jax.search.builder", "build_index"),
    ("densecap_jax.search", "densecap_jax.search.reader", "open_index"),
    ("densecap_jax.search", "densecap_jax.search.ranking", "search"),
    ("densecap_jax.models", "densecap_jax.models.densecap", "DenseCap"),
    ("densecap_jax.models", "densecap_jax.models.detection", "infer"),
    ("densecap_jax.models", "densecap_jax.models.training", "train_forward"),
]

# Keywords the README documents for the clean variants (function, keyword).
DOCUMENTED_KEYWORDS = [
    ("densecap_jax.ops.boxes", "box_iou", "clean"),
    ("densecap_jax.ops.sampler", "sample_boxes", "clean_iou"),
    ("densecap_jax.evaluation", "DenseCaptioningEvaluator", "quirks"),
    ("densecap_jax", "load_model", "path"),
]


def _attr(module, name):
  return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("module,name", FUNCTIONS, ids=lambda v: v)
def test_documented_function_is_importable_and_callable(module, name):
  value = _attr(module, name)
  assert callable(value) and not inspect.isclass(value), f"{module}.{name} is {value!r}"


@pytest.mark.parametrize("module,name,base", CLASSES, ids=lambda v: getattr(v, "__name__", v))
def test_documented_class_is_importable(module, name, base):
  value = _attr(module, name)
  assert inspect.isclass(value), f"{module}.{name} is {value!r}"
  if base is not None:
    assert issubclass(value, base)


@pytest.mark.parametrize("method", PREDICTOR_METHODS)
def test_predictor_has_its_documented_methods(method):
  assert inspect.isfunction(getattr(predictor.DenseCapPredictor, method))


@pytest.mark.parametrize("package,module,name", SAME_OBJECT, ids=lambda v: v)
def test_package_exports_are_the_modules_objects(package, module, name):
  assert _attr(package, name) is _attr(module, name)


@pytest.mark.parametrize("module,name,keyword", DOCUMENTED_KEYWORDS, ids=lambda v: v)
def test_documented_keywords_are_accepted(module, name, keyword):
  assert keyword in inspect.signature(_attr(module, name)).parameters


def test_version_is_the_package_version():
  parser = configparser.ConfigParser()
  parser.read(os.path.join(ROOT, "setup.cfg"))
  assert densecap_jax.__version__ == parser["metadata"]["version"]


def test_evaluator_scores_without_java():
  """``DenseCaptioningEvaluator`` as documented: a METEOR function, the clean variant."""
  evaluator = metric.DenseCaptioningEvaluator(
      meteor_fn=lambda candidates, references: [1.0] * len(candidates), quirks=False)
  box = [[50.0, 50.0, 20.0, 20.0]]  # xcycwh
  evaluator.add_result([1.0], box, ["a red car"], box, ["a red car"])
  results = evaluator.evaluate()
  assert results["map"] == pytest.approx(1.0) and results["detmap"] == pytest.approx(1.0)


def _guide_text(path):
  with open(os.path.join(ROOT, path), encoding="utf-8") as f:
    return f.read()


def _dotted_names(text):
  """``densecap_jax.a.b`` names in backticks or code blocks (not file paths)."""
  names = set(re.findall(r"(?<![\w/.-])densecap_jax(?:\.[A-Za-z_]\w*)+", text))
  return sorted(n for n in names if n != "densecap_jax.X")


def _resolves(name):
  """A module (found, not run: ``python -m`` commands are modules) or a module's attribute."""
  parts = name.split(".")
  for cut in range(len(parts), 0, -1):
    module = ".".join(parts[:cut])
    try:
      spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
      spec = None
    if spec is None:
      continue
    if cut == len(parts):
      return True
    value = importlib.import_module(module)
    for part in parts[cut:]:
      if not hasattr(value, part):
        return False
      value = getattr(value, part)
    return True
  return False


@pytest.mark.parametrize("guide", GUIDES)
def test_every_dotted_name_in_the_guides_resolves(guide):
  names = _dotted_names(_guide_text(guide))
  missing = [name for name in names if not _resolves(name)]
  assert not missing, f"{guide} names what does not exist: {missing}"


def test_the_guides_name_the_api():
  """The scan above sees the Python API (so it cannot pass by finding nothing)."""
  names = set(_dotted_names(_guide_text("README.md")))
  assert {"densecap_jax.load_model", "densecap_jax.data.images.user_rgb"} <= names


def test_the_readme_python_imports_run():
  """Every import line of the README's Python examples runs."""
  blocks = re.findall(r"```python\n(.*?)```", _guide_text("README.md"), re.S)
  lines = [line.strip() for block in blocks for line in block.splitlines()
           if re.match(r"\s*(from densecap_jax\S* import |import densecap_jax)", line)]
  assert any("densecap_jax.search import" in line for line in lines)
  for line in lines:
    exec(line, {})  # pylint: disable=exec-used
