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
moved nodes. circuits/methods/relp_star.py reuses the QK fix (`qk_terms`) without GradDrop.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from transformer_lens.utilities.activation_functions import apply_softcap

from circuits.forward import Targets, forward, valid_positions
from circuits.methods.base import Options, SiteScores
from circuits.nodes import (
    SiteDelta,
    linear_scores,
    moved_nodes,
    node_vectors,
    site_delta,
)
from saes.sites import Site, resid_pre
from saes.splice import SplicedModel
from tasks.pairs import Dataset

SOFTMAX_BUDGET = 1 << 24  # floats per chunk of per-node [heads, pos, pos] patterns


def score_batch(
    model: SplicedModel,
    batch: Dataset,
    options: Options,
    *,
    qk_fix: bool = True,
    grad_drop: bool = True,
) -> SiteScores:
    """AtP* scores per site [b, pos, n_nodes] (magnitudes when grad_drop; with both switches
    off this is AtP exactly, which the tests use)."""
    n_layers = model.cfg.n_layers
    for name, estimates in variant_estimates(
        model, batch, options, qk_fix=qk_fix, grad_drop=grad_drop
    ):
        if grad_drop:
            yield name, sum(e.abs() for e in estimates) / max(n_layers - 1, 1)
        else:
            yield name, estimates[0]


def variant_estimates(
    model: SplicedModel,
    batch: Dataset,
    options: Options,
    *,
    qk_fix: bool = True,
    grad_drop: bool = True,
) -> Iterator[tuple[str, list[Tensor]]]:
    """Per site: the signed QK-fixed estimates I*_l(n) [b, pos, n_nodes], one per GradDrop
    variant (l = 0 .. L-1; a single undropped one without grad_drop). Under drop l the nodes of
    layer l itself (attn_l, mlp_l) get exactly 0, QK terms included: the gradient into them is
    gated, and so is every path through them to a later attention layer."""
    n_layers = model.cfg.n_layers
    sites = model.node_sites
    qk_layers = list(range(n_layers)) if qk_fix and qk_supported(model) else []
    names = {a: attn_names(a) for a in qk_layers}
    record = [s.hook_name for s in sites] + [n for a in qk_layers for n in names[a].values()]
    gates = [1.0] * n_layers
    hooks = [
        (f"blocks.{layer}.{point}", _gate_hook(gates, layer))
        for layer in range(n_layers) if grad_drop
        for point in ("hook_attn_out", "hook_mlp_out")
    ]
    targets = Targets.of(batch)
    value, acts = forward(model, batch.clean_tokens, targets, record=record, hooks=hooks, grad=True)
    wanted = [s.hook_name for s in sites] + [
        names[a][k] for a in qk_layers for k in ("scores", "pattern")
    ]
    variants: list[int | None] = list(range(n_layers)) if grad_drop else [None]
    grads: list[dict[str, Tensor | None]] = []  # per variant: hook name -> gradient
    for i, dropped in enumerate(variants):
        for layer in range(n_layers):
            gates[layer] = 0.0 if layer == dropped else 1.0
        g = torch.autograd.grad(
            value.sum(), [acts[n] for n in wanted], retain_graph=i < len(variants) - 1,
            allow_unused=True,
        )
        grads.append(dict(zip(wanted, g, strict=True)))
    acts = {n: t.detach() for n, t in acts.items()}
    qk = {a: clean_qk(model, a, acts[names[a]["resid"]]) for a in qk_layers}
    # u[v][a]: gradient at layer a's input through its attention scores only, [b, seq, d]
    u = [
        {a: score_input_grad(model, a, acts[names[a]["resid"]], g[names[a]["scores"]])
         for a in qk_layers}
        for g in grads
    ]

    _, patch = forward(model, batch.patch_tokens, targets, record=[s.hook_name for s in sites])
    valid = valid_positions(batch, batch.clean_tokens.shape[1])
    for site in sites:
        name = site.hook_name
        delta = site_delta(model, site, acts[name], patch[name], valid)
        reads = [a for a in qk_layers if a >= first_reader(site)]
        # the variant that drops the node's own layer: its gate stops every path, 0 (Eq. 11)
        own = variants.index(site.layer) if grad_drop and site.kind in ("attn", "mlp") else None
        estimates = []
        for v, g in enumerate(grads):
            site_grad = g[name]
            if reads and v != own:
                through_scores = sum(u[v][a] for a in reads)
                site_grad = -through_scores if site_grad is None else site_grad - through_scores
            estimates.append(linear_scores(model, delta, None if v == own else site_grad))
        for a in reads:
            terms = qk_terms(model, delta, a, acts[names[a]["resid"]], *qk[a],
                             acts[names[a]["scores"]], acts[names[a]["pattern"]],
                             [None if v == own else g[names[a]["pattern"]]
                              for v, g in enumerate(grads)])
            for est, term in zip(estimates, terms, strict=True):
                est += term
        yield site.name, estimates


def qk_supported(model: SplicedModel, method: str = "atp*", fallback: str = "GradDrop only"
                 ) -> bool:
    """Whether the QK fix's recomputation matches this model's attention; warns if not."""
    cfg = model.transformer.cfg
    problems = [
        what for what, bad in (
            ("full-vector QK-norm", cfg.original_architecture in (
                "OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")),
            ("attention sinks", cfg.use_attention_sinks),
            ("log-n attention scaling", cfg.use_logn_attn),
            ("shortformer positions", cfg.positional_embedding_type == "shortformer"),
            ("relative position bias", cfg.positional_embedding_type
             == "relative_positional_bias"),
            ("split attention inputs", cfg.use_attn_in or cfg.use_split_qkv_input),
            ("dynamic NTK rotary", cfg.use_dynamic_ntk_rope),
            ("4-bit weights", cfg.load_in_4bit),
        ) if bad
    ]
    if problems:
        warnings.warn(
            f"{method}: QK fix not supported with {', '.join(problems)}; using {fallback}",
            stacklevel=3,
        )
    return not problems


def attn_names(layer: int) -> dict[str, str]:
    """Hook points the QK fix reads for one attention layer."""
    attn = f"blocks.{layer}.attn."
    return {
        "resid": resid_pre(layer),  # the layer's input r_a [b, seq, d]
        "scores": attn + "hook_attn_scores",  # [b, h, seq, seq]: masked, capped, pre-softmax
        "pattern": attn + "hook_pattern",  # [b, h, seq, seq]
    }


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


def queries_keys(model: SplicedModel, layer: int, r: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
    """Queries and keys of a layer, as its attention scores use them, from residual inputs
    r [..., d] at positions pos [...]: (q, k), each [..., h, d_head] (GQA: k heads repeated).

    ln1, the projections, per-head QK-norm, clipping and the layer's rotary embedding (its own
    base: Gemma's local and global layers differ), as transformer_lens's attention computes them.
    """
    cfg = model.transformer.cfg
    block = model.transformer.blocks[layer]
    attn = block.attn
    x = block.ln1(r)
    q = torch.einsum("...d,hde->...he", x, attn.W_Q) + attn.b_Q  # [..., h, dh]
    grouped = hasattr(attn, "repeat_kv_heads") and not cfg.ungroup_grouped_query_attention
    W_K, b_K = (attn._W_K, attn._b_K) if grouped else (attn.W_K, attn.b_K)
    k = torch.einsum("...d,hde->...he", x, W_K) + b_K  # [..., h_kv, dh]
    if cfg.use_qk_norm:
        q, k = attn.q_norm(q), attn.k_norm(k)  # RMSNorm over d_head, per head
    if cfg.clip_qkv is not None:
        q, k = q.clamp(-cfg.clip_qkv, cfg.clip_qkv), k.clamp(-cfg.clip_qkv, cfg.clip_qkv)
    if cfg.positional_embedding_type == "rotary":
        q, k = _rotate(model, layer, q, pos), _rotate(model, layer, k, pos)
    if grouped:
        k = k.repeat_interleave(attn.repeat_kv_heads, dim=-2)
    return q, k


def _rotate(model: SplicedModel, layer: int, x: Tensor, pos: Tensor) -> Tensor:
    """Rotary embedding of x [..., h, d_head] at positions pos [...]."""
    attn = model.transformer.blocks[layer].attn
    rd = model.transformer.cfg.rotary_dim
    x_rot, x_pass = x[..., :rd], x[..., rd:]
    cos = attn.rotary_cos[pos].unsqueeze(-2).to(x.dtype)  # [..., 1, rd]
    sin = attn.rotary_sin[pos].unsqueeze(-2).to(x.dtype)
    return torch.cat([x_rot * cos + attn.rotate_every_two(x_rot) * sin, x_pass], dim=-1)


def scaled_scores(model: SplicedModel, layer: int, raw: Tensor) -> Tensor:
    """Scaled and soft-capped query·key dot products (before masks and position biases)."""
    attn = model.transformer.blocks[layer].attn
    return apply_softcap(raw / attn.attn_scale, model.transformer.cfg.attn_scores_soft_cap)


def clean_qk(model: SplicedModel, layer: int, r: Tensor) -> tuple[Tensor, Tensor]:
    """Clean queries and keys [b, seq, h, d_head] of a layer from its input r [b, seq, d]."""
    with torch.no_grad():
        pos = torch.arange(r.shape[1], device=r.device).expand(r.shape[:2])
        return queries_keys(model, layer, r, pos)


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
    b_all, seq = delta.rest.shape[:2]
    out = [delta.rest.new_zeros(b_all, seq, delta.n_nodes) for _ in pattern_grads]
    if all(g is None for g in pattern_grads):
        return out
    bn, pn, node, row = moved_nodes(delta, None)
    chunk = max(1, SOFTMAX_BUDGET // (pattern.shape[1] * seq * seq))
    for start in range(0, len(bn), chunk):
        sl = slice(start, start + chunk)
        b, p = bn[sl], pn[sl]
        vec = node_vectors(model, delta, b, p, row[sl])  # [c, d]
        terms = node_qk_terms(model, layer, b, p, vec, r, q, k, scores, pattern, pattern_grads)
        for est, term in zip(out, terms, strict=True):
            est[b, p, node[sl]] += term
    return out


@torch.no_grad()
def node_qk_terms(
    model: SplicedModel,
    layer: int,
    b: Tensor,  # [c] example of each node
    p: Tensor,  # [c] its position
    vec: Tensor,  # [c, d] the change it makes to the layer's input at (b, p)
    r: Tensor,  # [b, seq, d] clean input of the layer
    q: Tensor,  # [b, seq, h, dh] clean queries (clean_qk)
    k: Tensor,  # [b, seq, h, dh] clean keys
    scores: Tensor,  # [b, h, seq, seq] recorded hook_attn_scores
    pattern: Tensor,  # [b, h, seq, seq] recorded hook_pattern
    pattern_grads: Sequence[Tensor | None],  # per variant: ∂L/∂A [b, h, seq, seq]
) -> list[Tensor]:
    """Per variant: query + key term of each of c nodes for one attention layer, [c]. Nodes of
    one example share its clean queries, keys and scores (no per-node copies of them)."""
    q_new, k_new = queries_keys(model, layer, r[b, p] + vec, p)  # [c, h, dh]
    out = [vec.new_zeros(len(b)) for _ in pattern_grads]
    if all(g is None for g in pattern_grads):
        return out
    for e in b.unique().tolist():
        m = (b == e).nonzero()[:, 0]
        pm, cm = p[m], torch.arange(len(m), device=b.device)
        q_e, k_e, s_e, A_e = q[e], k[e], scores[e], pattern[e]  # [seq, h, dh] / [h, seq, seq]
        # query: row p, [m, h, seq]
        ds = (scaled_scores(model, layer, torch.einsum("che,jhe->chj", q_new[m], k_e))
              - scaled_scores(model, layer, torch.einsum("che,jhe->chj", q_e[pm], k_e)))
        dA_q = torch.nan_to_num(torch.softmax(s_e[:, pm].transpose(0, 1) + ds, dim=-1)
                                - A_e[:, pm].transpose(0, 1))
        # key: column p of every row (masked entries stay -inf), [m, h, seq, seq]
        ds_col = (scaled_scores(model, layer, torch.einsum("the,che->cht", q_e, k_new[m]))
                  - scaled_scores(model, layer, torch.einsum("the,che->cht", q_e, k_e[pm])))
        s_new = s_e.expand(len(m), -1, -1, -1).clone()
        s_new[cm, :, :, pm] += ds_col
        dA_k = torch.nan_to_num(torch.softmax(s_new, dim=-1) - A_e)
        for o, grad in zip(out, pattern_grads, strict=True):
            if grad is not None:
                G = grad[e]  # [h, seq, seq]
                o[m] = ((dA_q * G[:, pm].transpose(0, 1)).sum((-1, -2))
                        + (dA_k * G).sum((-1, -2, -3)))
    return out
