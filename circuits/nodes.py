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

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from saes.sites import Site
from saes.splice import SplicedModel

CHUNK = 1 << 16  # rows of W_dec gathered at once


@dataclass
class SiteDelta:
    """How a site's nodes move from the clean to the patch run, on one batch.

    A bare site (no dictionary) has no features and one node, the component, which plays the
    part of the error node: its move is ``d_error`` (Δx), as ablation treats it too.
    """

    site: Site
    feature_index: Tensor  # [K, 3] long: (batch, pos, feature) where Δf != 0; [0, 3] when bare
    d_features: Tensor  # [K] Δf at those entries
    d_error: Tensor  # [b, pos, d_in]: Δerr (spliced site) or Δx (bare site)
    n_nodes: int  # d_sae + 1, or 1
    # [A, 3] long (batch, pos, feature) where the clean run's feature gate is open (f != 0;
    # every feature of an identity dictionary); only when asked for (edges)
    active: Tensor | None = None

    @property
    def error_index(self) -> int:
        """Node index of the error node (the component, at a bare site): the last one."""
        return self.n_nodes - 1


def site_delta(
    model: SplicedModel, site: Site, x_clean: Tensor, x_patch: Tensor, valid: Tensor, *,
    with_active: bool = False,
) -> SiteDelta:
    """Node deltas at a site from its clean and patch activations [b, pos, d]; valid [b, pos].
    with_active: also list the clean run's active features (from the same encoding)."""
    dx = (x_patch - x_clean) * valid[..., None]  # [b, pos, d]
    if model.components_only:
        empty = torch.zeros(0, 3, dtype=torch.long, device=dx.device)
        return SiteDelta(site, empty, dx.new_zeros(0), dx, 1, empty if with_active else None)
    dictionary = model.dictionaries[site.name]
    with torch.no_grad():
        f_clean = dictionary.encode(x_clean)  # [b, pos, d_sae]
        active = None
        if with_active:  # ∂f/∂pre is 1 where the gate is open (ReLU, JumpReLU, TopK, identity)
            gate = torch.ones_like(f_clean, dtype=torch.bool) if dictionary.identity else (
                f_clean != 0)
            active = gate.nonzero()  # [A, 3]
        d_f = (dictionary.encode(x_patch) - f_clean) * valid[..., None]  # [b, pos, d_sae]
        del f_clean
        index = d_f.nonzero()  # [K, 3]
        values = d_f[index[:, 0], index[:, 1], index[:, 2]]  # [K]
        del d_f
        err = dx - sparse_decode(dictionary.W_dec, index, values, dx.shape)  # [b, pos, d]
    return SiteDelta(site, index, values, err, dictionary.d_sae + 1, active)


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
    feature row indexes delta.feature_index, or is -1 for the error node / bare component."""
    err_b, err_p = delta.d_error.ne(0).any(-1).nonzero(as_tuple=True)  # [M]
    err_node = torch.full_like(err_b, delta.error_index)
    fb, fp, fi = delta.feature_index.unbind(-1)
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
    vectors = delta.d_error[b, p]  # [N, d]
    is_feature = row >= 0
    if is_feature.any():
        vectors[is_feature] = feature_vectors(model, delta, row[is_feature])
    return vectors


def feature_vectors(model: SplicedModel, delta: SiteDelta, rows: Tensor) -> Tensor:
    """Δf_k · W_dec[i_k] for the entries ``rows`` of delta.feature_index: the change of the site's
    activation when only that feature is patched, [len(rows), d]."""
    W = model.dictionaries[delta.site.name].W_dec.detach()
    return delta.d_features[rows, None] * W[delta.feature_index[rows, 2]]


def linear_scores(model: SplicedModel, delta: SiteDelta, grad: Tensor | None) -> Tensor:
    """Δ(node) · (∂metric/∂node) for every node of a site: [b, pos, n_nodes].

    grad [b, pos, d] is the gradient at the site's activation (None: the metric does not
    depend on it, all scores 0).
    """
    b, pos, _ = delta.d_error.shape
    out = delta.d_error.new_zeros(b, pos, delta.n_nodes)
    if grad is None:
        return out
    grad = grad.detach().reshape(delta.d_error.shape)  # hook_z's heads flattened
    out[..., -1] = (delta.d_error * grad).sum(-1)  # error node, or the bare component
    if len(delta.d_features) == 0:  # a bare site, or no feature moved
        return out
    W = model.dictionaries[delta.site.name].W_dec.detach()
    idx = delta.feature_index
    for start in range(0, len(delta.d_features), CHUNK):
        sl = slice(start, start + CHUNK)
        i = idx[sl]
        dots = (W[i[:, 2]] * grad[i[:, 0], i[:, 1]]).sum(-1)  # [k] W_dec[i] · g
        out[i[:, 0], i[:, 1], i[:, 2]] = delta.d_features[sl] * dots
    return out


@dataclass
class MovedNodes:
    """The moved nodes of several sites in one flat list: node k is node ``node[k]`` of site
    ``deltas[site[k]]`` at (``b[k]``, ``p[k]``), ``row[k]`` its entry of that site's
    feature_index (-1: the error node / bare component)."""

    deltas: list[SiteDelta]
    site: Tensor  # [N] long: index into deltas
    b: Tensor  # [N]
    p: Tensor  # [N]
    node: Tensor  # [N]
    row: Tensor  # [N]

    @classmethod
    def of(cls, deltas: list[SiteDelta], masks: list[Tensor | None] | None = None) -> MovedNodes:
        """Every moved node of ``deltas`` (in each site's ``masks`` entry when given)."""
        masks = masks or [None] * len(deltas)
        moved = [moved_nodes(d, m) for d, m in zip(deltas, masks, strict=True)]
        site = torch.cat([torch.full_like(m[0], i) for i, m in enumerate(moved)])
        b, p, node, row = (torch.cat([m[j] for m in moved]) for j in range(4))
        return cls(deltas, site, b, p, node, row)

    def __len__(self) -> int:
        return len(self.b)

    def __getitem__(self, rows: slice | Tensor) -> MovedNodes:
        return MovedNodes(self.deltas, self.site[rows], self.b[rows], self.p[rows],
                          self.node[rows], self.row[rows])

    def chunks(self, size: int) -> Iterator[MovedNodes]:
        for start in range(0, len(self), size):
            yield self[start : start + size]

    def vectors(self, model: SplicedModel) -> Tensor:
        """The change each node makes to its site's activation when patched alone, [N, d]."""
        d = self.deltas[0].d_error.shape[-1]
        out = self.deltas[0].d_error.new_empty(len(self), d)
        for i, mine in self.by_site():
            out[mine] = node_vectors(model, self.deltas[i], self.b[mine], self.p[mine],
                                     self.row[mine])
        return out

    def by_site(self) -> Iterator[tuple[int, Tensor | slice]]:
        """(site index, its nodes: a bool mask [N], or every node when all are of one site) for
        every site present."""
        present = self.site.unique().tolist()
        if len(present) == 1:
            yield present[0], slice(None)
            return
        for i in present:
            yield i, self.site == i

    def scatter(self, outs: list[Tensor], values: Tensor, *, add: bool = False) -> None:
        """outs[site][b, p, node] = values (or += values), per node; outs [b, pos, n_nodes]."""
        for i, mine in self.by_site():
            index = (self.b[mine], self.p[mine], self.node[mine])
            if add:
                outs[i][index] += values[mine]
            else:
                outs[i][index] = values[mine]
