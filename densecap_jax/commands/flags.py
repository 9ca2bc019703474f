"""Command-line pieces shared by commands.

Model flags and loading (predict, extract_features, serve):
``add_model_flags`` also adds the runtime flags (``--verbose``,
``--no_compilation_cache``; see ``densecap_jax.runtime``), which
``load_model_from_flags`` applies before loading.

Training config flags (train, pretrain): ``--config`` (a config file or the
name of one in ``densecap_jax/train/configs``) with ``--config.field``
overrides, read by absl's ``config_flags``; ``resolve_config_names`` and
``parse_config_flags`` turn names into paths and report a wrong one in one line.
"""

import argparse
import difflib
import functools
import importlib.util
import json
import os
import sys

from absl import flags as absl_flags
import ml_collections

from densecap_jax import configs
from densecap_jax import predictor
from densecap_jax import pretrained
from densecap_jax import runtime
from densecap_jax import settings
from densecap_jax.train import configs as train_configs

BUNDLED_NOTICE = (
    "note: using the bundled demo model (tiny config, trained on synthetic shapes; it only knows "
    "such scenes). For real photos convert the released VG model with densecap-convert "
    "(README: \"Converting the original weights\") and pass --checkpoint.")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
  """``--help`` with every option's default: "(default: X)" unless its help already says one."""

  def _get_help_string(self, action):
    if "(default" in (action.help or ""):
      return action.help
    return super()._get_help_string(action)


def add_model_flags(parser, *, final_nms_thresh=None, final_nms_help=None):
  """Adds the ``model`` group: --checkpoint, --image_size, the NMS thresholds, --num_proposals,
  --precision.

  The test-time settings default to ``None``, the model's own value
  (``densecap_jax.settings``); ``final_nms_thresh`` gives a command its own
  default instead. ``check_model_flags`` checks their values
  (``load_model_from_flags`` calls it).
  """
  model = parser.add_argument_group("model")
  model.add_argument("--checkpoint", default="",
                     help="model directory (trained or converted), or a model name: "
                          f"{', '.join(pretrained.NAMES)} (downloaded and converted on first "
                          "use, README: \"Models by name\") (default: the bundled model)")
  model.add_argument("--models_url", default=None,
                     help="a mirror folder of the named models' files (http(s):// or file://) "
                          f"(default: ${pretrained.MODELS_URL_ENV}, else their published URLs)")
  model.add_argument("--image_size", type=int, default=None,
                     help=f"long side after resizing {model_default('image_size')}")
  model.add_argument("--rpn_nms_thresh", type=float, default=None,
                     help=f"IoU threshold of the NMS on the region proposals, in [0, 1] "
                          f"{model_default('rpn_nms_thresh')}")
  final_nms_help = final_nms_help or "IoU threshold of the final NMS, in [0, 1]"
  if final_nms_thresh is None:
    final_nms_help = f"{final_nms_help} {model_default('final_nms_thresh')}"
  model.add_argument("--final_nms_thresh", type=float, default=final_nms_thresh,
                     help=final_nms_help)
  model.add_argument("--num_proposals", type=int, default=None,
                     help=f"proposals after the RPN NMS {model_default('num_proposals')}")
  model.add_argument("--precision", choices=configs.PRECISIONS, default=None,
                     help="how convs and matrix products compute: float32 (exact), tf32 or "
                          "bfloat16 (faster on GPUs and TPUs, see the README) (default: the "
                          "model's, float32 for converted and bundled models)")
  runtime.add_runtime_flags(parser)
  return model


def model_default(name):
  """"(default: the model's value, ...)" for the help of the test-time setting ``name``.

  Names the values of the bundled model (read from its ``config.json``; no
  model is loaded) and of converted VGG-16 models (the ``vgg16`` config).
  """
  bundled, converted = _bundled_config()[name], configs.get_model_config("vgg16")[name]
  if bundled == converted:
    return f"(default: the model's value, {bundled} for the bundled and converted VGG-16 models)"
  return (f"(default: the model's value, {bundled} for the bundled model, {converted} for "
          f"converted VGG-16 ones)")


@functools.lru_cache(maxsize=None)
def _bundled_config():
  with open(os.path.join(predictor.bundled_model_path(), "config.json")) as f:
    return json.load(f)


def load_model_from_flags(args, *, announce=True, **settings):
  """The ``predictor.DenseCapPredictor`` the model flags name; exits with a one-line error.

  Sets up the process first (``runtime.setup``: compilation cache, quiet
  logs). Prints :data:`BUNDLED_NOTICE` when no ``--checkpoint`` is given and,
  with ``announce``, the "compiling up to N programs" notice (N shape
  buckets; programs compile lazily, one per bucket the images use).
  """
  try:
    check_model_flags(args)
  except ValueError as e:
    sys.exit(f"error: {e}")
  runtime.setup_from_args(args)
  if not args.checkpoint:
    print(BUNDLED_NOTICE, file=sys.stderr)
  try:
    model = predictor.load_model(
        args.checkpoint or None, models_url=args.models_url, image_size=args.image_size or None,
        num_proposals=args.num_proposals or None, rpn_nms_thresh=args.rpn_nms_thresh,
        final_nms_thresh=args.final_nms_thresh, precision=getattr(args, "precision", None),
        **settings)
  except (OSError, ValueError) as e:
    sys.exit(f"error: {e}")
  if announce:
    runtime.announce_compiles(len(model.buckets), key=program_key(model),
                              detail="one per shape bucket used", upto=True, record_at_exit=True)
  return model


def check_model_flags(args):
  """Raises ValueError (one line naming the flag) for a model flag out of range.

  ``--image_size`` and ``--num_proposals`` must be positive when given, the
  NMS thresholds in [0, 1], as the server requires of ``final_nms_thresh``
  (``settings.check_settings``). Imports nothing heavy: call it first.
  """
  settings.check_settings(image_size=args.image_size, num_proposals=args.num_proposals,
                          rpn_nms_thresh=args.rpn_nms_thresh,
                          final_nms_thresh=args.final_nms_thresh, prefix="--")


def program_key(model, **extra):
  """What the compiled programs of ``model`` depend on, for ``runtime.announce_compiles``."""
  return dict(config=str(model.config), image_size=model.image_size,
              num_proposals=model.num_proposals, batch_size=model.batch_size,
              buckets=model.buckets, **extra)


CONFIGS_DIR = os.path.dirname(os.path.abspath(train_configs.__file__))


def resolve_config_names(argv):
  """``argv`` with ``--config NAME`` (a config shipped in the package) turned into its file path."""
  argv = list(argv)
  for i, arg in enumerate(argv):
    for prefix in ("--config=", "-config="):
      if arg.startswith(prefix):
        argv[i] = prefix + _config_path(arg[len(prefix):])
    if arg in ("--config", "-config") and i + 1 < len(argv):
      argv[i + 1] = _config_path(argv[i + 1])
  return argv


def _config_path(value):
  path, _, override = value.partition(":")
  packaged = os.path.join(CONFIGS_DIR, f"{path}.py")
  if not os.path.exists(path) and os.sep not in path and os.path.exists(packaged):
    path = packaged
  return path + (":" + override if override else "")


def parse_config_flags(argv):
  """absl's flag parsing (``app.run``'s ``flags_parser``), with a wrong ``--config`` or
  ``--config.field`` reported in one line."""
  problem = check_config_flags(argv)
  if problem:
    sys.exit(f"error: {problem}")
  try:
    return absl_flags.FLAGS(argv)
  except absl_flags.Error as e:
    sys.exit(f"error: {e}")
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    sys.exit(f"error: cannot apply the --config overrides: {' '.join(str(e).split())}")


def check_config_flags(argv):
  """What is wrong with ``--config`` and the ``--config.field`` names in ``argv``, or None."""
  path, overrides = None, []
  for i, arg in enumerate(argv[1:], 1):
    name, has_value, value = arg.partition("=")
    if name in ("--config", "-config"):
      path = value if has_value else (argv[i + 1] if i + 1 < len(argv) else None)
    elif name.startswith("--config."):
      overrides.append(name[len("--config."):])
  if path is None:
    return None
  file_path, _, arg = path.partition(":")
  names = sorted(n[:-3] for n in os.listdir(CONFIGS_DIR) if n.endswith(".py") and n not in (
      "__init__.py", "common.py"))
  if not os.path.isfile(file_path):
    return (f"--config {file_path}: no such config file; expected a path to one or a name of "
            f"{', '.join(names)}")
  spec = importlib.util.spec_from_file_location("_densecap_config", file_path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # pylint: disable=broad-except
    return f"--config {file_path}: cannot build the config ({type(e).__name__}: {e})"
  for override in overrides:
    node, walked = config, []
    for key in override.split("."):
      if not isinstance(node, ml_collections.ConfigDict) or key not in node:
        fields = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        close = difflib.get_close_matches(key, fields, n=1)
        where = ".".join(walked) or "the config"
        hint = f"did you mean {'.'.join(walked + close)!r}? " if close else ""
        return (f"--config.{override}: {where} has no field {key!r}; {hint}"
                f"fields: {', '.join(fields)}")
      node = node[key]
      walked.append(key)
  return None
