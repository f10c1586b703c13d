"""Evaluation: FuxiCTR-compatible CTR metrics and full-ranking next-item metrics (see docs/metrics.md).

``metrics`` is pure numpy; ``evaluate`` runs a (jitted) prediction function over evaluation batches.
"""

from mos_jax.evaluation.evaluate import evaluate, target_ranks
from mos_jax.evaluation.metrics import auc, gauc, logloss, ranking_metrics, ranks_from_scores, sigmoid

__all__ = ["auc", "evaluate", "gauc", "logloss", "ranking_metrics", "ranks_from_scores", "sigmoid", "target_ranks"]
