"""Threshold sweeps and their plot on the shipped organism."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from circuits import attribute
from circuits.select import select_nodes
from evaluation import (
    faithfulness,
    plot_sweep,
    sweep,
)
from tasks import sva


def test_sweep_thresholds(organism, test_set, relp):
    atp = attribute(organism, sva.load("across_pp", n=48), "atp", progress=False)
    thresholds = [1.0, 0.0, 1e-3, 0.3, 0.1, 3.0, 1e-2]
    df = sweep(organism, {"relp": relp, "atp": atp}, test_set, thresholds=thresholds,
               progress=False)
    assert len(df) == 2 * len(thresholds)
    assert set(df["method"]) == {"relp", "atp"}
    assert df["n_edges"].isna().all()
    for _, part in df.groupby("method"):
        part = part.sort_values("threshold", ascending=False)
        assert part["n_nodes"].is_monotonic_increasing  # never falls as the threshold falls
        assert part["n_nodes"].iloc[-1] == sum(v.numel() for v in relp.sites.values())
        assert part["faithfulness"].iloc[-1] == pytest.approx(1.0, abs=1e-4)
        assert part["completeness"].iloc[-1] == pytest.approx(0.0, abs=1e-6)
    # a sweep row is what faithfulness() says of the same circuit
    row = df[(df["method"] == "relp") & (df["threshold"] == 0.1)].iloc[0]
    direct = faithfulness(organism, select_nodes(relp, node_threshold=0.1), test_set)
    assert row["faithfulness"] == pytest.approx(direct.value, abs=1e-5)
    assert row["n_nodes"] == direct.n_nodes


def test_sweep_node_counts_and_plot(organism, test_set, relp, tmp_path):
    df = sweep(organism, relp, test_set, node_counts=[0, 5, 50, 500], progress=False)
    assert df["top_k"].tolist() == [0, 5, 50, 500]
    assert df["n_nodes"].tolist() == [0, 5, 50, 500]
    assert df["faithfulness"].iloc[0] == pytest.approx(0.0, abs=1e-6)
    assert df["completeness"].iloc[0] == pytest.approx(1.0, abs=1e-4)
    df["task"] = "across_pp"
    plot_sweep(pd.concat([df, df.assign(task="copy")]), tmp_path / "fig", facet="task")
    for suffix in (".png", ".svg"):
        assert (tmp_path / f"fig{suffix}").stat().st_size > 1000
    with pytest.raises(ValueError, match="lacks columns"):
        plot_sweep(df.drop(columns="completeness"))


def test_sweep_refuses_scores_of_another_model(organism, test_set, relp):
    other = type(relp)(**{**relp.__dict__, "model": "pythia-70m-deduped"})
    with pytest.raises(ValueError, match="pythia-70m-deduped"):
        sweep(organism, other, test_set, node_counts=[1], progress=False)


def test_sweep_of_per_position_scores(organism, test_set):
    scores = attribute(organism, sva.load("across_pp", n=24), "relp", aggregation="none",
                       progress=False)
    total = sum(v.numel() for v in scores.sites.values())  # pos × nodes
    df = sweep(organism, scores, test_set, node_counts=[0, 150, total], progress=False)
    assert df["n_nodes"].tolist() == [0, 150, total]
    assert df["faithfulness"].tolist() == pytest.approx(
        [0.0, df["faithfulness"][1], 1.0], abs=1e-4)
    assert 0.0 < df["faithfulness"][1] < 1.2


def test_sweep_counts_edges_among_kept_nodes(organism, test_set, relp):
    """n_edges of a sweep row equals the edge count of the circuit `build` makes of the same
    nodes; it never falls as the circuit grows; beyond the nodes the edges cover it is NaN."""
    from circuits import attribute_edges, build

    train = sva.load("across_pp", n=12, tokenizer=organism.tokenizer)
    edges = attribute_edges(organism, train, "relp", select_nodes(relp, top_k=40),
                            progress=False)
    table = sweep(organism, relp, test_set, node_counts=[5, 20, 40, 80], edges=edges,
                  progress=False)
    counts = table.set_index("top_k")["n_edges"]
    for k in (5, 20, 40):
        assert counts[k] == build(relp, top_k=k, edges=edges).n_edges
    assert counts[5] <= counts[20] <= counts[40] and counts[40] > 0
    assert math.isnan(counts[80])
    strong = sweep(organism, relp, test_set, node_counts=[40], edges=edges, edge_threshold=0.05,
                   progress=False)
    assert strong["n_edges"][0] == build(relp, top_k=40, edges=edges, edge_threshold=0.05).n_edges
    assert strong["n_edges"][0] < counts[40]
