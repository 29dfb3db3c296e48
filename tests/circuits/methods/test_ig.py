"""Integrated gradients: completeness, and that it is not AtP."""

from __future__ import annotations

import pytest
import torch

from saes import SplicedModel
from tasks import logit_diff
from tasks.pairs import Dataset
from tests.circuits.conftest import scores


@pytest.mark.parametrize("blocks", ["parallel", "sequential"])
def test_ig_completeness(blocks, tiny, sequential, data: Dataset):
    """Σ over a site's nodes and positions = metric(site := patch) - metric(clean)."""
    tiny = tiny if blocks == "parallel" else sequential
    data = data.subset([0, 1, 2])
    got = scores(tiny, data, "ig", steps=32, aggregation="sum")
    tl = tiny.transformer
    _, patch_cache = tl.run_with_cache(data.patch_tokens)
    with torch.no_grad():
        base = logit_diff(tl(data.clean_tokens), data)
        for site in tiny.sites:
            patched = tl.run_with_hooks(
                data.clean_tokens,
                fwd_hooks=[(site.hook_name, lambda x, hook: patch_cache[hook.name])],
            )
            effect = logit_diff(patched, data) - base  # [n]
            total = got[site.name].sum(-1)  # [n]
            assert effect.abs().max() > 1e-2, site.name
            torch.testing.assert_close(total, effect, atol=1e-3, rtol=1e-3)


def test_ig_differs_from_atp(tiny: SplicedModel, data: Dataset):
    ig, grad = scores(tiny, data, "ig", steps=4), scores(tiny, data, "atp")
    assert (ig["embed"] - grad["embed"]).abs().max() > 1e-4
