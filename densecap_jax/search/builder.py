"""A searchable index of a photo folder: per image its detections, captions and fc7 codes.

  model = densecap_jax.load_model()
  stats = build_index(model, "photos/", "photos.index")   # again later: only what changed
  index = reader.open_index("photos.index")
  index.num_images, index.num_regions, index.image_names[:3]

``build_index`` runs the model's detection (``RegionModel.detections``) on
every image file of a folder (``inputs.image_files``: its top level, in name
order) and stores the first ``max_boxes`` detections of each in score order.
It is incremental: a second run indexes only files that are new or changed
(a file has changed when its size or modification time in nanoseconds
differs from those stored) and drops the entries of files that are gone.
Images are indexed ``shard_size`` at a time, in name order, and each shard
is committed as soon as it is done, so a run that is killed keeps the shards
it committed, and running it again indexes the rest into the very shards an
uninterrupted run would have written. Unreadable files are reported and not
stored (they are tried again on the next run).

Format (``version`` 1). An index is a folder::

  photos.index/
    manifest.json
    shards/000000/{images.json, captions.json, boxes.npy, scores.npy, tokens.npy, codes.npy}
    shards/000001/...

``manifest.json`` (the commit point: a shard belongs to the index once the
manifest lists it; other folders under ``shards/`` are left-overs of a killed
run and are removed by the next one):

* ``format``: ``"densecap_jax.index"``; ``version``: ``1``;
* ``input_dir``: absolute path of the indexed folder; image names are relative to it;
* ``model``: ``checkpoint`` (the model directory it was built with, or ``""``),
  ``fingerprint`` (``"sha256:..."`` of the parameters and the vocabulary,
  see :func:`model_fingerprint`; a search with another model is refused),
  ``fc_dim``, ``vocab_size``, ``seq_length``;
* ``settings``: ``image_size``, ``num_proposals``, ``rpn_nms_thresh``,
  ``final_nms_thresh``, ``precision`` (the model's test-time settings),
  ``max_boxes`` (detections stored per image at most) and ``codes_dtype``
  (``float32`` or ``float16``); a later run must use the same;
* ``shards``: ``[{"name": "000000", "images": m, "regions": n, "files": {...}}, ...]``
  in order; ``files`` maps each of the shard's files to ``{"bytes": size,
  "crc32": checksum}`` (``search.storage``; absent in indexes written
  before it was recorded, which are checked in everything else);
* ``next_shard``: the number the next shard gets;
* ``images``, ``regions``: totals over the shards.

A shard ``shards/<name>/`` holds ``m`` images and their ``n`` regions (an
image's regions are consecutive rows, in score order):

* ``images.json``: columns of ``m`` entries: ``names`` (file names in the
  folder, in name order), ``file_sizes`` (bytes), ``mtimes_ns`` (modification
  times, ns), ``widths``, ``heights`` (pixels of the upright image) and
  ``region_start`` (``m + 1`` offsets: image ``i`` has rows
  ``region_start[i]:region_start[i + 1]``);
* ``captions.json``: the ``n`` captions (greedy, of each detection's proposal);
* ``boxes.npy``: ``(n, 4)`` float32 xywh, 1-based, in the pixels of the
  image as given, upright (``ops.boxes``);
* ``scores.npy``: ``(n,)`` float32 objectness logits;
* ``tokens.npy``: ``(n, seq_length)`` int16 word ids of the captions in the
  model's vocabulary, 0-padded (no END);
* ``codes.npy``: ``(n, fc_dim)`` fc7 codes (post-ReLU) of the detections'
  proposals, ``codes_dtype``; one contiguous array, memory-mapped on opening.

Every file is written atomically (a shard's folder is renamed into place
when complete); a shard is never changed once written: dropping entries of
deleted or changed files writes a new shard of the rest.

Reading an index is ``search.reader`` (:func:`open_index`, the
:class:`Index`, :func:`check_shard`; their names are also this module's).
One run writes an index at a time (``storage.writer_lock`` on
``<index>/.lock``; a second fails at once, or waits with ``wait=True``);
readers take no lock and see one manifest or the next, never a mix. Every
run checks each shard against its manifest entry (``check_shard``: files
present, sizes, checksums, counts of images and regions, ``.npy`` headers)
and indexes the images of a damaged shard again; opening an index checks the
same, except the checksums of the ``.npy`` files (their sizes and headers
are checked), and refuses a damaged one in one line naming the shard, the
file and the command that repairs it. An :class:`Index` opened before a run
replaced one of its shards raises a one-line error saying to open it again
when it next reads that shard's files.
"""

import hashlib
import json
import os
import re
import shutil

import jax
import numpy as np
from tqdm import tqdm

from densecap_jax import files
from densecap_jax.data import inputs
from densecap_jax.data import vocab as vocab_lib
from densecap_jax.regions import api as regions_api
from densecap_jax.search import storage
from densecap_jax.search import reader
from densecap_jax.ops import boxes as boxes_lib

CODES_DTYPES = ("float32", "float16")
_LEFTOVER = re.compile(r"^(\d{6}|\.tmp-.*)$")
_SHARD_FILES = ("images.json", "captions.json") + tuple(f"{a}.npy" for a in reader.ARRAYS)


def model_fingerprint(model):
  """``"sha256:..."`` of a predictor's parameters (names, shapes, dtypes, values) and vocabulary."""
  digest = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(model.params))[0]
  for path, leaf in leaves:
    leaf = np.ascontiguousarray(leaf)
    digest.update(f"{jax.tree_util.keystr(path)}:{leaf.dtype}:{leaf.shape};".encode())
    digest.update(leaf.tobytes())
  digest.update(json.dumps(list(model.vocab)).encode())
  return f"sha256:{digest.hexdigest()}"


def describe_model(model, checkpoint):
  """The manifest's ``model`` entry of a predictor loaded from ``checkpoint``."""
  return {"checkpoint": str(checkpoint or ""), "fingerprint": model_fingerprint(model),
          "fc_dim": int(model.config.fc_dim), "vocab_size": int(model.config.vocab_size),
          "seq_length": int(model.config.seq_length)}


def index_settings(model, max_boxes, codes_dtype):
  """The manifest's ``settings`` entry: the predictor's test-time settings and the storage ones."""
  return {"image_size": int(model.image_size), "num_proposals": int(model.num_proposals),
          "rpn_nms_thresh": float(model.rpn_nms_thresh),
          "final_nms_thresh": float(model.final_nms_thresh), "precision": model.precision,
          "max_boxes": int(max_boxes), "codes_dtype": codes_dtype}


def check_model(manifest, fingerprint, where):
  """Raises a one-line ValueError unless the index ``manifest`` was built with that model."""
  built = manifest["model"]
  if built["fingerprint"] != fingerprint:
    name = built["checkpoint"] or "not recorded"
    raise ValueError(f"{where} was built with another model ({name}); give that model with "
                     f"--checkpoint, or build a new index with this one")


def _write_json(path, obj):
  with files.atomic_output(path) as tmp_path:
    with open(tmp_path, "w", encoding="utf-8") as f:
      json.dump(obj, f, indent=1)



def _file_table(paths):
  """``{name: (size, mtime_ns)}`` of image paths."""
  table = {}
  for path in paths:
    stat = os.stat(path)
    table[os.path.basename(path)] = (int(stat.st_size), int(stat.st_mtime_ns))
  return table


def _only_leftovers(output):
  """Whether the folder ``output`` holds only what a new index's failed first run leaves.

  That is: the lock file, temporary manifests, and ``shards/`` with nothing
  but temporary shard folders in it.
  """
  for name in os.listdir(output):
    if name == reader.SHARDS and os.path.isdir(os.path.join(output, name)):
      if any(not n.startswith(".tmp-") for n in os.listdir(os.path.join(output, name))):
        return False
    elif name != storage.LOCK and not (name.startswith(f".{reader.MANIFEST}.")
                                           and name.endswith(".tmp")):
      return False
  return True


def check_output(output, probe_lock=True):
  """The manifest of the index ``output``, or ``None`` when it is new.

  New: missing, an empty folder, or one holding only the left-overs of a new
  index's first run that failed before its first commit (the lock file,
  ``shards/`` with temporary folders only).

  Args:
    output: the index folder.
    probe_lock: refuse an index another run is writing (``storage.Busy``).

  Raises:
    ValueError: one line: ``output`` is a file, a folder that is not an
      index, an index this version cannot read, or one another run is writing.
  """
  if os.path.exists(output) and not os.path.isdir(output):
    raise ValueError(f"--output {output} exists and is not an index folder")
  if probe_lock and os.path.isdir(output):
    storage.check_not_locked(output)
  if os.path.isfile(os.path.join(output, reader.MANIFEST)):
    return reader.read_manifest(output)
  if os.path.isdir(output) and not _only_leftovers(output):
    raise ValueError(f"--output {output} is a folder that is not an index (no {reader.MANIFEST}); "
                     f"choose a new one")
  return None


def _start_manifest(output, input_dir, model_entry, settings):
  """The manifest to continue (checked against this run) or a new empty one, committed."""
  manifest = check_output(output, probe_lock=False)
  if manifest is not None:
    check_model(manifest, model_entry["fingerprint"], f"index {output}")
    for key, value in settings.items():
      if manifest["settings"].get(key) != value:
        raise ValueError(f"index {output} was built with {key} {manifest['settings'].get(key)}, "
                         f"not {value}; give the same settings, or choose a new --output")
    if os.path.realpath(manifest["input_dir"]) != os.path.realpath(input_dir):
      raise ValueError(f"index {output} is of the folder {manifest['input_dir']}, not "
                       f"{input_dir}; choose a new --output")
    return manifest
  manifest = {"format": reader.FORMAT, "version": reader.VERSION,
              "input_dir": os.path.abspath(input_dir), "model": model_entry,
              "settings": settings, "shards": [], "next_shard": 0, "images": 0, "regions": 0}
  os.makedirs(os.path.join(output, reader.SHARDS), exist_ok=True)
  _write_json(os.path.join(output, reader.MANIFEST), manifest)
  return manifest


def commit(output, manifest, shards):
  """Writes the manifest listing ``shards`` (``Shard`` s) as the index's shards."""
  manifest["shards"] = [dict({"name": s.name, "images": s.num_images, "regions": s.num_regions},
                             **({"files": s.files} if s.files else {})) for s in shards]
  manifest["images"] = sum(s.num_images for s in shards)
  manifest["regions"] = sum(s.num_regions for s in shards)
  _write_json(os.path.join(output, reader.MANIFEST), manifest)


def _remove_leftovers(output, manifest):
  """Removes shard folders the manifest does not list (from a run killed before its commit)."""
  listed = {s["name"] for s in manifest["shards"]}
  folder = os.path.join(output, reader.SHARDS)
  os.makedirs(folder, exist_ok=True)
  for name in os.listdir(folder):
    if _LEFTOVER.match(name) and name not in listed:
      shutil.rmtree(os.path.join(folder, name))


def write_shard(output, manifest, images, captions, arrays):
  """Writes a new shard (the next number) atomically; returns its :class:`Shard`.

  Args:
    output: the index folder; manifest: its manifest (``next_shard`` is advanced).
    images: the ``images.json`` columns; captions: ``n`` strings.
    arrays: ``{name: array}`` of ``ARRAYS``, ``n`` rows each.
  """
  name = f"{manifest['next_shard']:06d}"
  manifest["next_shard"] += 1
  shards = os.path.join(output, reader.SHARDS)
  tmp = files.mkdtemp(shards, ".tmp-")
  try:
    with open(os.path.join(tmp, "images.json"), "w", encoding="utf-8") as f:
      json.dump(images, f)
    with open(os.path.join(tmp, "captions.json"), "w", encoding="utf-8") as f:
      json.dump(captions, f)
    for key in reader.ARRAYS:
      path = os.path.join(tmp, f"{key}.npy")
      try:
        np.save(path, arrays[key])
      except OSError as e:
        if files.is_disk_full(e):
          raise files.disk_full(path) from None
        raise
    records = storage.file_records(tmp, _SHARD_FILES)
    os.rename(tmp, os.path.join(shards, name))
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return reader.Shard(os.path.join(shards, name), records)


def _kept_part(shard, keep):
  """The ``images.json`` columns, captions and arrays of the images ``keep`` (local numbers)."""
  columns = shard.images
  start = columns["region_start"]
  rows = np.concatenate([np.arange(start[i], start[i + 1]) for i in keep] + [np.zeros(0, int)])
  counts = [start[i + 1] - start[i] for i in keep]
  images = {key: [columns[key][i] for i in keep] for key in columns if key != "region_start"}
  images["region_start"] = np.cumsum([0] + counts).tolist()
  captions = [shard.captions[r] for r in rows]
  arrays = {key: np.asarray(shard.array(key)[rows]) for key in reader.ARRAYS}
  return images, captions, arrays


def _drop_stale(output, manifest, current):
  """Drops the entries of files gone or changed and damaged shards.

  A shard that loses entries is replaced by a new one of the rest (or by
  none); a damaged one (``check_shard``) by none, so its images are indexed
  again; the manifest is committed once, then the old folders are removed.

  Returns:
    ``(shards, kept names, dropped names, damaged)``: ``damaged`` holds one
    line per damaged shard.
  """
  shards, kept, dropped, replaced, damaged = [], set(), [], [], []
  for entry in manifest["shards"]:
    folder = os.path.join(output, reader.SHARDS, entry["name"])
    try:
      reader.check_shard(folder, entry, manifest)
    except storage.Damaged as e:
      damaged.append(f"{e}; indexing its {_count(entry['images'], 'image')} again")
      replaced.append(folder)
      continue
    shard = reader.Shard(folder, entry.get("files"))
    columns = shard.images
    keep = [i for i, name in enumerate(columns["names"])
            if current.get(name) == (columns["file_sizes"][i], columns["mtimes_ns"][i])]
    keep_set = set(keep)
    kept.update(columns["names"][i] for i in keep)
    dropped.extend(n for i, n in enumerate(columns["names"]) if i not in keep_set)
    if len(keep) == shard.num_images:
      shards.append(shard)
      continue
    replaced.append(shard.folder)
    if keep:
      shards.append(write_shard(output, manifest, *_kept_part(shard, keep)))
  if replaced:
    commit(output, manifest, shards)
    for folder in replaced:
      shutil.rmtree(folder, ignore_errors=True)
  return shards, kept, dropped, damaged


def _count(n, noun):
  """``"1 image"``, ``"2 images"``."""
  return f"{n} {noun}" + ("" if n == 1 else "s")


def _caption_tokens(captions, token_to_idx, seq_length):
  """``(n, seq_length)`` int16 word ids of captions (words joined by spaces), 0-padded."""
  tokens = np.zeros((len(captions), seq_length), np.int16)
  for i, caption in enumerate(captions):
    ids = [token_to_idx[w] for w in caption.split()][:seq_length]
    tokens[i, :len(ids)] = ids
  return tokens


def _detect(model, paths, max_boxes, bar, failed):
  """``{path: detections}`` of the readable ``paths``; the others go to ``failed`` as messages.

  Detections: ``boxes`` ``(k, 4)`` float32 xywh in the image's pixels,
  ``scores``, ``captions``, ``codes``, ``width``, ``height``.
  """

  skipped = []
  out = {}
  for group in model.stream_groups(paths, failed=skipped, bar=bar):
    prepared = [p for _, p in group]
    for (i, p), det in zip(group, model.regions.detections(prepared, max_boxes)):
      out[paths[i]] = dict(det, boxes=boxes_lib.to_image(det["boxes"], p.original_size, p.size),
                           **regions_api.size_fields(p))
  failed.extend(str(error) for _, _, error in skipped)
  return out


def _new_shard_parts(model, input_dir, names, table, detections, codes_dtype):
  """The ``images.json`` columns, captions and arrays of a new shard of ``names``' detections."""
  token_to_idx = vocab_lib.token_to_idx_of(model.vocab)
  seq_length = int(model.config.seq_length)
  found = [n for n in names if os.path.join(input_dir, n) in detections]
  dets = [detections[os.path.join(input_dir, n)] for n in found]
  images = {"names": found, "file_sizes": [table[n][0] for n in found],
            "mtimes_ns": [table[n][1] for n in found], "widths": [d["width"] for d in dets],
            "heights": [d["height"] for d in dets],
            "region_start": np.cumsum([0] + [len(d["captions"]) for d in dets]).tolist()}
  captions = [c for d in dets for c in d["captions"]]
  fc_dim = int(model.config.fc_dim)

  def rows(key, shape, dtype):
    parts = [np.asarray(d[key], dtype).reshape((-1,) + shape) for d in dets]
    return np.concatenate(parts) if parts else np.zeros((0,) + shape, dtype)

  arrays = {"boxes": rows("boxes", (4,), np.float32), "scores": rows("scores", (), np.float32),
            "tokens": _caption_tokens(captions, token_to_idx, seq_length),
            "codes": rows("codes", (fc_dim,), np.dtype(codes_dtype))}
  return images, captions, arrays


def build_index(model, input_dir, output, *, checkpoint=None, max_boxes=50, shard_size=256,
                codes_dtype="float32", progress=True, on_commit=None, wait=False):
  """Indexes the image files of ``input_dir`` into the index folder ``output`` (see above).

  Args:
    model: an ``inference.DenseCapPredictor``.
    input_dir: the folder of images (its top level).
    output: the index folder: new (created), or an index of the same folder,
      model and settings to bring up to date.
    checkpoint: the model directory ``model`` was loaded from, stored in the
      manifest to name it in errors (default: not recorded).
    max_boxes: detections stored per image at most, in score order.
    shard_size: images per shard.
    codes_dtype: ``"float32"`` or ``"float16"`` (half the size; scores differ slightly).
    progress: show a tqdm bar.
    on_commit: called with the :class:`Shard` after each new shard is committed.
    wait: when another run is writing ``output``, wait for it to finish
      (default: fail at once).

  Returns:
    A dict: ``indexed`` (names of the images indexed by this run), ``dropped``
    (names whose entries were dropped: deleted or changed files), ``kept``
    (count of entries reused), ``failed`` (messages of unreadable files),
    ``damaged`` (one line per damaged shard whose images were indexed again),
    ``images`` and ``regions`` (the index's totals).

  Raises:
    ValueError: one line: a bad argument, a folder with no images, an
      ``output`` that is not an index, one of another folder, model or
      settings, or one another run is writing (``storage.Busy``; the
      run holds ``storage.writer_lock`` throughout).
  """
  if max_boxes < 1:
    raise ValueError(f"--max_boxes must be positive, got {max_boxes}")
  if shard_size < 1:
    raise ValueError(f"--shard_size must be positive, got {shard_size}")
  if codes_dtype not in CODES_DTYPES:
    raise ValueError(f"--codes_dtype must be one of {', '.join(CODES_DTYPES)}, got {codes_dtype!r}")
  output = str(output)
  table = _file_table(inputs.image_files(input_dir))
  check_output(output, probe_lock=False)
  with storage.writer_lock(output, wait=wait):
    return _build_locked(model, input_dir, output, table, checkpoint, max_boxes, shard_size,
                         codes_dtype, progress, on_commit)


def _build_locked(model, input_dir, output, table, checkpoint, max_boxes, shard_size, codes_dtype,
                  progress, on_commit):
  """``build_index`` once the writer lock is held."""
  manifest = _start_manifest(output, input_dir, describe_model(model, checkpoint),
                             index_settings(model, max_boxes, codes_dtype))
  _remove_leftovers(output, manifest)
  shards, kept, dropped, damaged = _drop_stale(output, manifest, table)
  todo = [n for n in sorted(table) if n not in kept]
  indexed, failed = [], []
  with tqdm(total=len(todo), desc="indexing", unit="img", disable=not progress) as bar:
    for start in range(0, len(todo), shard_size):
      names = todo[start:start + shard_size]
      detections = _detect(model, [os.path.join(input_dir, n) for n in names], max_boxes, bar,
                           failed)
      if not detections:
        continue
      shard = write_shard(output, manifest, *_new_shard_parts(
          model, input_dir, names, table, detections, codes_dtype))
      shards.append(shard)
      commit(output, manifest, shards)
      indexed.extend(shard.images["names"])
      if on_commit is not None:
        on_commit(shard)
  return {"indexed": indexed, "dropped": dropped, "kept": len(kept), "failed": failed,
          "damaged": damaged, "images": manifest["images"], "regions": manifest["regions"]}
