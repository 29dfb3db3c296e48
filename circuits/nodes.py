"""Nodes of a model on a batch, and their linear scores against a gradient, computed sparsely.

A site with a dictionary has d_sae feature nodes and one error node; at a site of a bare model
(no dictionaries) the node is the component itself. Between the clean and the patch run the
nodes of a site move by

    Δf   = encode(x_patch) - encode(x_clean)        [b, pos, d_sae]   sparse
    Δerr = Δx - Δf @ W_dec                           [b, pos, d_in]

(decode is affine, so Δf @ W_dec + Δerr = Δx). Given a gradient g [b, pos, d_in] at the site's
activation, a linear estimate scores feature i at (b, p) as Δf_i · (W_dec[i] · g) and the error
node as Δerr · g (a bare component: Δx · g). Only the rows of W_dec of features with Δf ≠ 0 are
gathered: no dense [tokens × d_sae] gradient is ever formed. Padded positions get Δ = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saes.sites import Site
from saes.splice import SplicedModel

CHUNK = 1 << 16  # rows of W_dec gathered at once


@dataclass
class SiteDelta:
    """How a site's nodes move from the clean to the patch run, on one batch."""

    site: Site
    index: Tensor  # [K, 3] long: (batch, pos, feature) where Δf != 0; [0, 3] when bare
    df: Tensor  # [K] Δf at those entries
    rest: Tensor  # [b, pos, d_in]: Δerr (spliced site) or Δx (bare site)
    n_nodes: int  # d_sae + 1, or 1

    @property
    def bare(self) -> bool:
        return self.n_nodes == 1


def site_delta(
    model: SplicedModel, site: Site, x_clean: Tensor, x_patch: Tensor, valid: Tensor
) -> SiteDelta:
    """Node deltas at a site from its clean and patch activations [b, pos, d]; valid [b, pos]."""
    dx = (x_patch - x_clean) * valid[..., None]  # [b, pos, d]
    if not model.dictionaries:
        empty = torch.zeros(0, 3, dtype=torch.long, device=dx.device)
        return SiteDelta(site, empty, dx.new_zeros(0), dx, 1)
    dictionary = model.dictionaries[site.name]
    with torch.no_grad():
        df = dictionary.encode(x_patch) - dictionary.encode(x_clean)  # [b, pos, d_sae]
        df = df * valid[..., None]
        index = df.nonzero()  # [K, 3]
        values = df[index[:, 0], index[:, 1], index[:, 2]]  # [K]
        del df
        err = dx - sparse_decode(dictionary.W_dec, index, values, dx.shape)  # [b, pos, d]
    return SiteDelta(site, index, values, err, dictionary.d_sae + 1)


def sparse_decode(W_dec: Tensor, index: Tensor, values: Tensor, shape: torch.Size) -> Tensor:
    """Σ_k values_k · W_dec[index_k[2]] placed at (index_k[0], index_k[1]): [b, pos, d]."""
    b, pos, d = shape
    out = values.new_zeros(b * pos, d)
    rows = index[:, 0] * pos + index[:, 1]  # [K]
    W = W_dec.detach()
    for start in range(0, len(values), CHUNK):
        sl = slice(start, start + CHUNK)
        out.index_add_(0, rows[sl], values[sl, None] * W[index[sl, 2]])
    return out.view(b, pos, d)


def moved_nodes(delta: SiteDelta, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Nodes with Δ ≠ 0 (and in ``mask``): (batch [N], pos [N], node [N], feature row [N]);
    feature row indexes delta.index, or is -1 for the error node / bare component."""
    err_b, err_p = delta.rest.ne(0).any(-1).nonzero(as_tuple=True)  # [M]
    err_node = torch.full_like(err_b, delta.n_nodes - 1)
    fb, fp, fi = delta.index.unbind(-1)
    b = torch.cat([fb, err_b])
    p = torch.cat([fp, err_p])
    node = torch.cat([fi, err_node])
    row = torch.cat([torch.arange(len(fb), device=b.device), torch.full_like(err_b, -1)])
    if mask is not None:
        keep = mask[node] if mask.ndim == 1 else mask[p, node]
        b, p, node, row = b[keep], p[keep], node[keep], row[keep]
    return b, p, node, row


def node_vectors(
    model: SplicedModel, delta: SiteDelta, b: Tensor, p: Tensor, row: Tensor
) -> Tensor:
    """Change of the site's activation at (b, p) when only that node is patched, [N, d]:
    Δf_k · W_dec[i_k] for features (row >= 0), Δerr or Δx for the error node / component."""
    vectors = delta.rest[b, p]  # [N, d]
    is_feature = row >= 0
    if is_feature.any():
        vectors[is_feature] = feature_vectors(model, delta, row[is_feature])
    return vectors


def feature_vectors(model: SplicedModel, delta: SiteDelta, rows: Tensor) -> Tensor:
    """Δf_k · W_dec[i_k] for the entries ``rows`` of delta.index: the change of the site's
    activation when only that feature is patched, [len(rows), d]."""
    W = model.dictionaries[delta.site.name].W_dec.detach()
    return delta.df[rows, None] * W[delta.index[rows, 2]]


def linear_scores(model: SplicedModel, delta: SiteDelta, grad: Tensor | None) -> Tensor:
    """Δ(node) · (∂metric/∂node) for every node of a site: [b, pos, n_nodes].

    grad [b, pos, d] is the gradient at the site's activation (None: the metric does not
    depend on it, all scores 0).
    """
    b, pos, _ = delta.rest.shape
    out = delta.rest.new_zeros(b, pos, delta.n_nodes)
    if grad is None:
        return out
    grad = grad.detach()
    out[..., -1] = (delta.rest * grad).sum(-1)  # error node, or the bare component
    if delta.bare or len(delta.df) == 0:
        return out
    W = model.dictionaries[delta.site.name].W_dec.detach()
    idx = delta.index
    for start in range(0, len(delta.df), CHUNK):
        sl = slice(start, start + CHUNK)
        i = idx[sl]
        dots = (W[i[:, 2]] * grad[i[:, 0], i[:, 1]]).sum(-1)  # [k] W_dec[i] · g
        out[i[:, 0], i[:, 1], i[:, 2]] = delta.df[sl] * dots
    return out
