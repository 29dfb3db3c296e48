"""What the features of a circuit respond to: their top-activating contexts in a text corpus
(saes.contexts reads them), saved as the run directory's ``features.json``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from circuits.circuit import Circuit
from saes.contexts import (
    FORMAT,
    MAX_TOKENS,
    WINDOW,
    Context,
    CorpusInfo,
    FeatureContext,
    FeatureContexts,
    K,
    key,
)
from saes.contexts import feature_contexts as _contexts
from saes.corpus import Corpus
from saes.splice import SplicedModel

FILE = "features.json"
__all__ = ["FILE", "FORMAT", "K", "WINDOW", "Context", "CorpusInfo", "FeatureContext",
           "FeatureContexts", "circuit_features", "feature_contexts", "key"]


def circuit_features(circuit: Circuit) -> dict[str, list[int]]:
    """site -> the circuit's feature indices there (sorted, each once, positions stripped)."""
    out: dict[str, set[int]] = {}
    for _, attrs in circuit.graph.nodes(data=True):
        if attrs["role"] == "feature":
            out.setdefault(attrs["site"], set()).add(int(attrs["feature"]))
    return {site: sorted(out[site]) for site in circuit.meta.sites if site in out}


def feature_contexts(
    model: SplicedModel,
    features: Circuit | Mapping[str, Sequence[int]],
    corpus: Corpus,
    *,
    k: int = K,
    window: tuple[int, int] = WINDOW,
    max_tokens: int = MAX_TOKENS,
    batch_size: int = 64,
    reuse: FeatureContexts | None = None,
    progress: bool = False,
) -> FeatureContexts:
    """saes.contexts.feature_contexts of a circuit's features (or of site -> feature indices)."""
    if isinstance(features, Circuit):
        _check_widths(model, features)
        features = circuit_features(features)
    return _contexts(model, features, corpus, k=k, window=window, max_tokens=max_tokens,
                     batch_size=batch_size, reuse=reuse, progress=progress)


def _check_widths(model: SplicedModel, circuit: Circuit) -> None:
    """The circuit's sites have the widths of the model's dictionaries there."""
    for site, shape in circuit.meta.site_shapes.items():
        if site in model.dictionaries and shape[-1] - 1 != model.dictionaries[site].d_sae:
            raise ValueError(f"the circuit's site {site!r} has {shape[-1] - 1} features, the "
                             f"dictionary of {model.name} there {model.dictionaries[site].d_sae}"
                             "; load the model with the circuit's dictionaries")
