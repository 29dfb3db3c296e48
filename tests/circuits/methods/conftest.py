"""Fixtures of the method tests: a tiny random model with Gemma-3-style attention (QK-norm,
grouped-query attention, sliding window, soft-capped scores, per-layer rotary bases)."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from saes import SplicedModel
from tasks import sva
from tasks.pairs import Dataset


def gemma_like(tokenizer, *, layers: int = 2, attn_only: bool = False, post_norms: bool = True,
               seed: int = 0) -> SplicedModel:
    cfg = HookedTransformerConfig(
        n_layers=layers, d_model=32, n_heads=4, n_key_value_heads=2, d_head=8, d_mlp=64,
        d_vocab=50304, n_ctx=64, act_fn="gelu_pytorch_tanh", normalization_type="RMS",
        gated_mlp=True, use_qk_norm=True, use_normalization_before_and_after=post_norms,
        positional_embedding_type="rotary", rotary_dim=8, rotary_base=10000,
        rotary_base_local=100, attn_types=(["local", "global"] * layers)[:layers],
        window_size=2, attn_scores_soft_cap=3.0, attn_only=attn_only, default_prepend_bos=False,
        seed=seed, initializer_range=0.3,
    )
    model = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="right")
    with torch.no_grad():  # QK-norm weights away from 1, so that the norm matters
        for block in model.blocks:
            block.attn.q_norm.w.uniform_(0.5, 2.0)
            block.attn.k_norm.w.uniform_(0.5, 2.0)
    return SplicedModel(model, {}, name="tiny-gemma", family="gemma", prepend_bos=False)


@pytest.fixture(scope="module")
def gemma(neox_tokenizer) -> SplicedModel:
    return gemma_like(neox_tokenizer)


@pytest.fixture(scope="module")
def gemma_data(gemma: SplicedModel) -> Dataset:
    return gemma.tokenize(sva.generate("across_rc", 4, seed=2, tokenizer=gemma.tokenizer))


def patched_pattern(model, data, layer, point, new, p):
    """hook_pattern of `layer` on the clean run with `point` (rotated q or k) at p := new."""
    store: dict[str, torch.Tensor] = {}

    def put(x, hook):
        x = x.clone()
        x[:, p] = new[:, p]
        return x

    def keep(x, hook):
        store["A"] = x
        return x

    with torch.no_grad():
        model.transformer.run_with_hooks(data.clean_tokens, fwd_hooks=[
            (point, put), (f"blocks.{layer}.attn.hook_pattern", keep)])
    return store["A"]
