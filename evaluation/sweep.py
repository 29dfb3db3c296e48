"""``sweep``: faithfulness and completeness along a range of node thresholds, per method.

Attribution is done before (the scores are an input; evaluation never computes them). For each
method and each threshold (|score| >= t, circuits.select.select_nodes) or node count (top k),
the circuit C and its complement M ∖ C are mean-ablated; m(∅) and m(M) are measured once. All
distinct selections of all methods go through one batched ablation call (evaluation/ablation.py):
several selections per forward pass, each selection's masks broadcast over its prompts; equal
selections (thresholds between the same two scores) are run once.

Beside each row's faithfulness, the Mechanistic Interpretability Benchmark's integrated metrics
of its method (evaluation/mib.py): CPR, the area under faithfulness over the fraction of nodes
kept, and CMD, the area of |1 − faithfulness|, from the top-k circuits at MIB's node fractions
(0.1 % to 100 %), evaluated in the same batched call; one value per method, repeated on its rows.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from circuits.edges import EdgeScores
from circuits.scores import Scores
from circuits.select import full_selection, select_nodes
from evaluation.ablation import NodeMeans, ablated_metrics, node_means, prepare
from evaluation.faithfulness import MIN_GAP, complement, count, ratio
from evaluation.mib import MIB_FRACTIONS, integrated, mib_counts
from saes.splice import SplicedModel
from tasks.pairs import Dataset, PromptPair

COLUMNS = (
    "method", "threshold", "top_k", "n_nodes", "n_edges", "faithfulness", "completeness",
    "cpr", "cmd", "m_circuit", "m_complement", "m_empty", "m_full",
)


def default_node_counts(total: int, n: int = 16) -> list[int]:
    """0, then ~n counts spaced geometrically from 1 to ``total`` (distinct, ascending)."""
    grid = np.unique(np.round(np.geomspace(1, max(total, 1), n)).astype(int))
    return [0, *grid.tolist()]


def sweep(
    model: SplicedModel,
    scores: Scores | Mapping[str, Scores],
    data: Dataset | Sequence[PromptPair],
    *,
    thresholds: Iterable[float] | None = None,
    node_counts: Iterable[int] | None = None,
    means: NodeMeans | None = None,
    intact_layers: int = 0,
    batch_size: int = 256,
    min_gap: float = MIN_GAP,
    edges: EdgeScores | Mapping[str, EdgeScores] | None = None,
    edge_threshold: float = 0.0,
    mib: bool = True,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per (method, threshold): columns COLUMNS.

    scores: one Scores, or {label: Scores} (the label fills the "method" column; one Scores is
    labelled by its method). Give thresholds (|score| >= t) or node_counts (the top k nodes by
    |score|); neither: node_counts = default_node_counts(total nodes). faithfulness /
    completeness are NaN (with one warning) when |m(M) − m(∅)| < min_gap. edges: EdgeScores
    (one, or {label: EdgeScores}) computed once among a large selection; n_edges counts the
    edges with |weight| >= edge_threshold between kept nodes, and is NaN for a method without
    edges or a circuit that keeps a node the edge scores do not cover. Rows are sorted by
    method, then by decreasing threshold / increasing k. cpr / cmd: MIB's integrated metrics of
    the method (evaluation/mib.py), the same on each of its rows (NaN with ``mib=False``).
    """
    if thresholds is not None and node_counts is not None:
        raise ValueError("give thresholds= or node_counts=, not both")
    labelled = {scores.method: scores} if isinstance(scores, Scores) else dict(scores)
    if not labelled:
        raise ValueError("no scores to sweep; pass a Scores or a non-empty {label: Scores}")
    for label, s in labelled.items():
        if not isinstance(s, Scores):
            raise TypeError(f"scores[{label!r}] is a {type(s).__name__}, not a circuits.Scores")
        if s.model != model.name:
            raise ValueError(
                f"scores[{label!r}] were computed on model {s.model!r}, not {model.name!r}; "
                "sweep each model's scores with that model"
            )
    if isinstance(edges, EdgeScores):
        edges = {label: edges for label in labelled} if len(labelled) == 1 else {
            edges.method: edges}
    edges = dict(edges or {})
    data = prepare(model, data)
    if thresholds is not None:
        grid: list[float] = sorted({float(t) for t in thresholds}, reverse=True)
        bad = [t for t in grid if math.isnan(t) or t < 0]
        if bad:
            raise ValueError(f"thresholds must be numbers >= 0, got {bad}")
        mode = "threshold"
    else:
        if node_counts is None:
            total = max(sum(v.numel() for v in s.sites.values()) for s in labelled.values())
            node_counts = default_node_counts(total)
        grid = sorted({int(k) for k in node_counts})
        if grid and grid[0] < 0:
            raise ValueError(f"node_counts must be integers >= 0, got {grid}")
        mode = "top_k"

    # every (label, grid point): C and M ∖ C; distinct selections run once
    unique: dict[bytes, int] = {}
    selections: list[dict[str, Tensor] | None] = [None, full_selection(model, False)]
    points: list[tuple[str, float, int, int, float, int, int]] = []  # label, t, k, n, e, i_c, i_r
    for label, s in labelled.items():
        for point in grid:
            if mode == "threshold":
                sel = select_nodes(s, node_threshold=point)
            else:
                sel = select_nodes(s, top_k=int(point))
            i_c, i_r = _index(sel, unique, selections), _index(complement(sel), unique, selections)
            threshold = point if mode == "threshold" else _smallest_kept(s, sel)
            n_edges = count_edges(edges[label], sel, edge_threshold) if label in edges else math.nan
            top_k = int(point) if mode == "top_k" else -1
            points.append((label, threshold, top_k, count(sel), n_edges, i_c, i_r))
    curves = ({label: _mib_curve(s, unique, selections) for label, s in labelled.items()}
              if mib else {})
    means = node_means(model, data) if means is None else means
    metrics = ablated_metrics(
        model, data, selections, means=means, intact_layers=intact_layers,
        batch_size=batch_size, progress=progress,
    ).tolist()
    m_full, m_empty = metrics[0], metrics[1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        areas = {label: integrated(x, [ratio(metrics[i], m_empty, m_full, min_gap=min_gap)
                                       for i in at]) for label, (x, at) in curves.items()}
        rows = []
        for label, threshold, top_k, n, n_edges, i_c, i_rest in points:
            cpr, cmd = areas.get(label, (math.nan, math.nan))
            rows.append({
                "method": label,
                "threshold": threshold,
                "top_k": top_k if top_k >= 0 else math.nan,
                "n_nodes": n,
                "n_edges": n_edges,
                "faithfulness": ratio(metrics[i_c], m_empty, m_full, min_gap=min_gap),
                "completeness": ratio(metrics[i_rest], m_empty, m_full, min_gap=min_gap,
                                      what="completeness"),
                "cpr": cpr,
                "cmd": cmd,
                "m_circuit": metrics[i_c],
                "m_complement": metrics[i_rest],
                "m_empty": m_empty,
                "m_full": m_full,
            })
    if caught:  # one warning for the whole sweep, not one per row
        warnings.warn(str(caught[0].message), RuntimeWarning, stacklevel=2)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _mib_curve(scores: Scores, unique: dict[bytes, int], selections: list
               ) -> tuple[list[float], list[int]]:
    """The top-k circuits at MIB's node fractions of ``scores``: (the fractions, the index of
    each circuit in ``selections``, appended there unless an equal one is)."""
    total = sum(v.numel() for v in scores.sites.values())
    at = [_index(select_nodes(scores, top_k=k), unique, selections) for k in mib_counts(total)]
    return list(MIB_FRACTIONS), at


def _index(sel: dict[str, Tensor], unique: dict[bytes, int], out: list) -> int:
    """Position of ``sel`` in ``out``, appending it if no equal selection is there yet."""
    key = b"".join(m.detach().cpu().numpy().tobytes() for m in sel.values())
    if key not in unique:
        unique[key] = len(out)
        out.append(sel)
    return unique[key]


def _smallest_kept(scores: Scores, sel: dict[str, Tensor]) -> float:
    """The least |score| among kept nodes: the threshold a top-k selection amounts to."""
    kept = [v.abs()[sel[k]] for k, v in scores.sites.items() if bool(sel[k].any())]
    return float(torch.cat(kept).min()) if kept else math.inf


def count_edges(edges: EdgeScores, sel: dict[str, Tensor], edge_threshold: float = 0.0) -> float:
    """Edges with |weight| >= edge_threshold (and non-zero) between nodes kept by ``sel``, the
    metric counted as kept; NaN if ``sel`` keeps a node that ``edges`` does not cover."""
    kept: dict[str, Tensor] = {}
    for site, mask in sel.items():
        flat = mask.flatten().cpu()
        covered = edges.nodes.get(site, torch.zeros(0, dtype=torch.long))
        if int(flat.sum()) > int(flat[covered].sum()):
            return math.nan
        kept[site] = flat[covered]  # [n_covered] bool

    def strong(w: Tensor) -> int:
        return int(((w != 0) & (w.abs() >= edge_threshold)).sum())

    n = sum(strong(w[kept[down]][:, kept[up]]) for (up, down), w in edges.weights.items())
    n += sum(strong(w[kept[site]]) for site, w in edges.metric.items())
    return float(n)
