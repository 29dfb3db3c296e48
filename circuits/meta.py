"""`CircuitMeta`: what a circuit was built from, as one typed record.

`build` writes it, `Circuit` keeps it next to its graph, `render` reads it for the legend and the
layout (render never sees a `Circuit`, so circuit.py and render.py do not import each other).
In circuit.json it is the "meta" object; files written before the rename of ``bare`` to
``components_only`` still read.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from circuits.types import AGGREGATIONS, Aggregation, check_choice

_RENAMED = {"bare": "components_only"}  # old circuit.json meta key -> field


@dataclass(frozen=True)
class CircuitMeta:
    """The scores, thresholds and prompt a circuit was built from."""

    method: str  # the node attribution method
    model: str  # the SplicedModel's name
    aggregation: Aggregation  # "sum": nodes summed over positions; "none": one per position
    node_threshold: float | None  # |score| >= this kept (None when top_k chose the nodes)
    top_k: int | None  # the k strongest nodes kept (None: by threshold)
    edge_threshold: float | None  # |weight| >= this kept (None: every non-zero edge)
    n_examples: int  # prompt pairs the scores average over
    signed: bool  # False: the method scores magnitudes only (atp*)
    components_only: bool  # True: no dictionaries, a site's one node is the component
    options: dict[str, Any]  # the node method's options (Scores.options)
    edges: bool  # whether edges were computed
    edge_method: str | None  # the method that computed the edges (None: no edges)
    tokens: tuple[str, ...] | None  # one label per position (per-position circuits)
    sites: tuple[str, ...]  # scored sites, in model order
    site_shapes: dict[str, tuple[int, ...]]  # each site's scores: [n_nodes] or [pos, n_nodes]
    # site -> where its dictionary came from: "source" (release/sae_id) and "neuronpedia" (id of
    # its Neuronpedia pages), where known (Scores.dictionaries); absent in older files
    dictionaries: dict[str, dict[str, str]] = field(default_factory=dict)
    # the first clean prompt of the data it was built from, one string per token (what a view
    # or an export shows as the prompt); None when built without data, absent in older files
    prompt: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_choice("aggregation", self.aggregation, AGGREGATIONS)

    @property
    def per_position(self) -> bool:
        return self.aggregation == "none"

    def to_json(self) -> dict[str, Any]:
        """The "meta" object of circuit.json (tuples as lists)."""
        out = asdict(self)
        out["tokens"] = None if self.tokens is None else list(self.tokens)
        out["prompt"] = None if self.prompt is None else list(self.prompt)
        out["sites"] = list(self.sites)
        out["site_shapes"] = {k: list(v) for k, v in self.site_shapes.items()}
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CircuitMeta:
        """From the "meta" object of circuit.json, also one written with ``bare``.

        Anything else is a ValueError naming the key and what it must be: a missing or unknown
        key, a wrong type, a site shape that is not [n_nodes] or [pos, n_nodes] of positive
        sizes, or so large (over MAX_NODES) that no scores of it could have been held; checked
        before anything is allocated from it.
        """
        if not isinstance(data, dict):
            raise ValueError(f'"meta" is a {type(data).__name__}, not an object')
        data = {_RENAMED.get(k, k): v for k, v in data.items()}
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"unknown circuit meta key(s) {unknown}; known keys are {names}")
        missing = [name for name in names if name not in data and name not in _OPTIONAL]
        if missing:
            raise ValueError(f"circuit meta lacks the key(s) {missing}")
        for name, (ok, what) in _CHECKS.items():
            if name in data and not ok(data[name]):
                raise ValueError(f"circuit meta {name!r} is {_show(data[name])}; it must be {what}")
        values = {name: data[name] for name in names if name in data}
        values["tokens"] = None if values["tokens"] is None else tuple(values["tokens"])
        if values.get("prompt") is not None:
            values["prompt"] = tuple(values["prompt"])
        values["sites"] = tuple(values["sites"])
        values["site_shapes"] = {k: tuple(v) for k, v in values["site_shapes"].items()}
        values["options"] = dict(values["options"])
        _check_shapes(values)
        return cls(**values)


MAX_NODES = 2**31  # positions × nodes over all sites: scores this large never fit in memory


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _threshold(value: object) -> bool:
    return value is None or (_is_number(value) and value >= 0)  # type: ignore[operator]


def _strings(value: object) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)


def _shapes(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(v, list | tuple) and len(v) in (1, 2) and all(_is_int(n) and n > 0 for n in v)
        for v in value.values())


_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {  # field -> (check, what it must be)
    "method": (lambda v: isinstance(v, str), "a string"),
    "model": (lambda v: isinstance(v, str), "a string"),
    "aggregation": (lambda v: v in AGGREGATIONS, f"one of {list(AGGREGATIONS)}"),
    "node_threshold": (_threshold, "a number >= 0 or null"),
    "top_k": (lambda v: v is None or (_is_int(v) and v >= 1), "an integer >= 1 or null"),
    "edge_threshold": (_threshold, "a number >= 0 or null"),
    "n_examples": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "signed": (lambda v: isinstance(v, bool), "true or false"),
    "components_only": (lambda v: isinstance(v, bool), "true or false"),
    "options": (lambda v: isinstance(v, dict), "an object"),
    "edges": (lambda v: isinstance(v, bool), "true or false"),
    "edge_method": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "tokens": (lambda v: v is None or _strings(v), "a list of strings or null"),
    "sites": (_strings, "a list of site names"),
    "site_shapes": (_shapes, "an object of site -> [n_nodes] or [positions, n_nodes], sizes > 0"),
    "dictionaries": (lambda v: isinstance(v, dict) and all(
        isinstance(d, dict) and all(isinstance(x, str) for x in [*d, *d.values()])
        for d in v.values()), "an object of site -> {source, neuronpedia: strings}"),
    "prompt": (lambda v: v is None or _strings(v), "a list of strings or null"),
}
_OPTIONAL = {"dictionaries", "prompt"}  # keys a circuit.json of an earlier version lacks


def _check_shapes(values: dict[str, Any]) -> None:
    """The site shapes agree with the sites, the aggregation, the tokens and each other."""
    shapes: dict[str, tuple[int, ...]] = values["site_shapes"]
    if list(shapes) != list(values["sites"]):
        raise ValueError(f"circuit meta 'site_shapes' has sites {list(shapes)}, 'sites' "
                         f"{list(values['sites'])}; they must be the same, in the same order")
    ndim = 2 if values["aggregation"] == "none" else 1
    for site, shape in shapes.items():
        if len(shape) != ndim:
            raise ValueError(f"circuit meta 'site_shapes' of {site!r} is {list(shape)}; a circuit "
                             f"of aggregation {values['aggregation']!r} has {ndim}-d shapes")
        if values["components_only"] and shape[-1] != 1:
            raise ValueError(f"circuit meta 'site_shapes' of {site!r} is {list(shape)}; a "
                             "components-only circuit has one node per site (and position)")
    total = sum(math.prod(shape) for shape in shapes.values())
    if total > MAX_NODES:
        raise ValueError(f"circuit meta 'site_shapes' add up to {total} nodes, more than "
                         f"{MAX_NODES} (2**31) that any scores could hold; the file is corrupted")
    if ndim == 2:
        positions = {shape[0] for shape in shapes.values()}
        if len(positions) > 1:
            raise ValueError(f"circuit meta 'site_shapes' have {sorted(positions)} positions; "
                             "every site of a per-position circuit has the same")
        tokens = values["tokens"]
        if tokens is not None and positions and len(tokens) != min(positions):
            raise ValueError(f"circuit meta 'tokens' has {len(tokens)} labels for "
                             f"{min(positions)} positions; it must have one per position")


def _show(value: object) -> str:
    """A value for an error message, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
