"""Edge attribution between the nodes of connected sites, as Sparse Feature Circuits defines it.

The effect of upstream node u on the metric m through downstream node d, every other path cut:

    w(u → d) = Σ_positions Δu · ∂/∂u [ g_d · d ]          averaged over examples

d is the downstream node's value as a function of the upstream site's activation with the other
sites of the block held at their clean values (stop-gradient), g_d = ∂m/∂d its gradient at the
clean run (held constant), Δu = patch − clean the upstream node's move. For a feature i of a
downstream site D, d = f_i(x_D) (through D's encoder: gate_i · W_enc[:, i]) and g_d = W_dec[i] · g;
for D's error node d = x_D − x̂_D; for a bare component, d = x_D. Summing a node's incoming
edges over all its upstream nodes gives g_d · (∂d/∂x_D) · Δx_D: its own node score wherever d is
linear in the upstream sites (tests/circuits/test_edges.py checks this on a linear toy).

Structure from the model config (saes.sites.upstream): with parallel blocks (Pythia)
embed / resid_{L-1} → attn_L, mlp_L, resid_L and attn_L, mlp_L → resid_L; sequential blocks add
attn_L → mlp_L. resid_L = resid_{L-1} + attn_L + mlp_L, so every edge into a resid site has the
identity as its Jacobian (checked on each batch); edges into attn_L / mlp_L take one
vector-Jacobian product through that block's sublayer. Nodes of the last sites (those no other
site reads; resid_{n-1}) get an edge to the metric: their node score Δu · g.

Methods: ``atp`` uses g at the clean run and the clean Jacobian. ``relp`` the same with the LRP
rule hooks active (for g and for the block's backward: the LRP-changed backward pass). ``ig``, as
Sparse Feature Circuits does, uses as g_d the integrated gradient ḡ at D (mean over the
clean → patch path of D alone, the one the ig node scores use) and the clean Jacobian. Any other
method gets the edges of the method its registry record names (``METHODS[m].edges``: atp for
exact and atp*, relp for relp* and column). Each batch is one AttributionContext
(circuits/context.py), as for node attribution.

Speed: never one backward per downstream node. Into attn_L: one forward of block L per batch,
then one batched vector-Jacobian product (``is_grads_batched``, one row per downstream node,
chunked) for all its selected nodes. Into mlp_L: the MLP works token by token, so one batch row
per (downstream node, token) where the cotangent is non-zero (a feature is active on few tokens),
through one forward and backward of the MLP on just those rows. Into resid_L: no backward at all
(identity). Downstream cotangents and upstream dot products are sparse: only the W_enc columns /
W_dec rows of selected or active features are gathered. Cost per batch: the two encodings of
every site that node attribution also pays, plus Σ_downstream nodes × (one block backward).

Positions. aggregation "sum" (the scores' [n_nodes] masks): a node stands for all its positions,
d summed over positions and u over positions (as SFC). "none" ([pos, n_nodes] masks): a node is
(position, node) and edges are kept per position pair; the Jacobian decides which pairs exist:
into resid and mlp sites only from the same position, into attn sites from any earlier position.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuits import distributed
from circuits.context import AttributionContext
from circuits.forward import forward
from circuits.lrp_rules import rule_hooks, rules_for
from circuits.methods import IGOptions, Options, RuledOptions
from circuits.methods import method as method_record
from circuits.methods.ig import site_gradient
from circuits.nodes import SiteDelta, linear_scores
from circuits.scores import read_tensors, write_tensors
from circuits.select import Selection, check_selection
from circuits.types import Aggregation
from saes.sites import Site, attn_out, metric_readers, resid_mid, resid_pre, spliced_upstream
from saes.splice import SplicedModel, TLHook
from tasks.pairs import Dataset, PromptPair

log = logging.getLogger(__name__)

METRIC = "metric"  # the name of the metric node and of its pseudo-site
CHUNK_FLOATS = 1 << 23  # floats of a [N, b, pos, d] cotangent chunk (32 MB)
_HEADER_KEY = "circuits.edges"


# ---- the result ------------------------------------------------------------------------------
@dataclass
class EdgeScores:
    """Edge weights among selected nodes, averaged over examples.

    ``nodes[site]`` lists the selected nodes of a site as flat indices into that site's score
    tensor of shape ``shapes[site]`` ([n_nodes]: node index; [pos, n_nodes]: pos·n_nodes + node).
    ``weights[(up, down)]`` is [len(nodes[down]), len(nodes[up])]; ``metric[site]`` is
    [len(nodes[site])], the edges from the last sites' nodes to the metric.
    """

    method: str
    model: str
    aggregation: Aggregation
    n_examples: int
    shapes: dict[str, tuple[int, ...]]  # site -> score shape of the site
    nodes: dict[str, Tensor]  # site -> long [n_selected]
    weights: dict[tuple[str, str], Tensor]  # (up, down) -> [n_down, n_up]
    metric: dict[str, Tensor]  # last site -> [n_selected]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def n_edges(self) -> int:
        """Number of non-zero edges."""
        return int(sum(int(w.count_nonzero()) for w in self.weights.values())) + int(
            sum(int(w.count_nonzero()) for w in self.metric.values())
        )

    def edges(self) -> Iterator[tuple[str, int, str, int | None, float]]:
        """(up site, up flat index, down site or METRIC, down flat index or None, weight) for
        every non-zero edge."""
        for (up, down), w in self.weights.items():
            i, j = w.nonzero(as_tuple=True)
            for d, u, value in zip(self.nodes[down][i].tolist(), self.nodes[up][j].tolist(),
                                   w[i, j].tolist(), strict=True):
                yield up, u, down, d, value
        for site, w in self.metric.items():
            (j,) = w.nonzero(as_tuple=True)
            for u, value in zip(self.nodes[site][j].tolist(), w[j].tolist(), strict=True):
                yield site, u, METRIC, None, value

    def __repr__(self) -> str:
        counts = {k: len(v) for k, v in self.nodes.items() if len(v)}
        return (
            f"EdgeScores(method={self.method!r}, model={self.model!r}, aggregation="
            f"{self.aggregation!r}, n_examples={self.n_examples}, nodes={counts}, "
            f"n_edges={self.n_edges})"
        )

    def save(self, path: str | Path) -> Path:
        """One .safetensors file (tensors + a JSON header), no pickle; returns the path."""
        meta = {
            "method": self.method, "model": self.model, "aggregation": self.aggregation,
            "n_examples": self.n_examples, "options": self.options,
            "shapes": {k: list(v) for k, v in self.shapes.items()},
            "pairs": [list(p) for p in self.weights], "metric_sites": list(self.metric),
        }
        tensors = {f"nodes/{k}": v for k, v in self.nodes.items()}
        tensors |= {f"weights/{u}/{d}": w for (u, d), w in self.weights.items()}
        tensors |= {f"metric/{k}": w for k, w in self.metric.items()}
        return write_tensors(path, tensors, _HEADER_KEY, meta)

    @classmethod
    def load(cls, path: str | Path) -> EdgeScores:
        meta, t = read_tensors(path, _HEADER_KEY, "EdgeScores")
        return cls(
            method=meta["method"], model=meta["model"], aggregation=meta["aggregation"],
            n_examples=meta["n_examples"], options=meta["options"],
            shapes={k: tuple(v) for k, v in meta["shapes"].items()},
            nodes={k: t[f"nodes/{k}"] for k in meta["shapes"]},
            weights={(u, d): t[f"weights/{u}/{d}"] for u, d in meta["pairs"]},
            metric={k: t[f"metric/{k}"] for k in meta["metric_sites"]},
        )


# ---- the site graph --------------------------------------------------------------------------
@dataclass(frozen=True)
class SiteGraph:
    """Which node sites feed which, read from the model config and the set of spliced sites."""

    sites: list[Site]  # node sites, forward order
    upstream: dict[str, list[Site]]  # downstream site name -> its upstream node sites
    last: list[Site]  # sites the metric reads (through unspliced sites only)
    complete: bool  # every site of the model is a node site: each edge spans one sublayer


def site_graph(model: SplicedModel) -> SiteGraph:
    """The config's site graph restricted to the node sites (saes.sites.spliced_upstream): an
    edge joins a node site to each node site it reaches through unspliced sites only."""
    sites = model.node_sites
    names = {s.name for s in sites}
    ups = {s.name: spliced_upstream(model.cfg, s, names) for s in sites}
    last = metric_readers(model.cfg, names)
    return SiteGraph(sites, ups, last, complete=names == {s.name for s in model.sites})


# ---- the computation -------------------------------------------------------------------------
def attribute_edges(
    model: SplicedModel,
    data: Dataset | Sequence[PromptPair],
    method: str,
    selection: Mapping[str, Tensor],
    *,
    batch_size: int = 32,
    steps: int | None = None,
    rules: Sequence[str] | None = None,
    progress: bool = True,
) -> EdgeScores:
    """Edge weights among the nodes of ``selection`` (site -> bool mask shaped like that site's
    scores, e.g. from ``select_nodes``; a site left out has no selected nodes), plus each
    selected node of the last sites → metric.

    method: any registered method; its edges are computed by the method its record names
    (``METHODS[method].edges``: atp for atp, exact and atp*; ig for ig, with ``steps``
    interpolation steps; relp for relp, relp* and column, with ``rules``: LRP rule names, None:
    the model family's set). EdgeScores.method says which definition was used. Masks of shape
    [n_nodes] give position-summed edges, masks of shape [pos, n_nodes] edges per position pair
    (prompts of one token length).
    """
    edge_method = method_record(method).edges
    spec = method_record(edge_method)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    options = spec.make_options(steps=steps, rules=None if rules is None else tuple(rules))
    if isinstance(options, IGOptions) and options.steps < 1:
        raise ValueError(f"steps must be a positive integer, got {options.steps!r}")
    data = model.tokenize(data if isinstance(data, Dataset) else list(data))
    if len(data) == 0:
        raise ValueError("the dataset is empty; pass at least one prompt pair")
    graph = site_graph(model)
    masks, aggregation = _edge_masks(model, selection, data)
    hooks: list[TLHook] = []
    if isinstance(options, RuledOptions):
        options = dataclasses.replace(options, rules=rules_for(model, options.rules))
        hooks = rule_hooks(model.transformer, options.rules or ())

    device = model.device
    nodes = {name: m.flatten().nonzero()[:, 0] for name, m in masks.items()}  # [n_sel]
    weights: dict[tuple[str, str], Tensor] = {}
    for site in graph.sites:
        for up in graph.upstream[site.name]:
            if len(nodes[site.name]) and len(nodes[up.name]):
                weights[(up.name, site.name)] = torch.zeros(
                    len(nodes[site.name]), len(nodes[up.name]), device=device)
    metric = {s.name: torch.zeros(len(nodes[s.name]), device=device) for s in graph.last}

    start = time.perf_counter()
    local = distributed.shard_dataset(data, f"edges {edge_method}")  # this rank's pairs
    n_batches = math.ceil(len(local) / batch_size)
    for batch in tqdm(local.batches(batch_size), total=n_batches, desc=f"edges {edge_method}",
                      disable=not progress or not distributed.is_main()):
        ctx = AttributionContext(model, batch.to(device))
        _edges_of_batch(ctx, options, graph, masks, nodes, hooks, weights, metric)
    weights = distributed.reduce_sums(weights, f"edges {edge_method}: edge weight sums")
    metric = distributed.reduce_sums(metric, f"edges {edge_method}: metric edge sums")
    log.info("%s edges on %d examples in %.1fs", edge_method, len(data),
             time.perf_counter() - start)
    shapes = {name: tuple(m.shape) for name, m in masks.items()}
    return EdgeScores(
        method=edge_method, model=model.name, aggregation=aggregation, n_examples=len(data),
        shapes=shapes, nodes={k: v.cpu() for k, v in nodes.items()},
        weights={k: (w / len(data)).cpu() for k, w in weights.items()},
        metric={k: (w / len(data)).cpu() for k, w in metric.items()}, options=options.to_json(),
    )


def _edge_masks(
    model: SplicedModel, selection: Mapping[str, Tensor], data: Dataset
) -> tuple[Selection, Aggregation]:
    """The selection checked (circuits.select.check_selection), all masks of one kind:
    position-summed [n_nodes] or per position [pos, n_nodes]; and that aggregation."""
    masks = check_selection(model, selection, data.seq_len, partial=True)
    ndims = {torch.as_tensor(selection[k]).ndim for k in selection}
    if len(ndims) > 1:
        raise ValueError(
            "selection masks must all be [n_nodes] (position-summed) or all [pos, n_nodes] "
            f"(per position); got dims {sorted(ndims)}"
        )
    if ndims == {2}:
        if not data.uniform_length:
            raise ValueError("per-position edges ([pos, n_nodes] masks) need prompts of one "
                             "token length; use position-summed scores or a fixed-length "
                             "construction")
        # sites left out are 1-D empty masks; per position they are [pos, n_nodes] ones
        masks = {k: m if m.ndim == 2 else torch.zeros(data.seq_len, *m.shape, dtype=torch.bool,
                                                       device=m.device)
                 for k, m in masks.items()}
        return masks, "none"
    return masks, "sum"


@dataclass
class _SiteState:
    """One site on one batch: clean activation, node deltas (with the clean-active features),
    and the gradient g (ḡ for ig; zeros where the metric does not read the site)."""

    x: Tensor  # [b, pos, d] clean activation
    delta: SiteDelta  # with .active
    grad: Tensor  # [b, pos, d]

    @property
    def active(self) -> Tensor:
        """[A, 3] (batch, pos, feature) where the clean run's feature gate is open."""
        assert self.delta.active is not None
        return self.delta.active


def _edges_of_batch(
    ctx: AttributionContext,
    options: Options,
    graph: SiteGraph,
    masks: Selection,
    nodes: dict[str, Tensor],
    hooks: list[TLHook],
    weights: dict[tuple[str, str], Tensor],
    metric: dict[str, Tensor],
) -> None:
    """Add this batch's edge weights (summed over its examples) into ``weights``/``metric``."""
    model = ctx.model
    read = {down for _, down in weights} | {site.name for site in graph.last}  # g used there
    states = _site_states(ctx, options, hooks, read)
    _check_residual_sum(model, states)
    cut = None if graph.complete else _CutForward(ctx, graph, hooks)
    for site in graph.last:  # edges to the metric: Δu · ∂m/∂u, other node sites held clean
        g = states[site.name].grad if cut is None else cut.metric_gradient(site)
        scores = linear_scores(model, states[site.name].delta, g)  # complete: the node score
        flat = scores.sum(0) if masks[site.name].ndim == 2 else scores.sum((0, 1))
        metric[site.name] += flat.flatten()[nodes[site.name]]
    blocks: dict[int, _Block] = {}
    for site in graph.sites:
        ups = [u for u in graph.upstream[site.name] if (u.name, site.name) in weights]
        if not ups:
            continue
        if cut is None and site.kind in ("attn", "mlp") and site.layer not in blocks:
            blocks = {site.layer: _Block(model, site.layer, ctx.clean, hooks)}  # one alive
        down = nodes[site.name]
        per_node = CHUNK_FLOATS // states[site.name].x[0].numel() // len(ctx) + 1
        for start in range(0, len(down), per_node):
            rows = slice(start, start + per_node)
            v = _cotangents(model, site, states[site.name], down[rows], masks[site.name])
            if cut is not None:  # through the unspliced blocks between, one VJP per chunk
                g_ups = cut.vjp(site, v, ups)
            else:
                # [N, b, pos, d] at the sublayer's input, the same for every upstream site
                # (each reaches it by the identity); a resid site's upstream sites are its
                # own summands
                g_up = v if site.kind == "resid" else blocks[site.layer].vjp(site, v)
                g_ups = dict.fromkeys((u.name for u in ups), g_up)
            for up in ups:
                weights[(up.name, site.name)][rows] += _upstream_dots(
                    model, states[up.name].delta, g_ups[up.name], masks[up.name],
                    nodes[up.name])


class _CutForward:
    """One clean forward with every node site cut: its activation replaced by a leaf of the
    same value. What arrives at a site is then a function of its upstream node sites' leaves
    only (the other node sites held at their clean values, as SFC defines an edge), with the
    unspliced blocks in between computing, LRP rule hooks active for relp. Used where not
    every site is a node site; with all of them the sublayer fast paths of _Block apply."""

    def __init__(self, ctx: AttributionContext, graph: SiteGraph, hooks: list[TLHook]):
        self.arriving: dict[str, Tensor] = {}  # site -> activation as it arrives [b, pos, d]
        self.leaves: dict[str, Tensor] = {}  # site -> the leaf the forward goes on with
        names = {s.hook_name: s.name for s in graph.sites}

        def cut(x: Tensor, hook) -> Tensor:
            self.arriving[names[hook.name]] = x
            leaf = x.detach().requires_grad_(True)
            self.leaves[names[hook.name]] = leaf
            return leaf

        self.value, _ = forward(ctx.model, ctx.batch.clean_tokens, ctx.targets,
                                hooks=[*hooks, *((h, cut) for h in names)], grad=True)

    def metric_gradient(self, site: Site) -> Tensor:
        """∂(Σ metric)/∂ the site's leaf: the metric's gradient with the other node sites cut."""
        (g,) = torch.autograd.grad(self.value.sum(), self.leaves[site.name], retain_graph=True,
                                   allow_unused=True)
        return site.vectors(torch.zeros_like(self.leaves[site.name]) if g is None else g)

    def vjp(self, down: Site, v: Tensor, ups: list[Site]) -> dict[str, Tensor]:
        """v [N, b, pos, d] at the arriving activation of ``down`` -> [N, b, pos, d] at each
        upstream site's leaf."""
        leaves = [self.leaves[u.name] for u in ups]
        arriving = self.arriving[down.name]  # hook_z: [b, pos, h, d_head]; v is flat
        grads = torch.autograd.grad(arriving, leaves,
                                    grad_outputs=v.reshape(len(v), *arriving.shape),
                                    retain_graph=True, is_grads_batched=True, allow_unused=True)
        return {u.name: u.vectors(torch.zeros(len(v), *leaf.shape, dtype=v.dtype,
                                              device=v.device) if g is None else g)
                for u, leaf, g in zip(ups, leaves, grads, strict=True)}


def _site_states(
    ctx: AttributionContext, options: Options, hooks: list[TLHook], read: set[str]
) -> dict[str, _SiteState]:
    """Per-site state. Gradients are needed only at the sites in ``read``; ig (steps backward
    passes per site) computes no others. The clean run also records every block's input."""
    model = ctx.model
    layers = model.cfg.n_layers
    inputs = [resid_pre(layer) for layer in range(layers)]
    if not model.cfg.parallel_attn_mlp:
        inputs += [resid_mid(layer) for layer in range(layers)]
    if isinstance(options, IGOptions):
        ctx.run_clean(record=inputs + [e.resid for e in ctx.entries.values()])
        grads: dict[str, Tensor | None] = {}
        for site in ctx.sites:
            if site.name in read:
                enter, name = ctx.entries[site.name], site.hook_name
                grads[name] = site_gradient(model, ctx.targets, enter, ctx.activation(enter.resid),
                                            ctx.activation(name), ctx.patch[name], options.steps)
    else:
        ctx.run_clean(record=inputs, hooks=hooks, grad=True)
        grads = dict(zip(ctx.site_hooks, ctx.gradients(ctx.site_hooks), strict=True))
    states = {}
    for site in ctx.sites:
        x = site.vectors(ctx.activation(site.hook_name))  # hook_z: heads flattened
        grad = grads.get(site.hook_name)
        grad = torch.zeros_like(x) if grad is None else site.vectors(grad.detach())
        states[site.name] = _SiteState(x, ctx.delta(site, with_active=True), grad)
    return states


def _check_residual_sum(model: SplicedModel, states: dict[str, _SiteState]) -> None:
    """resid_L = resid_{L-1} + attn_L + mlp_L: what makes every edge into resid an identity
    (checked where all four are node sites)."""
    for layer in range(model.cfg.n_layers):
        names = ["embed" if layer == 0 else f"resid_{layer - 1}", f"attn_{layer}",
                 f"mlp_{layer}", f"resid_{layer}"]
        if not all(n in states for n in names):
            continue
        prev, attn, mlp, resid = (states[n].x for n in names)
        total = prev + attn + mlp
        if not torch.allclose(total, resid, atol=1e-4 * (1 + float(resid.abs().max())),
                              rtol=1e-4):
            raise ValueError(
                f"resid_{layer} != resid_{layer - 1} + attn_{layer} + mlp_{layer} in "
                f"{model.name} (e.g. a norm after the sublayer outputs); edges assume the "
                "residual stream sums the block's sublayers"
            )


def _cotangents(
    model: SplicedModel, site: Site, state: _SiteState, down: Tensor, mask: Tensor
) -> Tensor:
    """∂(g_d · d)/∂x_D for the downstream nodes ``down`` (flat indices), [N, b, pos, d]."""
    n_nodes = mask.shape[-1]
    node, pos = down % n_nodes, down // n_nodes  # pos meaningful only for [pos, n_nodes] masks
    g = state.grad  # [b, pos, d]
    v = g.new_zeros(len(down), *g.shape)
    is_err = node == n_nodes - 1
    if is_err.any():
        v[is_err] = _error_cotangent(model, site, state)[None]
    feats = (~is_err).nonzero()[:, 0]
    if len(feats):
        d = model.dictionaries[site.name]
        i = node[feats]  # [F]
        a = state.active  # [A, 3]
        # c[f, b, p] = (W_dec[i_f] · g[b, p]) · gate_i(b, p) on clean-active entries only
        hit = (a[:, 2:3] == i[None]).nonzero()  # [H, 2]: (active entry, f)
        ab, ap, af = a[hit[:, 0], 0], a[hit[:, 0], 1], hit[:, 1]
        coef = (d.W_dec.detach()[i[af]] * g[ab, ap]).sum(-1)  # [H]
        c = g.new_zeros(len(feats), *g.shape[:2])  # [F, b, pos]
        c[af, ab, ap] = coef
        v[feats] = c[..., None] * d.W_enc.detach().T[i][:, None, None, :]  # [F, b, pos, d]
    if mask.ndim == 2:  # per position: node (p, i) only at position p
        keep = torch.zeros(len(down), g.shape[1], dtype=g.dtype, device=g.device)
        keep[torch.arange(len(down)), pos] = 1
        v = v * keep[:, None, :, None]
    return v


def _error_cotangent(model: SplicedModel, site: Site, state: _SiteState) -> Tensor:
    """∂(g · err)/∂x = g − Σ_active (W_dec[i] · g) W_enc[:, i] (bare: g), [b, pos, d]."""
    g = state.grad
    if not model.dictionaries:
        return g
    d = model.dictionaries[site.name]
    b, p, f = state.active.unbind(-1)  # [A]
    coef = (d.W_dec.detach()[f] * g[b, p]).sum(-1)  # [A]
    out = g.clone().view(-1, g.shape[-1])
    out.index_add_(0, b * g.shape[1] + p, -coef[:, None] * d.W_enc.detach().T[f])
    return out.view_as(g)


class _Block:
    """One forward of block L from its clean input, kept for batched VJPs of its sublayers."""

    def __init__(
        self, model: SplicedModel, layer: int, clean: dict[str, Tensor], hooks: list[TLHook]
    ):
        tl = model.transformer
        self.pre = clean[resid_pre(layer)].detach().requires_grad_(True)  # [b, pos, d]
        self.parallel = model.cfg.parallel_attn_mlp
        out: dict[str, Tensor] = {}
        mid_leaf: dict[str, Tensor] = {}

        def keep(x: Tensor, hook) -> Tensor:
            out["attn"] = x
            return x

        def cut_mid(x: Tensor, hook) -> Tensor:  # mlp reads attn only through the attn site
            mid_leaf["x"] = x.detach().requires_grad_(True)
            return mid_leaf["x"]

        fwd = list(hooks) + [(attn_out(layer), keep)]
        if not self.parallel:
            fwd.append((resid_mid(layer), cut_mid))
        with torch.enable_grad(), tl.hooks(fwd_hooks=fwd):
            model.block(layer)(self.pre)
        self.tl, self.block, self.hooks = tl, model.block(layer), list(hooks)
        self.attn = out["attn"]
        self.mlp_in = self.pre if self.parallel else mid_leaf["x"]

    def vjp(self, down: Site, v: Tensor) -> Tensor:
        """v [N, b, pos, d] at the downstream sublayer's output -> [N, b, pos, d] at its input."""
        if down.kind == "mlp":
            return self._mlp_vjp(v)
        (g,) = torch.autograd.grad(self.attn, self.pre, grad_outputs=v, retain_graph=True,
                                   is_grads_batched=True)
        return g

    def _mlp_vjp(self, v: Tensor) -> Tensor:
        """The MLP works position by position: one row per (downstream node, token) where the
        cotangent is non-zero, through a forward of the MLP on just those rows (features are
        active on few tokens, so this skips most of the [N, b·pos] backward)."""
        n, b, pos, d = v.shape
        flat = v.reshape(n, b * pos, d)
        node, row = flat.ne(0).any(-1).nonzero(as_tuple=True)  # [M]
        out = torch.zeros_like(flat)
        if len(row) == 0:
            return out.view_as(v)
        x = self.mlp_in.detach().reshape(b * pos, d)[row][:, None].requires_grad_(True)
        with torch.enable_grad(), self.tl.hooks(fwd_hooks=self.hooks):
            y = self.block.apply_mlp(self.block.ln2(x))  # [M, 1, d]
        (g,) = torch.autograd.grad(y, x, grad_outputs=flat[node, row][:, None])
        out[node, row] = g[:, 0]
        return out.view_as(v)


def _upstream_dots(
    model: SplicedModel, delta: SiteDelta, g: Tensor, mask: Tensor, up_nodes: Tensor
) -> Tensor:
    """Σ_{b, p} Δu · g_n at the upstream site for every selected upstream node u, [N, n_up].

    g [N, b, pos, d]. Features: Δf_j · (W_dec[j] · g_n[b, p]) over moved selected entries;
    the error node (or bare component): Δerr · g_n."""
    n, b, pos, _ = g.shape
    n_nodes = mask.shape[-1]
    per_position = mask.ndim == 2
    lookup = torch.full((mask.numel(),), -1, dtype=torch.long, device=g.device)
    lookup[up_nodes.to(g.device)] = torch.arange(len(up_nodes), device=g.device)
    out = g.new_zeros(n, len(up_nodes))
    # error node / bare component
    if per_position:
        err_cols = lookup.view(pos, n_nodes)[:, -1]  # [pos]
        if (err_cols >= 0).any():
            dots = torch.einsum("nbpd,bpd->np", g, delta.d_error)  # [N, pos]
            q = (err_cols >= 0).nonzero()[:, 0]
            out[:, err_cols[q]] += dots[:, q]
    elif lookup[-1] >= 0:
        out[:, lookup[-1]] += g.flatten(1) @ delta.d_error.flatten()
    if len(delta.d_features) == 0:  # a bare site, or no selected feature moved
        return out
    eb, ep, ej = delta.feature_index.unbind(-1)  # [K]
    cols = lookup[ep * n_nodes + ej] if per_position else lookup[ej]
    keep = cols >= 0
    eb, ep, ej, cols, d_f = eb[keep], ep[keep], ej[keep], cols[keep], delta.d_features[keep]
    if len(cols) == 0:
        return out
    # features: per token row, the moved selected features there (padded to the fullest row):
    # one batched matmul g[:, r] · W_dec[j] over rows, then Δf_j · that into column j
    W = model.dictionaries[delta.site.name].W_dec.detach()
    rows, which = (eb * pos + ep).unique(return_inverse=True)  # [U], [K]
    order = which.argsort(stable=True)
    which, ej, cols, d_f = which[order], ej[order], cols[order], d_f[order]
    counts = torch.bincount(which, minlength=len(rows))  # [U]
    slot = torch.arange(len(which), device=g.device) - (counts.cumsum(0) - counts)[which]  # [K]
    w_rows = W.new_zeros(len(rows), int(counts.max()), W.shape[1])  # [U, k_max, d]
    w_rows[which, slot] = W[ej]
    h = torch.bmm(g.flatten(1, 2)[:, rows].transpose(0, 1), w_rows.transpose(1, 2))  # [U, N, k]
    out.index_add_(1, cols, (h[which, :, slot] * d_f[:, None]).T)
    return out
