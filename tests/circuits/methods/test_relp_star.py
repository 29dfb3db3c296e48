"""RelP*: identities with RelP and RelP + AH on Gemma-style attention."""

from __future__ import annotations

import torch

from circuits.attention import AttentionHooks, clean_qk
from circuits.context import AttributionContext
from circuits.forward import Targets, forward, valid_positions
from circuits.lrp_rules import rule_hooks, rules_for
from circuits.methods import atp_star, relp_star
from circuits.methods.base import RuledOptions
from circuits.nodes import site_delta
from tests.circuits.conftest import scores
from tests.circuits.methods.conftest import gemma_like


def test_relp_star_without_attention_effect_is_relp(neox_tokenizer, gemma_data):
    """W_Q = W_K = 0: every pattern is constant, so no gradient crosses a softmax, the QK terms
    are exactly 0 and RelP* is RelP; with the real weights they differ."""
    model = gemma_like(neox_tokenizer)
    real = scores(model, gemma_data, "relp*")
    with torch.no_grad():
        for block in model.transformer.blocks:
            block.attn.W_Q.zero_()
            block.attn._W_K.zero_()
    star, relp = scores(model, gemma_data, "relp*"), scores(model, gemma_data, "relp")
    for name in relp:
        torch.testing.assert_close(star[name], relp[name], atol=1e-6, rtol=1e-5)
    assert max((real[n] - star[n]).abs().max() for n in real) > 1e-3


def test_relp_star_without_qk_fix_is_relp_with_the_ah_rule(gemma, gemma_data):
    """Patterns as leaves of the forward (RelP*'s way) = the AH rule's detach (lrp_rules)."""
    for rules in [(), ("ln", "identity", "half")]:
        options = RuledOptions(rules=rules)
        ctx = AttributionContext(gemma, gemma_data)
        off = dict(relp_star.relp_star(ctx, options, qk_fix=False))
        ah = scores(gemma, gemma_data, "relp", rules=(*rules, "ah"))
        for name in ah:
            torch.testing.assert_close(off[name], ah[name], atol=1e-6, rtol=1e-5)


def test_relp_star_terms_are_the_difference_from_relp_with_ah(gemma, gemma_data):
    """RelP* - (RelP + AH) = Σ over reading layers of the QK terms (atp_star.qk_terms with
    ∂L/∂A of the RelP + AH backward): zero at the last residual site (no attention reads it),
    non-zero upstream."""
    rules = tuple(r for r in rules_for(gemma, None) if r != "ah")  # relp*'s: the family's set
    star = scores(gemma, gemma_data, "relp*")
    ah = scores(gemma, gemma_data, "relp", rules=(*rules, "ah"))
    torch.testing.assert_close(star["resid_1"], ah["resid_1"], atol=1e-6, rtol=1e-5)
    assert (star["embed"] - ah["embed"]).abs().max() > 1e-4
    assert (star["resid_0"] - ah["resid_0"]).abs().max() > 1e-4
    # the QK terms, from the helpers, per site
    n_layers = gemma.cfg.n_layers
    names = [AttentionHooks.of(a) for a in range(n_layers)]
    sites = gemma.node_sites
    leaves: dict[str, torch.Tensor] = {}
    hooks = rule_hooks(gemma.transformer, rules) + [
        (n.pattern, relp_star.pattern_leaf_hook(leaves)) for n in names]
    record = [s.hook_name for s in sites] + [p for n in names for p in (n.input, n.scores)]
    targets = Targets.of(gemma_data)
    value, acts = forward(gemma, gemma_data.clean_tokens, targets, record=record, hooks=hooks,
                          grad=True)
    patterns = [leaves[n.pattern] for n in names]
    grad_pattern = torch.autograd.grad(value.sum(), patterns, allow_unused=True)
    acts = {k: v.detach() for k, v in acts.items()}
    _, patch = forward(gemma, gemma_data.patch_tokens, targets, record=[s.hook_name for s in sites])
    valid = valid_positions(gemma_data, gemma_data.seq_len)
    for site in sites:
        delta = site_delta(gemma, site, acts[site.hook_name], patch[site.hook_name], valid)
        expected = torch.zeros_like(star[site.name])
        for a in range(atp_star.first_reader(site), n_layers):
            r = acts[names[a].input]
            (term,) = atp_star.qk_terms(gemma, delta, a, r, *clean_qk(gemma, a, r),
                                        acts[names[a].scores], patterns[a].detach(),
                                        [grad_pattern[a]])
            expected += term
        torch.testing.assert_close(star[site.name] - ah[site.name], expected, atol=1e-5,
                                   rtol=1e-4)
