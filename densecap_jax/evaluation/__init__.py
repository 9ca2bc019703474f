"""Evaluation: the dense-captioning mAP (``metric``), METEOR through one Java process
(``meteor``), a model run over a dataset split (``split_eval``) and the command
(``python -m densecap_jax.evaluation``, also ``eval/evaluate.py``)."""
