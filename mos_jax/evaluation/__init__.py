"""Evaluation: FuxiCTR-compatible CTR metrics and full-ranking next-item metrics (see docs/metrics.md).

``metrics`` is pure numpy; ``evaluate`` runs a (jitted) prediction function over evaluation batches; ``slices``
splits per-row outputs into slices of the examples (session start, history length, categories).
"""

from mos_jax.evaluation.evaluate import (NextItemQuery, evaluate, predict_rows, row_metrics, target_ranks,
                                         target_ranks_blocked)
from mos_jax.evaluation.metrics import auc, gauc, logloss, ranking_metrics, ranks_from_scores, sigmoid
from mos_jax.evaluation.slices import slice_masks, slice_metrics

__all__ = ["NextItemQuery", "auc", "evaluate", "gauc", "logloss", "predict_rows", "ranking_metrics",
           "ranks_from_scores", "row_metrics", "sigmoid", "slice_masks", "slice_metrics", "target_ranks", "target_ranks_blocked"]
