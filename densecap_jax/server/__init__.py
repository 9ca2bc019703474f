"""The web demo server behind ``python -m densecap_jax.serve``.

* ``batching``: collects concurrent requests into batches for one worker thread.
* ``captioner``: the model side, compiled shapes and batches of uploads.
* ``app``: the HTTP application (JSON API, the page, error handling).
"""
