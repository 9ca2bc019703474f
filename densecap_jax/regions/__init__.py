"""Your regions and your phrases: caption given boxes, score phrases against regions, and
search a photo collection by phrase (``coords``, ``phrases``, ``api``, ``index``, ``search``)."""
