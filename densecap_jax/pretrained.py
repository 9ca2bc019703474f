"""Models by name: download, verify, convert and cache the released weights.

``resolve("densecap-vgg16")`` gives a model directory (``model_dir``) for a
name of :data:`REGISTRY`, fetching it on first use; a path that exists comes
back unchanged. Names:

* ``densecap-vgg16``: the original's released model (Visual Genome, mAP 5.70
  with 1,000 proposals), ``densecap-pretrained-vgg16.t7.zip`` (about 1.1 GB,
  one ``.t7`` of about 1.2 GB inside), converted by ``convert.convert``.
* ``vgg16-imagenet``: torchvision's ImageNet VGG-16 (``vgg16-397923af.pth``,
  about 528 MB), converted for training as ``densecap-convert --vocab`` does:
  the rest of the model is initialised and sized by a training vocabulary
  (``vocab_json=``), so each vocabulary gets its own directory
  ``vgg16-imagenet-vocab-<12 hex digits>``. The original's Caffe file is the
  alternative source (``source="caffemodel"``).
* ``tiny-synthetic``: the model bundled with the package (no download).

Cache: ``$DENSECAP_JAX_MODELS_DIR``, else ``$XDG_CACHE_HOME/densecap_jax/models``,
else ``~/.cache/densecap_jax/models``::

  CACHE/NAME/             the model directory, renamed into place when complete
  CACHE/downloads/FILE    downloads in progress (FILE.part, resumed by the next
                          run) and kept ones; a file put there by hand is used
  CACHE/checksums.json    {FILE: {"sha256", "size", "url"}} of first downloads

Checks: the ``.pth``'s sha256 must start with the 8 hex digits in its name
(pinned); the other files are checked against the sha256 their first
successful download recorded in ``checksums.json`` (trust on first use), and
the zip's CRC-32s are checked on extraction. The download is removed after
the conversion unless ``keep_download``. A mirror (``base_url=`` or
``$DENSECAP_JAX_MODELS_URL``, an ``http(s)://`` or ``file://`` folder)
replaces each URL's folder: ``MIRROR/FILE``.

Errors are one line (``ValueError``, or ``download.DownloadError``, an
``OSError``) naming the URL and what to do; no directory is left under a
model's name unless it is complete.
"""

import dataclasses
import errno
import hashlib
import importlib.resources
import json
import os
import shutil
import sys
import zipfile

from densecap_jax import convert as convert_lib
from densecap_jax import download
from densecap_jax import files
from densecap_jax import model_dir
from densecap_jax.data import vocab as vocab_lib

MODELS_DIR_ENV = "DENSECAP_JAX_MODELS_DIR"
MODELS_URL_ENV = "DENSECAP_JAX_MODELS_URL"
DOWNLOADS = "downloads"
CHECKSUMS = "checksums.json"
SOURCE = "source.json"  # in a fetched model directory: where it came from


@dataclasses.dataclass(frozen=True)
class Source:
  """One file a model is converted from.

  Attributes:
    url: where it is published.
    format: ``convert.FORMATS`` entry of the file (of the zip's member).
    size: bytes, when known.
    sha256: full hex digest when pinned.
    sha256_prefix: pinned leading hex digits (torchvision's file names).
    label: the name ``source=`` selects it by.
  """
  url: str
  format: str
  label: str
  size: int | None = None
  sha256: str | None = None
  sha256_prefix: str | None = None

  @property
  def filename(self):
    return self.url.rsplit("/", 1)[-1]

  @property
  def zipped(self):
    return self.filename.endswith(".zip")


@dataclasses.dataclass(frozen=True)
class Model:
  """A named model: what it is and the files it is made from (the first is the default)."""
  name: str
  description: str
  sources: tuple = ()
  needs_vocab: bool = False
  bundled: str | None = None


REGISTRY = {m.name: m for m in (
    Model("densecap-vgg16", "the released DenseCap model (Visual Genome, VGG-16; mAP 5.70)",
          (Source("http://cs.stanford.edu/people/jcjohns/densecap/"
                  "densecap-pretrained-vgg16.t7.zip", "t7", "t7"),)),
    Model("vgg16-imagenet", "ImageNet VGG-16 to train from, heads initialised for a "
                            "training vocabulary",
          (Source("https://download.pytorch.org/models/vgg16-397923af.pth", "pth", "pth",
                  sha256_prefix="397923af"),
           Source("http://www.robots.ox.ac.uk/~vgg/software/very_deep/caffe/"
                  "VGG_ILSVRC_16_layers.caffemodel", "caffemodel", "caffemodel")),
          needs_vocab=True),
    Model("tiny-synthetic", "the bundled demo model (tiny, synthetic shapes)",
          bundled="tiny_synthetic"),
)}
NAMES = tuple(REGISTRY)


def models_dir():
  """The cache folder of named models the environment selects (not created)."""
  if os.environ.get(MODELS_DIR_ENV):
    return os.path.abspath(os.path.expanduser(os.environ[MODELS_DIR_ENV]))
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.abspath(os.path.join(base, "densecap_jax", "models"))


def bundled_dir(model):
  """The package folder of a bundled model."""
  return str(importlib.resources.files("densecap_jax") / "bundled" / model.bundled)


def source_url(source, base_url=None):
  """``source``'s URL, or ``MIRROR/FILE`` with ``base_url`` (else ``$DENSECAP_JAX_MODELS_URL``)."""
  mirror = base_url or os.environ.get(MODELS_URL_ENV)
  return f"{mirror.rstrip('/')}/{source.filename}" if mirror else source.url


def vocab_key(vocab_json):
  """12 hex digits of the sha256 of the vocabulary ``vocab_json`` holds (its word order)."""
  vocab = vocab_lib.load_vocab(vocab_json)
  return hashlib.sha256(json.dumps(vocab[1:]).encode()).hexdigest()[:12]


def model_path(name, vocab_json=None):
  """Where the cache keeps ``name`` (for a vocabulary, when the model needs one)."""
  model = _model(name)
  if model.bundled:
    return bundled_dir(model)
  if model.needs_vocab:
    if vocab_json is None:
      raise ValueError(f"{name} is ImageNet weights for training: pass the training data's JSON "
                       f"with idx_to_token as vocab_json= (--vocab), which sizes the language "
                       f"model")
    return os.path.join(models_dir(), f"{name}-vocab-{vocab_key(vocab_json)}")
  return os.path.join(models_dir(), name)


def _model(name):
  if name not in REGISTRY:
    raise ValueError(f"unknown model name {files.quoted(name)}; known names: {', '.join(NAMES)}")
  return REGISTRY[name]


def _source(model, label):
  if label is None:
    return model.sources[0]
  for source in model.sources:
    if source.label == label:
      return source
  raise ValueError(f"{model.name} has no source {files.quoted(label)}; its sources: "
                   f"{', '.join(s.label for s in model.sources)}")


def is_model_dir(path):
  return all(os.path.exists(os.path.join(path, n))
             for n in (model_dir.PARAMS, model_dir.CONFIG, model_dir.VOCAB))


def _read_checksums():
  path = os.path.join(models_dir(), CHECKSUMS)
  if not os.path.exists(path):
    return {}
  try:
    return files.read_json(path, "checksum record")
  except ValueError:
    return {}


def _record_checksum(source, sha256, size, url):
  record = _read_checksums()
  if source.filename not in record:
    record[source.filename] = {"sha256": sha256, "size": size, "url": url}
    files.write_json(os.path.join(models_dir(), CHECKSUMS), record)


def _expected(source):
  """``(size, sha256, sha256_prefix)`` a file of ``source`` must have (pinned, else recorded)."""
  recorded = _read_checksums().get(source.filename) or {}
  sha256 = source.sha256 or recorded.get("sha256")
  size = source.size if source.size is not None else recorded.get("size")
  return size, sha256, source.sha256_prefix


def _hand_hint(source, url, path):
  return (f"download {url} by hand to {path} and run again, or set {MODELS_URL_ENV} "
          f"(--models_url) to a mirror holding {source.filename}")


def download_file(name, *, base_url=None, source=None, progress=True):
  """The verified file of ``name``'s source in ``CACHE/downloads``, downloaded if absent.

  A file already there (kept, or put there by hand) is checked against the
  pinned or recorded size and sha256 instead. Returns its path.

  Raises:
    ValueError: an unknown name or source, or a bundled model.
    download.DownloadError: see :func:`download.download`.
  """
  return _verified_file(name, base_url, source, progress)[0]


def _verified_file(name, base_url, source, progress):
  """:func:`download_file`'s ``(path, sha256)``: the file is hashed once, as it is checked."""
  model = _model(name)
  if model.bundled:
    raise ValueError(f"{name} is bundled with the package; there is nothing to download")
  source = _source(model, source)
  url = source_url(source, base_url)
  path = os.path.join(models_dir(), DOWNLOADS, source.filename)
  size, sha256, prefix = _expected(source)
  hint = _hand_hint(source, url, path)
  if sha256 and not source.sha256:
    hint += (f" (the expected sha256 and size are those the first download recorded in "
             f"{os.path.join(models_dir(), CHECKSUMS)})")
  if os.path.exists(path):
    actual = download.sha256_of(path)
    if ((size is not None and os.path.getsize(path) != size) or (sha256 and actual != sha256)
        or (prefix and not actual.startswith(prefix))):
      raise download.ChecksumError(
          f"{path} differs from {url} (sha256 {actual}, expected {sha256 or prefix + '...'}); "
          f"delete it and run again to download it anew", url)
    return path, actual
  actual = download.download(url, path, size=size, sha256=sha256, sha256_prefix=prefix,
                             progress=progress, hint=hint, desc=name)
  return path, actual


def _extract_member(archive, work):
  """The one ``.t7`` inside the zip ``archive``, extracted into ``work`` (CRC-32 checked).

  Raises:
    ValueError: a corrupt or truncated zip, or not one ``.t7`` in it.
  """
  try:
    with zipfile.ZipFile(archive) as zf:
      members = [i for i in zf.infolist() if i.filename.endswith(".t7") and not i.is_dir()]
      if len(members) != 1:
        raise ValueError(f"expected one .t7 in the zip, found {len(members)}")
      out = os.path.join(work, files.contained_name(members[0].filename))
      with zf.open(members[0]) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, download.CHUNK_BYTES)
      return out
  except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as e:
    raise ValueError(f"the zip is corrupt or truncated: {e}") from None


def fetch(name, *, base_url=None, keep_download=False, progress=True, vocab_json=None,
          source=None):
  """The model directory of ``name``, downloaded and converted into the cache if absent.

  Args:
    name: one of :data:`NAMES`.
    base_url: a mirror folder replacing the URLs' folders (default
      ``$DENSECAP_JAX_MODELS_URL``, else the published URLs).
    keep_download: keep the downloaded file in ``CACHE/downloads`` (reused
      by the next conversion, e.g. for another vocabulary).
    progress: progress bar of the download, and a line per step on stderr.
    vocab_json: for ``needs_vocab`` models, the training data's JSON with
      ``idx_to_token``.
    source: the label of a source other than the first (``"caffemodel"``).

  Returns:
    The path of the model directory (``model_dir.load_model`` reads it).

  Raises:
    ValueError: unknown name or source, missing vocabulary, a file that does
      not convert (corrupt zip, truncated .t7 ...); one line naming the URL.
    download.DownloadError: see :func:`download.download`; a full disk
      (``errno`` ENOSPC) in the conversion too.
  """
  model = _model(name)
  target = model_path(name, vocab_json)
  if model.bundled or is_model_dir(target):
    return target
  if os.path.lexists(target):
    raise ValueError(f"{target} exists but is not a model directory; remove it and run again")
  chosen = _source(model, source)
  url = source_url(chosen, base_url)
  downloads = os.path.join(models_dir(), DOWNLOADS)
  path = os.path.join(downloads, chosen.filename)
  was_there = os.path.exists(path)  # kept, or put there by hand
  path, sha256 = _verified_file(name, base_url, source, progress)
  work = files.mkdtemp(models_dir(), f".{os.path.basename(target)}.")
  try:
    if progress:
      print(f"{name}: converting {chosen.filename}", file=sys.stderr)
    try:
      member = _extract_member(path, work) if chosen.zipped else path
      conversion = convert_lib.convert(member, chosen.format, vocab_json)
    except ValueError as e:
      todo = f"delete {path} and run again" if was_there else "run again to download it anew"
      convert = "densecap-convert --input FILE --output DIR" + (
          " --vocab DATA_JSON" if model.needs_vocab else "")
      raise ValueError(f"{chosen.filename} from {url} does not convert: "
                       f"{model_dir.first_error_line(e)}; {todo}, or convert it yourself: "
                       f"{convert}") from None
    staged = os.path.join(work, "model")
    model_dir.save_model(staged, conversion.params, conversion.config, conversion.vocab)
    files.write_json(os.path.join(staged, SOURCE),
                     {"name": name, "url": url, "file": chosen.filename, "sha256": sha256})
    _record_checksum(chosen, sha256, os.path.getsize(path), url)
    try:
      os.rename(staged, target)
    except OSError:
      if not is_model_dir(target):  # else another process finished first
        raise
  except ValueError:
    if not was_there:
      os.remove(path)  # a file that does not convert is downloaded anew next time
    raise
  except OSError as e:
    if files.is_disk_full(e):  # the verified download stays for the next run
      raise download.DownloadError(f"no space left on device converting {chosen.filename} "
                                   f"({url}) in {models_dir()}; free space on that disk and "
                                   f"run again", url, errno.ENOSPC) from None
    raise
  finally:
    shutil.rmtree(work, ignore_errors=True)
  if not keep_download and os.path.exists(path):
    os.remove(path)
  return target


def resolve(name_or_path, *, base_url=None, keep_download=False, progress=True,
            vocab_json=None, source=None):
  """A model directory for a path or a registry name.

  A path that exists comes back unchanged; a name of :data:`NAMES` is
  :func:`fetch`-ed (loaded from the cache with no network once fetched).

  Raises:
    ValueError: neither (one line listing the known names), and
      :func:`fetch`'s errors.
  """
  name_or_path = os.fspath(name_or_path)
  if os.path.exists(name_or_path):
    return name_or_path
  if name_or_path in REGISTRY:
    return fetch(name_or_path, base_url=base_url, keep_download=keep_download,
                 progress=progress, vocab_json=vocab_json, source=source)
  raise ValueError(f"{files.quoted(name_or_path)} is neither a model directory nor a model "
                   f"name; known names: {', '.join(NAMES)}")


def directory_size(path):
  return sum(os.path.getsize(os.path.join(root, f)) for root, _, names in os.walk(path)
             for f in names)


def cached():
  """``[(name, path, size in bytes)]`` of the model directories in the cache."""
  root = models_dir()
  out = []
  if not os.path.isdir(root):
    return out
  for entry in sorted(os.listdir(root)):
    path = os.path.join(root, entry)
    name = entry.split("-vocab-", 1)[0]
    if name in REGISTRY and is_model_dir(path):
      out.append((name, path, directory_size(path)))
  return out


def kept_downloads():
  """``[(file name, path, size in bytes)]`` of the complete files in ``CACHE/downloads``."""
  folder = os.path.join(models_dir(), DOWNLOADS)
  if not os.path.isdir(folder):
    return []
  return [(f, os.path.join(folder, f), os.path.getsize(os.path.join(folder, f)))
          for f in sorted(os.listdir(folder)) if not f.endswith(download.PART_SUFFIX)]
