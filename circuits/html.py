"""The interactive view of a circuit: ``circuit.html``, one self-contained file (its JavaScript,
CSS and data inline; no server, no network) that opens from the file system.

Laid out as circuits/render.py lays out the SVG (`render.layout`: a band per site, embed at the
bottom, the metric on top, a column per token position where the scores have positions), with
the same node colours and sizes (`render.node_style`). Hovering or clicking a node shows its
score, label, Neuronpedia link, top-activating contexts (from the run's features.json, format
circuits.features/1) and strongest incoming and outgoing edges; a click also highlights every
path through the node. Sliders set the node and edge thresholds, a search box finds a feature.

The page's code is circuits/view_assets/circuit.js and circuit.css, read here and inlined. The
data is one JSON object in the page: node places in pixels, edges as [source, target, weight]
sorted by |weight| (so the edges above a threshold are a prefix), contexts per feature.
"""

from __future__ import annotations

import html
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

from circuits import render
from circuits.circuit import Circuit

FEATURES_FORMAT = "circuits.features/1"
PX = 72.0  # pixels per inch of render's layout
MARGIN = 36.0  # pixels around the drawing
ASSETS = "view_assets"


def write_html(run_dir: str | Path) -> Path:
    """Write ``run_dir/circuit.html`` from the run's circuit.json and, if there is one, its
    features.json; returns the path. For `circuits discover`, and to re-write the page after
    features.json is added or changed."""
    run_dir = Path(run_dir)
    circuit = Circuit.load(run_dir / "circuit.json")
    features_path = run_dir / "features.json"
    features = read_features(features_path) if features_path.is_file() else None
    return save_html(circuit, run_dir / "circuit.html", features)


def save_html(circuit: Circuit, path: str | Path, features: dict[str, Any] | None = None) -> Path:
    """Write the page of ``circuit`` (with the contexts of ``features``, a features.json
    object) at ``path``; returns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_html(circuit, features), encoding="utf-8")
    return path


def read_features(path: str | Path) -> dict[str, Any]:
    """features.json, checked: a ValueError names the file and what is wrong with it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path} is not JSON: {err}") from err
    problem = _features_problem(data)
    if problem:
        raise ValueError(f"{path} is not a features file: {problem}")
    return data


def to_html(circuit: Circuit, features: dict[str, Any] | None = None) -> str:
    """The page as a string."""
    if features is not None:
        problem = _features_problem(features)
        if problem:
            raise ValueError(f"features are not a {FEATURES_FORMAT} object: {problem}")
    data = view_data(circuit, features)
    assets = resources.files("circuits") / ASSETS
    css = (assets / "circuit.css").read_text(encoding="utf-8")
    js = (assets / "circuit.js").read_text(encoding="utf-8")
    # JSON in a <script> element: "<" escaped so that no "</script>" in a label can end it
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    return _PAGE.format(title=html.escape(data["title"]), css=css, js=js, data=payload)


def view_data(circuit: Circuit, features: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the page draws: nodes (with their place, style and contexts' key), edges, rows,
    token columns, and the features' contexts of the circuit's nodes."""
    graph, meta = circuit.graph, circuit.meta
    pinned = render.layout(graph, meta)
    xs = [x for x, _ in pinned.xy.values()] + [pinned.left - 0.5]
    ys = [y for _, y in pinned.xy.values()] + [0.0]
    if pinned.columns:
        ys.append(pinned.token_y)
    x0, y1 = min(xs), max(ys)
    px = lambda x: round((x - x0) * PX + MARGIN, 1)
    py = lambda y: round((y1 - y) * PX + MARGIN, 1)  # y downward

    effects = [abs(a["effect"]) for _, a in graph.nodes(data=True) if a["role"] != "metric"]
    top = max(effects, default=0.0) or 1.0
    known = (features or {}).get("features", {})
    index = {n: i for i, n in enumerate(graph.nodes)}
    nodes, contexts = [], {}
    for n, a in graph.nodes(data=True):
        x, y = pinned.xy[n]
        node: dict[str, Any] = {
            "id": n, "site": a["site"], "role": a["role"], "feature": a.get("feature"),
            "position": a.get("position"), "effect": a.get("effect"),
            "label": a.get("label"), "neuronpedia": a.get("neuronpedia"),
            "x": px(x), "y": py(y), "key": None,
        }
        if a.get("position") is not None and meta.tokens:
            node["token"] = meta.tokens[a["position"]]
        source = meta.dictionaries.get(a["site"], {}).get("source")
        if source:
            node["dictionary"] = source
        if a["role"] == "metric":
            node.update(w=round(1.1 * PX), h=round(0.5 * PX), fill="#eeeeee", text="metric",
                        dark=False, box=False)
        else:
            style = render.node_style(a, top)
            node.update(w=round(style.size * PX, 1), h=round(style.size * 0.7 * PX, 1),
                        fill=style.fill, text=style.label, dark=style.dark, box=style.box)
            key = n.split("@")[0]
            if a["role"] == "feature" and key in known:
                node["key"] = key
                contexts[key] = known[key]
        nodes.append(node)
    edges = sorted(([index[u], index[v], float(a["weight"])] for u, v, a in graph.edges(data=True)),
                   key=lambda e: -abs(e[2]))
    rows = []
    for site, y in pinned.rows.items():
        band = [py(yy) for n, (_, yy) in pinned.xy.items() if graph.nodes[n]["site"] == site]
        rows.append({"label": site, "x": px(pinned.left), "y": py(y),
                     "top": min(band) - 0.3 * PX, "bottom": max(band) + 0.3 * PX})
    if "metric" in graph:
        rows.append({"label": "metric", "x": px(pinned.left), "y": py(pinned.xy["metric"][1]),
                     "top": None, "bottom": None})
    columns = [{"x": px(x), "y": py(pinned.token_y), "label": token}
               for x, token in pinned.columns]
    width = max([node["x"] + node["w"] for node in nodes] + [px(pinned.left) + 60]) + MARGIN
    height = max([node["y"] + node["h"] for node in nodes] + [c["y"] + 10 for c in columns]
                 + [2 * MARGIN]) + MARGIN
    corpus = (features or {}).get("corpus")
    return {
        "title": render.title(meta, circuit.n_nodes, circuit.n_edges),
        "features": contexts, "corpus": corpus, "hasFeatures": features is not None,
        "width": math.ceil(width), "height": math.ceil(height),
        "nodes": nodes, "edges": edges, "rows": rows, "columns": columns,
        "colors": {"positive": _hex(render.BLUE), "negative": _hex(render.RED)},
    }


def _hex(color: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*color)


def _features_problem(data: object) -> str | None:
    """What keeps ``data`` from being a features.json object the page can show, or None."""
    if not isinstance(data, dict):
        return f"it holds a JSON {type(data).__name__}, not an object"
    if data.get("format") != FEATURES_FORMAT:
        return f"its format is {data.get('format')!r}, not {FEATURES_FORMAT!r}"
    features = data.get("features")
    if not isinstance(features, dict):
        return '"features" is not an object of "<site>/<feature>" keys'
    for key, entry in features.items():
        if "@" in key:
            return f"feature key {key!r} carries a position; keys are '<site>/<feature>'"
        contexts = entry.get("contexts") if isinstance(entry, dict) else None
        if not isinstance(contexts, list):
            return f"feature {key!r} has no list of contexts"
        for j, c in enumerate(contexts):
            ok = (isinstance(c, dict) and isinstance(c.get("tokens"), list)
                  and all(isinstance(t, str) for t in c["tokens"])
                  and isinstance(c.get("mark"), int) and 0 <= c["mark"] < len(c["tokens"])
                  and isinstance(c.get("activation"), int | float))
            if not ok:
                return (f"context {j} of feature {key!r} is not {{tokens: [str], mark: index "
                        "into tokens, activation: number}")
    return None


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
{css}
</style>
</head>
<body>
<header>
  <h1 id="title">{title}</h1>
  <div id="controls">
    <label>nodes |score| &ge; <input type="range" id="node-threshold" min="0" max="1000"
      value="0"> <output id="node-threshold-value"></output></label>
    <label>edges |weight| &ge; <input type="range" id="edge-threshold" min="0" max="1000"
      value="0"> <output id="edge-threshold-value"></output></label>
    <input type="search" id="search" placeholder="find: resid_2/31, 31, a label"
      autocomplete="off"> <span id="search-count"></span>
    <span class="zoom"><button id="zoom-out" title="zoom out">&minus;</button><button
      id="zoom-fit" title="fit the circuit in the window">fit</button><button id="zoom-in"
      title="zoom in">+</button></span>
    <span id="counts"></span>
  </div>
  <div id="legend"><span class="swatch positive"></span> raises the metric
    <span class="swatch negative"></span> lowers it &middot; ellipse: feature (its index),
    box: error node &middot; darker, larger: larger |score| &middot; wider edge: larger |weight|,
    edges run upward &middot; click a node for its paths, Esc to clear</div>
</header>
<main>
  <div id="graph-wrap"><div id="graph-box"><canvas id="edges"></canvas><svg id="graph"
    xmlns="http://www.w3.org/2000/svg"></svg></div></div>
  <aside id="panel"><p class="hint">Hover over a node or click it: its score, label, top
    contexts and strongest edges show here.</p></aside>
</main>
<div id="tooltip" hidden></div>
<noscript>This view needs JavaScript; circuit.svg next to this file is the static picture.
</noscript>
<script type="application/json" id="circuit-data">{data}</script>
<script>
{js}
</script>
</body>
</html>
"""
