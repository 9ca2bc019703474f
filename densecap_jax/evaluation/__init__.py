"""Evaluation: the dense-captioning mAP (``metric``), METEOR through one Java process
(``meteor``), a model run over a dataset split (``split_eval``) and the command
(``python -m densecap_jax.evaluation``, also ``eval/evaluate.py``).

The evaluator and its two documented steps are importable from here:
``DenseCaptioningEvaluator``, ``merge_boxes`` and ``average_precision``.
"""

from densecap_jax.evaluation.metric import DenseCaptioningEvaluator
from densecap_jax.evaluation.metric import average_precision
from densecap_jax.evaluation.metric import merge_boxes
