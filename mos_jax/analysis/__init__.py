"""mos_jax.analysis: session-hopping statistics of a dataset, routing analysis of a trained MoS run, and training
curves. Each command writes PNG figures and a JSON file (atomically); see docs/analysis.md.

    python -m mos_jax.analysis hopping --dataset taobao --data-dir ../shared/data/taobao-userbehavior-head --out DIR
    python -m mos_jax.analysis routing --workdir runs/default --out DIR
    python -m mos_jax.analysis curves --workdir runs/default runs/backbone --out DIR
"""

from mos_jax.analysis.curves import plot_curves, read_metrics
from mos_jax.analysis.hopping import analyze_hopping, dominant_label, hop_stats, hopping_stats
from mos_jax.analysis.output import AnalysisError
from mos_jax.analysis.routing import analyze_routing, compare, contingency, nmi, purity

__all__ = ["AnalysisError", "analyze_hopping", "analyze_routing", "compare", "contingency", "dominant_label",
           "hop_stats", "hopping_stats", "nmi", "plot_curves", "purity", "read_metrics"]
