"""The ``circuits`` command: a thin layer over the Python API (everything here is importable).

    circuits discover --task across_pp --method relp        circuit, SVG, HTML view, summary
    circuits sweep --methods relp,ig,atp                     CSV and plot over thresholds
    circuits evaluate runs/x/circuit.json                    faithfulness / completeness
    circuits render runs/x/circuit.json                      SVG of a saved circuit
    circuits view runs/x                                     open its interactive view
    circuits compare --methods atp,relp,ig                   methods against exact patching
    circuits features runs/x [--corpus FILE]                 top contexts of a run's features
    circuits label runs/x labels.csv                         labels of a run's features
    circuits export runs/x --format neuronpedia --out F      attribution-graph JSON
    circuits models [MODEL]                                  models by name, their releases

One module per subcommand (its options and what it runs), common.py for the checks, options and
loading they share, rundir.py for run directories, contexts.py and views.py for the feature
contexts and the views (SVG, HTML, export) that discover, features and label write, browser.py
for headless Chromium, ranks.py for running under torchrun (discover, sweep, evaluate and
compare run data-parallel; rank 0 prints and writes). Every run writes one run directory
(features and label amend one; view and models write none) and prints where. Bad input (unknown
task, method or model, unwritable output, thresholds out of range, a corrupted circuit file, a
missing GPU or hub cache) is one line on stderr and exit code 2, checked before the long
computation where it can be; an error that is none of these is a bug and keeps its traceback.
Run directories (rundir.py) are assembled aside, moved into place atomically when complete,
locked against a second run, and never delete a file no run wrote. Defaults and fallbacks (e.g.
which method computes a method's edges) come from the library, not from here.
"""

from __future__ import annotations

import argparse
import sys

from circuits.cli import (
    compare,
    discover,
    evaluate,
    export,
    features,
    label,
    models,
    render,
    sweep,
    view,
)
from circuits.cli.common import UsageError, close_progress_bars, progress_bars
from circuits.cli.ranks import data_parallel, note_failure, tag
from circuits.distributed import PeerFailed

# in the order --help lists them
SUBCOMMANDS = (discover, sweep, evaluate, render, view, compare, features, label, export,
               models)


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line (no usage block) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="circuits", description="Sparse-feature circuit discovery: score nodes and "
                "edges, build a circuit, evaluate it by mean ablation, draw it, sweep thresholds, "
                "compare methods with exact patching. Each subcommand has its own --help.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in SUBCOMMANDS:
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--"]:  # `torchrun ... -m circuits -- discover --n 100` (see ranks.py)
        argv = argv[1:]
    try:
        args = parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a malformed command line (2)
        return int(stop.code or 0)
    try:
        with data_parallel(args):  # under torchrun: one rank of several (ranks.py)
            return _run(args)
    except UsageError as err:  # a command or device torchrun cannot run
        print(f"circuits {args.command}: error: {one_line(str(err))}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    """The subcommand, its bad input as one line and exit code 2; another rank's failure as one
    line and exit code 1 (under torchrun, errors say which rank)."""
    try:
        with progress_bars(not getattr(args, "quiet", False)):
            args.func(args)
    except PeerFailed as err:  # its message names this rank
        close_progress_bars()
        print(f"circuits {args.command}: error: {one_line(str(err))}; nothing was written",
              file=sys.stderr)
        return 1
    except (UsageError, ValueError, FileNotFoundError) as err:
        note_failure(err)
        close_progress_bars()
        print(f"circuits {args.command}: error{tag()}: {one_line(str(err))}", file=sys.stderr)
        return 2
    except BaseException as err:  # a bug: its traceback follows; the other ranks hear of it
        note_failure(err)
        raise
    return 0


def one_line(message: str) -> str:
    """A message as one line: a library's multi-line error keeps its lines, joined by '; '."""
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


__all__ = ["UsageError", "main", "parser"]

if __name__ == "__main__":
    sys.exit(main())
