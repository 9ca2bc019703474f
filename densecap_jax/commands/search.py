"""The ``search`` command: rank the images of an index by a phrase (``search.ranking``).

  python -m densecap_jax.search --index photos.index --query "a red car"
  python -m densecap_jax.search --index photos.index --query "a red car" --top 20 \
      --output_vis_dir hits/

Prints a table of the best images (rank, image, best box xywh in the image's
pixels, score = log-likelihood of the query per token in that box, the box's
caption); with ``--output_vis_dir`` also writes ``search.html`` there (the hits
with their best box drawn, opening from disk; ``search.page``).
``--candidates N`` scores only the N regions whose captions are most like the
query (0: every region, the exact ranking; see ``search.ranking`` for what
the first stage can miss). The model (``--checkpoint``) must be the one the
index was built with.

Above the table a line names the query's words the model does not know and
what was scored instead (``"a red car": the model does not know "car";
scored as "a red"``). A query whose known words are all function words ("a",
"the", "of", ...: ``regions.phrases.FUNCTION_WORDS``) is not ranked: a
``not ranked:`` line takes the table's place (and the page's).
"""

import argparse
import os
import sys

from densecap_jax.commands import flags as cli
from densecap_jax import runtime
from densecap_jax.search import ranking as search_lib
from densecap_jax.search import page
from densecap_jax.search import reader


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      prog=runtime.prog_name("densecap_jax.search"), formatter_class=cli.HelpFormatter,
      description="Find the images of an index where a phrase fits a region best.")
  parser.add_argument("--index", default="", help="index folder (default: none; required)")
  parser.add_argument("--query", default="", help='a phrase, e.g. "a red car" (required)')
  parser.add_argument("--top", type=int, default=20, help="images listed")
  parser.add_argument("--candidates", type=int, default=search_lib.DEFAULT_CANDIDATES,
                      help="regions the caption-text stage passes to the LM; 0 = all (exact)")
  parser.add_argument("--output_vis_dir", default="",
                      help="if set, write search.html with the hits there (default: not written)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace the page's files in --output_vis_dir")
  cli.add_model_flags(parser)
  return parser.parse_args(argv)


def check_args(args):
  """Raises ValueError with a one-line reason for flags that cannot work; returns the manifest."""
  if not args.index:
    raise ValueError("--index is required")
  if not args.query.strip():
    raise ValueError('--query is empty; give a phrase, e.g. --query "a red car"')
  if args.top < 1:
    raise ValueError(f"--top must be positive, got {args.top}")
  if args.candidates < 0:
    raise ValueError(f"--candidates must be non-negative (0 = all regions), got {args.candidates}")
  cli.check_model_flags(args)
  manifest = reader.read_manifest(args.index)
  if args.output_vis_dir and (os.path.realpath(args.output_vis_dir)
                              == os.path.realpath(manifest["input_dir"])):
    raise ValueError(f"--output_vis_dir {args.output_vis_dir} is the indexed folder; choose "
                     f"another")
  return manifest


def check_page(args, result):
  """Refuses to replace files in ``--output_vis_dir`` without ``--overwrite``."""
  if not args.output_vis_dir or args.overwrite:
    return
  existing = [p for p in page.outputs(result)
              if os.path.lexists(os.path.join(args.output_vis_dir, p))]
  if existing:
    raise ValueError(f"--output_vis_dir {args.output_vis_dir} already holds "
                     f"{', '.join(existing[:3])}{', ...' if len(existing) > 3 else ''}; pass "
                     f"--overwrite to replace them, or choose another folder")


def format_table(result):
  """The hits as a text table: rank, image, box, score, caption."""
  rows = [("rank", "image", "box (x, y, w, h)", "score", "caption")]
  for hit in result.hits:
    box = "[" + ", ".join(f"{v:.1f}" for v in hit.box) + "]"
    rows.append((str(hit.rank), hit.image, box, f"{hit.score:.3f}", hit.caption))
  widths = [max(len(r[i]) for r in rows) for i in range(4)]
  lines = ["  ".join([r[0].rjust(widths[0]), r[1].ljust(widths[1]), r[2].ljust(widths[2]),
                      r[3].rjust(widths[3]), r[4]]).rstrip() for r in rows]
  return "\n".join(lines)


def main(argv=None):
  args = parse_args(argv)
  try:
    check_args(args)
    index = reader.open_index(args.index)
  except ValueError as e:
    sys.exit(f"error: {e}")
  model = cli.load_model_from_flags(args, announce=False)
  try:
    result = search_lib.search(model, index, args.query, top=args.top, candidates=args.candidates)
    check_page(args, result)
  except ValueError as e:
    sys.exit(f"error: {e}")
  for line in result.notes:
    print(line)
  if not result.no_known_content_words:
    print(format_table(result))
    scored = ("all" if result.regions_scored == index.num_regions
              else f"{result.regions_scored} (--candidates)")
    print(f"{len(result.hits)} of {runtime.count(index.num_images, 'image')}; {scored} of "
          f"{runtime.count(index.num_regions, 'region')} scored, in {result.seconds:.2f} s")
  if args.output_vis_dir:
    try:
      written = page.write_search_page(args.output_vis_dir, result)
    except OSError as e:
      sys.exit(f"error: cannot write --output_vis_dir {args.output_vis_dir}: {e}")
    print(f"page: {written}")
