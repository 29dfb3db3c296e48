"""``circuits features RUN``: the top-activating contexts and density of a saved run's features
(features.json), from --corpus or the corpus the library knows for the model's dictionaries;
contexts the run already holds from the same corpus are reused. The run is amended in place,
atomically (rundir.amend_run), its views rewritten with the new contexts."""

from __future__ import annotations

import argparse
from pathlib import Path

from circuits.cli.common import MODEL_HELP, UsageError, circuit_model, positive, read_run
from circuits.cli.contexts import CHUNKS_PER_BATCH, add_corpus_options, contexts, given_corpus
from circuits.cli.rundir import amend_run
from circuits.cli.views import run_features, write_views
from circuits.features import FILE as FEATURES_FILE
from circuits.features import circuit_features
from saes.corpus import has_default_corpus


def add_parser(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser("features", help="top-activating contexts of a run's features")
    f.add_argument("run", type=Path, help="run directory written by discover")
    add_corpus_options(f)
    f.add_argument("--model", default=None,
                   help=f"{MODEL_HELP} (default: the circuit's own)")
    f.add_argument("--dictionaries", default=None, metavar="RELEASE[:VARIANT][+...]",
                   help="dictionaries to load (default: those the circuit records)")
    f.add_argument("--batch-size", dest="chunks_per_batch", type=positive,
                   default=CHUNKS_PER_BATCH,
                   help=f"chunks of the corpus per forward pass ({CHUNKS_PER_BATCH})")
    f.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    f.add_argument("--quiet", action="store_true", help="no progress bars")
    f.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    folder, circuit = read_run(args.run)
    corpus = given_corpus(args)
    model_name = args.model or circuit.meta.model
    if not circuit_features(circuit):
        raise UsageError(f"the circuit of {args.run} has no features (only error or component "
                         "nodes): there are no contexts to read")
    if corpus is None and not has_default_corpus(model_name):
        raise UsageError(f"no corpus is known for the dictionaries of {model_name}; pass "
                         "--corpus FILE (a text or JSONL file)")
    earlier = run_features(folder)
    with amend_run(folder, args) as target:
        model = circuit_model(circuit, args)
        found, read = contexts(model, circuit, corpus, args, reuse=earlier)
        if found is None:  # e.g. Gemma Scope 2 dictionaries: their training text is not here
            raise UsageError(f"{read} ({args.run})")
        found.save(target.work / FEATURES_FILE)
        write_views(target.work, circuit, found, slug=folder.name)
        reused = 0 if earlier is None else sum(
            earlier.features.get(k) == v for k, v in found.features.items())
        print(f"features: {read}" + (f"; {reused} reused from the run" if reused else ""))
