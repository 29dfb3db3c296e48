"""AtP (attribution patching): gradient × (patch - clean), for every node at once.

    score(node) = Δ(node) · ∂metric/∂node  at the clean run

One forward + backward of the plain model on the clean batch records the activation x and the
gradient g = ∂metric/∂x at every site hook (one backward for all sites; the splice's gradient
is the identity, so g is also the gradient at the spliced site). One forward of the patch batch
records x_patch. Feature i scores Δf_i · (W_dec[i] · g), the error node Δerr · g, a bare
component Δx · g, computed sparsely over the features that moved (circuits/nodes.py).
Cost: 2 forward + 1 backward per batch, plus encoding both runs at every site.
"""

from __future__ import annotations

from collections.abc import Sequence

from circuits.context import AttributionContext
from circuits.methods.base import Options, SiteScores
from circuits.nodes import linear_scores
from saes.splice import TLHook


def attribution_patching(ctx: AttributionContext, hooks: Sequence[TLHook] = ()) -> SiteScores:
    """AtP scores per site [b, pos, n_nodes]; ``hooks`` change the clean backward (RelP)."""
    ctx.run_clean(hooks=hooks, grad=True)
    grads = ctx.gradients(ctx.site_hooks)
    for site, grad in zip(ctx.sites, grads, strict=True):
        yield site.name, linear_scores(ctx.model, ctx.delta(site), grad)


def score_batch(ctx: AttributionContext, options: Options) -> SiteScores:
    return attribution_patching(ctx)
