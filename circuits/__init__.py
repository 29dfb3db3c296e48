"""Circuit discovery: node attribution scores for spliced models (``attribute`` -> ``Scores``),
edge scores among selected nodes (``attribute_edges`` -> ``EdgeScores``), and the circuit graph
(``build`` -> ``Circuit``).

Methods (one file each in circuits/methods/, registered with what each is in
circuits/methods/__init__.py): exact activation patching, AtP, AtP*, integrated gradients, RelP,
RelP* and column patching. Each reads one `AttributionContext` per batch (circuits/context.py:
clean and patch runs, node deltas); the LRP rules of RelP are in circuits/lrp_rules.py, the
attention recomputation AtP*, RelP* and column share in circuits/attention.py, the one node
selection type and its validator in circuits/select.py.
"""

from circuits.attribute import attribute
from circuits.circuit import Circuit, build
from circuits.edges import EdgeScores, attribute_edges
from circuits.methods import METHODS
from circuits.scores import Scores
from circuits.select import select_nodes

__all__ = [
    "METHODS", "Circuit", "EdgeScores", "Scores", "attribute", "attribute_edges", "build",
    "select_nodes",
]
