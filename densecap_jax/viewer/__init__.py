"""The static results browser: ``view_results.html`` with ``viewer.js`` and ``viewer.css``.

``boxes.js`` and ``boxes.css`` draw the boxes and the caption list; the web
demo page (``densecap_jax/static``) uses them too. ``densecap_jax.vis.write_viewer``
copies all five files beside ``results.json`` and ``results.js``; the page
needs no server and no network access.
"""
