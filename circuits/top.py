"""Rank the nodes of a `Scores` by |score|: the table a researcher reads first."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuits.scores import Scores


@dataclass(frozen=True)
class RankedNode:
    site: str
    node: int  # feature index; the last index of a spliced site is its error node
    position: int | None  # None when scores are summed over positions
    score: float
    is_error: bool
    is_component: bool = False  # a model without dictionaries: the site's whole activation

    @property
    def label(self) -> str:
        what = "" if self.is_component else " error" if self.is_error else f" feature {self.node}"
        where = "" if self.position is None else f" @ pos {self.position}"
        return f"{self.site}{what}{where}"


def top_nodes(scores: Scores, k: int = 20) -> list[RankedNode]:
    """The k nodes with the largest |score| over all sites (averaged scores only)."""
    if scores.per_example:
        raise ValueError("top_nodes needs averaged scores; attribute with per_example=False")
    scores.check_finite()
    ranked: list[RankedNode] = []
    for site, values in scores.sites.items():
        flat = values.flatten()
        best = flat.abs().topk(min(k, flat.numel())).indices
        for index in best.tolist():
            position, node = divmod(index, scores.n_nodes(site))
            ranked.append(
                RankedNode(
                    site=site,
                    node=node,
                    position=position if values.dim() == 2 else None,
                    score=float(flat[index]),
                    is_error=not scores.components_only and node == scores.error_index(site),
                    is_component=scores.components_only,
                )
            )
    ranked.sort(key=lambda r: -abs(r.score))
    return ranked[:k]


def total_by_site(scores: Scores) -> dict[str, float]:
    """Sum of scores per site (features and error), a quick view of where the effect sits."""
    return {site: float(torch.as_tensor(v).sum()) for site, v in scores.sites.items()}
