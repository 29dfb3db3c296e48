"""``circuits label RUN FILE``: a reader's labels of features (CSV site,feature,label or a JSON
list) put on a saved run's circuit; circuit.json and the views (SVG, export) are rewritten, the
run amended atomically (rundir.amend_run). A row the circuit cannot have is refused first."""

from __future__ import annotations

import argparse
from pathlib import Path

from circuits.cli.common import read_run
from circuits.cli.rundir import amend_run
from circuits.cli.views import run_features, write_views
from circuits.labels import apply_labels, read_labels


def add_parser(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser("label", help="attach labels to a run's features")
    lab.add_argument("run", type=Path, help="run directory written by discover")
    lab.add_argument("labels", type=Path,
                     help="CSV with the header site,feature,label, or a JSON list of "
                          "{site, feature, label}")
    lab.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    folder, circuit = read_run(args.run)
    labelled = apply_labels(circuit, read_labels(args.labels))  # refused before any writing
    features = run_features(folder)
    with amend_run(folder, args) as target:
        circuit.save(target.work / "circuit.json")
        write_views(target.work, circuit, features, slug=folder.name)
    print(f"labelled {labelled} node(s) of {circuit.n_nodes}")
