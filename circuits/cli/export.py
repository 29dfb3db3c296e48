"""``circuits export RUN --format neuronpedia --out FILE``: a saved run's circuit as the
attribution-graph JSON that Neuronpedia's graph viewer and circuit-tracer's local server open
(circuits/export.py), clerps from its labels and features.json; written atomically."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from circuits.cli.common import UsageError, read_run
from circuits.cli.views import run_features
from circuits.export import FORMATS, save_attribution_graph


def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("export", help="a run's circuit as an attribution graph (Neuronpedia)")
    e.add_argument("run", type=Path, help="run directory written by discover")
    e.add_argument("--format", default="neuronpedia",
                   help=f"one of {', '.join(FORMATS)} (neuronpedia)")
    e.add_argument("--out", type=Path, required=True, help="JSON file to write")
    e.add_argument("--slug", default=None, help="the graph's name (default: the run's name)")
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    if args.format not in FORMATS:
        raise UsageError(f"unknown --format {args.format!r}; choose from {', '.join(FORMATS)}")
    out: Path = args.out
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; pass the JSON file to write, e.g. "
                         f"{out / 'graph.json'}")
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {out}: its directory {out.parent} does not exist or is "
                         "not writable; pass another --out")
    folder, circuit = read_run(args.run)
    features = run_features(folder)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as work:
        written = save_attribution_graph(circuit, Path(work) / out.name, features,
                                         slug=args.slug or folder.resolve().name)
        written.replace(out)
    print(f"{circuit.n_nodes} nodes, {circuit.n_edges} links"
          f"{'' if features else ' (no features.json: clerps name the features)'}\nwrote {out}")
