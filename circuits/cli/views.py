"""The views of a run's circuit, written from the circuit and its feature contexts (if any):
``circuit.svg`` (circuits/render.py), ``circuit.html`` (the interactive view, circuits/html.py)
and ``attribution-graph.json``, the export Neuronpedia's
and circuit-tracer's graph viewers open (circuits/export.py). `discover` writes them; `label`
and `features` write them again, as labels and contexts change what they show."""

from __future__ import annotations

from pathlib import Path

from circuits.circuit import Circuit
from circuits.export import save_attribution_graph
from circuits.features import FILE as FEATURES_FILE
from circuits.features import FeatureContexts
from circuits.html import save_html

GRAPH_FILE = "attribution-graph.json"
HTML_FILE = "circuit.html"


def write_views(folder: Path, circuit: Circuit, features: FeatureContexts | None,
                slug: str) -> list[str]:
    """Write the views into ``folder``; returns the names written (circuit.dot instead of the
    SVG where Graphviz is missing)."""
    svg = Path(circuit.to_svg(folder / "circuit.svg"))
    page = save_html(circuit, folder / HTML_FILE, features.to_json() if features else None)
    save_attribution_graph(circuit, folder / GRAPH_FILE, features, slug=slug)
    return [svg.name, page.name, GRAPH_FILE]


def run_features(folder: Path) -> FeatureContexts | None:
    """The run's features.json, or None if it has none (a broken one is a ValueError)."""
    path = folder / FEATURES_FILE
    return FeatureContexts.load(path) if path.is_file() else None
