"""Mean ablation: m(∅) against an independent computation, batching, bare components."""

from __future__ import annotations

import pytest
import torch

from circuits.select import full_selection, select_nodes
from evaluation import (
    ablated_metrics,
    faithfulness,
    node_means,
)
from saes import load
from tasks.metrics import logit_diff


def test_empty_circuit_is_the_mean_final_residual(organism, test_set):
    """m(∅) independently: decode is affine, so ablating every node at the last site puts the
    mean patch residual stream there; unembed it at the last position."""
    tl = organism.transformer
    final = f"blocks.{tl.cfg.n_layers - 1}.hook_resid_post"
    _, cache = tl.run_with_cache(test_set.patch_tokens, names_filter=final)
    mean = cache[final].mean(0, keepdim=True).expand(len(test_set), -1, -1)  # one length
    logits = tl.unembed(tl.ln_final(mean))
    expected = float(logit_diff(logits, test_set, "evaluation").mean().detach())
    result = faithfulness(organism, full_selection(organism, False), test_set)
    assert result.m_empty == pytest.approx(expected, abs=1e-4)
    assert result.m_full != pytest.approx(expected, abs=1e-2)


def test_batching_does_not_change_the_metrics(organism, test_set, relp):
    sels = [select_nodes(relp, top_k=k) for k in (0, 20, 70, 200)] + [None]
    means = node_means(organism, test_set)
    big = ablated_metrics(organism, test_set, sels, means=means, batch_size=1000)
    small = ablated_metrics(organism, test_set, sels, means=means, batch_size=7)
    torch.testing.assert_close(big, small, atol=1e-5, rtol=0)
    assert len(set(big.round(decimals=3).tolist())) == len(sels)  # distinct circuits differ


def test_bare_model_components_ablate(test_set):
    bare = load("organism", dictionaries=False, device="cpu")
    full = {s.name: torch.ones(1, dtype=torch.bool) for s in bare.sites}
    assert faithfulness(bare, full, test_set).value == pytest.approx(1.0, abs=1e-5)
    # the last site replaced by its mean is the empty circuit, whatever runs before it
    all_but_last = {k: torch.tensor([k != "resid_3"]) for k in full}
    assert faithfulness(bare, all_but_last, test_set).value == pytest.approx(0.0, abs=1e-5)
    all_but_resid_0 = {k: torch.tensor([k != "resid_0"]) for k in full}
    assert faithfulness(bare, all_but_resid_0, test_set).value < 0.5
