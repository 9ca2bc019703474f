"""Phrase search over a photo collection: build an index (``builder``), open it (``reader``), rank it (``ranking``).

``build_index``, ``open_index`` and ``search`` are importable from here (the README's
"Searching a photo collection").
"""

from densecap_jax.search.builder import build_index
from densecap_jax.search.ranking import search
from densecap_jax.search.reader import open_index
