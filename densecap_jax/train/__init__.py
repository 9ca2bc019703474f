"""Training: the pmapped step and loop (``loop``), the original's Adam (``optim``),
the DenseCap run in a work directory (``trainer``), its configs (``configs``) and
the command (``python -m densecap_jax.train``, also ``train/train.py``)."""
