"""Checks of the box labels that boxes.js draws in the browser (results viewer and demo page).

``LABELS_JS`` is a JavaScript expression that reads what the page shows into
JSON; :func:`check_labels` asserts the rules the drawings of
``densecap_jax.vis.draw_labelled`` follow: every label inside the picture, its
text on an opaque band of its box's colour in black or white by
``vis.label_colors``, wrapped only between words, and clear of the labels of
higher-ranked boxes wherever one of its four places (above the box, inside
its top-left corner, below it, inside its bottom-left corner) is free.
"""

import re

import pytest

from densecap_jax import vis

# Reads the overlay: its viewBox (picture pixels) and shown size (CSS pixels), each
# box's rect and outline colour, and each label's band, text and bounding boxes.
LABELS_JS = """(() => {
  const overlay = document.getElementById('overlay');
  const [, , width, height] = overlay.getAttribute('viewBox').split(' ').map(Number);
  const shown = overlay.getBoundingClientRect();
  const boxes = {};
  for (const box of overlay.querySelectorAll('.box')) {
    boxes[box.dataset.rank] = {
      stroke: box.getAttribute('stroke'),
      rect: ['x', 'y', 'width', 'height'].map(k => Number(box.getAttribute(k))),
    };
  }
  const captions = {};
  for (const item of document.querySelectorAll('#captions li[data-rank]')) {
    captions[item.dataset.rank] = item.querySelector('.caption').textContent;
  }
  const rectOf = b => [b.x, b.y, b.width, b.height];
  const labels = [...overlay.querySelectorAll('.label')].map(group => {
    const band = group.querySelector('rect');
    const text = group.querySelector('text');
    const bandStyle = getComputedStyle(band);
    const screen = group.getBoundingClientRect();
    return {
      rank: Number(group.dataset.rank),
      group: rectOf(group.getBBox()),
      band: rectOf(band.getBBox()),
      text: rectOf(text.getBBox()),
      screen: [screen.left - shown.left, screen.top - shown.top, screen.width, screen.height],
      bandFill: bandStyle.fill,
      bandOpacity: Number(bandStyle.fillOpacity) * Number(bandStyle.opacity),
      textFill: getComputedStyle(text).fill,
      lines: [...text.querySelectorAll('tspan')].map(span => span.textContent),
      textContent: text.textContent,
    };
  });
  return {width, height, shownWidth: shown.width, shownHeight: shown.height,
          boxes, captions, labels};
})()"""

EPS = 1e-3  # picture pixels


def rgb(css):
  """``(r, g, b)`` of a CSS ``rgb(...)`` colour."""
  match = re.fullmatch(r"rgba?\((\d+), (\d+), (\d+)(?:, 1)?\)", css.strip())
  assert match, f"not an opaque rgb() colour: {css}"
  return tuple(int(v) for v in match.groups())


def overlap(a, b):
  """Overlapping area of two ``[left, top, width, height]`` rectangles, less EPS each way."""
  w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]) - EPS
  h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]) - EPS
  return max(0.0, w) * max(0.0, h)


def places(box, size, picture, margin):
  """The four places of a label of ``size`` ``(w, h)`` on ``box`` (0-based x, y, w, h).

  Above the outline when there is room, inside the top-left corner, below the
  outline when there is room, inside the bottom-left corner, each moved into
  the ``picture`` ``(W, H)``; ``margin`` is the outline's width outside the box.
  """
  x, y, w, h = box
  label_w, label_h = size
  width, height = picture
  left, top, bottom = x - margin, y - margin, y + max(0, h) + margin
  tops = ([top - label_h] if top - label_h >= 0 else []) + [top]
  tops += ([bottom] if bottom + label_h <= height else []) + [bottom - label_h]
  return [[max(0, min(left, width - label_w)), max(0, min(t, height - label_h)), label_w, label_h]
          for t in tops]


def check_labels(shown):
  """Asserts the label rules on ``shown`` (the value of ``LABELS_JS``); returns the labels by rank."""
  width, height = shown["width"], shown["height"]
  scale = shown["shownWidth"] / width  # CSS pixels per picture pixel
  margin = 1.5 / scale  # the 3 px outline, half of it outside the box
  labels = sorted(shown["labels"], key=lambda label: label["rank"])
  assert labels, "no labels drawn"
  placed = []
  for label in labels:
    rank = str(label["rank"])
    caption = shown["captions"][rank]
    left, top, w, h = label["group"]
    # Inside the picture, in picture pixels and on the screen.
    assert left >= -EPS and top >= -EPS, (caption, label["group"])
    assert left + w <= width + EPS and top + h <= height + EPS, (caption, label["group"], width,
                                                                 height)
    sl, st, sw, sh = label["screen"]
    assert sl >= -0.5 and st >= -0.5, (caption, label["screen"])
    assert sl + sw <= shown["shownWidth"] + 0.5 and st + sh <= shown["shownHeight"] + 0.5, (
        caption, label["screen"], shown["shownWidth"], shown["shownHeight"])
    # The text lies on its band; the band is the box's colour, nearly opaque, the text black
    # or white as vis.label_colors says.
    assert label["group"] == pytest.approx(label["band"], abs=EPS), caption
    tl, tt, tw, th = label["text"]
    assert tl >= left - EPS and tt >= top - EPS, caption
    assert tl + tw <= left + w + EPS and tt + th <= top + h + EPS, caption
    box_color = rgb(shown["boxes"][rank]["stroke"])
    background, text = vis.label_colors(box_color)
    assert rgb(label["bandFill"]) == background, caption
    assert rgb(label["textFill"]) == text, (caption, label["textFill"], box_color)
    assert label["bandOpacity"] >= 0.85, caption
    # Wrapped only between words: the lines, joined by spaces, are the caption.
    assert label["lines"] and all(line.strip() == line and line for line in label["lines"])
    assert " ".join(label["lines"]) == " ".join(caption.split()), (label["lines"], caption)
    # At one of its four places; clear of higher-ranked labels when one of those is free.
    candidates = places(shown["boxes"][rank]["rect"], (w, h), (width, height), margin)
    assert any(label["group"] == pytest.approx(c, abs=0.01) for c in candidates), (
        caption, label["group"], candidates)
    if any(sum(overlap(c, other) for other in placed) == 0 for c in candidates):
      assert all(overlap(label["group"], other) == 0 for other in placed), caption
    placed.append(label["group"])
  return labels
