"""The static results browser: ``view_results.html`` with ``viewer.js`` and ``viewer.css``.

``densecap_jax.vis.write_viewer`` copies these files beside ``results.json`` and
``results.js``; the page needs no server and no network access.
"""
