"""`build(scores, ...)` -> `Circuit`: the selected nodes and their edges as a networkx graph.

A node is one feature or error node of a site (at one position when positions are kept); an
edge u -> d carries the weight of circuits/edges.py, and the last sites' nodes have an edge to
the `metric` node. Edges are computed with the method the registry names for the scores'
method (``METHODS[method].edges``: atp for exact and atp*, relp for relp* and column), with the
options the scores record (relp's rules, ig's steps); ``edge_method`` overrides it.
The Circuit remembers what it was built from (`CircuitMeta`: method, model, aggregation,
thresholds, number of examples, the per-site score shapes, the prompt tokens per position), so
that ``selection()`` gives back masks shaped exactly like the scores, also after a JSON round
trip. Drawing is in circuits/render.py.

Node ids: ``"{site}/{feature}"``, ``"{site}/err"`` (error node) or ``"{site}"`` (a component of
a model without dictionaries), with ``"@{pos}"`` appended when positions are kept; the metric is
``"metric"``. Each node's ``role`` (`NodeRole`) says which: feature, error, component, metric.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import torch
from torch import Tensor

from circuits import render
from circuits.attribute import nothing_to_attribute
from circuits.edges import METRIC, EdgeScores, attribute_edges
from circuits.meta import CircuitMeta
from circuits.methods import EDGE_METHODS, METHODS
from circuits.scores import Scores
from circuits.select import count, select_nodes
from circuits.types import Aggregation, NodeRole
from saes.splice import SplicedModel
from tasks.pairs import Dataset, PromptPair

FORMAT = "circuits.circuit/2"  # /2: nodes carry "role" (was "kind"), meta "components_only"
OLD_FORMATS = ("circuits.circuit/1",)  # still read
DEFAULT_RELATIVE_THRESHOLD = 0.01  # of the total effect; see default_node_threshold
DEFAULT_MAX_NODES = 500  # the default threshold keeps at most this many nodes (ties aside)


@dataclass
class Circuit:
    """A circuit: ``graph`` (nx.DiGraph) plus what it was built from (``meta``)."""

    graph: nx.DiGraph
    meta: CircuitMeta

    @property
    def n_nodes(self) -> int:
        """Feature, error and component nodes (the metric node not counted)."""
        return sum(1 for _, role in self.graph.nodes(data="role") if role != "metric")

    @property
    def n_edges(self) -> int:
        return self.graph.number_of_edges()

    @property
    def site_shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self.meta.site_shapes)

    def to_networkx(self) -> nx.DiGraph:
        """A copy of the graph for one's own analysis."""
        return self.graph.copy()

    def selection(self) -> dict[str, Tensor]:
        """site -> bool mask shaped like that site's scores: True at the circuit's nodes."""
        masks = {s: torch.zeros(shape, dtype=torch.bool) for s, shape in self.site_shapes.items()}
        for _, attrs in self.graph.nodes(data=True):
            if attrs["role"] == "metric":
                continue
            mask = masks[attrs["site"]]
            if mask.ndim == 2:
                mask[attrs["position"], attrs["index"]] = True
            else:
                mask[attrs["index"]] = True
        return masks

    def __repr__(self) -> str:
        m = self.meta
        return (f"Circuit({m.method!r} on {m.model!r}, {self.n_nodes} nodes, "
                f"{self.n_edges} edges, aggregation={m.aggregation!r})")

    # ---- persistence -------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        nodes = [{"id": n, **attrs} for n, attrs in self.graph.nodes(data=True)]
        edges = [{"source": u, "target": v, **attrs} for u, v, attrs in self.graph.edges(data=True)]
        return {"format": FORMAT, "meta": self.meta.to_json(), "nodes": nodes, "edges": edges}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Circuit:
        """From ``to_json``'s dict, or one of an older format (nodes with "kind", not "role")."""
        version = data.get("format")
        if version != FORMAT and version not in OLD_FORMATS:
            raise ValueError(f"not a circuit file of format {FORMAT!r} (got {version!r}); "
                             "write it with Circuit.save")
        graph: nx.DiGraph = nx.DiGraph()
        for node in data["nodes"]:
            attrs = dict(node)
            if version in OLD_FORMATS:
                attrs = {"role" if k == "kind" else k: v for k, v in attrs.items()}
            graph.add_node(attrs.pop("id"), **attrs)
        for edge in data["edges"]:
            attrs = dict(edge)
            graph.add_edge(attrs.pop("source"), attrs.pop("target"), **attrs)
        return cls(graph, CircuitMeta.from_json(data["meta"]))

    def save(self, path: str | Path) -> Path:
        """Write the circuit as JSON (floats written exactly: the round trip is lossless)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1))  # inf thresholds as Infinity
        return path

    @classmethod
    def load(cls, path: str | Path) -> Circuit:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no circuit file at {path}; write one with Circuit.save")
        return cls.from_json(json.loads(path.read_text()))

    # ---- drawing (circuits/render.py) --------------------------------------------------------
    def to_dot(self) -> str:
        """Graphviz source."""
        return render.to_dot(self.graph, self.meta)

    def to_svg(self, path: str | Path) -> Path:
        """Draw to an SVG file; without Graphviz installed, write the .dot source and warn."""
        return render.to_svg(self.graph, self.meta, path)


def default_node_threshold(scores: Scores) -> float:
    """1% of the total effect (the largest |Σ scores| of one site), raised if needed so that at
    most DEFAULT_MAX_NODES nodes pass.

    Every resid site is a cut of the model, so its node scores sum to (about) the metric's change
    from clean to patch; a fixed fraction of it is scale-free (logit differences differ between
    models and tasks, so one absolute number, e.g. Sparse Feature Circuits' 0.1 for Pythia, fits
    one setting only). On the organism's agreement tasks it keeps ~100 nodes. Where effects are
    spread thin (e.g. random weights) 1% can keep thousands of nodes: no readable graph, and
    edge cost grows with the nodes kept, hence the cap.
    """
    totals = [abs(float(v.sum())) for v in scores.sites.values()]
    threshold = DEFAULT_RELATIVE_THRESHOLD * max(totals, default=0.0)
    flat = torch.cat([v.abs().flatten().float().cpu() for v in scores.sites.values()])
    if len(flat) > DEFAULT_MAX_NODES:
        threshold = max(threshold, float(flat.topk(DEFAULT_MAX_NODES).values[-1]))
    return threshold


def build(
    scores: Scores,
    *,
    node_threshold: float | None = None,
    top_k: int | None = None,
    edge_threshold: float | None = None,
    edges: EdgeScores | bool | None = None,
    edge_method: str | None = None,
    model: SplicedModel | None = None,
    data: Dataset | Sequence[PromptPair] | None = None,
    tokens: Sequence[str] | None = None,
    aggregation: Aggregation | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> Circuit:
    """The circuit of the nodes with |score| >= node_threshold (or the top_k nodes), and the
    edges among them with |weight| >= edge_threshold (None: every non-zero edge).

    edges: precomputed EdgeScores; True, or None with model and data given: computed here (see
    ``circuit_edges``: with ``METHODS[scores.method].edges``, or ``edge_method`` if given, and
    the options the scores record); False, or None without model: nodes only.
    Neither threshold given: default_node_threshold(scores). aggregation "sum" turns per-position
    scores into position-summed ones (None: the scores' own). tokens: one label per position.
    """
    if scores.per_example:
        raise ValueError("build needs averaged scores; attribute with per_example=False")
    scores = _aggregate(scores, aggregation)
    scores.check_finite()
    if all(not bool(v.any()) for v in scores.sites.values()):
        raise ValueError(nothing_to_attribute(scores) + "; there is no circuit to build")
    if node_threshold is None and top_k is None:
        node_threshold = default_node_threshold(scores)
    if edge_threshold is not None and (math.isnan(edge_threshold) or edge_threshold < 0):
        raise ValueError(f"edge_threshold must be a number >= 0, got {edge_threshold!r}")
    selection = select_nodes(scores, node_threshold=node_threshold, top_k=top_k)
    if count(selection) == 0:
        largest = max(float(v.abs().max()) for v in scores.sites.values())
        kept = f"top_k={top_k}" if top_k is not None else f"node_threshold={node_threshold:.4g}"
        warnings.warn(f"the circuit is empty: {kept} keeps no node (the largest |score| is "
                      f"{largest:.4g}); lower the threshold", RuntimeWarning, stacklevel=2)
    if data is not None and model is not None:
        data = model.tokenize(data if isinstance(data, Dataset) else list(data))
    if edges is True or (edges is None and model is not None and data is not None):
        if model is None or data is None:
            raise ValueError("edges=True needs the model and data: build(scores, edges=True, "
                             "model=model, data=data), or pass edges=attribute_edges(...)")
        edges = circuit_edges(scores, selection, model, data, edge_method=edge_method,
                              batch_size=batch_size, progress=progress)
    elif edge_method is not None and not isinstance(edges, EdgeScores):
        raise ValueError(f"edge_method={edge_method!r} needs edges computed here: pass model= "
                         "and data= (and not edges=False), or drop edge_method=")
    elif isinstance(edges, EdgeScores) and edge_method not in (None, edges.method):
        raise ValueError(f"edge_method={edge_method!r} but the edges given were computed with "
                         f"{edges.method!r}; drop one of edges= and edge_method=")
    if not isinstance(edges, EdgeScores):
        edges = None
    if edges is not None:
        _check_edges(scores, selection, edges)

    per_position = scores.per_position
    seq = next(iter(scores.sites.values())).shape[0] if per_position else None
    tokens = _tokens(tokens, model, data, seq)
    graph: nx.DiGraph = nx.DiGraph()
    for row, (site, mask) in enumerate(selection.items()):
        values = scores.sites[site].detach().cpu().flatten()
        layer = _layer(site)
        for flat in mask.flatten().nonzero()[:, 0].tolist():
            node_id, role, pos, index = _node(scores, site, flat)
            graph.add_node(
                node_id, site=site, layer=layer, row=row, role=role, index=index,
                feature=index if role == "feature" else None, position=pos,
                effect=float(values[flat]),
            )
    if edges is not None:
        graph.add_node(METRIC, site=METRIC, layer=None, row=len(scores.sites), role="metric",
                       index=None, feature=None, position=None, effect=None)
        for up, u_flat, down, d_flat, w in edges.edges():
            source = _node(scores, up, u_flat)[0]
            target = METRIC if d_flat is None else _node(scores, down, d_flat)[0]
            if source not in graph or target not in graph:
                continue  # edges computed for a larger selection
            if edge_threshold is None or abs(w) >= edge_threshold:
                graph.add_edge(source, target, weight=w)
    meta = CircuitMeta(
        method=scores.method, model=scores.model, aggregation=scores.aggregation,
        node_threshold=node_threshold, top_k=top_k, edge_threshold=edge_threshold,
        n_examples=scores.n_examples, signed=scores.signed,
        components_only=scores.components_only, options=dict(scores.options),
        edges=edges is not None, edge_method=None if edges is None else edges.method,
        tokens=None if tokens is None else tuple(tokens), sites=tuple(scores.sites),
        site_shapes={k: tuple(v.shape) for k, v in scores.sites.items()},
    )
    return Circuit(graph, meta)


def circuit_edges(
    scores: Scores,
    selection: dict[str, Tensor],
    model: SplicedModel,
    data: Dataset | Sequence[PromptPair],
    *,
    edge_method: str | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> EdgeScores:
    """Edges among ``selection`` for a circuit of ``scores``: computed with the method that
    defines the scores' method's edges (``METHODS[scores.method].edges``), or ``edge_method``
    (one of EDGE_METHODS), with the options the scores record that it takes (relp's rules, ig's
    steps; otherwise its defaults)."""
    if edge_method is None:
        if scores.method not in METHODS:
            raise ValueError(f"scores of method {scores.method!r} are of no registered method; "
                             f"pass edge_method= (one of {', '.join(EDGE_METHODS)})")
        edge_method = METHODS[scores.method].edges
    if edge_method not in EDGE_METHODS:
        raise ValueError(f"edge_method {edge_method!r} has no edge definition; use one of "
                         f"{', '.join(EDGE_METHODS)}")
    options = {name: scores.options[name] for name in METHODS[edge_method].option_names
               if scores.options.get(name) is not None}
    if "rules" in options:
        options["rules"] = tuple(options["rules"])
    return attribute_edges(model, data, edge_method, selection, batch_size=batch_size,
                           progress=progress, **options)


def _aggregate(scores: Scores, aggregation: Aggregation | None) -> Scores:
    if aggregation is None or aggregation == scores.aggregation:
        return scores
    if aggregation == "sum" and scores.aggregation == "none":
        return Scores(scores.method, scores.model, "sum", False,
                      {k: v.sum(0) for k, v in scores.sites.items()}, scores.n_examples,
                      scores.components_only, scores.signed, dict(scores.options))
    raise ValueError(f"cannot build a circuit with aggregation {aggregation!r} from scores with "
                     f"aggregation {scores.aggregation!r}; attribute with aggregation="
                     f"{aggregation!r}")


def _check_edges(scores: Scores, selection: dict[str, Tensor], edges: EdgeScores) -> None:
    if edges.aggregation != scores.aggregation:
        raise ValueError(f"edges are {edges.aggregation!r}-aggregated but the scores "
                         f"{scores.aggregation!r}; compute both with the same aggregation")
    for site, mask in selection.items():
        shape = edges.shapes.get(site)
        if shape != tuple(mask.shape):
            raise ValueError(f"edges were computed for site {site!r} of shape {shape}, the "
                             f"scores have {tuple(mask.shape)}: edges of another model or data")
        have = torch.zeros(mask.numel(), dtype=torch.bool)
        have[edges.nodes[site]] = True
        missing = int((mask.flatten().cpu() & ~have).sum())
        if missing:
            raise ValueError(
                f"{missing} selected node(s) of site {site!r} have no edges computed; compute "
                "edges for this selection (attribute_edges(model, data, method, selection)) "
                "or raise the node threshold"
            )


def _tokens(tokens, model, data, seq: int | None) -> list[str] | None:
    """Column labels: given, or the first clean prompt's tokens when positions are kept."""
    if seq is None:
        return None if tokens is None else list(tokens)
    if tokens is None and model is not None and isinstance(data, Dataset):
        ids = data.clean_tokens[0, :seq].tolist()
        tokens = [model.tokenizer.decode([i]) for i in ids]
    if tokens is not None and len(tokens) != seq:
        raise ValueError(f"tokens has {len(tokens)} labels for {seq} positions; pass one token "
                         "string per position")
    return None if tokens is None else [str(t) for t in tokens]


def _layer(site: str) -> int:
    return -1 if site == "embed" else int(site.rsplit("_", 1)[1])


def _node(scores: Scores, site: str, flat: int) -> tuple[str, NodeRole, int | None, int]:
    """(id, role, position, index) of the node at ``flat`` in the flattened scores of ``site``
    (also an edge endpoint: edges are indexed like the scores they were selected from)."""
    pos, index = (divmod(flat, scores.n_nodes(site)) if scores.per_position
                  else (None, flat))
    role: NodeRole
    if scores.components_only:
        base, role = site, "component"
    elif index == scores.error_index(site):
        base, role = f"{site}/err", "error"
    else:
        base, role = f"{site}/{index}", "feature"
    return (base if pos is None else f"{base}@{pos}"), role, pos, index
