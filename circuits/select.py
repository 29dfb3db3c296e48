"""Which nodes a circuit keeps: threshold or top-k selection on node scores.

A selection is a dict site name -> bool mask of the same shape as that site's scores
([n_nodes] for aggregation "sum", [pos, n_nodes] for "none"; the last node of a spliced site is
its error node). It is the one currency between scores, circuits and evaluation: attribution
scores only its candidates, `build` turns it into a graph, edges are computed among its nodes,
`evaluation` ablates everything outside it. ``check_selection`` is the one validator all of
them use.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from circuits.scores import Scores
from saes.splice import SplicedModel

Selection = dict[str, Tensor]  # site name -> bool [n_nodes] or [pos, n_nodes]


def check_selection(
    model: SplicedModel,
    selection: Mapping[str, Tensor],
    seq_len: int,
    *,
    partial: bool = False,
    what: str = "selection",
) -> Selection:
    """A selection as bool masks on the model's device, one per node site, each [n_nodes] (a
    node at every position) or [seq_len, n_nodes] (per position) as given.

    Every key must be a node site of the model. An integer tensor lists node indices (-> a
    [n_nodes] mask). A site left out selects none of its nodes when ``partial``; otherwise it
    is an error (ablating a site left out by mistake would silently remove it whole). ``what``
    names the argument in errors.
    """
    sites = model.node_sites
    names = [s.name for s in sites]
    unknown = [k for k in selection if k not in names]
    missing = [] if partial else [k for k in names if k not in selection]
    if unknown or missing:
        raise ValueError(
            f"{what} does not match the model's node sites {names}: unknown site(s) {unknown}, "
            f"missing {missing}; select nodes from scores of this model (load it with the same "
            "dictionaries, e.g. dictionaries='neurons' for neuron scores)"
        )
    out: Selection = {}
    for site in sites:
        size = model.n_nodes(site)
        given = selection.get(site.name)
        mask = torch.zeros(size, dtype=torch.bool) if given is None else torch.as_tensor(given)
        if not mask.dtype.is_floating_point and mask.dtype != torch.bool:  # node indices
            index = mask.long().flatten()
            if len(index) and (int(index.min()) < 0 or int(index.max()) >= size):
                raise ValueError(
                    f"{what}[{site.name!r}] indexes nodes outside 0..{size - 1} (site "
                    f"{site.name} has {size} nodes, the last one the error node)"
                )
            mask = torch.zeros(size, dtype=torch.bool)
            mask[index] = True
        if mask.dtype != torch.bool:
            raise ValueError(
                f"{what}[{site.name!r}] has dtype {mask.dtype}; masks must be bool (or integer "
                "node indices); circuits.select_nodes makes them"
            )
        if tuple(mask.shape) not in ((size,), (seq_len, size)):
            raise ValueError(
                f"{what}[{site.name!r}] has shape {tuple(mask.shape)}; site {site.name} has "
                f"{size} nodes, so a mask is [{size}] or [pos, {size}] = [{seq_len}, {size}] for "
                "this dataset (scores of another model, or of prompts of another length?)"
            )
        out[site.name] = mask.to(model.device)
    return out


def full_selection(model: SplicedModel, keep: bool = True) -> Selection:
    """Every node of every node site kept (keep=True) or none (False), as [n_nodes] masks."""
    return {
        s.name: torch.full((model.n_nodes(s),), keep, dtype=torch.bool, device=model.device)
        for s in model.node_sites
    }


def select_nodes(
    scores: Scores, *, node_threshold: float | None = None, top_k: int | None = None
) -> Selection:
    """Nodes with |score| >= node_threshold, or the top_k nodes by |score| over all sites.

    Exactly one of the two must be given. Ties at the k-th score are all kept only if they fit;
    the order among exact ties follows site order, then node index.
    """
    if scores.per_example:
        raise ValueError("select_nodes needs averaged scores; attribute with per_example=False")
    scores.check_finite()
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
    """Every node not in the selection."""
    return {site: ~mask for site, mask in selection.items()}
