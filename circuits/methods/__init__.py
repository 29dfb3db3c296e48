"""The registry of node attribution methods: name -> what the method is and how it runs.

Each method lives in one file of this package and exposes ``score_batch`` (see base.py). Its
record says whether its scores are signed, which options it takes (LRP rules, ig steps, exact's
patch batch), and which method computes its edges: atp, ig and relp have edge definitions of
their own (circuits/edges.py); exact and atp* take atp's, relp* and column take relp's (their
nearest gradient method), so `build`, `attribute_edges` and the CLI agree on one policy.
"""

from __future__ import annotations

from circuits.lrp_rules import rules_for
from circuits.methods import atp, atp_star, column, exact, ig, relp, relp_star
from circuits.methods.base import (
    ExactOptions,
    IGOptions,
    Method,
    Options,
    RuledOptions,
    ScoreFn,
    SiteScores,
)

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("exact", exact.score_batch, "2 forward + 1 forward per moved node (batched)",
               edges="atp", options=ExactOptions),
        Method("atp", atp.score_batch, "2 forward + 1 backward", edges="atp"),
        Method("atp*", atp_star.score_batch,
               "2 forward + n_layers backward + a QK-fix softmax per moved node and layer",
               edges="atp", signed=False, attn_z=False),
        Method("ig", ig.score_batch, "2 forward + steps × sites × (forward + backward)",
               edges="ig", options=IGOptions),
        Method("relp", relp.score_batch, "2 forward + 1 backward (LRP rules)", edges="relp",
               options=RuledOptions, resolve_rules=rules_for),
        Method("relp*", relp_star.score_batch,
               "2 forward + 1 backward (LRP rules, AH) + a QK-fix softmax per moved node and "
               "layer", edges="relp", options=RuledOptions, resolve_rules=rules_for,
               attn_z=False),
        Method("column", column.score_batch,
               "2 forward + 1 backward + one single-position forward per moved node from its "
               "block up", edges="relp", options=RuledOptions,
               resolve_rules=column.column_rules, attn_z=False),
    )
}

# methods with an edge definition of their own; every method's edges come from one of these
EDGE_METHODS: tuple[str, ...] = tuple(m.name for m in METHODS.values() if m.edges == m.name)


def method(name: str) -> Method:
    """The registry entry of ``name``, or an error listing the methods."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


__all__ = [
    "EDGE_METHODS", "METHODS", "ExactOptions", "IGOptions", "Method", "Options", "RuledOptions",
    "ScoreFn", "SiteScores", "method",
]
