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

where R_a is RelP's propagation coefficient at hook_z of block a (the family's LRP rules, or
COLUMN_RULES' set where that names the family, without AH: after the hop the gradient does cross
the later softmaxes; with the patterns frozen instead, IOI on Gemma-3-270M fell from r
0.91/0.97/0.93 to 0.89/0.89/0.84), read from one backward pass of the clean run. Exact where the
node sits at the metric's position (a node there reaches the metric only through its column),
and exact for a single attention layer followed by linear maps; otherwise the hops' further
effects are linear and hops of different blocks and positions do not interact (IOI's S1 -> S2
-> END path is where that shows).

Cost: AtP's 2 forward + 1 backward, plus one single-position forward per followed node from its
block to the top (the clean keys and values serve as a cache) and one [heads, pos, pos] softmax
per node and block: about (nodes × blocks above them) token-blocks, exact's cost divided by the
sequence length. The registered method follows columns within a budget of BUDGET × tokens ×
blocks, the nodes that move their residual stream most first, and scores the rest by RelP.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from circuits.attention import AttentionHooks, clean_qk, qk_supported, queries_keys, scaled_scores
from circuits.attention import values as attention_values
from circuits.context import AttributionContext
from circuits.forward import Entry, Targets, metric
from circuits.lrp_rules import family_of, rule_hooks, rules_for
from circuits.methods.base import RuledOptions, SiteScores
from circuits.nodes import MovedNodes
from circuits.types import RuleName
from saes.sites import resid_mid
from saes.splice import SplicedModel

NODE_CHUNK = 1 << 14  # nodes whose columns are followed at once
# the registered method's budget: followed block applications per (real token × block) of a
# batch; at 5 its CPU time stayed under 3× AtP's on Gemma-3-270M (benchmarks/fidelity.py)
BUDGET = 5.0


def score_batch(ctx: AttributionContext, options: RuledOptions) -> SiteScores:
    return column_patching(ctx, options, budget=BUDGET)


def column_patching(
    ctx: AttributionContext,
    options: RuledOptions,
    *,
    depth: int | None = None,
    budget: float | None = None,
    frozen_patterns: bool = False,
) -> SiteScores:
    """Column-patching scores per site [b, pos, n_nodes].

    depth: follow each column exactly for at most this many blocks, then score its change
    linearly (R at the next block's input); None follows it to the top. budget: follow columns
    for at most budget × (real tokens of the batch) × n_layers block applications, nodes that
    change their residual stream most (|Δ| / |r|) first; the others get a column of depth 0
    (Δ · R at the block they enter, i.e. RelP); None follows every node. frozen_patterns: R
    with every attention pattern constant (the AH rule); the default lets R through the
    patterns (RelP's gradient of the softmax), which measured better after the hop."""
    model = ctx.model
    cfg = model.cfg
    if not qk_supported(model, "column", "nothing: refusing"):
        raise ValueError(f"method 'column' cannot recompute the attention of {model.name!r} "
                         "(see the warning); use 'relp' or 'exact'")
    n_layers = cfg.n_layers
    sites = ctx.sites
    rules = column_rules(model, options.rules)
    attn = [AttentionHooks.of(a) for a in range(n_layers)]
    hooks = rule_hooks(model.transformer, rules) + [
        (h.pattern, _detach_hook) for h in attn if frozen_patterns
    ]
    entries = ctx.entries
    mids = [resid_mid(e.start) for e in entries.values() if e.hook is not None]
    base = ctx.run_clean(
        record=mids + [n for h in attn for n in (h.z, h.input, h.scores, h.v)],
        hooks=hooks, grad=True)
    linear_tail = depth is not None or budget is not None
    wanted = [h.z for h in attn] + ([h.input for h in attn] if linear_tail else [])
    grads = [torch.zeros_like(ctx.activation(n)) if g is None else g.detach()
             for n, g in zip(wanted, ctx.gradients(wanted), strict=True)]
    grad_z, grad_in = grads[:n_layers], grads[n_layers:]
    acts = ctx.clean
    base = base.detach()
    clean = [_Clean.of(model, a, acts, attn[a], grad_z[a]) for a in range(n_layers)]

    targets = ctx.targets
    last = ctx.batch.lengths.to(ctx.valid.device) - 1  # [b] the metric's position
    deltas = [ctx.delta(s) for s in sites]
    outs = [d.d_error.new_zeros(len(ctx), ctx.seq, d.n_nodes) for d in deltas]
    candidates = options.candidates
    moved = MovedNodes.of(deltas, None if candidates is None else [candidates[s.name]
                                                                    for s in sites])
    follow = torch.ones_like(moved.b, dtype=torch.bool)  # [N] nodes whose column is followed
    if budget is not None:
        size, cost = _sizes(model, moved, [entries[s.name] for s in sites], acts)  # [N], [N]
        units = budget * int(ctx.valid.sum()) * n_layers
        order = size.argsort(descending=True)
        follow[order] = cost[order].cumsum(0) <= units
    for start in range(0, len(moved), NODE_CHUNK):
        nodes = moved[start : start + NODE_CHUNK]
        b, p = nodes.b, nodes.p
        vec = nodes.vectors(model)  # [c, d]
        x = torch.empty_like(vec)  # [c, d] each column's residual
        first = torch.empty_like(b)  # [c] the first block each column runs
        for i, mine in nodes.by_site():
            enter = entries[sites[i].name]
            if enter.hook is None:  # the change enters the residual stream before block start
                x[mine] = acts[enter.resid][b[mine], p[mine]] + vec[mine]
                first[mine] = enter.start
            else:  # attn_L of a sequential block: enters resid_mid of block L
                mid = acts[resid_mid(enter.start)][b[mine], p[mine]] + vec[mine]
                x[mine] = _mlp_part(model, enter.start, mid)
                first[mine] = enter.start + 1
        # [c] the block each column stops before (then scored linearly, or at the metric)
        top = torch.full_like(first, n_layers) if depth is None else (first + depth).clamp(
            max=n_layers)
        top = torch.where(follow[start : start + NODE_CHUNK], top, first)
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
                r_t = acts[attn[t].input]
                total[done] += ((x[done] - r_t[bd, pd]) * grad_in[t][bd, pd]).sum(-1)
                continue
            at_metric = done[pd == last[bd]]  # the column reaches the metric itself
            if len(at_metric):
                be = b[at_metric]
                ends = Targets(torch.ones_like(be), targets.clean[be], targets.patch[be])
                with torch.no_grad():
                    final = metric(model, x[at_metric][:, None], ends)
                total[at_metric] += final - base[be]
        nodes.scatter(outs, total)
    yield from ((s.name, o) for s, o in zip(sites, outs, strict=True))


# Families whose column rules are not their RelP set without AH. Gemma: RelP's set is Identity +
# AH (lrp_rules.py), but column's coefficient after the hop needs LN: on IOI, component level,
# column with LN alone reads r 0.92/0.97/0.93 and without rules 0.80/0.95/0.82 (README "Fidelity
# on Gemma-3-270M"), so column keeps LN + Identity + Half there.
COLUMN_RULES: dict[str, tuple[RuleName, ...]] = {"gemma": ("ln", "identity", "half")}


def column_rules(model: SplicedModel, rules: Sequence[str] | None) -> tuple[RuleName, ...]:
    """The LRP rules column patching applies: the given rules, else COLUMN_RULES' set for the
    model's family, else the family's RelP set; AH left out in every case, as column never
    applies it (patterns frozen only with frozen_patterns=True; see the module docstring).
    attribute() records these in Scores.options."""
    family = family_of(model)
    if rules is None and family in COLUMN_RULES:
        rules = COLUMN_RULES[family]
    return tuple(r for r in rules_for(model, rules) if r != "ah")


def _detach_hook(pattern: Tensor, hook) -> Tensor:
    """The attention pattern with no gradient through it (the AH rule)."""
    return pattern.detach()


def _sizes(
    model: SplicedModel, moved: MovedNodes, entries: list[Entry], acts: dict[str, Tensor]
) -> tuple[Tensor, Tensor]:
    """Per moved node: |Δ| / |clean residual where it enters| [N], and the blocks its column
    runs [N]."""
    n_layers = model.cfg.n_layers
    size = moved.b.new_zeros(len(moved), dtype=moved.deltas[0].d_error.dtype)
    cost = torch.zeros_like(moved.b)
    for start in range(0, len(moved), NODE_CHUNK):
        nodes = moved[start : start + NODE_CHUNK]
        vec = nodes.vectors(model)  # [c, d]
        for i, mine in nodes.by_site():
            enter = entries[i]
            resid = acts[enter.resid if enter.hook is None else resid_mid(enter.start)]
            first = enter.start if enter.hook is None else enter.start + 1
            rows = slice(start, start + len(nodes))  # this chunk's entries; `mine` among them
            size[rows][mine] = (vec[mine].norm(dim=-1)
                                / resid[nodes.b[mine], nodes.p[mine]].norm(dim=-1))
            cost[rows][mine] = max(n_layers - first, 0)
    return size, cost


class _Clean:
    """A block's clean attention state on the batch: rotated queries and keys, values (GQA
    heads repeated) [b, seq, h, dh], scores [b, h, seq, seq]; with R = RelP's coefficient at
    hook_z [b, seq, h, dh]: VR[b, h, t, j] = V[j]·R[t], zR[b, h, t] = z[t]·R[t] and R."""

    def __init__(self, q, k, v, scores, z, grad_z):
        self.q, self.k, self.v, self.scores, self.grad_z = q, k, v, scores, grad_z
        self.VR = torch.einsum("bjhe,bthe->bhtj", v, grad_z)
        self.zR = torch.einsum("bthe,bthe->bht", z, grad_z)

    @classmethod
    def of(cls, model: SplicedModel, layer: int, acts: dict[str, Tensor], hooks: AttentionHooks,
           grad_z: Tensor) -> _Clean:
        q, k = clean_qk(model, layer, acts[hooks.input])
        v = acts[hooks.v]
        v = v.repeat_interleave(q.shape[2] // v.shape[2], dim=2)
        return cls(q, k, v, acts[hooks.scores], acts[hooks.z], grad_z.detach())


@torch.no_grad()
def _column_block(
    model: SplicedModel, a: int, x: Tensor, b: Tensor, p: Tensor, clean: _Clean
) -> tuple[Tensor, Tensor]:
    """Block a on the columns x [c, d] (position p [c] of example b [c]): (the columns after
    the block [c, d], the hop term of the other rows [c])."""
    block = model.block(a)
    attn = block.attn
    q_new, k_new = queries_keys(model, a, x, p)  # [c, h, dh]
    v_new = attention_values(model, a, x)  # [c, h, dh]
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


def _mlp_out(model: SplicedModel, a: int, x: Tensor) -> Tensor:
    """Block a's MLP contribution (hook_mlp_out) from the residual it reads, [c, d]."""
    block = model.block(a)
    out = block.mlp(block.ln2(x)[:, None])[:, 0]
    if model.cfg.use_normalization_before_and_after:
        out = block.ln2_post(out)
    return out


def _mlp_part(model: SplicedModel, a: int, mid: Tensor) -> Tensor:
    """resid_post of a sequential block from its resid_mid [c, d]."""
    with torch.no_grad():
        return mid + _mlp_out(model, a, mid)
