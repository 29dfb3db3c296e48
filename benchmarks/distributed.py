"""Data parallelism: the same work in 1 and in 2 processes (torchrun, gloo on the CPU), timed
phase by phase, and what the measured per-pair costs say N ranks would take.

    python benchmarks/distributed.py [--n 200] [--task across_pp] [--pythia]

Runs itself under ``torch.distributed.run`` four times: 1 process × 1 thread, 1 process × 2
threads, 2 processes × 1 thread, and 1 × 1 on one pair. Each run loads the model
(timed as startup: import + load, paid by every rank at once), then times each phase between
two barriers (a phase lasts as long as its slowest rank): relp node scores, ig node scores (10
steps), the relp edges of the default circuit, and the evaluation (node means + faithfulness +
completeness on --n held-out pairs). Prints a table of seconds and speedups, the bytes each
phase all-reduces, and the expected time of the phases for N ranks, for the measured n and for
5000 pairs, from the model

    T(N) = Σ_phases [ fixed_phase + n · c_phase / N + 2 (N−1)/N · B_phase / bandwidth ]

with c_phase the per-pair cost, (T_phase(n) − T_phase(1)) / (n − 1), and fixed_phase the rest
of T_phase(1), both from the two 1 × 1 runs, and a ring all-reduce of the B_phase bytes the
phase reduces. This machine has 2 cores (and other work on them): expect little gain; the
figures say how much.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIGS = [(1, 1), (1, 2), (2, 1)]  # (processes, threads per process)
PHASES = ("nodes relp", "nodes ig", "edges relp", "evaluation")


def worker(args: argparse.Namespace) -> None:
    """One rank: load, then each phase between barriers; rank 0 writes the times."""
    started = time.perf_counter()
    import torch
    import torch.distributed as dist

    from circuits import attribute, build, distributed
    from circuits.edges import site_graph
    from evaluation import completeness, faithfulness, node_means
    from saes import load
    from tasks import sva

    distributed.init_from_env("cpu")
    model = load("pythia-70m-deduped" if args.pythia else "organism", device="cpu")
    train = sva.load(args.task, "train", n=args.n, tokenizer=model.tokenizer)
    test = sva.load(args.task, "test", n=args.n, tokenizer=model.tokenizer)
    times: dict[str, float] = {"startup": time.perf_counter() - started}
    sizes: dict[str, int] = {}

    def phase(name: str, run):
        if distributed.active():
            dist.barrier()
        t = time.perf_counter()
        out = run()
        if distributed.active():
            dist.barrier()
        times[name] = time.perf_counter() - t
        return out

    relp = phase("nodes relp", lambda: attribute(model, train, "relp", progress=False))
    phase("nodes ig", lambda: attribute(model, train, "ig", progress=False))
    circuit = phase("edges relp", lambda: build(relp, model=model, data=train))

    def evaluate():
        means = node_means(model, test)
        faithfulness(model, circuit, test, means=means)
        completeness(model, circuit, test, means=means)
        return means

    means = phase("evaluation", evaluate)
    sizes["nodes relp"] = sizes["nodes ig"] = 4 * sum(v.numel() for v in relp.sites.values())
    kept = {site: int(mask.sum()) for site, mask in circuit.selection().items()}
    graph = site_graph(model)  # edge weights: [n_down, n_up] per connected pair, + the metric
    sizes["edges relp"] = 4 * (sum(kept[d] * kept[u.name] for d, ups in graph.upstream.items()
                                   for u in ups) + sum(kept[s.name] for s in graph.last))
    sizes["evaluation"] = 4 * sum(v.numel() for d in (means.features, means.error)
                                  for v in d.values())
    if distributed.is_main():
        Path(args.out).write_text(json.dumps({
            "world": distributed.world_size(), "threads": torch.get_num_threads(),
            "times": times, "bytes": sizes, "n": args.n,
            "nodes": circuit.n_nodes, "edges": circuit.n_edges}))
    distributed.leave()


def launch(processes: int, threads: int, args: argparse.Namespace, n: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "times.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                   str(processes), "--master-port", str(29600 + processes * 10 + threads),
                   __file__, "--", "--worker", "--out", str(out), "--n", str(n),
                   "--task", args.task, *(["--pythia"] if args.pythia else [])]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(command, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="pairs (train and held-out, 200)")
    parser.add_argument("--task", default="across_pp")
    parser.add_argument("--pythia", action="store_true",
                        help="full-size offline Pythia-70M (HF_HUB_OFFLINE=1 HF_HUB_CACHE=...)")
    parser.add_argument("--bandwidth", type=float, default=100e9,
                        help="all-reduce bandwidth for the paper estimate, bytes/s (100e9: "
                             "NVLink-class within a node; ~10e9 for 100 Gb/s between nodes)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args([a for a in sys.argv[1:] if a != "--"])
    if args.worker:
        worker(args)
        return
    runs = {(p, t): launch(p, t, args, args.n) for p, t in CONFIGS}
    small = launch(1, 1, args, 1)  # one pair: the fixed part of each phase
    base = runs[(1, 1)]
    print(f"{args.n} {args.task} pairs (and {args.n} held out), "
          f"{'Pythia-70M' if args.pythia else 'organism'}; circuit {base['nodes']} nodes, "
          f"{base['edges']} edges\n")
    print("| processes × threads | startup (s) | " + " | ".join(f"{p} (s)" for p in PHASES)
          + " | phases total (s) | speedup of the phases |")
    print("|---" * (len(PHASES) + 4) + "|")
    total = {k: sum(r["times"][p] for p in PHASES) for k, r in runs.items()}
    for (p, t), r in runs.items():
        cells = " | ".join(f"{r['times'][ph]:.2f}" for ph in PHASES)
        print(f"| {p} × {t} | {r['times']['startup']:.1f} | {cells} | {total[(p, t)]:.2f} | "
              f"{total[(1, 1)] / total[(p, t)]:.2f}× |")
    # the model: per-pair cost and fixed part of each phase, from n and n/4 in one process
    n1, n0 = args.n, small["n"]
    cost = {ph: (base["times"][ph] - small["times"][ph]) / (n1 - n0) for ph in PHASES}
    fixed = {ph: max(base["times"][ph] - cost[ph] * n1, 0.0) for ph in PHASES}
    print("\nper pair (1 × 1): " + ", ".join(f"{ph} {1e3 * cost[ph]:.1f} ms" for ph in PHASES)
          + "; fixed: " + ", ".join(f"{ph} {fixed[ph]:.2f} s" for ph in PHASES))
    print("all-reduced per phase: " + ", ".join(f"{ph} {base['bytes'][ph] / 1e6:.2f} MB"
                                              for ph in PHASES))
    print(f"\nexpected phases total for N ranks (bandwidth {args.bandwidth:.0e} B/s; ranks as "
          "fast as this 1 × 1; startup not included: every rank pays it at once):\n")
    sizes = (n1, 5000)
    print("| N | " + " | ".join(f"n = {n} (s) | speedup" for n in sizes) + " |")
    print("|---" * (1 + 2 * len(sizes)) + "|")

    def expected(n_ranks: int, n: int) -> float:
        return sum(fixed[ph] + n * cost[ph] / n_ranks
                   + 2 * (n_ranks - 1) / n_ranks * base["bytes"][ph] / args.bandwidth
                   for ph in PHASES)

    for n_ranks in (1, 2, 4, 8, 16, 64):
        cells = [f"{expected(n_ranks, n):.2f} | {expected(1, n) / expected(n_ranks, n):.1f}×"
                 for n in sizes]
        print(f"| {n_ranks} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
