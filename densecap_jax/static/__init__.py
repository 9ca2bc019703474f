"""The web demo page: ``index.html`` with ``app.js`` and ``app.css``.

``densecap_jax.server.app`` serves these three files and nothing else from here.
"""
