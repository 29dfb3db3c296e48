"""AtP* (Kramár et al. 2024): AtP with the QK fix and GradDrop.

AtP estimates I(n) = Δ(n) · ∂L/∂n. AtP* changes two things:

QK fix. Linearising through an attention softmax misses saturated patterns. For each node n at
(b, p) with activation change Δx_n, and each attention layer a that reads the node's site from
the residual stream (embed: every layer; attn_l/mlp_l/resid_l: layers after l), the node's
*direct* effect on a's queries and keys is computed exactly, with the layer's own maps:

    q'_p = rot_p(norm_q(W_Q · ln1_a(r_a[p] + Δx_n) + b_Q))     (r_a: clean input of layer a)
    k'_p = rot_p(norm_k(W_K · ln1_a(r_a[p] + Δx_n) + b_K))     (GQA: k heads repeated)
    S' = S + cap(q'·k / s) - cap(q·k / s)  on row p (query) or column p (key) only
    query term  Σ_{h,j}      (A'_{h,p,j} - A_{h,p,j}) · ∂L/∂A_{h,p,j},  A' = softmax(S')
    key term    Σ_{h,t≥p,j}  (A'_{h,t,j} - A_{h,t,j}) · ∂L/∂A_{h,t,j}

(queries and keys patched separately, as in the paper). S is the recorded pre-softmax score
(hook_attn_scores: soft-capped by cap, masked causally and by the layer's sliding window, ALiBi
added), so the masks and biases carry over unchanged. The linear estimate of that same path,
Δx_n · u_a[b, p] with u_a = ∂L/∂r_a through layer a's scores only, is taken out of AtP:

    I*(n) = Δ(n) · (g_site - Σ_a u_a) + Σ_a (query term + key term)

GradDrop. Cancellation between paths can hide a node. One forward, then L backward passes (one
per layer, instead of AtP's one): backward pass l multiplies the gradient flowing *into* layer
l's residual contributions (hook_attn_out, hook_mlp_out of block l) by 0, so nodes of layer l
itself get 0 and upstream nodes lose every path through layer l. With I*_l(n) the QK-fixed
estimate under drop l, the score is the paper's Eq. 11,

    c(n) = 1/(L-1) Σ_{l=0}^{L-1} |I*_l(n)|

a magnitude, not signed (Scores.signed is False; aggregation "sum" adds per-position magnitudes).

Covered: QK fix for every node kind (features, error nodes, bare components) and every attention
layer that reads the node's site directly, with standard, rotary (per-layer base) or ALiBi
positions, per-head QK-norm (Gemma-3, Qwen3), grouped-query attention, score soft-capping
(Gemma-2), sliding-window layers and clipped QKV. Not covered: effects on attention patterns
mediated by other nodes (n -> MLP -> queries) stay linear; queries and keys are never patched
jointly (no q×k cross term); the value path and pattern × value cross terms stay linear; models
with full-vector QK-norm (OLMo-2/3), attention sinks, log-n scaling or split attention inputs
get GradDrop only, with a warning. The per-node QK cost is a norm and the query and key
projections per node and layer, plus one softmax over [heads, pos, pos]: dense in the number of
moved nodes. The attention recomputation is circuits/attention.py, shared with RelP* and column.
"""
from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from functools import reduce

import torch
from torch import Tensor

from circuits.attention import (
    AttentionHooks,
    clean_qk,
    node_qk_terms,
    qk_supported,
    queries_keys,
    scaled_scores,
)
from circuits.context import AttributionContext
from circuits.methods.base import Options, SiteScores
from circuits.nodes import MovedNodes, SiteDelta, linear_scores
from saes.sites import Site, attn_out, mlp_out
from saes.splice import SplicedModel

SOFTMAX_BUDGET = 1 << 24  # floats per chunk of per-node [heads, pos, pos] patterns


def score_batch(
    ctx: AttributionContext, options: Options, *, qk_fix: bool = True, grad_drop: bool = True
) -> SiteScores:
    """AtP* scores per site [b, pos, n_nodes] (magnitudes when grad_drop; with both switches
    off this is AtP exactly, which the tests use)."""
    n_layers = ctx.model.cfg.n_layers
    for name, estimates in variant_estimates(ctx, qk_fix=qk_fix, grad_drop=grad_drop):
        if grad_drop:
            yield name, sum(e.abs() for e in estimates) / max(n_layers - 1, 1)
        else:
            yield name, estimates[0]


def variant_estimates(
    ctx: AttributionContext, *, qk_fix: bool = True, grad_drop: bool = True
) -> Iterator[tuple[str, list[Tensor]]]:
    """Per site: the signed QK-fixed estimates I*_l(n) [b, pos, n_nodes], one per GradDrop
    variant (l = 0 .. L-1; a single undropped one without grad_drop). Under drop l the nodes of
    layer l itself (attn_l, mlp_l) get exactly 0, QK terms included: the gradient into them is
    gated, and so is every path through them to a later attention layer."""
    model = ctx.model
    n_layers = model.cfg.n_layers
    qk_layers = list(range(n_layers)) if qk_fix and qk_supported(model) else []
    attn = {a: AttentionHooks.of(a) for a in qk_layers}
    gates = [1.0] * n_layers
    hooks = [
        (point(layer), _gate_hook(gates, layer))
        for layer in range(n_layers) if grad_drop
        for point in (attn_out, mlp_out)
    ]
    ctx.run_clean(record=[n for h in attn.values() for n in (h.input, h.scores, h.pattern)],
                  hooks=hooks, grad=True)
    wanted = ctx.site_hooks + [n for h in attn.values() for n in (h.scores, h.pattern)]
    variants: list[int | None] = list(range(n_layers)) if grad_drop else [None]
    grads: list[dict[str, Tensor | None]] = []  # per variant: hook name -> gradient
    for i, dropped in enumerate(variants):
        for layer in range(n_layers):
            gates[layer] = 0.0 if layer == dropped else 1.0
        variant = ctx.gradients(wanted, retain_graph=i < len(variants) - 1)
        grads.append(dict(zip(wanted, variant, strict=True)))
    acts = ctx.clean
    qk = {a: clean_qk(model, a, acts[h.input]) for a, h in attn.items()}
    # u[v][a]: gradient at layer a's input through its attention scores only, [b, seq, d]
    u = [{a: score_input_grad(model, a, acts[h.input], g[h.scores]) for a, h in attn.items()}
         for g in grads]

    for site in ctx.sites:
        delta = ctx.delta(site)
        reads = [a for a in qk_layers if a >= first_reader(site)]
        # the variant that drops the node's own layer: its gate stops every path, 0 (Eq. 11)
        own = variants.index(site.layer) if grad_drop and site.kind in ("attn", "mlp") else None
        estimates = []
        for v, g in enumerate(grads):
            site_grad = g[site.hook_name]
            if reads and v != own:
                through_scores = reduce(operator.add, [u[v][a] for a in reads])
                site_grad = -through_scores if site_grad is None else site_grad - through_scores
            estimates.append(linear_scores(model, delta, None if v == own else site_grad))
        for a in reads:
            h = attn[a]
            terms = qk_terms(model, delta, a, acts[h.input], *qk[a], acts[h.scores],
                             acts[h.pattern],
                             [None if v == own else g[h.pattern] for v, g in enumerate(grads)])
            for est, term in zip(estimates, terms, strict=True):
                est += term
        yield site.name, estimates


def first_reader(site: Site) -> int:
    """The first attention layer that reads the site from the residual stream."""
    return 0 if site.kind == "embed" else site.layer + 1


def _gate_hook(gates: list[float], layer: int):
    """Identity forward; backward multiplies the gradient by gates[layer] (read at backward)."""

    def hook(x: Tensor, hook) -> Tensor:
        return _Gate.apply(x, gates, layer)

    return hook


class _Gate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, gates: list[float], layer: int) -> Tensor:
        ctx.gates, ctx.layer = gates, layer
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.gates[ctx.layer], None, None


def score_input_grad(
    model: SplicedModel, layer: int, r: Tensor, score_grad: Tensor | None
) -> Tensor:
    """The gradient at a layer's input r [b, seq, d] through its attention scores only: the
    vector-Jacobian product of ∂L/∂S [b, h, seq, seq] through queries and keys, [b, seq, d]."""
    if score_grad is None:
        return torch.zeros_like(r)
    with torch.enable_grad():
        r = r.detach().requires_grad_(True)
        pos = torch.arange(r.shape[1], device=r.device).expand(r.shape[:2])
        q, k = queries_keys(model, layer, r, pos)
        scores = scaled_scores(model, layer, torch.einsum("bqhe,bkhe->bhqk", q, k))
        (grad,) = torch.autograd.grad((scores * score_grad).sum(), r)
    return grad


@torch.no_grad()
def qk_terms(
    model: SplicedModel,
    delta: SiteDelta,
    layer: int,
    r: Tensor,  # [b, seq, d] clean input of the layer
    q: Tensor,  # [b, seq, h, dh] clean queries (clean_qk)
    k: Tensor,  # [b, seq, h, dh] clean keys
    scores: Tensor,  # [b, h, seq, seq] recorded hook_attn_scores
    pattern: Tensor,  # [b, h, seq, seq] recorded hook_pattern
    pattern_grads: Sequence[Tensor | None],  # per variant: ∂L/∂A of this layer [b, h, seq, seq]
) -> list[Tensor]:
    """Per variant: the exact query + key terms of every moved node for one attention layer,
    [b, pos, n_nodes] each (see the module docstring)."""
    b_all, seq = delta.d_error.shape[:2]
    out = [delta.d_error.new_zeros(b_all, seq, delta.n_nodes) for _ in pattern_grads]
    if all(g is None for g in pattern_grads):
        return out
    chunk = max(1, SOFTMAX_BUDGET // (pattern.shape[1] * seq * seq))
    for nodes in MovedNodes.of([delta]).chunks(chunk):
        terms = node_qk_terms(model, layer, nodes.b, nodes.p, nodes.vectors(model), r, q, k,
                              scores, pattern, pattern_grads)
        for est, term in zip(out, terms, strict=True):
            nodes.scatter([est], term, add=True)
    return out
