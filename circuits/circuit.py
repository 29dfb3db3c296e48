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
Every node also has ``label`` (a reader's name for a feature, circuits/labels.py; None until one
is given) and ``neuronpedia`` (the feature's Neuronpedia page where its dictionary has an id in
sae_lens' directory, else None).
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
from saes.dictionary import neuronpedia_url
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
        """From ``to_json``'s dict, or one of an older format (nodes with "kind", not "role").

        Any other structure is a ValueError naming what is wrong, found before anything is
        built: the meta (`CircuitMeta.from_json`, site shapes included, so a huge one allocates
        nothing), then each node (its site, index, position and role must agree with the site
        shapes: an index out of range, e.g. a negative one, never picks another node) and each
        edge (between nodes of the file).
        """
        if not isinstance(data, dict):
            raise ValueError(f"it holds a JSON {type(data).__name__}, not a circuit object")
        version = data.get("format")
        if version != FORMAT and version not in OLD_FORMATS:
            raise ValueError(f"its format is {version!r}, not {FORMAT!r} or an older one "
                             f"this version reads ({', '.join(OLD_FORMATS)})")
        missing = [key for key in ("meta", "nodes", "edges") if key not in data]
        if missing:
            raise ValueError(f"the circuit lacks the key(s) {missing}")
        meta = CircuitMeta.from_json(data["meta"])
        graph: nx.DiGraph = nx.DiGraph()
        for node_id, attrs in _read_nodes(data["nodes"], meta, old=version in OLD_FORMATS):
            graph.add_node(node_id, **attrs)
        for source, target, attrs in _read_edges(data["edges"], graph):
            graph.add_edge(source, target, **attrs)
        return cls(graph, meta)

    def save(self, path: str | Path) -> Path:
        """Write the circuit as JSON (floats written exactly: the round trip is lossless)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1))  # inf thresholds as Infinity
        return path

    @classmethod
    def load(cls, path: str | Path) -> Circuit:
        """Read circuit.json; a file that is no circuit (not JSON, or of another structure:
        `from_json`) is a ValueError naming the file and its problem."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no circuit file at {path}; write one with Circuit.save")
        if path.is_dir():
            hint = (f"; pass {path / 'circuit.json'}" if (path / "circuit.json").is_file()
                    else "; pass a circuit.json")
            raise ValueError(f"{path} is a directory, not a circuit file{hint}")
        try:
            return cls.from_json(json.loads(path.read_text()))
        except ValueError as err:  # json's errors, UnicodeDecodeError and from_json's
            raise ValueError(f"{path} is not a circuit file: {err}; pass one written by "
                             "Circuit.save or `circuits discover`") from err

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
        page = scores.dictionaries.get(site, {}).get("neuronpedia")
        for flat in mask.flatten().nonzero()[:, 0].tolist():
            node_id, role, pos, index = _node(scores, site, flat)
            feature = index if role == "feature" else None
            graph.add_node(
                node_id, site=site, layer=layer, row=row, role=role, index=index,
                feature=feature, position=pos, effect=float(values[flat]), label=None,
                neuronpedia=None if page is None or feature is None
                else neuronpedia_url(page, feature),
            )
    if edges is not None:
        graph.add_node(METRIC, site=METRIC, layer=None, row=len(scores.sites), role="metric",
                       index=None, feature=None, position=None, effect=None, label=None,
                       neuronpedia=None)
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
        dictionaries={k: dict(v) for k, v in scores.dictionaries.items()},
        prompt=_prompt(model, data),
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
                      scores.components_only, scores.signed, dict(scores.options),
                      dict(scores.dictionaries))
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


def _prompt(model, data) -> tuple[str, ...] | None:
    """The first clean prompt's tokens (its real length, no padding), given model and data."""
    if model is None or not isinstance(data, Dataset) or len(data) == 0:
        return None
    ids = data.clean_tokens[0, : int(data.lengths[0])].tolist()
    return tuple(str(model.tokenizer.decode([i])) for i in ids)


NODE_KEYS = ("site", "role", "index", "feature", "position", "effect")  # what render reads
OPTIONAL_TEXT = ("label", "neuronpedia")  # node attributes that are a string or null


def _read_nodes(nodes: object, meta: CircuitMeta, *, old: bool
                ) -> list[tuple[str, dict[str, Any]]]:
    """(id, attributes) of each node of circuit.json, checked against ``meta``."""
    if not isinstance(nodes, list):
        raise ValueError(f'"nodes" is a {type(nodes).__name__}, not a list')
    read: dict[str, dict[str, Any]] = {}
    for i, node in enumerate(nodes):
        if not isinstance(node, dict):
            raise ValueError(f"node {i} is a {type(node).__name__}, not an object")
        attrs = {"role" if old and k == "kind" else k: v for k, v in node.items()}
        node_id = attrs.pop("id", None)
        if not isinstance(node_id, str):
            raise ValueError(f"node {i} has no string 'id' (got {node_id!r})")
        problem = _node_problem(node_id, attrs, meta)
        if problem:
            raise ValueError(f"node {i} ({node_id!r}) {problem}")
        if node_id in read:
            raise ValueError(f"node {i}: the id {node_id!r} is taken by an earlier node")
        read[node_id] = attrs
    return list(read.items())


def _node_problem(node_id: str, attrs: dict[str, Any], meta: CircuitMeta) -> str | None:
    """What is wrong with one node, or None: its keys, and site, index, position, role and id
    agreeing with each other and with the site shapes."""
    missing = [key for key in NODE_KEYS if key not in attrs]
    if missing:
        return f"lacks the key(s) {missing}"
    role, site, index, pos = attrs["role"], attrs["site"], attrs["index"], attrs["position"]
    if role == METRIC:
        return None if node_id == METRIC else f"is a metric node; its id must be {METRIC!r}"
    if not isinstance(site, str) or site not in meta.site_shapes:
        return f"has site {site!r}, not one of the circuit's sites {list(meta.sites)}"
    shape = meta.site_shapes[site]
    if not _is_index(index, shape[-1]):
        return f"has index {index!r}; site {site!r} has nodes 0 to {shape[-1] - 1}"
    if meta.per_position and not _is_index(pos, shape[0]):
        return f"has position {pos!r}; the circuit has positions 0 to {shape[0] - 1}"
    if not meta.per_position and pos is not None:
        return f"has position {pos!r} in a circuit summed over positions (it must be null)"
    expected: NodeRole = ("component" if meta.components_only
                          else "error" if index == shape[-1] - 1 else "feature")
    if role != expected:
        return f"has role {role!r}, but index {index} of site {site!r} is its {expected} node"
    feature = index if role == "feature" else None
    if attrs["feature"] != feature:
        return f"has feature {attrs['feature']!r}; a {role} node of index {index} has {feature}"
    effect = attrs["effect"]
    if not isinstance(effect, int | float) or isinstance(effect, bool):
        return f"has effect {effect!r}; it must be a number"
    for name in OPTIONAL_TEXT:
        if not isinstance(attrs.get(name), str | None):
            return f"has {name} {attrs[name]!r}; it must be a string or null"
    base = {"component": site, "error": f"{site}/err"}.get(role, f"{site}/{index}")
    want = base if pos is None else f"{base}@{pos}"
    return None if node_id == want else f"has the wrong id: its site, index and position make "\
                                         f"it {want!r}"


def _is_index(value: object, size: int) -> bool:
    """An int (not a bool) in 0..size-1: a negative one would count from the end."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < size


def _read_edges(edges: object, graph: nx.DiGraph) -> list[tuple[str, str, dict[str, Any]]]:
    """(source, target, attributes) of each edge of circuit.json, between nodes of ``graph``."""
    if not isinstance(edges, list):
        raise ValueError(f'"edges" is a {type(edges).__name__}, not a list')
    read = []
    for i, edge in enumerate(edges):
        if not isinstance(edge, dict):
            raise ValueError(f"edge {i} is a {type(edge).__name__}, not an object")
        attrs = dict(edge)
        source, target = attrs.pop("source", None), attrs.pop("target", None)
        for end, node in (("source", source), ("target", target)):
            if not isinstance(node, str) or node not in graph:
                raise ValueError(f"edge {i} has {end} {node!r}, which is not a node of the file")
        if source == METRIC:
            raise ValueError(f"edge {i} leaves the metric node; edges end there")
        weight = attrs.get("weight")
        if not isinstance(weight, int | float) or isinstance(weight, bool):
            raise ValueError(f"edge {i} ({source} -> {target}) has weight {weight!r}; it must "
                             "be a number")
        read.append((source, target, attrs))
    return read


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
