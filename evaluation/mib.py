"""The Mechanistic Interpretability Benchmark's integrated circuit metrics (MIB, Mueller et al.
2025), from faithfulness at a fixed grid of circuit sizes:

    CPR = ∫ f(x) dx            (circuit performance ratio: higher is better)
    CMD = ∫ |1 − f(x)| dx      (circuit-model distance: lower is better)

x is the fraction of the nodes kept, f(x) the faithfulness of the circuit of the top
int(x × total) nodes (MIB's rounding); both integrals are trapezoids over MIB's fractions (0.1,
0.2, 0.5, 1, 2, 5, 10, 20, 50, 100 %), linear in x, as MIB's evaluation code integrates them
(over the nominal fractions, whatever the rounding kept). Linear in x, the areas weigh large
circuits most: the span from 10 % to 100 % is 90 % of it, and a perfect curve has CPR 0.999.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def mib_counts(total: int) -> list[int]:
    """The node counts MIB's fractions keep of ``total`` nodes: int(fraction × total)."""
    return [int(fraction * total) for fraction in MIB_FRACTIONS]


def integrated(x: Sequence[float], faithfulness: Sequence[float]) -> tuple[float, float]:
    """(CPR, CMD): the trapezoid areas under f and under |1 − f| over the points x (ascending).
    NaN if any faithfulness is NaN (an undefined ratio makes the area undefined)."""
    if len(x) != len(faithfulness) or len(x) < 2:
        raise ValueError(f"need two or more (x, faithfulness) points of equal count, got "
                         f"{len(x)} x and {len(faithfulness)} faithfulness values")
    if any(b < a for a, b in zip(x, x[1:], strict=False)):
        raise ValueError(f"x must be ascending, got {list(x)}")
    if any(math.isnan(f) for f in faithfulness):
        return math.nan, math.nan
    cpr = cmd = 0.0
    for (x1, f1), (x2, f2) in zip(zip(x, faithfulness, strict=True),
                                  zip(x[1:], faithfulness[1:], strict=True), strict=False):
        cpr += (x2 - x1) * (f1 + f2) / 2
        cmd += (x2 - x1) * (abs(1 - f1) + abs(1 - f2)) / 2
    return cpr, cmd
