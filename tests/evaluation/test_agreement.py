"""agreement: Pearson r of methods against exact patching, per site, per kind, pooled."""

from __future__ import annotations

import math

import pytest
import torch

from circuits.scores import Scores
from evaluation.agreement import agreement, agreement_table, pearson


def scores(method: str, sites: dict[str, torch.Tensor], signed: bool = True) -> Scores:
    return Scores(method, "toy", "none", False, sites, n_examples=4, components_only=True,
                  signed=signed)


def test_pearson_matches_numpy_and_is_nan_when_undefined():
    x, y = torch.randn(50), torch.randn(50)
    expected = float(torch.corrcoef(torch.stack([x, y]))[0, 1])
    assert pearson(x, y) == pytest.approx(expected, abs=1e-6)
    assert math.isnan(pearson(torch.ones(5), torch.randn(5)))
    assert math.isnan(pearson(torch.ones(1), torch.ones(1)))


def test_identical_scaled_and_unsigned_scores():
    gen = torch.Generator().manual_seed(0)
    sites = {name: torch.randn(6, 1, generator=gen)
             for name in ("embed", "attn_0", "mlp_0", "resid_0")}
    exact = scores("exact", sites)
    twice = scores("atp", {k: 2 * v for k, v in sites.items()})
    magnitudes = scores("atp*", {k: v.abs() for k, v in sites.items()}, signed=False)
    noisy = scores("ig", {k: v + torch.randn(v.shape, generator=gen) for k, v in sites.items()})
    table = agreement({"atp": twice, "atp*": magnitudes, "ig": noisy}, exact)
    r = table.set_index(["method", "site"])["r"]
    assert r["atp", "all sites"] == pytest.approx(1.0)  # r ignores scale
    assert r["atp*", "all sites"] == pytest.approx(1.0)  # unsigned: compared with |exact|
    assert r["ig", "all sites"] < 0.99
    assert set(table["site"]) == {"embed", "attn_0", "mlp_0", "resid_0", "all sites"}
    by_kind = agreement({"ig": noisy}, exact, by="kind")
    assert list(by_kind["site"]) == ["resid", "attn", "mlp", "all sites"]
    assert by_kind.set_index("site")["n_nodes"]["resid"] == 12  # embed and resid_0, 6 each
    assert "| **all sites** |" in agreement_table(table)


def test_nodes_that_never_move_are_left_out():
    exact = scores("exact", {"resid_0": torch.tensor([[1.0], [2.0], [0.0], [3.0]])})
    atp = scores("atp", {"resid_0": torch.tensor([[1.0], [2.0], [0.0], [3.0]])})
    row = agreement({"atp": atp}, exact).iloc[0]
    assert row["n_nodes"] == 3 and row["r"] == pytest.approx(1.0)


def test_mismatched_scores_are_refused():
    exact = scores("exact", {"resid_0": torch.ones(3, 1)})
    other = Scores("atp", "toy", "sum", False, {"resid_0": torch.ones(1)}, 4, components_only=True)
    with pytest.raises(ValueError, match="do not match the exact scores"):
        agreement({"atp": other}, exact)


def test_a_second_pooled_row_leaves_the_error_nodes_out():
    """With dictionaries, "all features" pools every site's feature nodes without the error
    nodes (each site's last node): a method exact on features but wrong on one large error node
    has r 1 there and below 1 over all sites."""
    exact_sites = {"resid_0": torch.tensor([1.0, -2.0, 0.5, 9.0]),
                   "resid_1": torch.tensor([0.3, 0.0, -1.0, 4.0])}
    wrong_errors = {k: torch.cat([v[:-1], -v[-1:]]) for k, v in exact_sites.items()}

    def spliced(method: str, sites: dict[str, torch.Tensor]) -> Scores:
        return Scores(method, "toy", "sum", False, sites, n_examples=4)

    table = agreement({"atp": spliced("atp", wrong_errors)}, spliced("exact", exact_sites))
    rows = table.set_index("site")
    assert rows.loc["all features", "r"] == pytest.approx(1.0)
    assert rows.loc["all features", "n_nodes"] == 5  # 3 + 2 moved features, no error nodes
    assert rows.loc["all sites", "r"] < 0
    assert rows.loc["resid_0 features", "r"] == pytest.approx(1.0)  # per site, likewise
    assert rows.loc["resid_0 features", "n_nodes"] == 3
    assert rows.loc["resid_0", "r"] < 0
    assert "| **all features** |" in agreement_table(table)
    bare = agreement({"atp": scores("atp", {"resid_0": torch.ones(3, 1)})},
                     scores("exact", {"resid_0": torch.arange(3.0)[:, None]}))
    assert "all features" not in set(bare["site"])  # components only: no error nodes
