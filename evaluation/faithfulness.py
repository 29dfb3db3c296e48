"""Faithfulness and completeness of a circuit under mean ablation (Sparse Feature Circuits).

    faithfulness(C) = (m(C) − m(∅)) / (m(M) − m(∅))
    completeness(C) = faithfulness(M ∖ C)      (the complement; low means C is complete)

m(C): the evaluation metric (logit[correct] − logit[incorrect], mean over the set) with every
node outside C mean-ablated (evaluation/ablation.py); m(∅): every node of every site ablated,
error nodes included; m(M): the plain model. A circuit is anything with ``.selection()``
(circuits.circuit.Circuit) or such a selection itself, ``dict[site, bool mask]``. When
|m(M) − m(∅)| < min_gap the ratio means nothing: it is NaN, a warning says so, and the raw
metrics stay in the result.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from circuits.select import complement, count, full_selection
from evaluation.ablation import (
    NodeMeans,
    ablated_metrics,
    node_means,
    prepare,
)
from saes.splice import SplicedModel
from tasks.pairs import Dataset, PromptPair

MIN_GAP = 1e-3  # |m(M) − m(∅)| below this: the ratio is reported as NaN
SMALL_GAP = 0.1  # |m(M) − m(∅)| below this share of the largest |metric|: a warning


@dataclass(frozen=True)
class AblationRatio:
    """What faithfulness and completeness both are: the share of the behaviour a set of kept
    nodes recovers, (m(kept) − m(∅)) / (m(M) − m(∅)), with the raw metrics it comes from. For
    faithfulness the kept nodes are the circuit C, for completeness its complement M ∖ C."""

    value: float  # NaN when |m_full − m_empty| < min_gap
    m_circuit: float  # m(kept): m(C), or m(M ∖ C) for completeness
    m_empty: float  # m(∅)
    m_full: float  # m(M)
    n_nodes: int  # nodes kept (the complement's count for completeness)
    warning: str | None = None  # why the value should not be trusted (a small gap), if so

    def __float__(self) -> float:
        return self.value


def as_selection(circuit: Any) -> dict[str, Tensor]:
    """A Circuit (anything with .selection()) or a selection dict -> the selection dict."""
    if hasattr(circuit, "selection") and callable(circuit.selection):
        circuit = circuit.selection()
    if not isinstance(circuit, Mapping):
        raise TypeError(
            f"expected a Circuit (with .selection()) or a dict site -> bool mask, got "
            f"{type(circuit).__name__}; make one with circuits.select.select_nodes(scores, ...)"
        )
    return {str(k): torch.as_tensor(v) for k, v in circuit.items()}


def ratio(m_circuit: float, m_empty: float, m_full: float, *, min_gap: float = MIN_GAP,
          what: str = "faithfulness") -> float:
    """(m_circuit − m_empty) / (m_full − m_empty): NaN with a warning when the gap is < min_gap,
    and a warning (the value kept) when the gap is small beside the metrics (small_gap)."""
    gap = m_full - m_empty
    if not math.isfinite(gap) or abs(gap) < min_gap:
        warnings.warn(
            f"{what} is undefined: m(M) − m(∅) = {gap:.3g} (m(M) = {m_full:.4g}, m(∅) = "
            f"{m_empty:.4g}, m(C) = {m_circuit:.4g}) is below min_gap={min_gap:g}; the ablation "
            "removes no behaviour to recover (too many intact layers, or a task the model does "
            "not do). Reported as NaN; read the raw metrics instead",
            RuntimeWarning,
            stacklevel=3,
        )
        return math.nan
    value = (m_circuit - m_empty) / gap
    caveat = small_gap(m_circuit, m_empty, m_full, what)
    if caveat:
        warnings.warn(caveat, RuntimeWarning, stacklevel=3)
    return value


def small_gap(m_circuit: float, m_empty: float, m_full: float, what: str = "faithfulness"
              ) -> str | None:
    """Why a ratio is unreliable, or None: when m(M) − m(∅) is under SMALL_GAP of the largest
    |metric| the ablation removes little of the behaviour, and dividing by the gap magnifies
    noise into values far outside [0, 1] (e.g. 10.5 from a gap of 0.044)."""
    gap = m_full - m_empty
    scale = max(abs(m_full), abs(m_empty), abs(m_circuit))
    if math.isfinite(gap) and abs(gap) < SMALL_GAP * scale:
        return (f"{what} {(m_circuit - m_empty) / gap:.3g} comes from a small gap m(M) − m(∅) = "
                f"{gap:.3g} (m(M) = {m_full:.4g}, m(∅) = {m_empty:.4g}, m(C) = {m_circuit:.4g}): "
                "the ablation removes little of the behaviour, so the ratio magnifies noise; "
                "read the raw metrics")
    return None


def _evaluate(
    model: SplicedModel,
    selection: dict[str, Tensor],
    data: Dataset | Sequence[PromptPair],
    means: NodeMeans | None,
    intact_layers: int,
    batch_size: int,
    min_gap: float,
    what: str,
) -> AblationRatio:
    data = prepare(model, data)
    means = node_means(model, data) if means is None else means
    empty = full_selection(model, False)
    m_c, m_empty, m_full = ablated_metrics(
        model, data, [selection, empty, None], means=means, intact_layers=intact_layers,
        batch_size=batch_size,
    ).tolist()
    value = ratio(m_c, m_empty, m_full, min_gap=min_gap, what=what)
    warning = None if math.isnan(value) else small_gap(m_c, m_empty, m_full, what)
    return AblationRatio(value, m_c, m_empty, m_full, count(selection), warning)


def faithfulness(
    model: SplicedModel,
    circuit: Any,
    data: Dataset | Sequence[PromptPair],
    *,
    means: NodeMeans | None = None,
    intact_layers: int = 0,
    batch_size: int = 256,
    min_gap: float = MIN_GAP,
) -> AblationRatio:
    """(m(C) − m(∅)) / (m(M) − m(∅)) with the nodes outside ``circuit`` mean-ablated.

    circuit: a Circuit or a selection dict site -> bool [n_nodes] / [pos, n_nodes].
    means: node means of ``data`` (evaluation.node_means), computed here when None.
    intact_layers: sites of layers below it are never ablated (embed counts as layer 0).
    """
    selection = as_selection(circuit)
    return _evaluate(model, selection, data, means, intact_layers, batch_size, min_gap,
                     "faithfulness")


def completeness(
    model: SplicedModel,
    circuit: Any,
    data: Dataset | Sequence[PromptPair],
    *,
    means: NodeMeans | None = None,
    intact_layers: int = 0,
    batch_size: int = 256,
    min_gap: float = MIN_GAP,
) -> AblationRatio:
    """The ablation ratio of the complement M ∖ C: near 0 when C holds all the model needs."""
    selection = complement(as_selection(circuit))
    return _evaluate(model, selection, data, means, intact_layers, batch_size, min_gap,
                     "completeness")
