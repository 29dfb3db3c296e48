"""RelP* : RelP's LRP rules everywhere, AtP*'s exact softmax where attention reads the node.

    I(n) = Δ(n) · R_AH(n) + Σ_a (query term_a(n) + key term_a(n))

R_AH is RelP's propagation coefficient (the family's rules: LN, Identity, Half) computed with
every attention pattern held constant (the AH rule), so no gradient crosses a softmax: it is the
value path and the residual path only. Each attention layer a that reads the node's site from
the residual stream then gets its query and key terms exactly, as AtP*'s QK fix computes them
(circuits/attention.py `node_qk_terms`): the pattern A' of layer a recomputed with the node
added to a's input at the node's position (queries, then keys), (A' - A) · ∂L/∂A_a, where
∂L/∂A_a is read in the same backward pass, with the patterns above a held constant too. Where
the softmax is not saturated the terms are AtP's linear pattern terms to first order; where it
is, they are the patterns' real change.

One backward (patterns are leaves of the clean forward: their gradient comes for free), no
GradDrop, signed scores. Cost: that of RelP, plus per moved node and reading layer the node's
query and key (a norm and two projections) and one softmax over [heads, pos, pos]. With
``rules=()`` this is AtP with the AH rule and the one-hop QK fix. Models whose attention the QK
fix does not cover (attention.qk_supported) get RelP with the AH rule, with a warning.
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuits.attention import AttentionHooks, clean_qk, node_qk_terms, qk_supported
from circuits.context import AttributionContext
from circuits.lrp_rules import rule_hooks, rules_for
from circuits.methods.atp_star import SOFTMAX_BUDGET, first_reader
from circuits.methods.base import RuledOptions, SiteScores
from circuits.nodes import MovedNodes, linear_scores


def score_batch(ctx: AttributionContext, options: RuledOptions) -> SiteScores:
    return relp_star(ctx, options)


def relp_star(ctx: AttributionContext, options: RuledOptions, *, qk_fix: bool = True
              ) -> SiteScores:
    """RelP* scores per site [b, pos, n_nodes]; qk_fix=False gives RelP with the AH rule."""
    model = ctx.model
    n_layers = model.cfg.n_layers
    rules = tuple(r for r in rules_for(model, options.rules) if r != "ah")  # AH: leaves below
    qk_layers = (
        list(range(n_layers)) if qk_fix and qk_supported(model, "relp*", "RelP + AH") else []
    )
    attn = {a: AttentionHooks.of(a) for a in range(n_layers)}
    leaves: dict[str, Tensor] = {}  # hook_pattern -> the leaf the rest of the forward uses
    hooks = rule_hooks(model.transformer, rules) + [
        (attn[a].pattern, pattern_leaf_hook(leaves)) for a in range(n_layers)
    ]
    ctx.run_clean(record=[n for a in qk_layers for n in (attn[a].input, attn[a].scores)],
                  hooks=hooks, grad=True)
    patterns = [attn[a].pattern for a in qk_layers]
    grads = ctx.gradients(ctx.site_hooks, [leaves[n] for n in patterns])
    grad = dict(zip(ctx.site_hooks + patterns, grads, strict=True))
    acts = ctx.clean
    qk = {a: clean_qk(model, a, acts[attn[a].input]) for a in qk_layers}

    deltas = [ctx.delta(s) for s in ctx.sites]
    out = [linear_scores(model, d, grad[s.hook_name])
           for s, d in zip(ctx.sites, deltas, strict=True)]
    # the QK terms, all sites' moved nodes at once per reading layer
    moved = MovedNodes.of(deltas)
    first = torch.tensor([first_reader(s) for s in ctx.sites], device=moved.site.device)
    chunk = max(1, SOFTMAX_BUDGET // (model.cfg.n_heads * ctx.seq * ctx.seq))
    for a in qk_layers:
        h = attn[a]
        readers = moved[first[moved.site] <= a]
        for nodes in readers.chunks(chunk):
            (term,) = node_qk_terms(model, a, nodes.b, nodes.p, nodes.vectors(model),
                                    acts[h.input], *qk[a], acts[h.scores],
                                    leaves[h.pattern].detach(), [grad[h.pattern]])  # [c]
            nodes.scatter(out, term, add=True)
    yield from ((s.name, o) for s, o in zip(ctx.sites, out, strict=True))


def pattern_leaf_hook(store: dict[str, Tensor]):
    """The attention pattern as a leaf: same value, the gradient stops here (the AH rule) and
    ∂L/∂A is read off the leaf."""

    def hook(pattern: Tensor, hook) -> Tensor:
        leaf = pattern.detach().requires_grad_(torch.is_grad_enabled())
        store[hook.name] = leaf
        return leaf

    return hook
