"""Synthetic circuits of any size, without a model: a valid circuit.json of the organism's 13
sites with random nodes and random edges running downstream (row order), and a features.json
(format circuits.features/1) for some of its features. For the HTML view's tests."""

from __future__ import annotations

import random
from typing import Any

from circuits.circuit import Circuit

SITES = ["embed"] + [f"{kind}_{layer}" for layer in range(4) for kind in ("attn", "mlp", "resid")]
D_SAE = 1024  # features per site; index D_SAE is the error node
TOKENS = ["The", " keys", " to", " the", " cabinet", " are"]


def synthetic_json(n_nodes: int, n_edges: int, *, per_position: bool = False,
                   seed: int = 0) -> dict[str, Any]:
    """circuit.json of ``n_nodes`` nodes spread over SITES (a tenth of them error nodes), the
    metric, and ``n_edges`` edges from a node to one of a later site (or, from the last sites,
    to the metric) with heavy-tailed signed weights."""
    rng = random.Random(seed)
    seq = len(TOKENS)
    shape = [seq, D_SAE + 1] if per_position else [D_SAE + 1]
    picked: set[tuple[int, int, int | None]] = set()
    while len(picked) < n_nodes:
        row = rng.randrange(len(SITES))
        index = D_SAE if rng.random() < 0.1 else rng.randrange(D_SAE)
        picked.add((row, index, rng.randrange(seq) if per_position else None))
    nodes: list[dict[str, Any]] = []
    for row, index, pos in sorted(picked, key=lambda p: (p[0], p[2] or 0, p[1])):
        site = SITES[row]
        base = f"{site}/err" if index == D_SAE else f"{site}/{index}"
        nodes.append({
            "id": base if pos is None else f"{base}@{pos}", "site": site,
            "layer": -1 if site == "embed" else int(site.rsplit("_", 1)[1]), "row": row,
            "role": "error" if index == D_SAE else "feature", "index": index,
            "feature": None if index == D_SAE else index, "position": pos,
            "effect": rng.choice([-1, 1]) * rng.lognormvariate(-3, 1),
        })
    nodes.append({"id": "metric", "site": "metric", "layer": None, "row": len(SITES),
                  "role": "metric", "index": None, "feature": None, "position": None,
                  "effect": None})
    last = len(SITES) - 3  # the last block's nodes also feed the metric
    pairs: set[tuple[int, int]] = set()
    possible = sum(1 for u in nodes[:-1] for v in nodes if v["row"] > u["row"]
                   and (v["role"] != "metric" or u["row"] >= last))
    if n_edges > possible:
        raise ValueError(f"{n_nodes} nodes admit only {possible} edges, not {n_edges}")
    while len(pairs) < n_edges:
        u, v = rng.randrange(n_nodes), rng.randrange(n_nodes + 1)
        if nodes[v]["row"] > nodes[u]["row"] and (v < n_nodes or nodes[u]["row"] >= last):
            pairs.add((u, v))
    edges = [{"source": nodes[u]["id"], "target": nodes[v]["id"],
              "weight": rng.choice([-1, 1]) * rng.lognormvariate(-4, 1.5)}
             for u, v in sorted(pairs)]
    meta = {"method": "relp", "model": "synthetic", "aggregation": "none" if per_position
            else "sum", "node_threshold": 0.01, "top_k": None, "edge_threshold": None,
            "n_examples": 100, "signed": True, "components_only": False, "options": {},
            "edges": True, "edge_method": "relp", "tokens": TOKENS if per_position else None,
            "sites": SITES, "site_shapes": {s: shape for s in SITES}, "dictionaries": {}}
    return {"format": "circuits.circuit/2", "meta": meta, "nodes": nodes, "edges": edges}


def synthetic(n_nodes: int, n_edges: int, *, per_position: bool = False,
              seed: int = 0) -> Circuit:
    return Circuit.from_json(synthetic_json(n_nodes, n_edges, per_position=per_position,
                                            seed=seed))


def features_json(circuit: Circuit, *, every: int = 1, k: int = 3) -> dict[str, Any]:
    """features.json with ``k`` contexts for every ``every``-th feature node of ``circuit``
    (keys without "@pos"); context j of feature f reads "... ctx{j}of{f} ...", marked there."""
    features: dict[str, Any] = {}
    ids = [n for n, role in circuit.graph.nodes(data="role") if role == "feature"]
    for n in ids[::every]:
        key = n.split("@")[0]
        site, feature = key.split("/")
        contexts = [{"tokens": ["the", " keys", f" ctx{j}of{feature}", " are", "\n"], "mark": 2,
                     "activation": 3.0 - j} for j in range(k)]
        features[key] = {"site": site, "feature": int(feature), "density": 1e-3,
                         "max_activation": 3.0, "contexts": contexts}
    return {"format": "circuits.features/1",
            "corpus": {"name": "synthetic", "n_documents": 10, "n_tokens": 1000},
            "k": k, "window": [2, 2], "features": features}
