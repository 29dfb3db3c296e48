"""Which nodes a circuit keeps: threshold or top-k selection on node scores.

A selection is a dict site name -> bool mask of the same shape as that site's scores
([n_nodes] for aggregation "sum", [pos, n_nodes] for "none"; the last node of a spliced site is
its error node). It is the one currency between scores, circuits and evaluation: `build` turns
it into a graph, `evaluation` ablates everything outside it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from circuits.scores import Scores

Selection = dict[str, Tensor]  # site name -> bool [n_nodes] or [pos, n_nodes]


def select_nodes(
    scores: Scores, *, node_threshold: float | None = None, top_k: int | None = None
) -> Selection:
    """Nodes with |score| >= node_threshold, or the top_k nodes by |score| over all sites.

    Exactly one of the two must be given. Ties at the k-th score are all kept only if they fit;
    the order among exact ties follows site order, then node index.
    """
    if scores.per_example:
        raise ValueError("select_nodes needs averaged scores; attribute with per_example=False")
    if (node_threshold is None) == (top_k is None):
        raise ValueError("give exactly one of node_threshold= or top_k=")
    if node_threshold is not None:
        if not isinstance(node_threshold, (int, float)) or math.isnan(node_threshold) or (
            node_threshold < 0
        ):
            raise ValueError(f"node_threshold must be a number >= 0, got {node_threshold!r}")
        return {site: v.abs() >= node_threshold for site, v in scores.sites.items()}
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0, got {top_k!r}")
    flat = torch.cat([v.abs().flatten().float().cpu() for v in scores.sites.values()])
    keep = torch.zeros(len(flat), dtype=torch.bool)
    if top_k > 0:
        # stable sort: among ties, earlier sites and lower indices win
        order = torch.sort(-flat, stable=True).indices[: min(top_k, len(flat))]
        keep[order] = True
    out: Selection = {}
    start = 0
    for site, v in scores.sites.items():
        out[site] = keep[start : start + v.numel()].reshape(v.shape).to(v.device)
        start += v.numel()
    return out


def count(selection: Selection) -> int:
    """Number of nodes kept."""
    return int(sum(int(mask.sum()) for mask in selection.values()))


def complement(selection: Selection) -> Selection:
    return {site: ~mask for site, mask in selection.items()}
