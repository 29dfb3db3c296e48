"""Column patching: exact where it claims to be, RelP at depth 0, the budget, the rules it
records."""

from __future__ import annotations

import pytest
import torch

from circuits import attribute
from circuits.context import AttributionContext
from circuits.methods import column
from circuits.methods.base import RuledOptions
from saes import SplicedModel
from tasks import sva
from tests.circuits.conftest import scores
from tests.circuits.methods.conftest import gemma_like


@pytest.mark.parametrize("kind", ["gemma", "neox-parallel", "neox-sequential-features"])
def test_column_is_exact_at_the_metric_position(kind, gemma, neox_tokenizer):
    """A node at the metric's position reaches the metric only through its own column, which
    column patching computes exactly: equal to exact patching there, for every site."""
    from tests.conftest import tiny_neox, tiny_spliced

    if kind == "gemma":
        model = gemma
    elif kind == "neox-parallel":
        model = SplicedModel(tiny_neox(neox_tokenizer, seed=4), {}, name="p", family="neox",
                             prepend_bos=False)
    else:
        model = tiny_spliced(neox_tokenizer, parallel=False, seed=2)
    data = model.tokenize(sva.generate("within_rc", 3, seed=1, tokenizer=model.tokenizer))
    col = column_scores(model, data, budget=None)
    exact = scores(model, data, "exact")
    last = data.seq_len - 1
    for name in exact:
        assert exact[name][:, last].abs().max() > 1e-3, name
        torch.testing.assert_close(col[name][:, last], exact[name][:, last], atol=2e-5,
                                   rtol=1e-4)


def test_column_is_exact_for_one_attention_layer(neox_tokenizer):
    """One layer whose MLP writes 0, no norm after the attention: every node's effect is its
    column plus one attention hop followed by linear maps, so column patching equals exact."""
    model = gemma_like(neox_tokenizer, layers=1, post_norms=False, seed=3)
    model.transformer.ln_final = torch.nn.Identity()
    with torch.no_grad():
        model.transformer.blocks[0].mlp.W_out.zero_()
        model.transformer.blocks[0].mlp.b_out.zero_()
    data = model.tokenize(sva.generate("across_rc", 4, seed=5, tokenizer=model.tokenizer))
    col = column_scores(model, data, budget=None)
    exact, relp = scores(model, data, "exact"), scores(model, data, "relp*")
    assert exact["embed"][:, :-1].abs().max() > 1e-3  # hops, not only the metric's position
    for name in exact:
        torch.testing.assert_close(col[name], exact[name], atol=2e-5, rtol=1e-4)
    assert not torch.allclose(relp["embed"], exact["embed"], atol=1e-3)


@pytest.mark.parametrize("frozen", [False, True])
def test_column_of_depth_zero_is_relp(gemma, gemma_data, frozen):
    """Columns followed for 0 blocks: the change scored by R at the block it enters, i.e. RelP
    (with the AH rule when patterns are frozen), at every site entering the residual stream
    between blocks (not the last block's, nor attn_L of a sequential block: its column runs
    block L's MLP first)."""
    col = column_scores(gemma, gemma_data, depth=0, frozen_patterns=frozen)
    rules = ("ln", "identity", "half") + (("ah",) if frozen else ())
    relp = scores(gemma, gemma_data, "relp", rules=rules)
    for name in ("embed", "mlp_0", "resid_0"):
        assert relp[name].abs().max() > 1e-4, name
        torch.testing.assert_close(col[name], relp[name], atol=1e-6, rtol=1e-5)


def test_column_budget_follows_the_largest_nodes_first(gemma, gemma_data):
    """An unlimited budget follows every column; budget 0 follows only the columns that run
    no block (depth 0 for the rest); in between, registered 'column' differs from both."""
    full = column_scores(gemma, gemma_data, budget=None)
    huge = column_scores(gemma, gemma_data, budget=1e9)
    none = column_scores(gemma, gemma_data, budget=0.0)
    zero = column_scores(gemma, gemma_data, depth=0)
    some = column_scores(gemma, gemma_data, budget=0.5)
    for name in full:
        torch.testing.assert_close(huge[name], full[name], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(none[name], zero[name], atol=1e-6, rtol=1e-5)
    assert max((some[n] - full[n]).abs().max() for n in full) > 1e-4
    assert max((some[n] - zero[n]).abs().max() for n in full) > 1e-4


def test_column_records_the_rules_it_applies(gemma, gemma_data):
    """Column patching never applies AH (module docstring): an explicit "ah" leaves the scores
    as without it, and Scores.options records the rules without "ah"; on gemma its default is
    COLUMN_RULES' LN + Identity + Half, not RelP's Identity + AH."""
    kwargs = {"aggregation": "none", "per_example": True, "progress": False}
    with_ah = attribute(gemma, gemma_data, "column", rules=("ln", "identity", "ah"), **kwargs)
    without = attribute(gemma, gemma_data, "column", rules=("ln", "identity"), **kwargs)
    assert with_ah.options["rules"] == ["ln", "identity"]
    for name in without.sites:
        torch.testing.assert_close(with_ah.sites[name], without.sites[name], atol=0, rtol=0)
    default = attribute(gemma, gemma_data, "column", **kwargs)
    assert default.options["rules"] == ["ln", "identity", "half"]
    assert attribute(gemma, gemma_data, "relp*", **kwargs).options["rules"][-1] == "ah"


def column_scores(model, data, **kwargs) -> dict:
    """column.column_patching on the whole dataset as one batch, site -> [b, pos, n_nodes]."""
    return dict(column.column_patching(AttributionContext(model, data), RuledOptions(), **kwargs))
