"""RelP* : RelP's LRP rules everywhere, AtP*'s exact softmax where attention reads the node.

    I(n) = Δ(n) · R_AH(n) + Σ_a (query term_a(n) + key term_a(n))

R_AH is RelP's propagation coefficient (the family's rules: LN, Identity, Half) computed with
every attention pattern held constant (the AH rule), so no gradient crosses a softmax: it is the
value path and the residual path only. Each attention layer a that reads the node's site from
the residual stream then gets its query and key terms exactly, as AtP*'s QK fix computes them
(circuits/methods/atp_star.py `qk_terms`): the pattern A' of layer a recomputed with the node
added to a's input at the node's position (queries, then keys), (A' - A) · ∂L/∂A_a, where
∂L/∂A_a is read in the same backward pass, with the patterns above a held constant too. Where
the softmax is not saturated the terms are AtP's linear pattern terms to first order; where it
is, they are the patterns' real change.

One backward (patterns are leaves of the clean forward: their gradient comes for free), no
GradDrop, signed scores. Cost: that of RelP, plus per moved node and reading layer the node's
query and key (a norm and two projections) and one softmax over [heads, pos, pos]. With
``rules=()`` this is AtP with the AH rule and the one-hop QK fix. Models whose attention the QK
fix does not cover (atp_star.qk_supported) get RelP with the AH rule, with a warning.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from circuits.forward import Targets, forward, valid_positions
from circuits.lrp_rules import rule_hooks, rules_for
from circuits.methods.atp_star import (
    SOFTMAX_BUDGET,
    attn_names,
    clean_qk,
    first_reader,
    node_qk_terms,
    qk_supported,
)
from circuits.methods.base import Options, SiteScores
from circuits.nodes import linear_scores, moved_nodes, node_vectors, site_delta
from saes.splice import SplicedModel
from tasks.pairs import Dataset


def score_batch(model: SplicedModel, batch: Dataset, options: Options) -> SiteScores:
    return relp_star(model, batch, options)


def relp_star(
    model: SplicedModel, batch: Dataset, options: Options, *, qk_fix: bool = True
) -> Iterator[tuple[str, Tensor]]:
    """RelP* scores per site [b, pos, n_nodes]; qk_fix=False gives RelP with the AH rule."""
    n_layers = model.cfg.n_layers
    sites = model.node_sites
    rules = tuple(r for r in rules_for(model, options.rules) if r != "ah")  # AH: leaves below
    qk_layers = (
        list(range(n_layers)) if qk_fix and qk_supported(model, "relp*", "RelP + AH") else []
    )
    names = {a: attn_names(a) for a in range(n_layers)}
    leaves: dict[str, Tensor] = {}  # hook_pattern -> the leaf the rest of the forward uses
    hooks = rule_hooks(model.transformer, rules) + [
        (names[a]["pattern"], pattern_leaf_hook(leaves)) for a in range(n_layers)
    ]
    record = [s.hook_name for s in sites] + [
        names[a][k] for a in qk_layers for k in ("resid", "scores")
    ]
    targets = Targets.of(batch)
    value, acts = forward(model, batch.clean_tokens, targets, record=record, hooks=hooks, grad=True)
    site_names = [s.hook_name for s in sites]
    patterns = [names[a]["pattern"] for a in qk_layers]
    grads = torch.autograd.grad(
        value.sum(), [acts[n] for n in site_names] + [leaves[n] for n in patterns],
        allow_unused=True,
    )
    grad = dict(zip(site_names + patterns, grads, strict=True))
    acts = {n: t.detach() for n, t in acts.items()}
    qk = {a: clean_qk(model, a, acts[names[a]["resid"]]) for a in qk_layers}

    _, patch = forward(model, batch.patch_tokens, targets, record=site_names)
    valid = valid_positions(batch, batch.clean_tokens.shape[1])
    deltas = [site_delta(model, s, acts[s.hook_name], patch[s.hook_name], valid) for s in sites]
    out = [linear_scores(model, d, grad[s.hook_name]) for s, d in zip(sites, deltas, strict=True)]
    # the QK terms, all sites' moved nodes at once per reading layer
    moved = [moved_nodes(d, None) for d in deltas]  # per site: (b, p, node, row) [N_s] each
    seq = batch.clean_tokens.shape[1]
    chunk = max(1, SOFTMAX_BUDGET // (model.cfg.n_heads * seq * seq))
    for a in qk_layers:
        n = names[a]
        readers = [i for i, s in enumerate(sites) if first_reader(s) <= a]
        site_id = torch.cat([torch.full_like(moved[i][0], i) for i in readers])  # [N]
        bn, pn, node, row = (torch.cat([moved[i][j] for i in readers]) for j in range(4))
        for start in range(0, len(bn), chunk):
            sl = slice(start, start + chunk)
            ids, b, p = site_id[sl], bn[sl], pn[sl]
            vec = deltas[0].rest.new_empty(len(b), model.cfg.d_model)  # [c, d]
            for i in ids.unique().tolist():
                mine = ids == i
                vec[mine] = node_vectors(model, deltas[i], b[mine], p[mine], row[sl][mine])
            (term,) = node_qk_terms(model, a, b, p, vec, acts[n["resid"]], *qk[a],
                                    acts[n["scores"]], leaves[n["pattern"]].detach(),
                                    [grad[n["pattern"]]])  # [c]
            for i in ids.unique().tolist():
                mine = ids == i
                out[i][b[mine], p[mine], node[sl][mine]] += term[mine]
    yield from ((s.name, o) for s, o in zip(sites, out, strict=True))


def pattern_leaf_hook(store: dict[str, Tensor]):
    """The attention pattern as a leaf: same value, the gradient stops here (the AH rule) and
    ∂L/∂A is read off the leaf."""

    def hook(pattern: Tensor, hook) -> Tensor:
        leaf = pattern.detach().requires_grad_(torch.is_grad_enabled())
        store[hook.name] = leaf
        return leaf

    return hook
