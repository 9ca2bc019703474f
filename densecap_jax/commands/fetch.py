"""``python -m densecap_jax.fetch [NAME ...] [--all]``: models by name, ahead of time.

Without names, lists the registry (``pretrained.REGISTRY``) and what the
cache holds. With names (or ``--all``), downloads and converts each into the
cache, so that nodes without internet load them by name afterwards (copy the
cache folder, or point ``DENSECAP_JAX_MODELS_DIR`` at a shared one). A model
that needs a training vocabulary (``vgg16-imagenet``) is converted with
``--vocab``; without it its file is downloaded and kept, to be converted
offline later. Exits with status 1 and a one-line ``error: ...`` on failure.
"""

import argparse
import sys

from densecap_jax import download
from densecap_jax import pretrained
from densecap_jax import runtime


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog=runtime.prog_name("densecap_jax.fetch"),
      description="List the models known by name and the cache, or download and convert "
                  "named models into the cache ahead of time.")
  parser.add_argument("names", nargs="*", metavar="NAME",
                      help=f"models to fetch: {', '.join(pretrained.NAMES)}")
  parser.add_argument("--all", action="store_true", help="fetch every named model")
  parser.add_argument("--models_url", help="mirror folder holding the files (default: "
                                           f"${pretrained.MODELS_URL_ENV}, else the published "
                                           "URLs)")
  parser.add_argument("--keep_download", action="store_true",
                      help="keep the downloaded file in the cache's downloads/ folder")
  parser.add_argument("--vocab", help="vgg16-imagenet: the training data's JSON with "
                                      "idx_to_token (e.g. data/VG-regions-dicts.json)")
  parser.add_argument("--source", help="a source other than the first (vgg16-imagenet: "
                                       "caffemodel)")
  parser.add_argument("--no_progress", dest="progress", action="store_false",
                      help="no progress bar")
  return parser.parse_args(argv)


def list_lines():
  """The registry (name, sources, pin) and the cache's models and kept downloads."""
  lines = [f"models by name (cache: {pretrained.models_dir()}):"]
  for model in pretrained.REGISTRY.values():
    lines.append(f"  {model.name:<16} {model.description}")
    if model.bundled:
      lines.append(f"  {'':<16} bundled: {pretrained.bundled_dir(model)}")
    for source in model.sources:
      check = ("sha256 pinned" if source.sha256 else
               f"sha256 pinned to start with {source.sha256_prefix}" if source.sha256_prefix else
               "sha256 recorded on first download")
      lines.append(f"  {'':<16} {source.label}: {source.url} ({check})")
  found = pretrained.cached()
  lines.append("cached models:" if found else "cached models: none")
  lines += [f"  {name:<16} {download.human_bytes(size):>10}  {path}" for name, path, size in found]
  kept = pretrained.kept_downloads()
  if kept:
    lines.append("kept downloads:")
    lines += [f"  {name:<16} {download.human_bytes(size):>10}  {path}" for name, path, size in kept]
  return lines


def fetch_one(name, args):
  """Fetches ``name``; returns the line saying where it is."""
  model = pretrained.REGISTRY.get(name)
  source = args.source
  if args.all and model is not None and source not in [s.label for s in model.sources]:
    source = None  # --source names one model's alternative
  if model is not None and model.needs_vocab and args.vocab is None:
    path = pretrained.download_file(name, base_url=args.models_url, source=source,
                                    progress=args.progress)
    return (f"{name}: downloaded {path}; it is converted when used with a training vocabulary "
            f"(--vocab DATA_JSON)")
  path = pretrained.fetch(name, base_url=args.models_url, keep_download=args.keep_download,
                          progress=args.progress, vocab_json=args.vocab, source=source)
  return f"{name}: {path}"


def main(argv=None):
  args = parse_args(argv)
  names = list(pretrained.NAMES) if args.all else args.names
  if not names:
    print("\n".join(list_lines()))
    return 0
  try:
    for name in names:
      print(fetch_one(name, args))
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
