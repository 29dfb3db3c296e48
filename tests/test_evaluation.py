"""Evaluation: mean ablation, faithfulness / completeness, sweeps, plots, the neuron baseline.

On the shipped model organism (4 layers, d_model 64, 256-feature dictionaries at 13 sites).
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from circuits import attribute
from circuits.select import select_nodes
from evaluation import (
    ablated_metrics,
    completeness,
    faithfulness,
    node_means,
    plot_sweep,
    sweep,
)
from saes import load
from tasks import sva
from tasks.metrics import logit_diff
from tasks.pairs import tokenize

torch.set_num_threads(1)
CONSTRUCTIONS = ("simple", "within_rc", "across_rc", "across_pp")


@pytest.fixture(scope="module")
def organism():
    return load("organism", device="cpu")


@pytest.fixture(scope="module")
def neurons():
    return load("organism", dictionaries="neurons", device="cpu")


@pytest.fixture(scope="module")
def test_set(organism):
    return organism.tokenize(sva.load("across_pp", split="test", n=24))


@pytest.fixture(scope="module")
def relp(organism):
    return attribute(organism, sva.load("across_pp", n=48), "relp", progress=False)


def all_nodes(scores, value: bool):
    return {k: torch.full_like(v, value, dtype=torch.bool) for k, v in scores.sites.items()}


# ---- faithfulness / completeness identities ------------------------------------------------------
def test_full_circuit_is_faithful_and_empty_is_not(organism, test_set, relp):
    full, empty = all_nodes(relp, True), all_nodes(relp, False)
    f_full = faithfulness(organism, full, test_set)
    # m(M) is the plain model: full == 1 holds only if the splice and the masks change nothing
    assert f_full.value == pytest.approx(1.0, abs=1e-4)
    assert f_full.m_full > 1.0  # the organism does the task: a gap to recover
    assert faithfulness(organism, empty, test_set).value == pytest.approx(0.0, abs=1e-6)
    assert completeness(organism, full, test_set).value == pytest.approx(0.0, abs=1e-6)
    assert completeness(organism, empty, test_set).value == pytest.approx(1.0, abs=1e-4)


def test_per_position_full_and_empty(organism, test_set, relp):
    seq = test_set.seq_len
    full = {k: torch.ones(seq, v.shape[-1], dtype=torch.bool) for k, v in relp.sites.items()}
    empty = {k: ~v for k, v in full.items()}
    assert faithfulness(organism, full, test_set).value == pytest.approx(1.0, abs=1e-4)
    assert faithfulness(organism, empty, test_set).value == pytest.approx(0.0, abs=1e-6)


def test_empty_circuit_is_the_mean_final_residual(organism, test_set):
    """m(∅) independently: decode is affine, so ablating every node at the last site puts the
    mean patch residual stream there; unembed it at the last position."""
    tl = organism.transformer
    final = f"blocks.{tl.cfg.n_layers - 1}.hook_resid_post"
    _, cache = tl.run_with_cache(test_set.patch_tokens, names_filter=final)
    mean = cache[final].mean(0, keepdim=True).expand(len(test_set), -1, -1)  # one length
    logits = tl.unembed(tl.ln_final(mean))
    expected = float(logit_diff(logits, test_set, "evaluation").mean().detach())
    result = faithfulness(organism, all_nodes_of(organism, False), test_set)
    assert result.m_empty == pytest.approx(expected, abs=1e-4)
    assert result.m_full != pytest.approx(expected, abs=1e-2)


def all_nodes_of(model, value: bool):
    return {s.name: torch.full((model.dictionaries[s.name].d_sae + 1,), value)
            for s in model.spliced_sites}


def test_circuit_object_and_dict_agree(organism, test_set, relp):
    sel = select_nodes(relp, top_k=60)

    class Circuit:
        def selection(self):
            return sel

    assert faithfulness(organism, Circuit(), test_set) == faithfulness(organism, sel, test_set)


def test_sum_selection_is_every_position_of_a_per_position_one(organism, test_set, relp):
    sel = select_nodes(relp, top_k=80)
    seq = test_set.seq_len
    per_pos = {k: v[None].expand(seq, -1).clone() for k, v in sel.items()}
    last_dropped = {k: v.clone() for k, v in per_pos.items()}
    for v in last_dropped.values():
        v[-1] = False  # ablate everything at the last position
    a, b, c = ablated_metrics(organism, test_set, [sel, per_pos, last_dropped]).tolist()
    assert a == pytest.approx(b, abs=1e-5)
    assert abs(a - c) > 1e-2


def test_batching_does_not_change_the_metrics(organism, test_set, relp):
    sels = [select_nodes(relp, top_k=k) for k in (0, 20, 70, 200)] + [None]
    means = node_means(organism, test_set)
    big = ablated_metrics(organism, test_set, sels, means=means, batch_size=1000)
    small = ablated_metrics(organism, test_set, sels, means=means, batch_size=7)
    torch.testing.assert_close(big, small, atol=1e-5, rtol=0)
    assert len(set(big.round(decimals=3).tolist())) == len(sels)  # distinct circuits differ


def test_intact_layers(organism, test_set, relp):
    empty = all_nodes(relp, False)
    sel = select_nodes(relp, top_k=40)
    two = faithfulness(organism, sel, test_set, intact_layers=2)
    none = faithfulness(organism, sel, test_set)
    assert two.m_circuit != pytest.approx(none.m_circuit, abs=1e-3)
    # the last site is still ablated: the empty circuit is the same mean output
    assert two.m_empty == pytest.approx(none.m_empty, abs=1e-5)
    with pytest.warns(RuntimeWarning, match="undefined"):
        everything = faithfulness(organism, empty, test_set, intact_layers=organism.cfg.n_layers)
    assert math.isnan(everything.value)
    assert everything.m_empty == pytest.approx(everything.m_full, abs=1e-4)


def test_bad_selections_name_the_site(organism, neurons, test_set, relp):
    sel = select_nodes(relp, top_k=10)
    with pytest.raises(ValueError, match=r"'embed'\] has shape \(257,\); site embed has 65"):
        faithfulness(neurons, sel, test_set)  # SAE scores on the neuron model
    with pytest.raises(ValueError, match="mlp_1"):
        faithfulness(organism, {**sel, "mlp_1": sel["mlp_1"][:-1]}, test_set)
    with pytest.raises(ValueError, match="missing \\['embed'\\]"):
        faithfulness(organism, {k: v for k, v in sel.items() if k != "embed"}, test_set)
    with pytest.raises(ValueError, match="bool"):
        faithfulness(organism, {k: v.float() for k, v in sel.items()}, test_set)
    with pytest.raises(TypeError, match="select_nodes"):
        faithfulness(organism, [1, 2], test_set)


def test_dataset_of_another_tokenizer_is_refused(organism, neox_tokenizer, relp):
    other = tokenize(sva.load("simple", split="test", n=4), neox_tokenizer, mismatched="drop")
    with pytest.raises(ValueError, match="tokenized for"):
        faithfulness(organism, select_nodes(relp, top_k=10), other)


# ---- sweep and plot ------------------------------------------------------------------------------
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


# ---- neuron baseline -----------------------------------------------------------------------------
def test_neuron_model_is_the_plain_model(neurons, test_set):
    assert {d.d_sae for d in neurons.dictionaries.values()} == {neurons.cfg.d_model}
    record: dict = {}
    spliced = neurons.logits(test_set.clean_tokens, record=record)
    plain = neurons.logits(test_set.clean_tokens, spliced=False)
    torch.testing.assert_close(spliced, plain, atol=1e-5, rtol=0)
    assert all(float(n.error.detach().abs().max()) == 0.0 for n in record.values())


def test_neuron_baseline_attributes_and_sweeps(neurons, test_set):
    scores = attribute(neurons, sva.load("across_pp", n=24), "relp", progress=False)
    d = neurons.cfg.d_model
    assert {v.shape for v in scores.sites.values()} == {torch.Size([d + 1])}
    assert all(float(scores.error(s).abs()) == 0.0 for s in scores.sites)
    df = sweep(neurons, {"neurons (relp)": scores}, test_set, node_counts=[0, 100, 13 * (d + 1)],
               progress=False)
    assert df["faithfulness"].tolist() == pytest.approx([0.0, df["faithfulness"][1], 1.0],
                                                        abs=1e-4)


def test_neurons_option_is_checked():
    with pytest.raises(ValueError, match="neurons"):
        load("organism", dictionaries="features")


def test_bare_model_components_ablate(test_set):
    bare = load("organism", dictionaries=False, device="cpu")
    full = {s.name: torch.ones(1, dtype=torch.bool) for s in bare.sites}
    assert faithfulness(bare, full, test_set).value == pytest.approx(1.0, abs=1e-5)
    # the last site replaced by its mean is the empty circuit, whatever runs before it
    all_but_last = {k: torch.tensor([k != "resid_3"]) for k in full}
    assert faithfulness(bare, all_but_last, test_set).value == pytest.approx(0.0, abs=1e-5)
    all_but_resid_0 = {k: torch.tensor([k != "resid_0"]) for k in full}
    assert faithfulness(bare, all_but_resid_0, test_set).value < 0.5


# ---- the organism: a small relp circuit is faithful on every construction ----------------------
@pytest.mark.parametrize("construction", CONSTRUCTIONS)
def test_relp_circuit_is_faithful_on_the_organism(organism, construction):
    scores = attribute(organism, sva.load(construction, n=100), "relp", progress=False)
    test = sva.load(construction, split="test", n=40)
    counts = [25, 50, 100, 200, 400]
    df = sweep(organism, scores, test, node_counts=counts, progress=False)
    reached = df[df["faithfulness"] >= 0.8]
    assert not reached.empty, df[["n_nodes", "faithfulness"]].to_string()
    total = sum(v.numel() for v in scores.sites.values())
    assert reached["n_nodes"].min() <= 0.12 * total  # at most 400 of 3341 nodes


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
