"""Evaluation of circuits: mean ablation, faithfulness, completeness, threshold sweeps, plots.

Reads scores and circuits (selections of nodes); never computes attributions.
"""

from evaluation.ablation import NodeMeans, ablated_metrics, node_means
from evaluation.faithfulness import AblationRatio, completeness, faithfulness
from evaluation.plot import plot_sweep
from evaluation.sweep import sweep

__all__ = [
    "AblationRatio",
    "NodeMeans",
    "ablated_metrics",
    "completeness",
    "faithfulness",
    "node_means",
    "plot_sweep",
    "sweep",
]
