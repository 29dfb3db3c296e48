"""AttributionContext: one batch prepared once; a non-finite activation fails naming its site."""

from __future__ import annotations

import pytest
import torch

from circuits import attribute
from circuits.context import AttributionContext
from tasks import sva
from tests.conftest import tiny_spliced


def test_deltas_are_encoded_once_and_reused(tiny, data):
    ctx = AttributionContext(tiny, data)
    site = tiny.node_sites[0]
    assert ctx.delta(site) is ctx.delta(site)  # cached, not re-encoded
    with_active = ctx.delta(site, with_active=True)
    assert with_active.active is not None and ctx.delta(site) is with_active
    with pytest.raises(RuntimeError, match="already been made"):
        ctx.run_clean()


def test_nan_activation_fails_with_the_site_named(neox_tokenizer):
    model = tiny_spliced(neox_tokenizer, seed=3)  # its own copy: the weights are changed below
    data = model.tokenize(sva.generate("simple", 4, seed=0, tokenizer=model.tokenizer))
    token = int(data.patch_tokens[0, 1])
    with torch.no_grad():
        model.transformer.W_E[token, 0] = float("nan")  # after the load-time check
    for method in ("atp", "exact", "ig"):
        with pytest.raises(ValueError, match=r"NaN or inf activations at site embed"):
            attribute(model, data, method, progress=False)
