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

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from circuits.forward import Hook, Targets, forward, valid_positions
from circuits.methods.base import Options, SiteScores
from circuits.nodes import linear_scores, site_delta
from saes.splice import SplicedModel
from tasks.pairs import Dataset


def clean_gradients(
    model: SplicedModel, batch: Dataset, names: Sequence[str], hooks: Sequence[Hook] = ()
) -> tuple[dict[str, Tensor], dict[str, Tensor | None]]:
    """Clean activations and ∂(Σ metric)/∂activation at hook points, with extra hooks active
    during the forward pass (e.g. LRP rules, which change the backward only)."""
    value, acts = forward(
        model, batch.clean_tokens, Targets.of(batch), record=names, hooks=hooks, grad=True
    )
    grads = torch.autograd.grad(value.sum(), [acts[n] for n in names], allow_unused=True)
    return {n: acts[n].detach() for n in names}, dict(zip(names, grads, strict=True))


def attribution_patching(
    model: SplicedModel, batch: Dataset, options: Options, hooks: Sequence[Hook] = ()
) -> Iterator[tuple[str, Tensor]]:
    """AtP scores per site [b, pos, n_nodes]; ``hooks`` change the clean backward (RelP)."""
    sites = model.node_sites
    names = [s.hook_name for s in sites]
    clean, grads = clean_gradients(model, batch, names, hooks)
    _, patch = forward(model, batch.patch_tokens, Targets.of(batch), record=names)
    valid = valid_positions(batch, batch.clean_tokens.shape[1])
    for site in sites:
        name = site.hook_name
        delta = site_delta(model, site, clean[name], patch[name], valid)
        yield site.name, linear_scores(model, delta, grads[name])


def score_batch(model: SplicedModel, batch: Dataset, options: Options) -> SiteScores:
    return attribution_patching(model, batch, options)
