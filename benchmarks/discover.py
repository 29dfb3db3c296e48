"""`circuits discover` end to end: time and peak memory, against atp and one plain forward.

    python3 benchmarks/discover.py [--model gemma-3-270m] [--dictionaries trained]
        [--task across_rc] [--n 100] [--out runs/bench-discover]

In one run: the CLI as a user runs it, in a child process (`python3 -m circuits discover ...
--quiet`: loading, relp node scores, edges, the circuit, feature contexts, the views,
faithfulness and completeness on the held-out pairs), its wall time and peak resident memory;
then, in this process on the same discovery pairs, one plain forward and atp's node scores, the
bases of the ratios. The phases come from the run's summary.json. Goal (issue 15): under 5
minutes and 8 GiB for gemma-3-270m, across_rc, 100 pairs.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--dictionaries", default=None,
                        help="as discover's --dictionaries (default: the model's own)")
    parser.add_argument("--task", default="across_rc")
    parser.add_argument("--n", type=int, default=100, help="discovery pairs")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-discover")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    command = [sys.executable, "-m", "circuits", "discover", "--model", args.model,
               "--task", args.task, "--n", str(args.n), "--out", str(args.out),
               "--device", args.device, "--quiet",
               *(["--dictionaries", args.dictionaries] if args.dictionaries else [])]
    print("$ " + " ".join(command[1:]), file=sys.stderr)
    started = time.perf_counter()
    child = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    cli_s = time.perf_counter() - started
    if child.returncode != 0:
        sys.exit(f"discover failed:\n{child.stderr[-3000:]}")
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
    summary = json.loads((args.out / "summary.json").read_text())

    import torch

    from circuits import attribute
    from circuits.cli.common import load_pairs
    from circuits.forward import Targets, forward
    from saes import load

    model = load(args.model, dictionaries=args.dictionaries, device=args.device)
    train, _ = load_pairs(args.task, model, args.n, 0)
    data = model.tokenize(train)
    attribute(model, data.subset([0, 1]), "atp", progress=False)  # warm-up
    started = time.perf_counter()
    with torch.no_grad():
        for batch in data.batches(32):
            forward(model, batch.clean_tokens, Targets.of(batch))
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    plain_s = time.perf_counter() - started
    started = time.perf_counter()
    attribute(model, data, "atp", progress=False)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    atp_s = time.perf_counter() - started

    rows = [("plain forward (this process)", plain_s),
            ("atp node scores (this process)", atp_s),
            ("relp node scores (in discover)", summary["seconds_nodes"]),
            (f"edges + circuit ({summary['n_nodes']} nodes, {summary['n_edges']} edges)",
             summary["seconds_circuit"]),
            ("feature contexts", summary["seconds_features"]),
            ("`circuits discover`, end to end (child process)", cli_s)]
    print(f"# `circuits discover --model {args.model} --task {args.task} --n {args.n}`"
          f" ({model!r}, {torch.get_num_threads()} threads)\n")
    print("| step | seconds | × atp | × plain forward |")
    print("|---|---:|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.1f} | {seconds / atp_s:.2f} | {seconds / plain_s:.1f} |")
    def ratio(name: str) -> str:  # null in summary.json where the ratio is undefined
        value = summary[name]
        return "undefined" if value is None else f"{value:.3f}"

    print(f"\nend to end {cli_s / 60:.1f} min (goal < 5), peak memory of the discover process "
          f"{peak_gib:.2f} GiB (goal < 8; max RSS, loading included); held-out faithfulness "
          f"{ratio('faithfulness')}, completeness {ratio('completeness')} on "
          f"{summary['n_evaluation']} pairs; run in {args.out}")


if __name__ == "__main__":
    main()
