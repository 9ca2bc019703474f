"""The page of a search's hits: ``search.html`` in the results viewer's style, opening from disk.

``write_search_page(folder, result)`` writes into ``folder``:

* ``search.html``: the query, a notice naming the words the model does not
  know (and, for a query of function words only, saying it is not ranked,
  in place of the hits), and one card per hit, best first: the image with
  the best box drawn over it (an SVG rectangle, in the box colours of the
  viewer), its rank, name, score and the box's caption; it needs no server,
  no script and no network access;
* ``boxes.css``: the viewer's stylesheet (``densecap_jax/viewer``);
* ``search.json``: the hits as data (``{"query", "words", "unknown",
  "no_known_content_words", "notes", "hits": [{"rank", "image", "box",
  "score", "log_likelihood", "caption", "objectness", "width", "height",
  "src"}]}``; boxes xywh, 1-based, in the image's pixels; ``image`` the
  index's name, ``src`` the copy's path ``images/<name>``);
* ``images/<name>``: a copy of each hit's image, named by
  ``files.contained_name`` (the last part of the index's name, without
  control characters, at most 200 bytes, made unique), so that no name in an
  index can write outside ``images/``; a stored name that is not a plain file
  name gets a one-line warning on stderr.
"""

import html
import importlib.resources
import json
import os
import shutil
import sys
import urllib.parse

from densecap_jax import files

PAGE = "search.html"
DATA = "search.json"
STYLE = "boxes.css"
IMAGES = "images"
# The viewer's first box colour (boxes.js PALETTE[0]).
BOX_COLOR = "rgb(173, 35, 35)"

_PAGE_STYLE = """
#hits { display: grid; grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); gap: 18px; }
.hit { margin: 0; }
.hit .frame { position: relative; line-height: 0; border: 1px solid var(--ink); }
.hit .frame img { display: block; width: 100%; height: auto; }
.hit .frame svg { position: absolute; inset: 0; width: 100%; height: 100%; }
.hit figcaption { font-size: 15px; margin-top: 6px; }
.hit .rank { font-weight: 400; }
.hit .caption { color: BOX_COLOR; font-weight: 400; }
.hit .score, .hit .name { color: var(--muted); font-size: 13px; }
.hit .name { overflow-wrap: anywhere; }
.notice { font-size: 16px; font-weight: 400; color: BOX_COLOR; margin: 10px 0 18px;
  padding: 8px 12px; border-left: 4px solid BOX_COLOR; background: rgba(173, 35, 35, 0.07); }
.notice p { margin: 2px 0; }
""".replace("BOX_COLOR", BOX_COLOR)


def copy_names(result):
  """The file name in ``images/`` of each hit's copy (``files.contained_name``), in hit order."""
  used = set()
  return [files.contained_name(hit.image, used) for hit in result.hits]


def outputs(result):
  """Paths (relative to the folder) that :func:`write_search_page` writes for ``result``."""
  return [PAGE, DATA, STYLE] + [f"{IMAGES}/{name}" for name in copy_names(result)]


def _warn_unusual(result, names):
  """One line on stderr naming the index's image names that are not plain file names."""
  unusual = [(hit.image, name) for hit, name in zip(result.hits, names)
             if hit.image != files.contained_name(hit.image, limit=1 << 30)]
  if unusual:
    shown = ", ".join(f"{files.quoted(image)} as {IMAGES}/{name[:60]}" for image, name in unusual[:3])
    more = f" and {len(unusual) - 3} more" if len(unusual) > 3 else ""
    print(f"warning: {len(unusual)} image name{'' if len(unusual) == 1 else 's'} in the index "
          f"{'is not a plain file name' if len(unusual) == 1 else 'are not plain file names'} "
          f"(a path, or control characters); the page's copies are named {shown}{more}",
          file=sys.stderr)


def _card(hit, name):
  x, y, w, h = hit.box
  title = html.escape(f"{hit.caption} ({hit.score:.3f})")
  src = html.escape(IMAGES + "/" + urllib.parse.quote(name))
  return f"""<figure class="hit">
  <div class="frame">
    <img src="{src}" alt="{html.escape(hit.image)}">
    <svg viewBox="0 0 {hit.width} {hit.height}"><rect class="box" x="{x - 1:g}" y="{y - 1:g}" \
width="{w:g}" height="{h:g}" stroke="{BOX_COLOR}"><title>{title}</title></rect></svg>
  </div>
  <figcaption><span class="rank">{hit.rank}.</span> <span class="caption">\
{html.escape(hit.caption)}</span><br><span class="name">{html.escape(hit.image)}</span> \
<span class="score">score {hit.score:.3f}</span></figcaption>
</figure>"""


def _page(result, names):
  query = html.escape(result.query)
  notice = "".join(f"<p>{html.escape(line)}</p>" for line in result.notes)
  notice = f'<div class="notice" role="note">{notice}</div>' if notice else ""
  if result.no_known_content_words:
    summary, cards = "", ""
  else:
    hits = len(result.hits)
    summary = (f'<p class="help">{hits} image{"" if hits == 1 else "s"}, best first; the box '
               f"drawn is the region where the query is most likely (score: log-likelihood per "
               f"word)</p>")
    cards = "\n".join(_card(hit, name) for hit, name in zip(result.hits, names)) or \
        "<p>No hits.</p>"
  return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>DenseCap search: {query}</title>
  <link rel="stylesheet" href="{STYLE}">
  <style>{_PAGE_STYLE}</style>
</head>
<body>
  <main id="wrap">
    <header>
      <h1>&ldquo;{query}&rdquo;</h1>
      {summary}
      {notice}
    </header>
    <section id="hits">
{cards}
    </section>
  </main>
</body>
</html>
"""


def _data(result, names):
  hits = [dict(vars(hit), src=f"{IMAGES}/{name}") for hit, name in zip(result.hits, names)]
  for hit in hits:
    del hit["path"]
  return {"query": result.query, "words": result.words, "unknown": result.unknown,
          "no_known_content_words": result.no_known_content_words, "notes": result.notes,
          "hits": hits}


def write_search_page(folder, result):
  """Writes the page of ``result`` (a ``search.ranking.SearchResult``) into ``folder``.

  Every file is written atomically; the images are copied from their paths
  to ``images/<copy_names(result)[i]>``, inside ``folder`` whatever the
  index's names are.

  Returns:
    The page's path.
  """
  names = copy_names(result)
  _warn_unusual(result, names)
  images = os.path.join(folder, IMAGES)
  os.makedirs(images, exist_ok=True)
  for hit, name in zip(result.hits, names):
    with files.atomic_output(files.inside(images, name)) as tmp_path:
      shutil.copyfile(hit.path, tmp_path)
  style = importlib.resources.files("densecap_jax.viewer").joinpath(STYLE).read_text("utf-8")
  for name, text in ((STYLE, style), (DATA, json.dumps(_data(result, names), indent=1)),
                     (PAGE, _page(result, names))):
    with files.atomic_output(os.path.join(folder, name)) as tmp_path:
      with open(tmp_path, "w", encoding="utf-8") as f:
        f.write(text)
  return os.path.join(folder, PAGE)
