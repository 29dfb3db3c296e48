"""``agreement``: how well each method's node scores match exact activation patching.

Pearson r between a method's scores and the exact scores, per site and over all sites pooled,
on the nodes that moved (a non-zero score in either; nodes that never move score 0 in every
method and would inflate r). Feature and error nodes are compared alike; with dictionaries a
second pooled row, and per site a "<site> features" row, leave the error nodes out (an error node
moves the whole unexplained part of its site at once, where first-order methods miss most; a few
of them can decide a site's or the pooled r).
On a bare model the nodes are the components at each position. A method that scores
magnitudes only (``signed`` False, e.g. atp*) is compared with |exact|. Reads scores; never
computes them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import pandas as pd
import torch
from torch import Tensor

from circuits.scores import Scores

POOLED = "all sites"
FEATURES_POOLED = "all features"  # pooled over every site, error nodes left out
FEATURES_OF = "{site} features"  # one site's feature nodes, its error node left out


def pearson(x: Tensor, y: Tensor) -> float:
    """Pearson r of two flat tensors; NaN with fewer than 2 points or zero variance."""
    x, y = x.double().flatten(), y.double().flatten()
    if len(x) < 2:
        return math.nan
    x, y = x - x.mean(), y - y.mean()
    denominator = float(x.norm() * y.norm())
    return float((x * y).sum()) / denominator if denominator > 0 else math.nan


def component_kind(site: str) -> str:
    """resid, attn or mlp; embed is the residual stream entering block 0."""
    kind = site.split("_")[0]
    return "resid" if kind == "embed" else kind


GroupBy = Literal["site", "kind"]
"""How agreement pools nodes: per site (embed, resid_0, ...), or per component kind (resid, attn,
mlp; embed counts as resid), e.g. for a model without dictionaries."""


def agreement(scores: Mapping[str, Scores], exact: Scores, by: GroupBy = "site") -> pd.DataFrame:
    """One row per (method, site) plus a pooled row per method (and, with dictionaries, one per
    site and one pooled over the feature nodes only, FEATURES_OF and FEATURES_POOLED): columns
    method, site, r, n_nodes (nodes compared).
    by="kind" pools the sites of each component kind (resid, attn, mlp) instead of one row per
    site: for a bare model, whose sites hold one node per position, the RelP paper's table."""
    if by not in ("site", "kind"):
        raise ValueError(f"unknown by={by!r}; use 'site' or 'kind'")
    if exact.per_example:
        raise ValueError("agreement needs averaged exact scores; attribute with per_example=False")
    rows = []
    for label, s in scores.items():
        if s.per_example or s.aggregation != exact.aggregation or s.model != exact.model:
            raise ValueError(
                f"scores[{label!r}] ({s.model}, aggregation {s.aggregation}, per_example "
                f"{s.per_example}) do not match the exact scores ({exact.model}, aggregation "
                f"{exact.aggregation}, averaged); attribute both on the same model and data"
            )
        groups: dict[str, tuple[list[Tensor], list[Tensor]]] = {}
        features: dict[str, tuple[Tensor, Tensor]] = {}  # site -> its feature nodes
        for site, reference in exact.sites.items():
            truth = reference if s.signed else reference.abs()
            mine = s.sites[site].to(truth.device)
            moved = (mine != 0) | (truth != 0)
            xs, ys = groups.setdefault(site if by == "site" else component_kind(site), ([], []))
            xs.append(mine[moved].float().cpu())
            ys.append(truth[moved].float().cpu())
            if not exact.components_only:  # the error node is each site's last node
                feature = moved.clone()
                feature[..., exact.error_index(site)] = False
                features[site] = (mine[feature].float().cpu(), truth[feature].float().cpu())
        for group, (xs, ys) in groups.items():
            x, y = torch.cat(xs), torch.cat(ys)
            rows.append({"method": label, "site": group, "r": pearson(x, y), "n_nodes": len(x)})
        x = torch.cat([torch.cat(xs) for xs, _ in groups.values()])
        y = torch.cat([torch.cat(ys) for _, ys in groups.values()])
        rows.append({"method": label, "site": POOLED, "r": pearson(x, y), "n_nodes": len(x)})
        if not exact.components_only:
            x = torch.cat([x for x, _ in features.values()])
            y = torch.cat([y for _, y in features.values()])
            rows.append({"method": label, "site": FEATURES_POOLED, "r": pearson(x, y),
                         "n_nodes": len(x)})
            if by == "site":
                rows += [{"method": label, "site": FEATURES_OF.format(site=site),
                          "r": pearson(mine_f, truth_f), "n_nodes": len(mine_f)}
                         for site, (mine_f, truth_f) in features.items()]
    return pd.DataFrame(rows, columns=["method", "site", "r", "n_nodes"])


def agreement_table(table: pd.DataFrame) -> str:
    """The agreement DataFrame as a markdown table: one row per site, one column per method."""
    wide = table.pivot(index="site", columns="method", values="r")
    sites = list(dict.fromkeys(table["site"]))
    methods = list(dict.fromkeys(table["method"]))
    lines = ["| site | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for site in sites:
        cells = [f"{wide.loc[site, m]:.3f}" if not math.isnan(wide.loc[site, m]) else "n/a"
                 for m in methods]
        name = f"**{site}**" if site in (POOLED, FEATURES_POOLED) else site
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
