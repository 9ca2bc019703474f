"""Converts the original DenseCap checkpoint and ImageNet VGG-16 weights to densecap_jax models.

``densecap-convert --input FILE --output DIR`` (``python -m
densecap_jax.convert``; the README's "Converting the original weights" and,
in a checkout, ``tools/convert_torch_weights/README.md`` with the tensor
mapping) reads, with neither Torch nor Caffe installed:

* ``t7``: the original's training checkpoint (``densecap-pretrained-vgg16.t7``),
  reader in ``t7.py``, mapping in ``densecap_t7.py``;
* ``caffemodel``: ``VGG_ILSVRC_16_layers.caffemodel`` (``caffemodel.py``);
* ``pth``: a torchvision VGG-16 state dict (``pth.py``, restricted unpickler);

and writes a model directory (``densecap_jax.model_dir.save_model``) that
predict, eval and training load. ImageNet weights fill the backbone and
fc6 / fc7 (``imagenet.py``); the rest is freshly initialised and sized by
the training data's vocabulary.
"""

import os

from densecap_jax.data import vocab as vocab_lib
from densecap_jax.convert import caffemodel
from densecap_jax.convert import densecap_t7
from densecap_jax.convert import imagenet
from densecap_jax.convert import pth
from densecap_jax.convert import t7

FORMATS = ("t7", "caffemodel", "pth")


def detect_format(path):
  """``'t7'``, ``'caffemodel'`` or ``'pth'`` from the first bytes of the file at ``path``.

  A Torch7 file starts with the int tag of a table (3) or torch object (4);
  a ``.pth`` is a zip archive (``PK``) or a pickle (``0x80``); a caffemodel
  starts with the key of a ``NetParameter`` field.

  Raises:
    ValueError: empty file or unknown leading bytes.
  """
  with open(path, "rb") as f:
    head = f.read(8)
  if not head:
    raise ValueError(f"{path}: empty file")
  if head[:4] in (b"\x03\x00\x00\x00", b"\x04\x00\x00\x00"):
    return "t7"
  if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
    return "pth"
  if head[0] in caffemodel.NET_PARAMETER_FIRST_BYTES:
    return "caffemodel"
  raise ValueError(f"{path}: unknown file format (first bytes {head.hex(' ')}); expected a "
                   f"Torch7 .t7, a Caffe .caffemodel or a PyTorch .pth (or pass --format)")


def convert(path, file_format=None, vocab_json=None, seed=0):
  """Reads and maps the file at ``path``; returns a ``mapping.Conversion``.

  Args:
    path: the input file.
    file_format: one of ``FORMATS``; detected from the content when None.
    vocab_json: for ImageNet weights (caffemodel, pth), the training data's
      JSON with ``idx_to_token`` (``VG-regions-dicts.json``); ignored for a
      t7 checkpoint, which holds its vocabulary.
    seed: initialisation seed of the parts ImageNet weights do not cover.

  Raises:
    ValueError: one line naming the problem (format, truncation, unknown
      modules or layers, shape mismatches, missing vocabulary).
  """
  file_format = file_format or detect_format(path)
  if file_format not in FORMATS:
    raise ValueError(f"unknown format {file_format!r}; expected one of {FORMATS}")
  if file_format == "t7":
    return densecap_t7.convert(t7.load(path))
  if vocab_json is None:
    raise ValueError("ImageNet weights need --vocab DATA_JSON (the training data's JSON with "
                     "idx_to_token), which sizes the language model")
  vocab = vocab_lib.load_vocab(vocab_json)
  if file_format == "caffemodel":
    vgg = imagenet.vgg_from_caffe(caffemodel.load(path))
  else:
    vgg = imagenet.vgg_from_torchvision(pth.load(path))
  return imagenet.convert(*vgg, vocab, seed=seed)


def describe(file_format):
  """One line naming what a format holds."""
  return {"t7": "Torch7 DenseCap checkpoint", "caffemodel": "Caffe VGG-16 (ImageNet)",
          "pth": "torchvision VGG-16 state dict (ImageNet)"}[file_format]


def output_is_free(directory):
  """Raises ValueError when ``directory`` exists (the converter never overwrites)."""
  if os.path.lexists(directory):
    raise ValueError(f"{directory} exists; the converter never overwrites, choose a new --output")
