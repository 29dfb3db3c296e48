"""``circuits render``: the SVG of a saved circuit, written next to it (or at --out) only when
the drawing succeeded."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from circuits.cli.common import UsageError, read_circuit


def add_parser(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("render", help="SVG from a saved circuit")
    r.add_argument("circuit", type=Path, help="circuit.json written by discover")
    r.add_argument("--out", type=Path, default=None,
                   help="SVG file to write (default: the circuit's path with .svg)")
    r.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    out = args.out or args.circuit.with_suffix(".svg")
    check_out(out)
    circuit = read_circuit(args.circuit)
    # drawn next to the target, then moved: a failed drawing leaves no half-written SVG
    with tempfile.TemporaryDirectory(prefix=".render-", dir=out.parent) as work:
        drawn = Path(circuit.to_svg(Path(work) / out.name))
        for produced in Path(work).iterdir():
            produced.replace(out.parent / produced.name)
    print(f"{circuit.n_nodes} nodes, {circuit.n_edges} edges\nwrote {out.parent / drawn.name}")


def check_out(out: Path) -> None:
    """An SVG path whose folder exists and is writable, and that is no folder itself."""
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; pass the SVG file to write, e.g. "
                         f"{out / 'circuit.svg'}")
    if out.suffix != ".svg":
        raise UsageError(f"--out {out} must end in .svg")
    folder = out.parent
    if not folder.is_dir():
        raise UsageError(f"cannot write {out}: the directory {folder} does not exist; create it "
                         "or pass another --out")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {out}: its directory {folder} is not writable")
