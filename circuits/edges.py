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

Across unspliced blocks (only some sites spliced), through one clean forward with every node
site cut (``_CutForward``), three savings. Positions: that forward covers the positions from the
first where anything moves (the prefix enters as a key-value cache), from the first block with a
node site on; no edge reads an earlier position. Packing: examples are independent rows of the
forward and a feature's vector is non-zero on few examples (a cotangent where the clean run
opens its gate, a move where it moves), so each batched row holds one (node, example) cell of
every example: rows = the most cells any example has, not the number of nodes (``_slots``,
``_pack``). Direction: w(u → d) = Jᵀv_d · Δu = v_d · J Δu, so an upstream site's edges come
either from its downstream sites' VJPs (one row per downstream cell) or from JVPs of its own
moves (one row per upstream cell, every downstream site at once, through the same graph:
``_CutForward.jvp``), whichever has fewer rows × blocks to run (``_forward_sites``). On
Gemma-3-270M with Gemma Scope 2 at layers 5/9/12/15 (benchmarks/gemma_scope.py) the residual
sites go forward: a fifth of the rows × blocks of one VJP per downstream node, on 4 of the 6
positions.

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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

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
    cut = None if graph.complete else _CutForward(ctx, graph, hooks, _first_move(ctx, states))
    for site in graph.last:  # edges to the metric: Δu · ∂m/∂u, other node sites held clean
        g = states[site.name].grad if cut is None else cut.metric_gradient(site)
        scores = linear_scores(model, states[site.name].delta, g)  # complete: the node score
        flat = scores.sum(0) if masks[site.name].ndim == 2 else scores.sum((0, 1))
        metric[site.name] += flat.flatten()[nodes[site.name]]
    start = 0 if cut is None else cut.start  # vectors on the positions the cut forward covers
    moves = {up: _moves(model, states[up].delta, nodes[up], masks[up], start)
             for up, _ in weights}
    sites = {s.name: s for s in graph.sites}
    cotangents = {down: _cotangents(model, sites[down], states[down], nodes[down], masks[down],
                                    start) for _, down in weights}
    if cut is not None:  # across unspliced blocks
        _cut_edges(graph, cut, moves, cotangents, weights)
        return
    blocks: dict[int, _Block] = {}
    for site in graph.sites:
        ups = [u for u in graph.upstream[site.name] if (u.name, site.name) in weights]
        if not ups:
            continue
        if site.kind in ("attn", "mlp") and site.layer not in blocks:
            blocks = {site.layer: _Block(model, site.layer, ctx.clean, hooks)}  # one alive
        vectors, n_down = cotangents[site.name], len(nodes[site.name])
        per_node = CHUNK_FLOATS // states[site.name].x[0].numel() // len(ctx) + 1
        for start in range(0, n_down, per_node):
            rows = min(per_node, n_down - start)
            v, _ = _pack(vectors, vectors.node, start, rows)  # row n: node start + n
            # [N, b, pos, d] at the sublayer's input, the same for every upstream site (each
            # reaches it by the identity); a resid site's upstream sites are its own summands
            g_up = v if site.kind == "resid" else blocks[site.layer].vjp(site, v)
            for up in ups:
                weights[(up.name, site.name)][start:start + rows] += _dots(
                    moves[up.name], g_up).sum(1)


class _CutForward:
    """One clean forward with every node site cut: its activation replaced by a leaf of the
    same value. What arrives at a site is then a function of its upstream node sites' leaves
    only (the other node sites held at their clean values, as SFC defines an edge), with the
    unspliced blocks in between computing, LRP rule hooks active for relp. Used where not
    every site is a node site; with all of them the sublayer fast paths of _Block apply.

    It covers positions ``start``.. only, from the first block with a node site on (the
    clean residual stream entering it): the earlier positions, where no node moves
    (``_first_move``), enter as a key-value cache of the clean run. No edge reads them: Δu is
    0 there, and what a later position's change reaches comes later still (causal attention).
    Leaves, arriving activations and the vectors of _cut_edges are [b, pos − start, d]."""

    def __init__(
        self, ctx: AttributionContext, graph: SiteGraph, hooks: list[TLHook], start: int = 0
    ):
        self.arriving: dict[str, Tensor] = {}  # site -> activation as it arrives [b, pos', d]
        self.leaves: dict[str, Tensor] = {}  # site -> the leaf the forward goes on with
        self.start = start
        names = {s.hook_name: s.name for s in graph.sites}

        def cut(x: Tensor, hook) -> Tensor:
            self.arriving[names[hook.name]] = x
            leaf = x.detach().requires_grad_(True)
            self.leaves[names[hook.name]] = leaf
            return leaf

        tl = ctx.model.transformer
        first = min(max(s.layer, 0) for s in graph.sites)  # the first block with a node site
        resid = ctx.clean[resid_pre(first)]  # [b, pos, d]
        cache = None
        if start:  # the prefix's keys and values, blocks first..: no attention mask, as uncached
            cache = TransformerLensKeyValueCache.init_cache(tl.cfg, tl.cfg.device, len(ctx))
            with torch.no_grad():
                tl(resid[:, :start], return_type=None, start_at_layer=first, past_kv_cache=cache)
        targets = dataclasses.replace(ctx.targets, lengths=ctx.targets.lengths - start)
        self.value, _ = forward(ctx.model, resid[:, start:], targets,
                                hooks=[*hooks, *((h, cut) for h in names)],
                                start_at_layer=first, grad=True, past_kv_cache=cache)

    def metric_gradient(self, site: Site) -> Tensor:
        """∂(Σ metric)/∂ the site's leaf: the metric's gradient with the other node sites cut,
        [b, pos, d] (0 before ``start``)."""
        leaf = self.leaves[site.name]
        (g,) = torch.autograd.grad(self.value.sum(), leaf, retain_graph=True, allow_unused=True)
        full = leaf.new_zeros(leaf.shape[0], self.start + leaf.shape[1], *leaf.shape[2:])
        if g is not None:
            full[:, self.start:] = g
        return site.vectors(full)

    def vjp(self, down: Site, v: Tensor, ups: list[Site]) -> dict[str, Tensor | None]:
        """v [R, b, pos, d] at the arriving activation of ``down`` -> [R, b, pos, d] at each
        upstream site's leaf (None where it does not reach one)."""
        leaves = [self.leaves[u.name] for u in ups]
        arriving = self.arriving[down.name]  # hook_z: [b, pos, h, d_head]; v is flat
        grads = torch.autograd.grad(arriving, leaves,
                                    grad_outputs=v.reshape(len(v), *arriving.shape),
                                    retain_graph=True, is_grads_batched=True, allow_unused=True)
        return {u.name: None if g is None else u.vectors(g)
                for u, g in zip(ups, grads, strict=True)}

    def jvp(self, up: Site, downs: list[Site]) -> Callable[[Tensor], dict[str, Tensor | None]]:
        """t [R, b, pos, d] at the upstream site's leaf -> J·t [R, b, pos, d] at the arriving
        activation of each of ``downs`` (None where it does not reach one), J the Jacobian
        whose transpose ``vjp`` applies (the LRP-changed one for relp).

        As the transpose of the transpose: the VJP of dummy cotangents w at the arriving
        activations is built once, with its own graph (linear in w), and each call
        differentiates it with respect to w in direction t: one batched backward through that
        graph, about what a VJP of as many rows costs."""
        leaf = self.leaves[up.name]
        arriving = [self.arriving[d.name] for d in downs]
        dummies = [torch.zeros_like(a, requires_grad=True) for a in arriving]
        (pulled,) = torch.autograd.grad(arriving, leaf, grad_outputs=dummies, create_graph=True,
                                        retain_graph=True, allow_unused=True)

        def apply(t: Tensor) -> dict[str, Tensor | None]:
            if pulled is None:
                return {d.name: None for d in downs}
            out = torch.autograd.grad(pulled, dummies,
                                      grad_outputs=t.reshape(len(t), *leaf.shape),
                                      retain_graph=True, is_grads_batched=True,
                                      allow_unused=True)
            return {d.name: None if y is None else d.vectors(y)
                    for d, y in zip(downs, out, strict=True)}

        return apply


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


def _first_move(ctx: AttributionContext, states: dict[str, _SiteState]) -> int:
    """The first position where any node site moves from clean to patch (a feature or the
    error node; at most the shortest prompt's last position): every Δu is 0 before it."""
    first = int(ctx.targets.lengths.min()) - 1
    for state in states.values():
        delta = state.delta
        if len(delta.feature_index):
            first = min(first, int(delta.feature_index[:, 1].min()))
        moved = delta.d_error.ne(0).any(-1).any(0).nonzero()  # [positions, 1]
        if len(moved):
            first = min(first, int(moved[0, 0]))
    return max(first, 0)


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


# ---- node vectors, kept sparse ------------------------------------------------------------
@dataclass
class _Vectors:
    """One site's selected nodes as vectors in the site's activation space on one batch.

    Downstream, a node's cotangent ∂(g_d · d)/∂x_D (``_cotangents``); upstream, its move Δu
    (``_moves``). A feature's vector is Σ coef · directions[dir] over its entries (example,
    position): for a cotangent (W_dec[i] · g) · gate_i and W_enc[:, i] where the clean run opens
    the gate, for a move Δf_j and W_dec[j] where f_j moves. An error node's is ``error`` (at its
    own position only, per position) at every example. ``node``/``example`` list the cells
    (node, example) where a vector can be non-zero: error cells first, node-major, then the
    features'. Rows of batched VJPs and JVPs are packed from cells (``_pack``), and ``_dots``
    reads a node's dot product with a tensor off its entries, never a dense [N, b, pos, d]."""

    shape: tuple[int, int, int]  # the site's activation [b, pos, d]
    n_nodes: int  # selected nodes: rows of an edge matrix
    node: Tensor  # [P] long
    example: Tensor  # [P] long
    entry_cell: Tensor  # [H] long: feature entries, each in one cell ...
    entry_pos: Tensor  # [H] long: ... at one position ...
    entry_dir: Tensor  # [H] long: ... along directions[dir] ...
    entry_coef: Tensor  # [H] ... times coef
    directions: Tensor | None  # [n_features, d] (W_enc.T or W_dec); None at a bare site
    err_nodes: Tensor  # [Q] long: selected error nodes (per position, one per position)
    err_pos: Tensor | None  # [Q] their positions (per-position masks), else None
    error: Tensor | None  # [b, pos, d]; None when no error node is selected


def _vectors(
    shape: tuple[int, int, int], n_nodes: int, err_nodes: Tensor, err_pos: Tensor | None,
    error: Tensor | None, rows: Tensor, example: Tensor, pos: Tensor, direction: Tensor,
    coef: Tensor, directions: Tensor | None, start: int,
) -> _Vectors:
    """_Vectors from the error nodes and the feature entries (node row, example, position,
    direction, coefficient): the cells they fill, on positions ``start``.. of ``shape``."""
    if start:
        later = pos >= start
        rows, example, pos = rows[later], example[later], pos[later] - start
        direction, coef = direction[later], coef[later]
        if err_pos is not None:
            err_nodes, err_pos = err_nodes[err_pos >= start], err_pos[err_pos >= start] - start
        error = None if error is None or len(err_nodes) == 0 else error[:, start:]
        shape = (shape[0], shape[1] - start, shape[2])
    n_examples = shape[0]
    cells, entry_cell = (rows * n_examples + example).unique(return_inverse=True)
    arange = torch.arange(n_examples, device=rows.device)
    return _Vectors(
        shape=shape, n_nodes=n_nodes,
        node=torch.cat([err_nodes.repeat_interleave(n_examples), cells // n_examples]),
        example=torch.cat([arange.repeat(len(err_nodes)), cells % n_examples]),
        entry_cell=entry_cell + len(err_nodes) * n_examples, entry_pos=pos, entry_dir=direction,
        entry_coef=coef, directions=directions, err_nodes=err_nodes, err_pos=err_pos,
        error=error,
    )


def _cotangents(
    model: SplicedModel, site: Site, state: _SiteState, down: Tensor, mask: Tensor,
    start: int = 0,
) -> _Vectors:
    """∂(g_d · d)/∂x_D for the downstream nodes ``down`` (flat indices), positions start.."""
    g = state.grad  # [b, pos, d]
    n_nodes = mask.shape[-1]
    node, pos = down % n_nodes, down // n_nodes  # pos meaningful only for [pos, n_nodes] masks
    is_err = node == n_nodes - 1
    err_nodes = is_err.nonzero()[:, 0]
    error = _error_cotangent(model, site, state) if len(err_nodes) else None
    feats = (~is_err).nonzero()[:, 0]
    empty = torch.zeros(0, dtype=torch.long, device=g.device)
    rows = example = at = feature = empty
    coef, directions = g.new_zeros(0), None
    if model.dictionaries:
        d = model.dictionaries[site.name]
        features, which = node[feats].unique(return_inverse=True)  # [F'], [F]
        directions = d.W_enc.detach().index_select(1, features).T.contiguous()  # [F', d]
        a = state.active  # [A, 3]
        match = a[:, 2:3] == node[feats][None]  # [A, F]
        if mask.ndim == 2:  # per position: node (p, i) only at position p
            match &= a[:, 1:2] == pos[feats][None]
        hit = match.nonzero()  # [H, 2]: (active entry, f)
        example, at = a[hit[:, 0], 0], a[hit[:, 0], 1]
        rows, feature = feats[hit[:, 1]], which[hit[:, 1]]  # feature: row of directions
        coef = (d.W_dec.detach()[features[feature]] * g[example, at]).sum(-1)  # [H]
    return _vectors(_shape(g), len(down), err_nodes, pos[err_nodes] if mask.ndim == 2 else None,
                    error, rows, example, at, feature, coef, directions, start)


def _moves(
    model: SplicedModel, delta: SiteDelta, up: Tensor, mask: Tensor, start: int = 0
) -> _Vectors:
    """Δu for the upstream nodes ``up`` (flat indices), positions start.."""
    n_nodes = mask.shape[-1]
    device = delta.d_error.device
    lookup = torch.full((mask.numel(),), -1, dtype=torch.long, device=device)
    lookup[up.to(device)] = torch.arange(len(up), device=device)
    err_pos: Tensor | None = None
    if mask.ndim == 2:
        positions = torch.arange(mask.shape[0], device=device)
        err_rows = lookup[positions * n_nodes + n_nodes - 1]
        err_pos = positions[err_rows >= 0]
        err_nodes = err_rows[err_rows >= 0]
    else:
        err_nodes = lookup[-1:][lookup[-1:] >= 0]
    eb, ep, ej = delta.feature_index.unbind(-1)  # [K]
    rows = lookup[ep * n_nodes + ej] if mask.ndim == 2 else lookup[ej]
    keep = rows >= 0
    features, which = ej[keep].unique(return_inverse=True)
    directions = (model.dictionaries[delta.site.name].W_dec.detach()[features]
                  if model.dictionaries else None)  # [F', d]: W_dec[j]
    return _vectors(_shape(delta.d_error), len(up), err_nodes, err_pos,
                    delta.d_error if len(err_nodes) else None, rows[keep], eb[keep], ep[keep],
                    which, delta.d_features[keep], directions, start)


def _shape(x: Tensor) -> tuple[int, int, int]:
    b, pos, d = x.shape
    return int(b), int(pos), int(d)


def _pack(vec: _Vectors, slot: Tensor, start: int, rows: int) -> tuple[Tensor, Tensor]:
    """The vectors of the cells whose slot is in [start, start + rows), each in row slot −
    start at its example, [rows, b, pos, d]; and which node owns each (row, example) there,
    [rows, b] (-1: none)."""
    n_examples = vec.shape[0]
    inside = (slot >= start) & (slot < start + rows)
    row = slot - start
    x = torch.zeros(rows, *vec.shape, dtype=vec.entry_coef.dtype, device=slot.device)
    owner = torch.full((rows, n_examples), -1, dtype=torch.long, device=slot.device)
    owner[row[inside], vec.example[inside]] = vec.node[inside]
    if vec.error is not None:
        e = inside[: len(vec.err_nodes) * n_examples].nonzero()[:, 0]  # error cells inside
        b = e % n_examples
        if vec.err_pos is None:
            x[row[e], b] = vec.error[b]
        else:
            p = vec.err_pos[e // n_examples]
            x[row[e], b, p] = vec.error[b, p]
    h = inside[vec.entry_cell]
    if vec.directions is not None and bool(h.any()):
        c = vec.entry_cell[h]
        x[row[c], vec.example[c], vec.entry_pos[h]] = (
            vec.entry_coef[h, None] * vec.directions[vec.entry_dir[h]])
    return x, owner


def _dots(vec: _Vectors, x: Tensor) -> Tensor:
    """Each node's vector · x[r] at each example, for every row r of x [R, b, pos, d]:
    [R, b, n_nodes]. Error nodes: one einsum; features: per token, the entries there (padded
    to the fullest token), one batched matmul x[:, token] · directions, times coef."""
    n_rows, n_examples, pos, _ = x.shape
    out = x.new_zeros(n_rows, n_examples, vec.n_nodes)
    if vec.error is not None:
        if vec.err_pos is None:
            out[:, :, vec.err_nodes[0]] += torch.einsum("rbpd,bpd->rb", x, vec.error)
        else:
            dots = torch.einsum("rbpd,bpd->rbp", x, vec.error)  # [R, b, pos]
            out[:, :, vec.err_nodes] += dots[:, :, vec.err_pos]
    if vec.directions is None or len(vec.entry_cell) == 0:
        return out
    eb, en = vec.example[vec.entry_cell], vec.node[vec.entry_cell]  # [H]
    tokens, which = (eb * pos + vec.entry_pos).unique(return_inverse=True)  # [U], [H]
    order = which.argsort(stable=True)
    which, eb, en = which[order], eb[order], en[order]
    direction, coef = vec.entry_dir[order], vec.entry_coef[order]
    counts = torch.bincount(which, minlength=len(tokens))  # [U]
    slot = torch.arange(len(which), device=x.device) - (counts.cumsum(0) - counts)[which]
    w_rows = x.new_zeros(len(tokens), int(counts.max()), x.shape[-1])  # [U, k_max, d]
    w_rows[which, slot] = vec.directions[direction]
    h = torch.bmm(x.flatten(1, 2)[:, tokens].transpose(0, 1), w_rows.transpose(1, 2))  # [U,R,k]
    out.view(n_rows, n_examples * vec.n_nodes).index_add_(
        1, eb * vec.n_nodes + en, (h[which, :, slot] * coef[:, None]).T)
    return out


def _slots(vec: _Vectors) -> tuple[Tensor, int]:
    """Rows for packing a site's cells into batched VJP or JVP rows: examples are independent
    rows of the forward pass, so each row can hold one cell of every example; a cell's row is
    its rank among its example's cells. Returns the cells' rows and how many there are (the
    most cells any example has, not the number of nodes)."""
    n_examples = vec.shape[0]
    counts = torch.bincount(vec.example, minlength=n_examples)
    order = vec.example.argsort(stable=True)
    slot = torch.empty_like(vec.example)
    slot[order] = (torch.arange(len(order), device=order.device)
                   - (counts.cumsum(0) - counts)[vec.example[order]])
    return slot, int(counts.max())


# ---- edges across unspliced blocks ---------------------------------------------------------
def _cut_edges(
    graph: SiteGraph,
    cut: _CutForward,
    moves: dict[str, _Vectors],
    cotangents: dict[str, _Vectors],
    weights: dict[tuple[str, str], Tensor],
) -> None:
    """Edges through the cut forward's graph: w(u → d) = Σ_b Δu(b) · Jᵀ v_d(b) = v_d(b) · J Δu(b).

    Each upstream site's edges are computed either in the VJPs of its downstream sites'
    cotangents (backward: one row per packed downstream cell, every upstream leaf at once) or
    in JVPs of its own moves (forward: one row per packed upstream cell, every downstream site
    at once), whichever ``_forward_sites`` finds cheaper. Both give the same sums."""
    sites = {s.name: s for s in graph.sites}
    up_slots = {name: _slots(vec) for name, vec in moves.items()}
    down_slots = {name: _slots(vec) for name, vec in cotangents.items()}
    forward = _forward_sites(sites, list(weights), {k: v[1] for k, v in up_slots.items()},
                             {k: v[1] for k, v in down_slots.items()})
    for up in (s for s in graph.sites if s.name in forward):
        downs = [s for s in graph.sites if (up.name, s.name) in weights]
        jvp = cut.jvp(up, downs)
        for t, owner, keep in _chunks(moves[up.name], *up_slots[up.name]):
            for name, y in jvp(t).items():
                if y is not None:
                    dots = _dots(cotangents[name], y)  # [R, b, n_down]
                    weights[(up.name, name)].index_add_(1, owner[keep], dots[keep].T)
    for down in graph.sites:
        ups = [u for u in graph.upstream[down.name]
               if (u.name, down.name) in weights and u.name not in forward]
        if not ups:
            continue
        for v, owner, keep in _chunks(cotangents[down.name], *down_slots[down.name]):
            for name, g in cut.vjp(down, v, ups).items():
                if g is not None:
                    dots = _dots(moves[name], g)  # [R, b, n_up]
                    weights[(name, down.name)].index_add_(0, owner[keep], dots[keep])


def _chunks(vectors: _Vectors, slot: Tensor, n_rows: int):
    """The packed rows of ``vectors`` (``_slots``) in chunks of about CHUNK_FLOATS: (rows
    [R, b, pos, d], owner [R, b] (-1: empty), owner >= 0) per chunk."""
    per_row = CHUNK_FLOATS // math.prod(vectors.shape) + 1
    for start in range(0, n_rows, per_row):
        packed, owner = _pack(vectors, slot, start, min(per_row, n_rows - start))
        yield packed, owner, owner >= 0


def _depth(site: Site) -> float:
    """Where a site's activation is computed, in quarter blocks from the embedding (attention
    about a quarter of a block, the MLP the rest): how far a VJP or JVP row between two sites
    runs, the cost proxy of _forward_sites."""
    if site.kind == "embed":
        return 0.0
    return 4.0 * site.layer + {"attn_z": 0.75, "attn": 1.0, "mlp": 4.0, "resid": 4.0}[site.kind]


def _forward_sites(
    sites: dict[str, Site], pairs: list[tuple[str, str]], up_rows: dict[str, int],
    down_rows: dict[str, int],
) -> set[str]:
    """The upstream sites whose edges are cheaper by JVPs than in their downstream sites' VJPs.

    Cost: rows × the distance the rows run (_depth; a quarter block at least): a forward site
    pays its packed rows to its farthest downstream site, a downstream site its packed rows to
    its farthest upstream site left backward. Chosen greedily, one site flipped at a time
    while that lowers the cost (sites are few)."""
    downs_of: dict[str, list[str]] = {}
    ups_of: dict[str, list[str]] = {}
    for up, down in pairs:
        downs_of.setdefault(up, []).append(down)
        ups_of.setdefault(down, []).append(up)

    def far(up: str, down: str) -> float:
        return max(_depth(sites[down]) - _depth(sites[up]), 0.25)

    def cost(forward: set[str]) -> float:
        total = sum(up_rows[u] * max(far(u, d) for d in downs_of[u]) for u in forward)
        for down, ups in ups_of.items():
            back = [far(u, down) for u in ups if u not in forward]
            total += down_rows[down] * max(back, default=0.0)
        return total

    forward: set[str] = set()
    best = cost(forward)
    while True:
        trial, flip = min((cost(forward ^ {u}), u) for u in sorted(downs_of))
        if trial >= best:
            return forward
        best, forward = trial, forward ^ {flip}


def _error_cotangent(model: SplicedModel, site: Site, state: _SiteState) -> Tensor:
    """∂(g · err)/∂x = g − Σ_active (W_dec[i] · g) W_enc[:, i] (bare: g), [b, pos, d]."""
    g = state.grad
    if not model.dictionaries:
        return g
    d = model.dictionaries[site.name]
    b, p, f = state.active.unbind(-1)  # [A]
    coef = (d.W_dec.detach()[f] * g[b, p]).sum(-1)  # [A]
    out = g.clone().view(-1, g.shape[-1])
    # W_enc's columns gathered row by row (index_select), not as rows of its transpose: the
    # strided gather of .T[f] is several times slower at thousands of active entries
    out.T.index_add_(1, b * g.shape[1] + p, d.W_enc.detach().index_select(1, f) * -coef)
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
