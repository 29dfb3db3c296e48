"""LRP rules: forward values bit-identical, gradients changed where (and how) each rule says."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuits.forward import Targets, forward
from circuits.lrp_rules import FAMILIES, RULES, rule_hooks, rules_for
from saes import SplicedModel
from tasks import sva

TOKENS = torch.tensor(
    [[510, 13585, 326, 253, 15071, 751, 310], [510, 5753, 2822, 253, 25455, 403, 1048]]
)


@pytest.fixture(scope="module")
def gated(neox_tokenizer) -> SplicedModel:
    """A tiny Llama/Gemma-style model: RMSNorm, gated SiLU MLP, sequential blocks."""
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=50304, n_ctx=64,
        act_fn="silu", normalization_type="RMS", gated_mlp=True, positional_embedding_type="rotary",
        rotary_dim=8, default_prepend_bos=False, seed=0, initializer_range=0.1,
    )
    model = HookedTransformer(cfg, tokenizer=neox_tokenizer, default_padding_side="right")
    return SplicedModel(model, {}, name="tiny-gated", family="llama", prepend_bos=False)


def grads_at(model: SplicedModel, points: list[str], rules: tuple[str, ...], *, after=()):
    """Metric gradients at hook points (recorded before the rule hooks; ``after``: recorded
    after them, i.e. the tensors the rest of the model uses), and the activations there."""
    data = model.tokenize(sva.generate("across_pp", 3, tokenizer=model.tokenizer))
    store: dict[str, torch.Tensor] = {}

    def keep(x, hook):
        store["after:" + hook.name] = x
        return x

    hooks = rule_hooks(model.transformer, rules) + [(p, keep) for p in after]
    value, acts = forward(model, data.clean_tokens, Targets.of(data), record=points, hooks=hooks,
                      grad=True)
    acts.update(store)
    names = points + ["after:" + p for p in after]
    grads = torch.autograd.grad(value.sum(), [acts[n] for n in names], allow_unused=True)
    grads = [
        torch.zeros_like(acts[n]) if g is None else g for n, g in zip(names, grads, strict=True)
    ]
    return dict(zip(names, grads, strict=True)), {n: acts[n].detach() for n in names}


@pytest.mark.parametrize("rules", [("ln",), ("identity",), ("ah",), ("ln", "identity", "ah")])
def test_rules_keep_logits_bit_identical(tiny: SplicedModel, rules):
    plain = tiny.transformer(TOKENS)
    with torch.enable_grad():
        tl = tiny.transformer
        ruled = tl.run_with_hooks(TOKENS, fwd_hooks=rule_hooks(tl, rules))
    assert torch.equal(ruled, plain)


def test_gated_rules_keep_logits_bit_identical(gated: SplicedModel):
    plain = gated.transformer(TOKENS)
    for rules in [("half",), ("identity", "half"), FAMILIES["llama"]]:
        with torch.enable_grad():
            tl = gated.transformer
            ruled = tl.run_with_hooks(TOKENS, fwd_hooks=rule_hooks(tl, rules))
        assert torch.equal(ruled, plain), rules


def test_ln_rule_equals_gradient_with_the_scale_detached(tiny: SplicedModel):
    """At the last residual site only ln_final lies between it and the metric:
    ∂/∂x [(x - mean x)/σ · w · u] with σ constant = centre(w ⊙ u) / σ, u = W_U[:, patch - clean]."""
    last = "blocks.1.hook_resid_post"
    data = tiny.tokenize(sva.generate("across_pp", 3, tokenizer=tiny.tokenizer))
    grads, acts = grads_at(tiny, [last], ("ln",))
    x = acts[last][torch.arange(3), data.lengths - 1]  # [3, d]
    centred = x - x.mean(-1, keepdim=True)
    sigma = (centred.pow(2).mean(-1, keepdim=True) + tiny.cfg.eps).sqrt()
    W_U, w = tiny.transformer.unembed.W_U.detach(), tiny.transformer.ln_final.w.detach()
    u = W_U[:, data.patch_answer].T - W_U[:, data.clean_answer].T  # [3, d]
    wu = w * u
    expected = (wu - wu.mean(-1, keepdim=True)) / sigma
    got = grads[last][torch.arange(3), data.lengths - 1]
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    plain, _ = grads_at(tiny, [last], ())
    assert not torch.allclose(plain[last][torch.arange(3), data.lengths - 1], expected, atol=1e-4)
    # the gradient at the same site reaching *other* positions is untouched (no norm in between)
    torch.testing.assert_close(grads[last][:, 0], plain[last][:, 0], atol=0, rtol=0)


def test_identity_rule_passes_relevance_through_the_activation(tiny: SplicedModel):
    pre, post = "blocks.1.mlp.hook_pre", "blocks.1.mlp.hook_post"  # no MLP above it
    grads, acts = grads_at(tiny, [pre], ("identity",), after=[post])
    g_post, x = grads["after:" + post], acts[pre]
    ok = x.abs() > 1e-3
    expected = F.gelu(x) / x * g_post
    assert g_post.abs().max() > 0
    torch.testing.assert_close(grads[pre][ok], expected[ok], atol=1e-7, rtol=1e-4)
    # relevance is conserved: pre · grad_pre = post · grad_post
    torch.testing.assert_close((x * grads[pre]).sum(), (F.gelu(x) * g_post).sum(), atol=1e-6,
                               rtol=1e-4)
    plain, _ = grads_at(tiny, [pre], (), after=[post])
    assert not torch.allclose(plain[pre][ok], expected[ok], atol=1e-6)
    # the rule changes nothing above the activation
    torch.testing.assert_close(plain["after:" + post], g_post, atol=0, rtol=0)


def test_half_rule_splits_a_gated_product(gated: SplicedModel):
    mlp = "blocks.1.mlp."
    gate, up, post = mlp + "hook_pre", mlp + "hook_pre_linear", mlp + "hook_post"
    grads, acts = grads_at(gated, [gate, up], ("identity", "half"), after=[post])
    g, a, u = grads["after:" + post], F.silu(acts[gate]), acts[up]
    assert g.abs().max() > 0
    torch.testing.assert_close(grads[up], 0.5 * a * g, atol=1e-7, rtol=1e-4)
    ok = acts[gate].abs() > 1e-3
    torch.testing.assert_close(grads[gate][ok], (0.5 * u * a / acts[gate] * g)[ok], atol=1e-7,
                               rtol=1e-4)
    # each factor carries half the relevance of the product
    rel_gate, rel_up = acts[gate] * grads[gate], u * grads[up]
    torch.testing.assert_close(rel_gate, rel_up, atol=1e-7, rtol=1e-3)
    torch.testing.assert_close(rel_gate + rel_up, a * u * g, atol=1e-7, rtol=1e-3)
    # half alone keeps the activation's own derivative
    only_half, _ = grads_at(gated, [gate], ("half",), after=[post])
    x = acts[gate]
    dsilu = torch.sigmoid(x) * (1 + x * (1 - torch.sigmoid(x)))
    torch.testing.assert_close(only_half[gate], 0.5 * u * dsilu * only_half["after:" + post],
                               atol=1e-7, rtol=1e-4)


def test_ah_rule_freezes_the_attention_pattern(tiny: SplicedModel):
    q = "blocks.1.attn.hook_q"
    frozen, _ = grads_at(tiny, [q, "blocks.1.attn.hook_v"], ("ah",))
    plain, _ = grads_at(tiny, [q], ())
    assert frozen[q].abs().max() == 0 and plain[q].abs().max() > 0
    assert frozen["blocks.1.attn.hook_v"].abs().max() > 0


def test_rule_sets(tiny: SplicedModel, gated: SplicedModel):
    assert rules_for(tiny, None) == ("ln", "identity")
    assert rules_for(gated, None) == ("ln", "identity", "half")
    gemma = SplicedModel(gated.transformer, {}, name="g", family="gemma", prepend_bos=False)
    assert rules_for(gemma, None) == ("identity", "ah")  # measured: lrp_rules.py
    assert rules_for(tiny, ("ah", "ln", "ah")) == ("ah", "ln")
    assert set(RULES) == {"ln", "identity", "half", "ah"}
    with pytest.raises(ValueError, match=r"unknown LRP rule\(s\) \['layernorm'\]"):
        rules_for(tiny, ("layernorm",))
    with pytest.raises(ValueError, match="rule 'half' applies to gated MLPs"):
        rule_hooks(tiny.transformer, ("half",))
    other = SplicedModel(tiny.transformer, {}, name="x", family="mamba", prepend_bos=False)
    with pytest.raises(ValueError, match="no LRP rule set for model family 'mamba'"):
        rules_for(other, None)


def test_the_family_comes_from_the_architecture(neox_tokenizer, gated: SplicedModel):
    """A model whose loader names no family gets its architecture's rules; an architecture
    not in the table is an error that says how to pass rules=."""
    from circuits.lrp_rules import ARCHITECTURES, family_of
    from tests.conftest import tiny_neox

    model = tiny_neox(neox_tokenizer, seed=5)
    unnamed = SplicedModel(model, {}, name="some/model", family=None, prepend_bos=False)
    assert family_of(unnamed) == "neox" and rules_for(unnamed, None) == ("ln", "identity")
    for architecture, family in (("LlamaForCausalLM", "llama"), ("Qwen2ForCausalLM", "qwen"),
                                 ("GPT2LMHeadModel", "gpt2"), ("Gemma2ForCausalLM", "gemma")):
        assert ARCHITECTURES[architecture] == family
    model.cfg.original_architecture = "MambaForCausalLM"
    with pytest.raises(ValueError, match=r"no LRP rule set for architecture 'MambaForCausalLM' "
                                         r"of some/model .*pass rules= .*rules=\('ln', "
                                         r"'identity'\)\) \(--rules ln,identity"):
        rules_for(unnamed, None)
    assert rules_for(unnamed, ("ln",)) == ("ln",)
