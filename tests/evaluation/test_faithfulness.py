"""Faithfulness and completeness on the shipped organism: identities, selections, intact layers,
the neuron baseline, and a small relp circuit on every construction."""

from __future__ import annotations

import math

import pytest
import torch

from circuits import attribute
from circuits.select import select_nodes
from evaluation import (
    ablated_metrics,
    completeness,
    faithfulness,
    sweep,
)
from evaluation.faithfulness import ratio, small_gap
from saes import load
from tasks import sva
from tasks.pairs import tokenize
from tests.evaluation.conftest import all_nodes

CONSTRUCTIONS = ("simple", "within_rc", "across_rc", "across_pp")


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
    table = sweep(neurons, {"neurons (relp)": scores}, test_set, node_counts=[0, 100, 13 * (d + 1)],
               progress=False)
    assert table["faithfulness"].tolist() == pytest.approx([0.0, table["faithfulness"][1], 1.0],
                                                        abs=1e-4)


def test_neurons_option_is_checked():
    with pytest.raises(ValueError, match="neurons"):
        load("organism", dictionaries="features")


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


def test_a_ratio_from_a_small_gap_is_warned_of():
    """The case that printed faithfulness 10.5 from a gap m(M) − m(∅) of 0.044: the value is
    kept, with a warning; an ordinary gap gets none."""
    with pytest.warns(RuntimeWarning, match="comes from a small gap"):
        value = ratio(0.462, 0.0, 0.044)
    assert value == pytest.approx(10.5)
    assert small_gap(0.462, 0.0, 0.044) is not None
    assert small_gap(5.2, -0.25, 5.9) is None


def test_faithfulness_carries_its_warning(organism, test_set, relp):
    result = faithfulness(organism, select_nodes(relp, top_k=40), test_set)
    assert result.warning is None and 0 < result.value < 1.5


HALF = ["embed", "attn_0", "resid_1", "mlp_2", "attn_3", "resid_3"]  # half the organism's sites


@pytest.mark.parametrize("dictionaries", [None, "neurons"])
def test_a_subset_of_sites_full_is_faithful_empty_is_not(dictionaries, test_set):
    """Dictionaries (or the neuron baseline) at half the sites: m(∅) ablates those sites only,
    the others compute; faithfulness(full) = 1, (∅) = 0, and a small relp circuit with its
    edges across the unspliced blocks is faithful."""
    from circuits import build

    model = load("organism", device="cpu", sites=HALF, dictionaries=dictionaries)
    assert set(model.dictionaries) == set(HALF)
    train = sva.load("across_pp", n=32)
    scores = attribute(model, train, "relp", progress=False)
    assert set(scores.sites) == set(HALF)
    full, empty = all_nodes(scores, True), all_nodes(scores, False)
    assert faithfulness(model, full, test_set).value == pytest.approx(1.0, abs=1e-4)
    assert faithfulness(model, empty, test_set).value == pytest.approx(0.0, abs=1e-6)
    circuit = build(scores, top_k=80, model=model, data=train)
    assert circuit.n_edges > 0 and {"resid_1", "resid_3"} <= set(circuit.meta.sites)
    assert faithfulness(model, circuit, test_set).value > 0.5
