"""Column patching: exact along the node's own position, one exact attention hop to every other
position, RelP after the hop.

Patching a node at (b, p) changes the residual stream at position p in every later block, and the
other positions only through attention reading position p. This method follows that split:

    column   x_a = the residual stream at position p entering block a, computed exactly block by
             block from the node's entry (clean residual + Δ(node)), its attention reading the
             clean keys and values of the other positions (and its own new ones);
    hop_a    every other query row t > p of block a re-attends with position p's new key and
             value (exact softmax): Δz_a[t] = A'_a[t] · V'_a - z_a[t];
    score    Σ_a Σ_{t≠p} Δz_a[t] · R_a[t]  +  [p is the metric's position] (metric(x_L) - metric)

where R_a is RelP's propagation coefficient at hook_z of block a (the family's LRP rules without
AH: after the hop the gradient does cross the later softmaxes; with the patterns frozen instead,
IOI on Gemma-3-270M fell from r 0.91/0.97/0.93 to 0.89/0.89/0.84), read from one backward pass
of the clean run. Exact where the node sits at the metric's position (a node there reaches the
metric only through its column), and exact for a single attention layer followed by linear
maps; otherwise the hops' further effects are linear and hops of different blocks and
positions do not interact (IOI's S1 -> S2 -> END path is where that shows).

Cost: AtP's 2 forward + 1 backward, plus one single-position forward per followed node from its
block to the top (the clean keys and values serve as a cache) and one [heads, pos, pos] softmax
per node and block: about (nodes × blocks above them) token-blocks, exact's cost divided by the
sequence length. The registered method follows columns within a budget of BUDGET × tokens ×
blocks, the nodes that move their residual stream most first, and scores the rest by RelP.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from circuits.forward import Entry, Targets, entry, forward, metric, valid_positions
from circuits.lrp_rules import rule_hooks, rules_for
from circuits.methods.atp_star import (
    attn_names,
    clean_qk,
    qk_supported,
    queries_keys,
    scaled_scores,
)
from circuits.methods.base import Options, SiteScores
from circuits.nodes import SiteDelta, moved_nodes, node_vectors, site_delta
from saes.sites import Site, attn_point, resid_mid
from saes.splice import SplicedModel
from tasks.pairs import Dataset

NODE_CHUNK = 1 << 14  # nodes whose columns are followed at once
# the registered method's budget: followed block applications per (real token × block) of a
# batch; at 5 its CPU time stayed under 3× AtP's on Gemma-3-270M (benchmarks/fidelity.py)
BUDGET = 5.0


def score_batch(model: SplicedModel, batch: Dataset, options: Options) -> SiteScores:
    return column_patching(model, batch, options, budget=BUDGET)


def column_patching(
    model: SplicedModel,
    batch: Dataset,
    options: Options,
    *,
    depth: int | None = None,
    budget: float | None = None,
    frozen_patterns: bool = False,
) -> Iterator[tuple[str, Tensor]]:
    """Column-patching scores per site [b, pos, n_nodes].

    depth: follow each column exactly for at most this many blocks, then score its change
    linearly (R at the next block's input); None follows it to the top. budget: follow columns
    for at most budget × (real tokens of the batch) × n_layers block applications, nodes that
    change their residual stream most (|Δ| / |r|) first; the others get a column of depth 0
    (Δ · R at the block they enter, i.e. RelP); None follows every node. frozen_patterns: R
    with every attention pattern constant (the AH rule); the default lets R through the
    patterns (RelP's gradient of the softmax), which measured better after the hop."""
    cfg = model.cfg
    if not qk_supported(model, "column", "nothing: refusing"):
        raise ValueError(f"method 'column' cannot recompute the attention of {model.name!r} "
                         "(see the warning); use 'relp' or 'exact'")
    n_layers = cfg.n_layers
    sites = model.node_sites
    rules = column_rules(model, options.rules)
    names = {a: attn_names(a) for a in range(n_layers)}
    hooks = rule_hooks(model.transformer, rules) + [
        (names[a]["pattern"], _detach_hook) for a in range(n_layers) if frozen_patterns
    ]
    z_names = [attn_point(a, "z") for a in range(n_layers)]
    entries = {s.name: entry(model, s) for s in sites}
    mids = [resid_mid(e.start) for e in entries.values() if e.hook is not None]
    record = [s.hook_name for s in sites] + z_names + mids + [
        names[a][k] for a in range(n_layers) for k in ("resid", "scores")
    ] + [attn_point(a, "v") for a in range(n_layers)]
    targets = Targets.of(batch)
    base, acts = forward(model, batch.clean_tokens, targets, record=record, hooks=hooks, grad=True)
    linear_tail = depth is not None or budget is not None
    wanted = z_names + ([names[a]["resid"] for a in range(n_layers)] if linear_tail else [])
    grads = torch.autograd.grad(base.sum(), [acts[n] for n in wanted], allow_unused=True)
    grads = [torch.zeros_like(acts[n]) if g is None else g.detach()
             for n, g in zip(wanted, grads, strict=True)]
    grad_z, grad_in = grads[:n_layers], grads[n_layers:]
    acts = {n: t.detach() for n, t in acts.items()}
    base = base.detach()
    clean = [_Clean.of(model, a, acts, names[a], grad_z[a]) for a in range(n_layers)]

    _, patch = forward(model, batch.patch_tokens, targets, record=[s.hook_name for s in sites])
    seq = batch.clean_tokens.shape[1]
    valid = valid_positions(batch, seq)
    last = batch.lengths.to(valid.device) - 1  # [b] the metric's position
    deltas = [site_delta(model, s, acts[s.hook_name], patch[s.hook_name], valid) for s in sites]
    outs = [d.rest.new_zeros(len(valid), seq, d.n_nodes) for d in deltas]
    # every moved node of every site, in chunks; site_id says whose it is
    moved = [moved_nodes(d, None if options.candidates is None else options.candidates[s.name])
             for s, d in zip(sites, deltas, strict=True)]
    site_id = torch.cat([torch.full_like(m[0], i) for i, m in enumerate(moved)])  # [N]
    bn, pn, node, row = (torch.cat([m[j] for m in moved]) for j in range(4))
    follow = torch.ones_like(bn, dtype=torch.bool)  # [N] nodes whose column is followed
    if budget is not None:
        size, cost = _sizes(model, sites, deltas, moved, entries, acts)  # [N], [N]
        units = budget * int(valid.sum()) * n_layers
        order = size.argsort(descending=True)
        follow[order] = cost[order].cumsum(0) <= units
    for start in range(0, len(bn), NODE_CHUNK):
        sl = slice(start, start + NODE_CHUNK)
        ids, b, p = site_id[sl], bn[sl], pn[sl]
        x = deltas[0].rest.new_empty(len(b), cfg.d_model)  # [c, d] each column's residual
        first = torch.empty_like(b)  # [c] the first block each column runs
        for i in ids.unique().tolist():
            mine = ids == i
            vec = node_vectors(model, deltas[i], b[mine], p[mine], row[sl][mine])  # [m, d]
            enter = entries[sites[i].name]
            if enter.hook is None:  # the change enters the residual stream before block start
                x[mine] = acts[enter.resid][b[mine], p[mine]] + vec
                first[mine] = enter.start
            else:  # attn_L of a sequential block: enters resid_mid of block L
                mid = acts[resid_mid(enter.start)][b[mine], p[mine]] + vec
                x[mine] = _mlp_part(model, enter.start, mid)
                first[mine] = enter.start + 1
        # [c] the block each column stops before (then scored linearly, or at the metric)
        top = torch.full_like(first, n_layers) if depth is None else (first + depth).clamp(
            max=n_layers)
        top = torch.where(follow[sl], top, first)
        total = x.new_zeros(len(b))  # [c]
        for a in range(n_layers):
            now = ((first <= a) & (a < top)).nonzero()[:, 0]
            if len(now):
                x[now], hop = _column_block(model, a, x[now], b[now], p[now], clean[a])
                total[now] += hop
        for t in top.unique().tolist():
            done = (top == t).nonzero()[:, 0]
            bd, pd = b[done], p[done]
            if t < n_layers:  # the rest linearly: Δ(column) · R at block t's input
                r_t = acts[names[t]["resid"]]
                total[done] += ((x[done] - r_t[bd, pd]) * grad_in[t][bd, pd]).sum(-1)
                continue
            at_metric = done[pd == last[bd]]  # the column reaches the metric itself
            if len(at_metric):
                be = b[at_metric]
                ends = Targets(torch.ones_like(be), targets.clean[be], targets.patch[be])
                with torch.no_grad():
                    final = metric(model, x[at_metric][:, None], ends)
                total[at_metric] += final - base[be]
        for i in ids.unique().tolist():
            mine = ids == i
            outs[i][b[mine], p[mine], node[sl][mine]] = total[mine]
    yield from ((s.name, o) for s, o in zip(sites, outs, strict=True))


def column_rules(model: SplicedModel, rules: Sequence[str] | None) -> tuple[str, ...]:
    """The LRP rules column patching applies: the given (or the family's) rules without AH,
    which it never applies (patterns frozen only with frozen_patterns=True; see the module
    docstring). attribute() records these in Scores.options."""
    return tuple(r for r in rules_for(model, rules) if r != "ah")


def _detach_hook(pattern: Tensor, hook) -> Tensor:
    """The attention pattern with no gradient through it (the AH rule)."""
    return pattern.detach()


def _sizes(
    model: SplicedModel,
    sites: list[Site],
    deltas: list[SiteDelta],
    moved: list[tuple[Tensor, Tensor, Tensor, Tensor]],
    entries: dict[str, Entry],
    acts: dict[str, Tensor],
) -> tuple[Tensor, Tensor]:
    """Per moved node (sites in order): |Δ| / |clean residual where it enters| [N], and the
    blocks its column runs [N]."""
    n_layers = model.cfg.n_layers
    sizes, costs = [], []
    for site, delta, (b, p, _, row) in zip(sites, deltas, moved, strict=True):
        enter = entries[site.name]
        resid = acts[enter.resid if enter.hook is None
                     else resid_mid(enter.start)]
        first = enter.start if enter.hook is None else enter.start + 1
        for start in range(0, len(b), NODE_CHUNK):
            sl = slice(start, start + NODE_CHUNK)
            vec = node_vectors(model, delta, b[sl], p[sl], row[sl])  # [c, d]
            sizes.append(vec.norm(dim=-1) / resid[b[sl], p[sl]].norm(dim=-1))
        costs.append(torch.full_like(b, max(n_layers - first, 0)))
    empty = torch.zeros(0, device=deltas[0].rest.device)
    return torch.cat(sizes) if sizes else empty, torch.cat(costs)


class _Clean:
    """A block's clean attention state on the batch: rotated queries and keys, values (GQA
    heads repeated) [b, seq, h, dh], scores [b, h, seq, seq]; with R = RelP's coefficient at
    hook_z [b, seq, h, dh]: VR[b, h, t, j] = V[j]·R[t], zR[b, h, t] = z[t]·R[t] and R."""

    def __init__(self, q, k, v, scores, z, grad_z):
        self.q, self.k, self.v, self.scores, self.grad_z = q, k, v, scores, grad_z
        self.VR = torch.einsum("bjhe,bthe->bhtj", v, grad_z)
        self.zR = torch.einsum("bthe,bthe->bht", z, grad_z)

    @classmethod
    def of(cls, model: SplicedModel, layer: int, acts: dict[str, Tensor], names: dict[str, str],
           grad_z: Tensor) -> _Clean:
        q, k = clean_qk(model, layer, acts[names["resid"]])
        v = acts[attn_point(layer, "v")]
        v = v.repeat_interleave(q.shape[2] // v.shape[2], dim=2)
        return cls(q, k, v, acts[names["scores"]], acts[attn_point(layer, "z")],
                   grad_z.detach())


@torch.no_grad()
def _column_block(
    model: SplicedModel, a: int, x: Tensor, b: Tensor, p: Tensor, clean: _Clean
) -> tuple[Tensor, Tensor]:
    """Block a on the columns x [c, d] (position p [c] of example b [c]): (the columns after
    the block [c, d], the hop term of the other rows [c])."""
    block = model.transformer.blocks[a]
    attn = block.attn
    q_new, k_new = queries_keys(model, a, x, p)  # [c, h, dh]
    v_new = _values(model, a, x)  # [c, h, dh]
    z_row = torch.empty_like(q_new)  # [c, h, dh] the column's own attention
    hop = x.new_empty(len(b))  # [c]
    seq = clean.q.shape[1]
    for e in b.unique().tolist():  # nodes of one example share its clean keys and values
        m = (b == e).nonzero()[:, 0]
        pm, cm = p[m], torch.arange(len(m), device=b.device)
        q_e, k_e, v_e, s_e, R_e = (clean.q[e], clean.k[e], clean.v[e], clean.scores[e],
                                   clean.grad_z[e])  # [seq, h, dh] / [h, seq, seq]
        dv = v_new[m] - v_e[pm]  # [m, h, dh]
        # own row: new query against the clean keys, key p replaced by the new one
        raw_new = torch.einsum("che,jhe->chj", q_new[m], k_e)  # [m, h, seq]
        raw_new[cm, :, pm] = torch.einsum("che,che->ch", q_new[m], k_new[m])
        raw_old = torch.einsum("che,jhe->chj", q_e[pm], k_e)
        s_row = s_e[:, pm].transpose(0, 1) + (scaled_scores(model, a, raw_new)
                                              - scaled_scores(model, a, raw_old))
        A_row = torch.softmax(s_row, -1)  # [m, h, seq]
        z_row[m] = (torch.einsum("chj,jhe->che", A_row, v_e)
                    + A_row[cm, :, pm][..., None] * dv)
        # other rows t > p: column p of the scores from the new key, value p the new value
        col_new = torch.einsum("the,che->cht", q_e, k_new[m])  # [m, h, seq(t)]
        col_old = torch.einsum("the,che->cht", q_e, k_e[pm])
        s_all = s_e.expand(len(m), -1, -1, -1).clone()  # [m, h, seq, seq]
        s_all[cm, :, :, pm] += scaled_scores(model, a, col_new) - scaled_scores(model, a, col_old)
        A_all = torch.softmax(s_all, -1)
        # Σ_j A'[t, j] V'[j]·R[t] - z[t]·R[t], per head and row
        per_row = ((A_all * clean.VR[e]).sum(-1) - clean.zR[e]
                   + A_all[cm, :, :, pm] * torch.einsum("che,the->cht", dv, R_e))  # [m, h, t]
        later = torch.arange(seq, device=b.device)[None, :] > pm[:, None]  # [m, t]
        hop[m] = torch.nan_to_num(per_row * later[:, None, :]).sum((1, 2))
    attn_out = torch.einsum("che,hed->cd", z_row, attn.W_O) + attn.b_O
    if model.cfg.use_normalization_before_and_after:
        attn_out = block.ln1_post(attn_out)
    if model.cfg.attn_only:
        return x + attn_out, hop
    if model.cfg.parallel_attn_mlp:
        return x + attn_out + _mlp_out(model, a, x), hop
    return _mlp_part(model, a, x + attn_out), hop


def _values(model: SplicedModel, a: int, x: Tensor) -> Tensor:
    """Values [c, h, dh] (GQA heads repeated) of block a from residual inputs x [c, d]."""
    block = model.transformer.blocks[a]
    attn = block.attn
    grouped = hasattr(attn, "repeat_kv_heads") and not model.cfg.ungroup_grouped_query_attention
    W_V, b_V = (attn._W_V, attn._b_V) if grouped else (attn.W_V, attn.b_V)
    v = torch.einsum("cd,hde->che", block.ln1(x), W_V) + b_V
    if model.cfg.clip_qkv is not None:
        v = v.clamp(-model.cfg.clip_qkv, model.cfg.clip_qkv)
    return v.repeat_interleave(attn.repeat_kv_heads, dim=-2) if grouped else v


def _mlp_out(model: SplicedModel, a: int, x: Tensor) -> Tensor:
    """Block a's MLP contribution (hook_mlp_out) from the residual it reads, [c, d]."""
    block = model.transformer.blocks[a]
    out = block.mlp(block.ln2(x)[:, None])[:, 0]
    if model.cfg.use_normalization_before_and_after:
        out = block.ln2_post(out)
    return out


def _mlp_part(model: SplicedModel, a: int, mid: Tensor) -> Tensor:
    """resid_post of a sequential block from its resid_mid [c, d]."""
    with torch.no_grad():
        return mid + _mlp_out(model, a, mid)
