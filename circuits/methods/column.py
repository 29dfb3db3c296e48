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

where R_a is RelP's propagation coefficient at hook_z of block a (the family's LRP rules, every
attention pattern held constant: the AH rule), read from one backward pass of the clean run.
Exact where the node sits at the metric's position (a node there reaches the metric only through
its column), and exact for a single attention layer followed by linear maps; otherwise the hops'
further effects are linear and hops of different blocks do not interact.

Cost: AtP's 2 forward + 1 backward, plus one single-position forward per moved node from its
block to the top (with the clean keys and values as a cache) and one [heads, pos, pos] softmax
per node and block: about (nodes × blocks above them) token-blocks, i.e. roughly exact's cost
divided by the sequence length.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from circuits.lrp_rules import rule_hooks, rules_for
from circuits.methods.atp_star import (
    attn_names,
    clean_qk,
    qk_supported,
    queries_keys,
    scaled_scores,
)
from circuits.methods.base import Options, SiteScores
from circuits.methods.relp_star import _leaf_hook
from circuits.nodes import moved_nodes, node_sites, node_vectors, site_delta
from circuits.runs import Targets, entry, metric, run, valid_positions
from saes.splice import SplicedModel
from tasks.pairs import Dataset

NODE_BUDGET = 1 << 24  # floats per chunk of per-node [heads, pos, pos] scores


def score_batch(model: SplicedModel, batch: Dataset, options: Options) -> SiteScores:
    return column_patching(model, batch, options)


def column_patching(
    model: SplicedModel, batch: Dataset, options: Options, *, depth: int | None = None
) -> Iterator[tuple[str, Tensor]]:
    """Column-patching scores per site [b, pos, n_nodes]. depth: follow each column exactly for
    at most this many blocks, then score its change linearly (RelP + AH gradient at the next
    block's input); None follows it to the top."""
    cfg = model.cfg
    if not qk_supported(model, "column", "nothing: refusing"):
        raise ValueError(f"method 'column' cannot recompute the attention of {model.name!r} "
                         "(see the warning); use 'relp' or 'exact'")
    n_layers = cfg.n_layers
    sites = node_sites(model)
    rules = tuple(r for r in rules_for(model, options.rules) if r != "ah")
    names = {a: attn_names(a) for a in range(n_layers)}
    leaves: dict[str, Tensor] = {}
    hooks = rule_hooks(model.model, rules) + [
        (names[a]["pattern"], _leaf_hook(leaves)) for a in range(n_layers)
    ]
    z_names = [f"blocks.{a}.attn.hook_z" for a in range(n_layers)]
    entries = {s.name: entry(model, s) for s in sites}
    mids = [f"blocks.{e.start}.hook_resid_mid" for e in entries.values() if e.hook is not None]
    record = [s.hook_name for s in sites] + z_names + mids + [
        names[a][k] for a in range(n_layers) for k in ("resid", "scores")
    ] + [f"blocks.{a}.attn.hook_v" for a in range(n_layers)]
    targets = Targets.of(batch)
    base, acts = run(model, batch.clean_tokens, targets, record=record, hooks=hooks, grad=True)
    wanted = z_names + ([names[a]["resid"] for a in range(n_layers)] if depth is not None else [])
    grads = torch.autograd.grad(base.sum(), [acts[n] for n in wanted], allow_unused=True)
    grads = [torch.zeros_like(acts[n]) if g is None else g.detach()
             for n, g in zip(wanted, grads, strict=True)]
    grad_z, grad_in = grads[:n_layers], grads[n_layers:]
    acts = {n: t.detach() for n, t in acts.items()}
    base = base.detach()
    clean = [_Clean.of(model, a, acts, names[a], grad_z[a]) for a in range(n_layers)]

    _, patch = run(model, batch.patch_tokens, targets, record=[s.hook_name for s in sites])
    seq = batch.clean_tokens.shape[1]
    valid = valid_positions(batch, seq)
    last = batch.lengths.to(valid.device) - 1  # [b] the metric's position
    for site in sites:
        delta = site_delta(model, site, acts[site.hook_name], patch[site.hook_name], valid)
        out = delta.rest.new_zeros(len(valid), seq, delta.n_nodes)
        bn, pn, node, row = moved_nodes(
            delta, None if options.candidates is None else options.candidates[site.name])
        enter = entries[site.name]
        chunk = max(1, NODE_BUDGET // (cfg.n_heads * seq * seq))
        for start in range(0, len(bn), chunk):
            sl = slice(start, start + chunk)
            b, p = bn[sl], pn[sl]
            vec = node_vectors(model, delta, b, p, row[sl])  # [c, d]
            if enter.hook is None:  # the change enters the residual stream before block start
                x, first = acts[enter.resid][b, p] + vec, enter.start
                total = torch.zeros_like(vec[:, 0])
            else:  # attn_L of a sequential block: enters resid_mid of block L
                mid = acts[f"blocks.{enter.start}.hook_resid_mid"][b, p] + vec
                x, first = _mlp_part(model, enter.start, mid), enter.start + 1
                total = torch.zeros_like(vec[:, 0])
            top = n_layers if depth is None else min(n_layers, first + depth)
            for a in range(first, top):
                x, hop = _column_block(model, a, x, b, p, clean[a])
                total += hop
            if top < n_layers:  # the rest linearly: Δ(column) · R at block top's input
                r_top = acts[names[top]["resid"]]
                total += ((x - r_top[b, p]) * grad_in[top][b, p]).sum(-1)
                out[b, p, node[sl]] = total
                continue
            at_metric = p == last[b]
            if at_metric.any():
                ends = Targets(torch.ones_like(b[at_metric]), targets.clean[b[at_metric]],
                               targets.patch[b[at_metric]])
                with torch.no_grad():
                    final = metric(model, x[at_metric][:, None], ends)
                total[at_metric] += final - base[b[at_metric]]
            out[b, p, node[sl]] = total
        yield site.name, out


class _Clean:
    """A block's clean attention state on the batch: rotated queries and keys, values (GQA
    heads repeated) [b, seq, h, dh], scores [b, h, seq, seq], z and R at hook_z [b, seq, h, dh]."""

    def __init__(self, q, k, v, scores, z, grad_z):
        self.q, self.k, self.v, self.scores, self.z, self.grad_z = q, k, v, scores, z, grad_z

    @classmethod
    def of(cls, model: SplicedModel, layer: int, acts: dict[str, Tensor], names: dict[str, str],
           grad_z: Tensor) -> _Clean:
        q, k = clean_qk(model, layer, acts[names["resid"]])
        v = acts[f"blocks.{layer}.attn.hook_v"]
        v = v.repeat_interleave(q.shape[2] // v.shape[2], dim=2)
        return cls(q, k, v, acts[names["scores"]], acts[f"blocks.{layer}.attn.hook_z"],
                   grad_z.detach())


@torch.no_grad()
def _column_block(
    model: SplicedModel, a: int, x: Tensor, b: Tensor, p: Tensor, clean: _Clean
) -> tuple[Tensor, Tensor]:
    """Block a on the columns x [c, d] (position p [c] of example b [c]): (the columns after
    the block [c, d], the hop term of the other rows [c])."""
    block = model.model.blocks[a]
    attn = block.attn
    c = torch.arange(len(b), device=b.device)
    q_new, k_new = queries_keys(model, a, x, p)  # [c, h, dh]
    v_new = torch.einsum("cd,hde->che", block.ln1(x), attn.W_V) + attn.b_V  # [c, h, dh]
    q_b, k_b, v_b = clean.q[b], clean.k[b], clean.v[b]  # [c, seq, h, dh]
    K, V = k_b.clone(), v_b.clone()
    K[c, p], V[c, p] = k_new, v_new
    # the column's own row: its new query against the keys with position p replaced
    s_row = clean.scores[b, :, p] + (
        scaled_scores(model, a, torch.einsum("che,cjhe->chj", q_new, K))
        - scaled_scores(model, a, torch.einsum("che,cjhe->chj", q_b[c, p], k_b)))  # [c, h, seq]
    z_row = torch.einsum("chj,cjhe->che", torch.softmax(s_row, -1), V)  # [c, h, dh]
    # every other row: position p's new key (column p of the scores) and value
    s_all = clean.scores[b].clone()  # [c, h, seq, seq]
    s_all[c, :, :, p] += (scaled_scores(model, a, torch.einsum("cthe,che->cht", q_b, k_new))
                          - scaled_scores(model, a, torch.einsum("cthe,che->cht", q_b, k_b[c, p])))
    z_all = torch.einsum("chtj,cjhe->cthe", torch.softmax(s_all, -1), V)  # [c, seq, h, dh]
    seq = z_all.shape[1]
    later = torch.arange(seq, device=b.device)[None, :] > p[:, None]  # [c, seq] rows t > p
    dz = torch.nan_to_num(z_all - clean.z[b]) * later[..., None, None]
    hop = (dz * clean.grad_z[b]).sum((1, 2, 3))  # [c]
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
    block = model.model.blocks[a]
    out = block.mlp(block.ln2(x)[:, None])[:, 0]
    if model.cfg.use_normalization_before_and_after:
        out = block.ln2_post(out)
    return out


def _mlp_part(model: SplicedModel, a: int, mid: Tensor) -> Tensor:
    """resid_post of a sequential block from its resid_mid [c, d]."""
    with torch.no_grad():
        return mid + _mlp_out(model, a, mid)
