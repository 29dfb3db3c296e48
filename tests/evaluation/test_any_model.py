"""The whole pipeline on models loaded by name, offline: tiny stand-ins (tests/conftest.py) of
GPT-2 small with gpt2-small-res-jb (some sites spliced: edges span the unspliced blocks), of
Llama-3.1-8B with Llama Scope (grouped-query attention, rotary with Llama 3 scaling, gated MLP,
RMSNorm) and of Qwen2.5-0.5B with neurons (no release exists for it). Node scores by the family's
RelP rules and by AtP, edges, a circuit, faithfulness(full) = 1 and faithfulness(∅) = 0."""

from __future__ import annotations

import pytest
import torch

from circuits import attribute, build
from circuits.lrp_rules import FAMILIES, rules_for
from evaluation import faithfulness
from saes import load
from tasks import sva
from tests.conftest import GPT2_SPEC, LLAMA_SPEC
from tests.evaluation.conftest import all_nodes

CASES = {
    "gpt2": ("gpt2", GPT2_SPEC, "gpt2"),
    "llama": ("meta-llama/Llama-3.1-8B", LLAMA_SPEC, "llama"),
    "qwen": ("Qwen/Qwen2.5-0.5B", "neurons", "qwen"),
}


@pytest.fixture(scope="module", params=list(CASES))
def loaded(request, stand_in_cache):
    name, spec, family = CASES[request.param]
    model = load(name, dictionaries=spec, device="cpu")
    train = sva.load("across_pp", n=8, tokenizer=model.tokenizer)
    test = model.tokenize(sva.load("across_pp", split="test", n=8, tokenizer=model.tokenizer))
    return model, family, train, test


def test_nodes_edges_circuit_and_faithfulness(loaded):
    model, family, train, test = loaded
    assert rules_for(model, None) == FAMILIES[family]  # RelP's rules from the architecture
    relp = attribute(model, train, "relp", progress=False)
    atp = attribute(model, train, "atp", progress=False)
    assert set(relp.sites) == set(model.dictionaries)
    assert any((relp.sites[s] - atp.sites[s]).abs().max() > 1e-6 for s in relp.sites)
    full, empty = all_nodes(relp, True), all_nodes(relp, False)
    assert faithfulness(model, full, test).value == pytest.approx(1.0, abs=1e-4)
    assert faithfulness(model, empty, test).value == pytest.approx(0.0, abs=1e-6)
    circuit = build(relp, top_k=24, model=model, data=train)
    assert circuit.n_nodes > 0 and circuit.n_edges > 0
    assert circuit.meta.model == model.name
    value = faithfulness(model, circuit, test).value
    assert torch.isfinite(torch.tensor(value))


def test_relp_with_no_rules_is_atp(loaded):
    model, _, train, _ = loaded
    atp = attribute(model, train, "atp", progress=False)
    bare = attribute(model, train, "relp", rules=(), progress=False)
    for site in atp.sites:
        torch.testing.assert_close(bare.sites[site], atp.sites[site], atol=1e-6, rtol=1e-5)
