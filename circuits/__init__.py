"""Circuit discovery: node attribution scores for spliced models (``attribute`` -> ``Scores``),
edge scores among selected nodes (``attribute_edges`` -> ``EdgeScores``), and the circuit graph
(``build`` -> ``Circuit``).

Methods (one file each in circuits/methods/, registered with what each is in
circuits/methods/__init__.py): exact activation patching, AtP, AtP*, integrated gradients, RelP,
RelP* and column patching. Each reads one `AttributionContext` per batch (circuits/context.py:
clean and patch runs, node deltas); the LRP rules of RelP are in circuits/lrp_rules.py, the
attention recomputation AtP*, RelP* and column share in circuits/attention.py, the one node
selection type and its validator in circuits/select.py.

Reading a circuit: its features' top-activating contexts in a corpus (``feature_contexts`` ->
``FeatureContexts``, circuits/features.py), a reader's labels (circuits/labels.py) and the
attribution-graph export Neuronpedia's viewer opens (``to_attribution_graph``, circuits/export.py).

Data parallelism (circuits/distributed.py): inside a torch.distributed process group (torchrun)
every sum over pairs is sharded across the ranks and all-reduced; one process runs as ever.
"""

from circuits.attribute import attribute
from circuits.circuit import Circuit, build
from circuits.edges import EdgeScores, attribute_edges
from circuits.export import to_attribution_graph
from circuits.features import FeatureContexts, feature_contexts
from circuits.labels import apply_labels, read_labels
from circuits.methods import METHODS
from circuits.scores import Scores
from circuits.select import select_nodes

__all__ = [
    "METHODS", "Circuit", "EdgeScores", "FeatureContexts", "Scores", "apply_labels", "attribute",
    "attribute_edges", "build", "feature_contexts", "read_labels", "select_nodes",
    "to_attribution_graph",
]
