"""Reading an index folder (``search.builder`` describes the format): :func:`open_index`.

  index = open_index("photos.index")
  index.num_images, index.num_regions, index.rows("codes", [0, 5])

Opening reads the manifest once (it is replaced atomically, so a reader sees
one commit, never a half-written one) and checks every shard it lists
(``check_shard``: files present, sizes and checksums of the tables, counts
of images and regions, ``.npy`` headers and sizes); a damaged index is
refused in one line naming the shard, the file and the command that
repairs it. When a run replaced a shard while the reader was opening the
index, the new manifest is read again.
"""

import os

import numpy as np

from densecap_jax import files
from densecap_jax.search import storage

FORMAT = "densecap_jax.index"
VERSION = 1
MANIFEST = "manifest.json"
SHARDS = "shards"
ARRAYS = ("boxes", "scores", "tokens", "codes")

def repair_command(path, input_dir):
  """The command that re-indexes the damaged shards of the index ``path``."""
  return f"densecap-index --input_dir {input_dir} --output {path}"


def read_manifest(path):
  """The checked manifest of the index folder ``path``; one-line ValueError otherwise."""
  manifest_path = os.path.join(path, MANIFEST)
  if not os.path.isdir(path):
    raise ValueError(f"index not found: {path}")
  if not os.path.isfile(manifest_path):
    raise ValueError(f"{path} is not an index (no {MANIFEST})")
  manifest = files.read_json(manifest_path, "index manifest")
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    raise ValueError(f"{manifest_path} is not a {FORMAT} manifest")
  if manifest.get("version") != VERSION:
    raise ValueError(f"index {path} has format version {manifest.get('version')}; this version "
                     f"of densecap_jax reads version {VERSION}: build the index again")
  return manifest


def _layout(manifest):
  """``({array: row shape}, {array: dtype})`` of an index's shards."""
  model = manifest["model"]
  shapes = {"boxes": (4,), "scores": (), "tokens": (model["seq_length"],),
            "codes": (model["fc_dim"],)}
  dtypes = {"boxes": np.dtype(np.float32), "scores": np.dtype(np.float32),
            "tokens": np.dtype(np.int16), "codes": np.dtype(manifest["settings"]["codes_dtype"])}
  return shapes, dtypes


def check_shard(folder, entry, manifest, verify_data=True):
  """Raises ``storage.Damaged`` (one line) unless the shard ``folder`` matches its ``entry``.

  See ``storage.check_shard``; ``verify_data`` false skips the checksums
  of the ``.npy`` files (their sizes and headers are still checked).
  """
  shapes, dtypes = _layout(manifest)
  storage.check_shard(folder, entry, shapes, dtypes, verify_data=verify_data)


class Shard:
  """One committed shard: its image table, captions and memory-mapped arrays.

  Attributes:
    name: the shard's name (``"000003"``); folder: its path.
    images: the ``images.json`` columns (lists).
    files: its manifest entry's ``files`` (``storage.file_records``), or ``None``.
  """

  def __init__(self, folder, files_entry=None):
    self.folder = folder
    self.name = os.path.basename(folder)
    self.files = files_entry
    self.images = self._read(lambda: files.read_json(os.path.join(folder, "images.json"),
                                                     "index shard table"))
    self._arrays = {}
    self._captions = None

  def _read(self, load):
    """``load()``, or a one-line ValueError when the shard's files are gone or damaged."""
    try:
      return load()
    except (OSError, ValueError) as e:
      index = os.path.dirname(os.path.dirname(self.folder))
      try:
        manifest = read_manifest(index)
      except ValueError:
        manifest = {"shards": [], "input_dir": "..."}
      if self.name not in [s["name"] for s in manifest["shards"]]:
        raise ValueError(f"index {index} changed since it was opened (shard {self.name} is no "
                         f"longer in it); open it again") from None
      why = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise ValueError(f"index {index} is damaged: shard {self.name} cannot be read ({why}); "
                       f"re-index it with {repair_command(index, manifest['input_dir'])}") from None

  @property
  def num_images(self):
    return len(self.images["names"])

  @property
  def num_regions(self):
    return int(self.images["region_start"][-1])

  def array(self, name):
    """``boxes``, ``scores``, ``tokens`` or ``codes``, memory-mapped (read-only)."""
    if name not in self._arrays:
      path = os.path.join(self.folder, f"{name}.npy")
      self._arrays[name] = self._read(lambda: np.load(path, mmap_mode="r", allow_pickle=False))
    return self._arrays[name]

  @property
  def captions(self):
    """The ``n`` captions (read on first use)."""
    if self._captions is None:
      self._captions = self._read(lambda: files.read_json(
          os.path.join(self.folder, "captions.json"), "index captions"))
    return self._captions


class Index:
  """An opened index: ``open_index(path)``.

  Images are numbered across the shards in manifest order, regions likewise
  (global rows).

  Attributes:
    path: the index folder; manifest: its ``manifest.json``; shards: :class:`Shard` s.
    image_names: names of all images (relative to ``manifest["input_dir"]``).
    cache: search statistics kept with the index (``search.ranking``).
  """

  def __init__(self, path):
    self.path = path
    for attempt in range(3):
      self.manifest = read_manifest(path)
      try:
        self.shards = [self._checked_shard(entry) for entry in self.manifest["shards"]]
        break
      except storage.Damaged as e:
        if attempt < 2 and read_manifest(path) != self.manifest:
          continue  # an index run committed meanwhile: open what it committed
        raise ValueError(f"index {path} is damaged: {e}; re-index it with "
                         f"{repair_command(path, self.manifest['input_dir'])}") from None
    self.image_names = [n for s in self.shards for n in s.images["names"]]
    self._region_starts = np.cumsum([0] + [s.num_regions for s in self.shards])
    self._image_starts = np.cumsum([0] + [s.num_images for s in self.shards])
    self.cache = {}

  @property
  def input_dir(self):
    return self.manifest["input_dir"]

  @property
  def num_images(self):
    return int(self._image_starts[-1])

  @property
  def num_regions(self):
    return int(self._region_starts[-1])

  def image_path(self, image):
    """Path of image number ``image`` in the indexed folder."""
    return os.path.join(self.input_dir, self.image_names[image])

  def image_size(self, image):
    """``(width, height)`` of image number ``image``, upright."""
    shard, local = self._locate(self._image_starts, image)
    return (int(self.shards[shard].images["widths"][local]),
            int(self.shards[shard].images["heights"][local]))

  def concatenated(self, name):
    """``(N, ...)`` the array ``name`` of every shard in one (loaded; cached)."""
    key = ("concatenated", name)
    if key not in self.cache:
      parts = [np.asarray(s.array(name)) for s in self.shards]
      self.cache[key] = (np.concatenate(parts) if parts else
                         np.zeros((0,) + self._row_shape(name), self._dtype(name)))
    return self.cache[key]

  @property
  def image_of_region(self):
    """``(N,)`` int32: the image number of each region (cached)."""
    if "image_of_region" not in self.cache:
      counts = [np.diff(s.images["region_start"]) for s in self.shards]
      counts = np.concatenate(counts) if counts else np.zeros((0,), np.int64)
      self.cache["image_of_region"] = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
    return self.cache["image_of_region"]

  def rows(self, name, rows):
    """The rows (global numbers, any order) of the array ``name``, as a new array."""
    rows = np.asarray(rows, np.int64)
    out = np.zeros((len(rows),) + self._row_shape(name), self._dtype(name))
    shard_of = np.searchsorted(self._region_starts, rows, side="right") - 1
    for shard in np.unique(shard_of):
      mine = np.flatnonzero(shard_of == shard)
      local = rows[mine] - self._region_starts[shard]
      order = np.argsort(local)  # memory-mapped rows read in file order
      out[mine[order]] = self.shards[shard].array(name)[local[order]]
    return out

  def shard_rows(self):
    """``(first global row, Shard)`` of each shard, in order."""
    return list(zip(self._region_starts[:-1].tolist(), self.shards))

  def captions(self, rows):
    """The captions of the regions ``rows`` (global numbers)."""
    out = []
    for row in rows:
      shard, local = self._locate(self._region_starts, int(row))
      out.append(self.shards[shard].captions[local])
    return out

  def _checked_shard(self, entry):
    folder = os.path.join(self.path, SHARDS, entry["name"])
    check_shard(folder, entry, self.manifest, verify_data=False)
    return Shard(folder, entry.get("files"))

  def _locate(self, starts, number):
    shard = int(np.searchsorted(starts, number, side="right") - 1)
    return shard, number - int(starts[shard])

  def _row_shape(self, name):
    return _layout(self.manifest)[0][name]

  def _dtype(self, name):
    return _layout(self.manifest)[1][name]


def open_index(path):
  """The :class:`Index` in the folder ``path``; one-line ValueError when it is not one."""
  return Index(str(path))
