"""Evaluation: a checkpoint (or compiled model) on a test set → numbers comparable with the papers and a
report a person can look at. `evaluate()` (job.py) is what `deblur evaluate` runs."""

from .job import EvalOptions, evaluate
from .protocols import PROTOCOLS, score
from .sources import EmptyDatasetError

__all__ = ["evaluate", "EvalOptions", "score", "PROTOCOLS", "EmptyDatasetError"]
