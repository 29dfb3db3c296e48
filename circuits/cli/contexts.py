"""The feature-contexts step that `discover` and `features` share: the corpus options, which
corpus a run reads (--corpus FILE, else the one the library knows for the model's dictionaries,
saes.corpus.default_corpus), and the contexts of a circuit's features (circuits/features.py)."""

from __future__ import annotations

import argparse

from circuits.circuit import Circuit
from circuits.cli.common import positive
from circuits.features import FeatureContexts, K, circuit_features, feature_contexts
from saes.corpus import Corpus, default_corpus, read_corpus
from saes.splice import SplicedModel

CHUNKS_PER_BATCH = 64  # of the corpus, per forward (discover's --batch-size counts prompt pairs)


def add_corpus_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", default=None, metavar="FILE",
                   help="text to read the features by: a text file (documents separated by "
                        'blank lines) or a JSONL file with a "text" field per line (default: '
                        "the text the model's dictionaries were trained on, where known: the "
                        "organism's grammar text)")
    p.add_argument("--contexts", type=positive, default=K,
                   help=f"top-activating contexts kept per feature ({K})")


def given_corpus(args: argparse.Namespace) -> Corpus | None:
    """The --corpus file, read (and so checked) before anything is loaded; None if not given."""
    return None if args.corpus is None else read_corpus(args.corpus)


def contexts(model: SplicedModel, circuit: Circuit, corpus: Corpus | None,
             args: argparse.Namespace, reuse: FeatureContexts | None = None
             ) -> tuple[FeatureContexts | None, str]:
    """(the contexts of the circuit's features, or None; a line saying what was done)."""
    if not circuit_features(circuit):
        return None, "none: the circuit has no features"
    corpus = corpus or default_corpus(model)
    if corpus is None:
        return None, (f"skipped: no corpus is known for the dictionaries of {model.name}; pass "
                      "--corpus FILE")
    found = feature_contexts(model, circuit, corpus, k=args.contexts, reuse=reuse,
                             batch_size=getattr(args, "chunks_per_batch", CHUNKS_PER_BATCH),
                             progress=not args.quiet)
    return found, (f"contexts of {len(found.features)} features from {found.corpus.name} "
                   f"({found.corpus.n_documents} documents, {found.corpus.n_tokens} tokens)")
