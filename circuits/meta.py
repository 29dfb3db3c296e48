"""`CircuitMeta`: what a circuit was built from, as one typed record.

`build` writes it, `Circuit` keeps it next to its graph, `render` reads it for the legend and the
layout (render never sees a `Circuit`, so circuit.py and render.py do not import each other).
In circuit.json it is the "meta" object; files written before the rename of ``bare`` to
``components_only`` still read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
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

    def __post_init__(self) -> None:
        check_choice("aggregation", self.aggregation, AGGREGATIONS)

    @property
    def per_position(self) -> bool:
        return self.aggregation == "none"

    def to_json(self) -> dict[str, Any]:
        """The "meta" object of circuit.json (tuples as lists)."""
        out = asdict(self)
        out["tokens"] = None if self.tokens is None else list(self.tokens)
        out["sites"] = list(self.sites)
        out["site_shapes"] = {k: list(v) for k, v in self.site_shapes.items()}
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CircuitMeta:
        """From the "meta" object of circuit.json, also one written with ``bare``. A missing
        key is a KeyError naming it, an unknown one a ValueError."""
        data = {_RENAMED.get(k, k): v for k, v in data.items()}
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"unknown circuit meta key(s) {unknown}; known keys are {names}")
        values = {name: data[name] for name in names}
        values["tokens"] = None if values["tokens"] is None else tuple(values["tokens"])
        values["sites"] = tuple(values["sites"])
        values["site_shapes"] = {k: tuple(v) for k, v in values["site_shapes"].items()}
        values["options"] = dict(values["options"])
        return cls(**values)
