"""Exact node effects by activation patching, many patched copies per forward pass.

    effect(node at position p) = metric(clean with the node patched at p) - metric(clean)

Patching feature i at (b, p) adds Δf_i · W_dec[i] to the site's activation at position p of
clean example b (decode is affine); patching the error node adds Δerr[b, p]; a bare component
is replaced by its patch-run value (adds Δx[b, p]). Downstream dictionaries need not run: the
splice is the identity in the forward pass. Nodes with Δ = 0 have effect exactly 0 and are
skipped; ``candidates`` restricts which nodes are patched. Patched copies of clean examples are
stacked ``exact_batch`` at a time and run from the site's layer on the cached clean residual
stream, from the first block the patch can change (circuits/forward.py `entry`). For aggregation
"sum", the score is the sum over positions of per-position effects. Cost: one forward (from
after the site) per moved node.
"""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuits.context import AttributionContext
from circuits.forward import Entry, Targets, forward
from circuits.methods.base import ExactOptions, SiteScores
from circuits.nodes import moved_nodes, node_vectors
from saes.splice import SplicedModel


def score_batch(ctx: AttributionContext, options: ExactOptions) -> SiteScores:
    model = ctx.model
    base = ctx.run_clean(record=[e.resid for e in ctx.entries.values()])  # [b]
    candidates = options.candidates
    for site in ctx.sites:
        enter = ctx.entries[site.name]
        delta = ctx.delta(site)
        b, p, node, row = moved_nodes(delta, None if candidates is None else candidates[site.name])
        out = delta.d_error.new_zeros(len(ctx), ctx.seq, delta.n_nodes)
        chunks = range(0, len(b), options.exact_batch)
        for start_i in tqdm(chunks, desc=f"exact {site.name}", leave=False,
                            disable=not options.progress or len(chunks) < 2):
            sl = slice(start_i, start_i + options.exact_batch)
            cb, cp, cnode, crow = b[sl], p[sl], node[sl], row[sl]
            vectors = node_vectors(model, delta, cb, cp, crow)  # [c, d]
            out[cb, cp, cnode] = _patched_metric(
                model, ctx.targets[cb], enter, ctx.activation(enter.resid)[cb], cp, vectors
            ) - base[cb]
        yield site.name, out


def _patched_metric(
    model: SplicedModel,
    targets: Targets,  # of the c copies
    enter: Entry,
    resid: Tensor,  # [c, seq, d] clean residual entering block enter.start, one row per copy
    pos: Tensor,  # [c] position patched in each copy
    vectors: Tensor,  # [c, d] added to the site's activation at that position
) -> Tensor:
    """Metric of c patched copies of clean examples, [c]."""
    arange = torch.arange(len(pos), device=pos.device)

    def add(x: Tensor, hook=None) -> Tensor:
        x = x.clone()
        x[arange, pos] += vectors.reshape(len(pos), *x.shape[2:])  # hook_z: per head
        return x

    if enter.hook is None:
        value, _ = forward(model, add(resid), targets, start_at_layer=enter.start)
    else:
        value, _ = forward(model, resid, targets, hooks=[(enter.hook, add)],
                       start_at_layer=enter.start)
    return value
