"""top_nodes: the strongest nodes over all sites, labelled as a reader expects."""

from __future__ import annotations

import torch

from circuits.scores import Scores
from circuits.top import top_nodes


def scores(sites: dict[str, torch.Tensor], components_only: bool = False) -> Scores:
    return Scores("atp", "toy", "sum" if next(iter(sites.values())).dim() == 1 else "none",
                  False, sites, n_examples=1, components_only=components_only)


def test_ranked_by_magnitude_across_sites_with_error_nodes_named():
    ranked = top_nodes(scores({"resid_0": torch.tensor([0.1, -3.0, 2.0]),
                               "mlp_0": torch.tensor([0.0, 2.5, -0.2])}), k=3)
    assert [(r.site, r.node, r.score) for r in ranked] == [
        ("resid_0", 1, -3.0), ("mlp_0", 1, 2.5), ("resid_0", 2, 2.0)]
    assert ranked[0].label == "resid_0 feature 1" and ranked[2].label == "resid_0 error"


def test_components_of_a_bare_model_per_position():
    sites = {"attn_3": torch.tensor([[0.5], [-4.0]])}
    ranked = top_nodes(scores(sites, components_only=True), k=1)
    assert ranked[0].label == "attn_3 @ pos 1" and ranked[0].is_component
