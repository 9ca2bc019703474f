"""The web demo page: ``index.html`` with ``app.js`` and ``app.css``.

``densecap_jax.server.app`` serves these three files and nothing else from here,
and ``boxes.js`` and ``boxes.css`` from ``densecap_jax/viewer``, the box drawing
the page shares with the results browser.
"""
