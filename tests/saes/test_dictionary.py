"""Dictionary.encode_features: some features' activations, equal to encoding all of them."""

from __future__ import annotations

import pytest
import torch

from saes.dictionary import Dictionary


def _dictionary(kind: str, d_in: int = 6, d_sae: int = 10) -> Dictionary:
    gen = torch.Generator().manual_seed(0)
    w = {name: torch.randn(shape, generator=gen) for name, shape in
         (("W_enc", (d_in, d_sae)), ("b_enc", (d_sae,)), ("W_dec", (d_sae, d_in)),
          ("b_dec", (d_in,)))}
    if kind == "identity":
        return Dictionary.identity_of(d_in)
    extra = {"jumprelu": {"threshold": torch.rand(d_sae, generator=gen)},
             "topk": {"k": 3}, "standard": {}}[kind]
    return Dictionary(w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"], **extra)


@pytest.mark.parametrize("kind", ["standard", "jumprelu", "topk", "identity"])
def test_encode_features_equals_encode_then_index(kind):
    d = _dictionary(kind)
    x = torch.randn(2, 5, d.d_in, generator=torch.Generator().manual_seed(1))
    features = torch.tensor([4, 0, 3])
    with torch.no_grad():
        some, every = d.encode_features(x, features), d.encode(x)
    assert some.shape == (2, 5, 3)
    torch.testing.assert_close(some, every[..., features])
    assert bool((every[..., features] != 0).any())  # not vacuous: some of them fire
