"""A circuit as the attribution-graph JSON that Neuronpedia's graph viewer and circuit-tracer's
local server read (format "neuronpedia"; schema in circuits/schemas/, transcribed from
Neuronpedia's graph-schema.json 1.0.0).

The viewers draw one row per ``layer`` and one column per ``ctx_idx`` (a prompt position), and
follow circuit-tracer's conventions, which the schema does not state. The mapping:

- layer: a circuit has several sites per transformer block (attn_L, mlp_L, resid_L), so a node's
  layer is 1 + its site's index in the circuit's sites (embed 1, attn_0 2, mlp_0 3, ...); each
  node keeps its site in "site". Layer 0 holds no feature, so no error id equals a feature id.
- feature node: ``{layer}_{feature}_{ctx}``, feature_type "cross layer transcoder" (the viewers'
  type of a dictionary feature, whatever the dictionary); ``vis_link`` its Neuronpedia page.
- error node: ``0_{layer}_{ctx}``, feature -1, feature_type "mlp reconstruction error" (the
  viewers' error type, at every site kind); a component node (no dictionaries):
  ``{layer}_0_{ctx}``, feature_type "component".
- the metric: a logit node ``{n_layers + 1}_0_{ctx}`` (n_layers: the circuit's sites; token id
  0, since the metric, logit[patch answer] − logit[clean answer], is no single token), clerp
  ``Output "logit diff" (p=1.000)``: the one target, given the whole weight.
- ctx_idx: a node's position in a per-position circuit; in a summed circuit every node sits at
  the prompt's last token, where the metric reads. prompt_tokens: the circuit's tokens, or the
  first clean prompt it was built from (CircuitMeta.prompt).
- influence (every node): circuit-tracer's cumulative influence, nodes ranked by |effect|, each
  the share of the total |effect| of the nodes ranked at or above it; the viewers keep a node
  whose influence is at most their pruning threshold. The metric: 0 (always kept).
- clerp: the feature's label, else its strongest context in features.json ("…«token»…"), else
  "site feature i"; "site error" for an error node.
- links: the circuit's edges, ``weight`` as computed (circuits/edges.py).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from circuits.circuit import Circuit
from circuits.edges import METRIC
from circuits.features import FeatureContexts

FORMATS = ("neuronpedia",)
SCHEMA = Path(__file__).parent / "schemas" / "attribution-graph.schema.json"
FEATURE, ERROR, COMPONENT, LOGIT = ("cross layer transcoder", "mlp reconstruction error",
                                    "component", "logit")
NO_PROMPT = ("<prompt>", "<all positions>")  # a summed circuit built without data


def to_attribution_graph(circuit: Circuit, features: FeatureContexts | None = None, *,
                         slug: str | None = None) -> dict[str, Any]:
    """The circuit as an attribution graph (a JSON-able dict; see the module docstring)."""
    meta = circuit.meta
    layer = {site: i + 1 for i, site in enumerate(meta.sites)}
    tokens = _prompt_tokens(circuit)
    last = len(tokens) - 1
    influence = _influence(circuit)
    ids: dict[str, str] = {}
    nodes = []
    for n, a in circuit.graph.nodes(data=True):
        if a["role"] == METRIC:
            continue
        ctx = a["position"] if meta.per_position else last
        row = layer[a["site"]]
        node: dict[str, Any] = {"layer": str(row), "ctx_idx": ctx, "site": a["site"],
                                "influence": influence[n], "clerp": _clerp(a, features)}
        if a["role"] == "feature":
            node.update(node_id=f"{row}_{a['feature']}_{ctx}", feature=a["feature"],
                        feature_type=FEATURE)
            if a.get("neuronpedia"):
                node["vis_link"] = a["neuronpedia"]
        elif a["role"] == "error":
            node.update(node_id=f"0_{row}_{ctx}", feature=-1, feature_type=ERROR)
        else:
            node.update(node_id=f"{row}_0_{ctx}", feature=0, feature_type=COMPONENT)
        node["jsNodeId"] = node["node_id"]
        ids[n] = node["node_id"]
        nodes.append(node)
    if METRIC in circuit.graph:
        top = len(meta.sites) + 1
        ids[METRIC] = f"{top}_0_{last}"
        nodes.append({"node_id": ids[METRIC], "jsNodeId": ids[METRIC], "feature": 0,
                      "layer": str(top), "ctx_idx": last, "feature_type": LOGIT,
                      "site": METRIC, "clerp": 'Output "logit diff" (p=1.000)',
                      "influence": 0.0, "is_target_logit": True, "token_prob": 1.0})
    links = [{"source": ids[u], "target": ids[v], "weight": float(attrs["weight"])}
             for u, v, attrs in circuit.graph.edges(data=True)]
    return {"metadata": _metadata(circuit, tokens, slug), "qParams": {
        "pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes, "links": links}


def save_attribution_graph(circuit: Circuit, path: str | Path,
                           features: FeatureContexts | None = None, *,
                           slug: str | None = None) -> Path:
    path = Path(path)
    path.write_text(json.dumps(to_attribution_graph(circuit, features, slug=slug), indent=1))
    return path


def _prompt_tokens(circuit: Circuit) -> list[str]:
    meta = circuit.meta
    if meta.per_position:
        seq = meta.site_shapes[meta.sites[0]][0]
        return list(meta.tokens) if meta.tokens else [f"pos {i}" for i in range(seq)]
    # the viewers drop a feature found at more than 2/3 of the prompt's tokens: never one token
    if meta.prompt and len(meta.prompt) >= 2:
        return list(meta.prompt)
    return list(NO_PROMPT)


def _influence(circuit: Circuit) -> dict[str, float]:
    """Cumulative share of |effect|, strongest node first (ties in graph order)."""
    effects = [(n, abs(a["effect"])) for n, a in circuit.graph.nodes(data=True)
               if a["role"] != METRIC]
    ranked = sorted(effects, key=lambda item: -item[1])
    total = sum(e for _, e in ranked)
    out, running = {}, 0.0
    for rank, (n, e) in enumerate(ranked, 1):
        running += e
        out[n] = running / total if total > 0 else rank / len(ranked)
    return out


def _clerp(a: dict[str, Any], features: FeatureContexts | None) -> str:
    if a["role"] == "error":
        return f"{a['site']} error"
    if a["role"] == "component":
        return a["site"]
    if a.get("label"):
        return str(a["label"])
    found = None if features is None else features.get(a["site"], a["feature"])
    if found is not None and found.contexts:
        return found.contexts[0].text
    return f"{a['site']} feature {a['feature']}"


def _metadata(circuit: Circuit, tokens: list[str], slug: str | None) -> dict[str, Any]:
    meta = circuit.meta
    models = {ids["neuronpedia"].split("/")[0] for ids in meta.dictionaries.values()
              if "neuronpedia" in ids}
    what = "per position" if meta.per_position else "summed over positions"
    out: dict[str, Any] = {
        "slug": slug or f"{meta.model}-{meta.method}".replace("+", "-"),
        "scan": models.pop() if len(models) == 1 else meta.model,
        "prompt_tokens": tokens,
        "prompt": "".join(tokens),
        "info": {"description": f"{meta.method} circuit of {meta.model}, {what}, "
                                f"{meta.n_examples} prompt pairs (sparse-circuits); layer = 1 + "
                                f"the index of the node's site in {list(meta.sites)}",
                 "generator": {"name": "sparse-circuits"},
                 "create_time_ms": round(time.time() * 1000)},
    }
    if meta.node_threshold is not None and math.isfinite(meta.node_threshold):
        out["node_threshold"] = meta.node_threshold
    return out
