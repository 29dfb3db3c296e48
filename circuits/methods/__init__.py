"""The registry of node attribution methods: name -> scoring function and its cost.

Each method lives in one file of this package and exposes ``score_batch`` (see base.py).
"""

from __future__ import annotations

from circuits.methods import atp, atp_star, column, exact, ig, relp, relp_star
from circuits.methods.base import Method, Options, ScoreFn

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("exact", exact.score_batch, "2 forward + 1 forward per moved node (batched)"),
        Method("atp", atp.score_batch, "2 forward + 1 backward"),
        Method("atp*", atp_star.score_batch,
               "2 forward + n_layers backward + a QK-fix softmax per moved node and layer",
               signed=False),
        Method("ig", ig.score_batch, "2 forward + steps × sites × (forward + backward)"),
        Method("relp", relp.score_batch, "2 forward + 1 backward (LRP rules)"),
        Method("relp*", relp_star.score_batch,
               "2 forward + 1 backward (LRP rules, AH) + a QK-fix softmax per moved node and "
               "layer"),
        Method("column", column.score_batch,
               "2 forward + 1 backward + one single-position forward per moved node from its "
               "block up"),
    )
}

__all__ = ["METHODS", "Method", "Options", "ScoreFn"]
