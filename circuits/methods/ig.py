"""Integrated gradients along clean → patch, one site at a time (as Sparse Feature Circuits).

For each site s, only that site is interpolated, everything else runs clean:

    x_s(α) = x_clean + α (x_patch - x_clean),   α_k = (k + ½) / steps,  k = 0 .. steps-1
    ḡ      = mean_k ∂metric/∂x_s at x_s(α_k)     (midpoint rule)
    score(node) = Δ(node) · ḡ                    (features: Δf_i · (W_dec[i] · ḡ), sparsely)

Interpolating x is interpolating features and error together, decode being affine. By the
fundamental theorem of calculus the scores of a site sum (over all its nodes and positions) to
metric(x_s := x_patch) - metric(clean), up to the midpoint rule's O(1/steps²) error.
The steps sit in the batch dimension; each site's forward pass starts after the site, from the
cached clean residual stream (circuits/forward.py `entry`). Cost: ~steps × sites × (forward +
backward of the layers after the site) per batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuits.context import AttributionContext
from circuits.forward import Entry, Targets, forward
from circuits.methods.base import IGOptions, SiteScores
from circuits.nodes import linear_scores
from saes.splice import SplicedModel


def midpoints(steps: int, device: torch.device | str = "cpu") -> Tensor:
    """α_k = (k + ½) / steps, [steps]."""
    return (torch.arange(steps, device=device, dtype=torch.float32) + 0.5) / steps


def site_gradient(
    model: SplicedModel,
    targets: Targets,  # of the batch
    enter: Entry,
    resid: Tensor,  # [b, seq, d] clean residual stream entering block enter.start
    x_clean: Tensor,  # [b, seq, d]
    x_patch: Tensor,  # [b, seq, d]
    steps: int,
) -> Tensor:
    """Mean gradient of the metric at one site over the interpolation path, [b, seq, d]."""
    b = x_clean.shape[0]
    alphas = midpoints(steps, x_clean.device).to(x_clean.dtype)  # [steps]
    step = alphas.view(-1, *[1] * x_clean.dim()) * (x_patch - x_clean)[None]  # [steps, b, ...]
    targets = targets.repeat(steps)
    if enter.hook is None:  # the site's change is a change of the residual stream entering
        path = (resid[None] + step).flatten(0, 1).requires_grad_(True)  # [steps * b, seq, d]
        value, _ = forward(model, path, targets, start_at_layer=enter.start, grad=True)
    else:
        path = (x_clean[None] + step).flatten(0, 1).requires_grad_(True)

        def replace(x: Tensor, hook) -> Tensor:
            return path

        value, _ = forward(model, resid.repeat(steps, 1, 1), targets, hooks=[(enter.hook, replace)],
                       start_at_layer=enter.start, grad=True)
    (grad,) = torch.autograd.grad(value.sum(), path)
    return grad.view(steps, b, *grad.shape[1:]).mean(0)


def score_batch(ctx: AttributionContext, options: IGOptions) -> SiteScores:
    ctx.run_clean(record=[e.resid for e in ctx.entries.values()])
    for site in ctx.sites:
        name, enter = site.hook_name, ctx.entries[site.name]
        grad = site_gradient(ctx.model, ctx.targets, enter, ctx.activation(enter.resid),
                             ctx.activation(name), ctx.patch[name], options.steps)
        yield site.name, linear_scores(ctx.model, ctx.delta(site), grad)
