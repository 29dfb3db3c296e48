"""Draw a circuit (its graph and `CircuitMeta`) with Graphviz: DOT source, and SVG through the
`neato` layout engine. `Circuit.to_dot` and `Circuit.to_svg` call these.

Layout (every node pinned, so the picture reads like the model):
- one row (band) per site in model order, embed at the bottom and the metric on top; a row
  (or a position's cell) with many nodes wraps onto several lines within its band; the site
  name on the left;
- with positions kept, one column per token position, the token written below the bottom row;
- node fill colour by sign (blue +, red −) and size of the effect, size by |effect|; error nodes
  are boxes, features ellipses, the metric an octagon;
- edge width by |weight|, colour by sign, more opaque when larger; edges drawn under nodes;
- a feature's label (circuits/labels.py), shortened to LABEL_CHARS, under its index (in full
  in the tooltip); a feature with a Neuronpedia page links to it (the node is an SVG link);
- a legend (the graph label) with the method, model and thresholds.
Circuit nodes carry the SVG class "circuit" (row and token labels "decoration"), so a reader
of the SVG can tell them apart. Without the Graphviz binaries the .dot source is still written.
"""

from __future__ import annotations

import html
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import networkx as nx

from circuits.meta import CircuitMeta

NODE_W = 0.75  # inches between node centres in a row
LINE_H = 0.7  # inches between wrapped lines of one site's row
BAND_GAP = 0.55  # inches between site bands
MAX_PER_LINE = 24  # nodes per line before a site's row wraps (position-summed circuits)
MAX_PER_CELL = 6  # nodes per line of one (site, position) cell before it wraps
LABEL_CHARS = 14  # a label longer than this is cut, with "…", under the node's index
BLUE, RED = (33, 102, 172), (178, 24, 43)
INSTALL = ("install Graphviz for SVG output: `apt-get install graphviz` (Debian/Ubuntu), "
           "`brew install graphviz` (macOS), `conda install -c conda-forge graphviz`, or "
           "https://graphviz.org/download/")


def to_svg(graph: nx.DiGraph, meta: CircuitMeta, path: str | Path) -> Path:
    """Write the circuit as SVG at ``path``; returns it. If Graphviz's binaries are missing,
    writes ``path`` with suffix .dot instead, warns how to install Graphviz, and returns that."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    source = to_dot(graph, meta)
    if shutil.which("neato") is None:
        dot_path = path.with_suffix(".dot")
        dot_path.write_text(source)
        warnings.warn(f"Graphviz not found on PATH; {INSTALL}. Wrote the DOT source to "
                      f"{dot_path} (render it later with `neato -n2 -Tsvg {dot_path}`)",
                      stacklevel=2)
        return dot_path
    import graphviz

    svg = graphviz.Source(source, engine="neato").pipe(format="svg")
    path.write_bytes(svg)
    return path


@dataclass(frozen=True)
class Layout:
    """Where render puts everything, in inches, y upward (Graphviz's convention)."""

    xy: dict[str, tuple[float, float]]  # node id -> its centre (the metric's too)
    rows: dict[str, float]  # site -> y of its band's first line (sites with nodes only)
    left: float  # x of the row labels
    columns: list[tuple[float, str]]  # (x, token) per position: per-position circuits
    token_y: float  # y of the token labels


def layout(graph: nx.DiGraph, meta: CircuitMeta) -> Layout:
    """Pin every node: a band per site in model order (embed at the bottom, wrapped when long),
    the metric above, one column per position when positions are kept."""
    nodes = [(n, a) for n, a in graph.nodes(data=True) if a["role"] != "metric"]
    per_position = meta.per_position
    sites = [s for s in meta.sites if any(a["site"] == s for _, a in nodes)]
    by_site = {s: sorted((a.get("position") or 0, a["index"], n) for n, a in nodes
                         if a["site"] == s) for s in sites}

    # columns: one per position (as wide as its fullest cell), or one centred row per site
    if per_position:
        seq = meta.site_shapes[meta.sites[0]][0]
        counts = {s: [sum(1 for p, _, _ in by_site[s] if p == q) for q in range(seq)]
                  for s in sites}
        width = [min(MAX_PER_CELL, max([counts[s][q] for s in sites] + [1]))
                 for q in range(seq)]
        starts = [sum(width[:q]) * NODE_W + q * NODE_W * 0.5 for q in range(seq)]
        lines = {s: max(1, *(-(-c // width[q]) for q, c in enumerate(counts[s])))
                 for s in sites}
    else:
        lines = {s: max(1, -(-len(by_site[s]) // MAX_PER_LINE)) for s in sites}

    xy: dict[str, tuple[float, float]] = {}
    y = 0.0
    band_y: dict[str, float] = {}
    for s in sites:
        band_y[s] = y
        if per_position:
            seen: dict[int, int] = {}
            for p, _, n in by_site[s]:
                line, k = divmod(seen.get(p, 0), width[p])
                seen[p] = seen.get(p, 0) + 1
                xy[n] = (starts[p] + k * NODE_W, y + line * LINE_H)
        else:
            row = by_site[s]
            for i, (_, _, n) in enumerate(row):
                line, k = divmod(i, MAX_PER_LINE)
                count = min(MAX_PER_LINE, len(row) - line * MAX_PER_LINE)
                xy[n] = ((k - (count - 1) / 2) * NODE_W, y + line * LINE_H)
        y += (lines[s] - 1) * LINE_H + LINE_H + BAND_GAP
    xs = [x for x, _ in xy.values()] or [0.0]
    left, right = min(xs) - 1.4 * NODE_W, max(xs)
    if "metric" in graph:
        xy["metric"] = ((left + 1.4 * NODE_W + right) / 2, y)
    columns = ([(starts[q] + (width[q] - 1) * NODE_W / 2, token)
                for q, token in enumerate(meta.tokens)] if per_position and meta.tokens else [])
    return Layout(xy, band_y, left, columns, -0.7)


def to_dot(graph: nx.DiGraph, meta: CircuitMeta) -> str:
    """Graphviz source with every node pinned at its place (render with neato)."""
    nodes = [(n, a) for n, a in graph.nodes(data=True) if a["role"] != "metric"]
    pinned = layout(graph, meta)
    xy, left = pinned.xy, pinned.left

    effects = [abs(a["effect"]) for _, a in nodes if a["effect"] is not None]
    top_effect = max(effects, default=0.0) or 1.0
    weighted = [(u, v, float(attrs["weight"])) for u, v, attrs in graph.edges(data=True)]
    weights = [abs(w) for _, _, w in weighted]
    top_weight = max(weights, default=0.0) or 1.0

    out = [
        "digraph circuit {",
        '  graph [splines=false, outputorder=edgesfirst, bgcolor=white, labelloc=t, '
        f'fontname=Helvetica, label=<{_legend(meta, len(nodes), graph.number_of_edges())}>];',
        '  node [fontname=Helvetica, fontsize=9, style=filled, penwidth=0.6];',
        '  edge [arrowsize=0.4];',
    ]
    for s, y in pinned.rows.items():  # row labels
        out.append(f'  {_q("row:" + s)} [class=decoration, shape=plaintext, style="", '
                   f'label={_q(s)}, fontsize=11, pos="{left:.3f},{y:.3f}!"];')
    if "metric" in graph:
        x, ym = xy["metric"]
        out.append(f'  {_q("row:metric")} [class=decoration, shape=plaintext, style="", '
                   f'label="metric", fontsize=11, pos="{left:.3f},{ym:.3f}!"];')
    for q, (x, token) in enumerate(pinned.columns):
        out.append(f'  {_q(f"token:{q}")} [class=decoration, shape=plaintext, style="", '
                   f'label={_q(_show(token))}, fontsize=11, pos="{x:.3f},{pinned.token_y:.3f}!"];')
    for n, a in graph.nodes(data=True):
        out.append("  " + _node(n, a, xy[n], top_effect))
    faint = 0.25 if len(weights) <= 500 else 0.08  # many edges: the weak ones recede
    for u, v, w in weighted:
        t = abs(w) / top_weight
        color = _rgb(BLUE if w > 0 else RED, 1.0, alpha=faint + (1 - faint) * t)
        out.append(f'  {_q(u)} -> {_q(v)} [penwidth={0.3 + 4.7 * t:.2f}, color="{color}", '
                   f'tooltip={_q(f"{u} → {v}: {w:.4g}")}];')
    out.append("}")
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class NodeStyle:
    """How a feature, error or component node is drawn."""

    fill: str  # #rrggbb: white towards blue (+) or red (-) with |effect|
    size: float  # width in inches (height: 0.7 of it), larger with |effect|
    box: bool  # error and component nodes are boxes, features ellipses
    label: str  # the feature index, "err", or the component's site
    dark: bool  # a dark fill: write the label in white


def node_style(a: dict, top: float) -> NodeStyle:
    """The style of a node with attributes ``a``, the largest |effect| being ``top``."""
    t = min(1.0, abs(a["effect"]) / top)
    return NodeStyle(
        fill=_rgb(BLUE if a["effect"] >= 0 else RED, t ** 0.5), size=0.3 + 0.35 * t ** 0.5,
        box=a["role"] in ("error", "component"),
        label={"error": "err", "component": a["site"]}.get(a["role"], str(a["feature"])),
        dark=t > 0.5)


def _node(n: str, a: dict, xy: tuple[float, float], top: float) -> str:
    x, y = xy
    if a["role"] == "metric":
        return (f'{_q(n)} [class=circuit, shape=doubleoctagon, label="metric", fillcolor="#eeeeee",'
                f' fontsize=11, pos="{x:.3f},{y:.3f}!"];')
    style = node_style(a, top)
    where = "" if a["position"] is None else f" @ pos {a['position']}"
    tip = f"{a['site']} {a['role']} {a['index']}{where}: effect {a['effect']:.4g}"
    label, fixed = _q(style.label), "true"
    if a.get("label"):  # may be wider than the node: drawn beyond it, without a warning
        fixed = "shape"
        tip += f" — {a['label']}"
        short = a["label"] if len(a["label"]) <= LABEL_CHARS else a["label"][:LABEL_CHARS - 1] + "…"
        label = ('<<TABLE BORDER="0" CELLSPACING="0" CELLPADDING="0">'
                 f'<TR><TD>{html.escape(style.label)}</TD></TR><TR><TD BGCOLOR="#ffffffd0">'
                 f'<FONT POINT-SIZE="7" COLOR="black">{html.escape(short)}</FONT></TD></TR>'
                 '</TABLE>>')  # dark on a light backdrop, over any fill and beyond the node
    link = f'URL={_q(a["neuronpedia"])}, target="_blank", ' if a.get("neuronpedia") else ""
    return (f'{_q(n)} [class=circuit, shape={"box" if style.box else "ellipse"}, '
            f'label={label}, fillcolor="{style.fill}", '
            f'fontcolor="{"white" if style.dark else "black"}", width={style.size:.2f}, '
            f'height={style.size * 0.7:.2f}, fixedsize={fixed}, tooltip={_q(tip)}, {link}'
            f'pos="{x:.3f},{y:.3f}!"];')


def title(m: CircuitMeta, n_nodes: int, n_edges: int) -> str:
    """'relp circuit of organism: 113 nodes, 1504 edges (|effect| ≥ 0.01; 100 examples)'."""
    threshold = (f"top {m.top_k} nodes" if m.top_k is not None
                 else f"|effect| ≥ {m.node_threshold or 0:.3g}")
    if m.edges and m.edge_threshold is not None:
        threshold += f", |edge| ≥ {m.edge_threshold:.3g}"
    return (f"{m.method} circuit of {m.model}: {n_nodes} nodes, "
            f"{n_edges} edges ({threshold}; {m.n_examples} examples)")


def _legend(m: CircuitMeta, n_nodes: int, n_edges: int) -> str:
    heading = html.escape(title(m, n_nodes, n_edges))
    blue, red = _rgb(BLUE, 1.0), _rgb(RED, 1.0)
    return (
        '<TABLE BORDER="0" CELLSPACING="4"><TR>'
        f'<TD COLSPAN="6"><B>{heading}</B></TD></TR><TR>'
        f'<TD BGCOLOR="{blue}" WIDTH="14"> </TD><TD ALIGN="LEFT">positive effect / weight</TD>'
        f'<TD BGCOLOR="{red}" WIDTH="14"> </TD><TD ALIGN="LEFT">negative</TD>'
        '<TD ALIGN="LEFT">ellipse: feature (its index) · box: error node · '
        'darker and larger: larger |effect| · wider edge: larger |weight|</TD></TR></TABLE>'
    )


def _rgb(color: tuple[int, int, int], t: float, alpha: float | None = None) -> str:
    """White blended towards ``color`` by t in [0, 1], as #rrggbb(aa)."""
    r, g, b = (round(255 + (c - 255) * t) for c in color)
    out = f"#{r:02x}{g:02x}{b:02x}"
    return out if alpha is None else out + f"{round(255 * alpha):02x}"


def _show(token: str) -> str:
    return token.replace("\n", "\\n").replace(" ", "·") or "∅"


def _q(text: str) -> str:
    """A DOT double-quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
