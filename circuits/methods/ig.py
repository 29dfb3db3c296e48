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

from circuits.forward import Entry, Targets, entry, forward, valid_positions
from circuits.methods.base import Options, SiteScores
from circuits.nodes import linear_scores, site_delta
from saes.splice import SplicedModel
from tasks.pairs import Dataset


def midpoints(steps: int, device: torch.device | str = "cpu") -> Tensor:
    """α_k = (k + ½) / steps, [steps]."""
    return (torch.arange(steps, device=device, dtype=torch.float32) + 0.5) / steps


def site_gradient(
    model: SplicedModel,
    batch: Dataset,
    enter: Entry,
    resid: Tensor,  # [b, seq, d] clean residual stream entering block enter.start
    x_clean: Tensor,  # [b, seq, d]
    x_patch: Tensor,  # [b, seq, d]
    steps: int,
) -> Tensor:
    """Mean gradient of the metric at one site over the interpolation path, [b, seq, d]."""
    b = x_clean.shape[0]
    alphas = midpoints(steps, x_clean.device).to(x_clean.dtype)  # [steps]
    step = alphas[:, None, None, None] * (x_patch - x_clean)[None]  # [steps, b, seq, d]
    targets = Targets.of(batch).repeat(steps)
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


def score_batch(model: SplicedModel, batch: Dataset, options: Options) -> SiteScores:
    sites = model.node_sites
    entries = {s.name: entry(model, s) for s in sites}
    names = [s.hook_name for s in sites] + [e.resid for e in entries.values()]
    targets = Targets.of(batch)
    _, clean = forward(model, batch.clean_tokens, targets, record=names)
    _, patch = forward(model, batch.patch_tokens, targets, record=[s.hook_name for s in sites])
    valid = valid_positions(batch, batch.clean_tokens.shape[1])
    for site in sites:
        name, enter = site.hook_name, entries[site.name]
        grad = site_gradient(
            model, batch, enter, clean[enter.resid], clean[name], patch[name], options.steps
        )
        delta = site_delta(model, site, clean[name], patch[name], valid)
        yield site.name, linear_scores(model, delta, grad)
