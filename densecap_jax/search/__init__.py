"""Phrase search over a photo collection: build an index (``builder``), open it (``reader``), rank it (``ranking``)."""
