"""`attribute`: aggregation, every registered method on features and components, inputs and
the errors they get."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from circuits import METHODS, attribute
from saes import SplicedModel
from tasks import logit_diff, sva
from tasks.pairs import Dataset
from tests.circuits.conftest import scores


def test_sum_and_mean_aggregate_the_per_position_scores(tiny: SplicedModel, data: Dataset):
    full = scores(tiny, data, "atp")
    summed = attribute(tiny, data, "atp", progress=False)
    assert summed.aggregation == "sum" and not summed.per_example
    for name, s in full.items():
        assert s.shape == (len(data), data.seq_len, tiny.dictionaries[name].d_sae + 1)
        torch.testing.assert_close(summed.sites[name], s.sum(1).mean(0), atol=1e-6, rtol=1e-5)


def test_bare_model_scores_components(bare: SplicedModel, data: Dataset):
    """One node per site and position; exact = patching the component from the patch run."""
    got = scores(bare, data, "exact")
    grad = scores(bare, data, "atp")
    assert set(got) == {s.name for s in bare.sites}
    assert got["mlp_0"].shape == (len(data), data.seq_len, 1)
    tl = bare.transformer
    _, patch_cache = tl.run_with_cache(data.patch_tokens)
    base = logit_diff(tl(data.clean_tokens), data)
    site, p = bare.site("attn_1"), 2

    def hook(x, hook):
        x = x.clone()
        x[:, p] = patch_cache[site.hook_name][:, p]
        return x

    with torch.no_grad():
        effect = logit_diff(tl.run_with_hooks(data.clean_tokens, fwd_hooks=[(site.hook_name,
                                                                              hook)]), data)
    torch.testing.assert_close(got["attn_1"][:, p, 0], effect - base, atol=2e-5, rtol=1e-4)
    assert (grad["embed"] - got["embed"]).abs().max() > 0  # a real approximation


@pytest.mark.parametrize("nodes", ["features", "components"])
def test_every_registered_method_runs(nodes, tiny, bare, data: Dataset):
    model = tiny if nodes == "features" else bare
    width = 65 if nodes == "features" else 1
    for name in METHODS:
        result = attribute(model, data.subset([0, 1]), name, steps=2 if name == "ig" else None,
                           progress=False)
        assert set(result.sites) == {s.name for s in model.node_sites}
        assert result.components_only == (nodes == "components")
        assert result.signed == (name != "atp*")
        assert all(s.shape == (width,) and torch.isfinite(s).all() for s in result.sites.values())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "gradients"}, "unknown method 'gradients'; choose one of exact, atp"),
        ({"method": "ig", "steps": 0}, "steps must be a positive integer, got 0"),
        ({"method": "atp", "candidates": {"mlp_9": torch.tensor([0])}},
         "unknown site(s) ['mlp_9']"),
        ({"method": "atp", "rules": ("ln",)},
         "rules= is not an option of method 'atp'"),
        ({"method": "relp", "rules": ("lnn",)}, "unknown LRP rule(s) ['lnn']"),
        ({"method": "atp", "aggregation": "mean"}, "unknown aggregation 'mean'"),
    ],
)
def test_bad_input_one_line_errors(tiny: SplicedModel, data: Dataset, kwargs, message):
    with pytest.raises(ValueError) as err:
        attribute(tiny, data, progress=False, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_dataset_for_another_tokenizer_is_refused(tiny: SplicedModel, data: Dataset):
    other = dataclasses.replace(data, tokenizer_id="vocab100-abc")
    with pytest.raises(ValueError, match="tokenized for 'vocab100-abc'"):
        attribute(tiny, other, "atp", progress=False)


def test_per_position_scores_need_one_length(tiny: SplicedModel):
    pairs = sva.generate("simple", 2, tokenizer=tiny.tokenizer) + sva.generate(
        "across_pp", 2, tokenizer=tiny.tokenizer)
    message = r"needs prompts of one token length; got lengths \{2, 5\}"
    with pytest.raises(ValueError, match=message):
        attribute(tiny, pairs, "atp", aggregation="none", progress=False)
    # mixed lengths are fine summed over positions, padded positions scoring 0
    summed = attribute(tiny, pairs, "exact", per_example=True, progress=False)
    alone = attribute(tiny, pairs[:2], "exact", per_example=True, progress=False)
    torch.testing.assert_close(summed.sites["mlp_0"][:2], alone.sites["mlp_0"], atol=2e-5,
                               rtol=1e-4)
