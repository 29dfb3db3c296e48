"""The string options of the circuits API, as Literal types (one definition and docstring each).

Functions take plain strings and check them against these at the boundary (``check_choice``),
so a typo is an error naming the option and its values, not a silent default.
"""

from __future__ import annotations

from typing import Literal, get_args

Aggregation = Literal["sum", "none"]
"""How node scores treat token positions: "sum" adds a node's per-position scores into one
score per node ([n_nodes] per site); "none" keeps one score per (position, node) ([pos, n_nodes]
per site; needs prompts of one token length)."""

RuleName = Literal["ln", "identity", "half", "ah"]
"""An LRP rule of RelP (circuits/lrp_rules.py): "ln" norm scale constant, "identity" activation
passes relevance unchanged, "half" a gated product splits relevance in half, "ah" attention
pattern constant."""

NodeRole = Literal["feature", "error", "component", "metric"]
"""What a circuit node is: a dictionary feature, a site's error node, a whole component (a model
without dictionaries), or the metric the circuit explains."""

AGGREGATIONS: tuple[Aggregation, ...] = get_args(Aggregation)
RULE_NAMES: tuple[RuleName, ...] = get_args(RuleName)


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; use one of {', '.join(map(repr, choices))}")
