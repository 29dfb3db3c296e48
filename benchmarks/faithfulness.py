"""Faithfulness and completeness curves of relp, ig, atp and a neuron baseline (RelP Figure 3).

    python benchmarks/faithfulness.py --out runs/faithfulness [--n-train 100] [--n-test 40]

On the model organism (or --model NAME --dictionaries STRING, e.g. gemma-3-270m trained; the
neuron baseline then at the same sites; --methods adds e.g. column, or relp:RULES for relp with
the LRP rules RULES, as in benchmarks/attribution.py), for each construction:
attribute on the train split with relp, ig and atp (the SAE dictionaries) and with relp on
identity dictionaries (neurons as nodes, ``load(..., dictionaries="neurons")``); sweep the top-k
circuits of each on the test split under mean ablation. Writes ``sweep.csv`` (every row, a
``task`` column added), ``<construction>.png/.svg`` and ``all.png/.svg`` to --out, and prints
markdown tables:
(a) nodes needed for faithfulness >= 0.8 and >= 0.9 (the first node count of the grid that
reaches it), with the share of relp's moved nodes (non-zero scores) that it is, and how many
times more neurons than relp features the same faithfulness needs,
(b) faithfulness at fixed node counts, (c) completeness at the same counts, (d) relp vs ig:
Spearman correlation of the node scores (average ranks for ties, over the nodes non-zero in
either), overlap of their top-k sets, and the largest faithfulness gap (over the grid, and from
GAP_FROM nodes on).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.attribution import variant  # noqa: E402
from circuits import attribute  # noqa: E402
from circuits.select import select_nodes  # noqa: E402
from evaluation import node_means, plot_sweep, sweep  # noqa: E402
from evaluation.agreement import pearson  # noqa: E402
from saes import load  # noqa: E402
from tasks import sva  # noqa: E402

CONSTRUCTIONS = ("simple", "within_rc", "across_rc", "across_pp")
SAE_METHODS = ("relp", "ig", "atp")
NEURONS = "neurons (relp)"
FIXED = (10, 25, 50, 100, 200, 400)
TARGETS = (0.8, 0.9)
GAP_FROM = 8  # table (d) also gives the largest relp-ig gap from this many nodes on


def attribute_variant(model, data, spec: str, batch_size: int):
    """Node scores of a method, or of relp:RULES (relp with those LRP rules)."""
    name, rules = variant(spec)
    options = {} if rules is None else {"rules": rules}
    return attribute(model, data, name, progress=False, batch_size=batch_size, **options)


def node_grid(total: int) -> list[int]:
    """0, 48 counts spaced geometrically from 1 to total, and the FIXED counts up to total."""
    grid = np.round(np.geomspace(1, total, 48)).astype(int).tolist()
    return sorted({0, *grid, *(k for k in FIXED if k <= total)})


def nodes_needed(table: pd.DataFrame, target: float) -> float:
    """Smallest node count of the sweep with faithfulness >= target (NaN: never)."""
    hit = table[table["faithfulness"] >= target]
    return float(hit["n_nodes"].min()) if not hit.empty else float("nan")


def at_count(table: pd.DataFrame, k: int, column: str) -> float:
    row = table[table["top_k"] == k]
    return float(row[column].iloc[0]) if not row.empty else float("nan")


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of a flat tensor, tied values sharing the mean of their ranks."""
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True,
                                           return_counts=True)
    last = counts.cumsum(0).double()  # rank of the last member of each group of ties
    return (last - (counts - 1) / 2)[inverse]


def rank_corr(a: torch.Tensor, b: torch.Tensor) -> tuple[float, int]:
    """Spearman correlation (average ranks for ties) over the nodes that moved (non-zero in
    either), and how many those are; nodes at 0 in both would only add ties."""
    moved = (a != 0) | (b != 0)
    n = int(moved.sum())
    if n < 2:
        return float("nan"), n
    return pearson(average_ranks(a[moved]), average_ranks(b[moved])), n


def compare(relp, ig, k: int = 100) -> dict[str, float]:
    """Spearman of |score| over the nodes that moved, and the overlap of the two top-k sets."""
    a = torch.cat([v.abs().flatten().cpu() for v in relp.sites.values()])
    b = torch.cat([v.abs().flatten().cpu() for v in ig.sites.values()])
    ta = torch.cat([m.flatten() for m in select_nodes(relp, top_k=k).values()])
    tb = torch.cat([m.flatten() for m in select_nodes(ig, top_k=k).values()])
    rho, moved = rank_corr(a, b)
    return {"spearman": rho, "moved": moved, f"top{k}_overlap": float((ta & tb).sum()) / k}


def fmt(x: float, digits: int = 2) -> str:
    return "—" if x != x else f"{x:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "faithfulness")
    parser.add_argument("--n-train", type=int, default=100)
    parser.add_argument("--n-test", type=int, default=40)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--constructions", nargs="+", default=list(CONSTRUCTIONS))
    parser.add_argument("--model", default="organism", help="a model saes.load knows")
    parser.add_argument("--dictionaries", default=None,
                        help="as saes.load's dictionaries= (e.g. trained); the neuron baseline "
                             "is spliced at the same sites")
    parser.add_argument("--methods", nargs="+", default=list(SAE_METHODS),
                        help=f"SAE methods ({' '.join(SAE_METHODS)}; column is another; "
                             "relp:RULES is relp with the LRP rules RULES, e.g. "
                             "relp:identity+ah)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    args.out.mkdir(parents=True, exist_ok=True)

    model = load(args.model, dictionaries=args.dictionaries, device=args.device)
    sites = None if args.model == "organism" else list(model.dictionaries)
    neurons = load(args.model, dictionaries="neurons", sites=sites, device=args.device)
    # the organism's own vocabulary needs no tokenizer to generate prompts
    tokenizer = None if args.model == "organism" else model.tokenizer
    methods = list(args.methods)
    if not {"relp", "ig"} <= set(methods):
        parser.error("--methods must include relp and ig (table (d) compares them)")
    frames, comparisons = [], {}
    for construction in args.constructions:
        train = sva.load(construction, n=args.n_train, tokenizer=tokenizer)
        test = model.tokenize(sva.load(construction, split="test", n=args.n_test,
                                       tokenizer=tokenizer))
        start = time.perf_counter()
        scores = {m: attribute_variant(model, train, m, args.batch_size) for m in methods}
        neuron_scores = attribute(neurons, train, "relp", progress=False,
                                  batch_size=args.batch_size)
        total = sum(v.numel() for v in scores["relp"].sites.values())
        means = node_means(model, test)
        sae = sweep(model, scores, test, node_counts=node_grid(total), means=means,
                    progress=False)
        n_total = sum(v.numel() for v in neuron_scores.sites.values())
        neuron = sweep(neurons, {NEURONS: neuron_scores}, test, node_counts=node_grid(n_total),
                       progress=False)
        table = pd.concat([sae, neuron], ignore_index=True).assign(task=construction)
        frames.append(table)
        comparisons[construction] = compare(scores["relp"], scores["ig"])
        comparisons[construction]["relp_moved"] = float(
            sum(int(v.ne(0).sum()) for v in scores["relp"].sites.values()))
        relp_f = table[table["method"] == "relp"].set_index("top_k")["faithfulness"]
        ig_f = table[table["method"] == "ig"].set_index("top_k")["faithfulness"]
        gap = (relp_f - ig_f).abs()
        comparisons[construction]["max_gap"] = float(gap.max())
        comparisons[construction]["max_gap_at"] = float(gap.idxmax())
        later = gap[gap.index >= GAP_FROM]
        comparisons[construction]["later_gap"] = float(later.max())
        comparisons[construction]["later_gap_at"] = float(later.idxmax())
        comparisons[construction]["m_full"] = float(table["m_full"].iloc[0])
        comparisons[construction]["m_empty"] = float(table["m_empty"].iloc[0])
        print(f"{construction}: attributed and swept in {time.perf_counter() - start:.1f}s "
              f"(m(M) = {table['m_full'].iloc[0]:.2f}, m(∅) = {table['m_empty'].iloc[0]:.2f})",
              file=sys.stderr)
        plot_sweep(table, args.out / construction, title=f"{args.model}, {construction}")
    table = pd.concat(frames, ignore_index=True)
    table.to_csv(args.out / "sweep.csv", index=False)
    plot_sweep(table, args.out / "all", facet="task",
               title=f"{args.model}: mean-ablation sweeps")
    methods = [*methods, NEURONS]

    print(f"Model {args.model} ({model!r}); attribution on {args.n_train} train pairs, "
          f"evaluation on {args.n_test} test pairs; SAE nodes per construction: {total}, "
          f"neuron nodes: {n_total}; node counts on a geometric grid (~55 points).\n")
    for target in TARGETS:
        print(f"(a) nodes needed for faithfulness >= {target} (relp: also as a share of its "
              "moved nodes; neurons ÷ relp: how many times more nodes the neuron baseline "
              "needs)\n")
        print("| construction | " + " | ".join(methods) + " | relp moved | relp share | "
              "neurons ÷ relp |")
        print("|---|" + "---:|" * (len(methods) + 3))
        for c in args.constructions:
            part = table[table["task"] == c]
            needed = {m: nodes_needed(part[part["method"] == m], target) for m in methods}
            moved = comparisons[c]["relp_moved"]
            cells = [fmt(needed[m], 0) for m in methods]
            print(f"| {c} | " + " | ".join(cells) + f" | {moved:.0f} | "
                  f"{fmt(100 * needed['relp'] / moved, 1)}% | "
                  f"{fmt(needed[NEURONS] / needed['relp'], 1)} |")
        print()
    for column, label in (("faithfulness", "(b)"), ("completeness", "(c)")):
        print(f"{label} {column} at fixed node counts (top-k by |score|)\n")
        print("| construction | method | " + " | ".join(str(k) for k in FIXED) + " |")
        print("|---|---|" + "---:|" * len(FIXED))
        for c in args.constructions:
            part = table[table["task"] == c]
            for m in methods:
                rows = [at_count(part[part["method"] == m], k, column) for k in FIXED]
                print(f"| {c} | {m} | " + " | ".join(fmt(x) for x in rows) + " |")
        print()
    print("(d) relp vs ig: Spearman of |score| (average ranks for ties) over the nodes that "
          "moved (non-zero in either), top-100 overlap, largest "
          "|faithfulness(relp) − faithfulness(ig)| over the grid (at k nodes), and from "
          f"{GAP_FROM} nodes on\n")
    print("| construction | m(M) | m(∅) | Spearman | moved nodes | top-100 overlap | max gap "
          f"| at k | max gap from {GAP_FROM} | at k |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c, v in comparisons.items():
        print(f"| {c} | {v['m_full']:.2f} | {v['m_empty']:.2f} | {v['spearman']:.3f} | "
              f"{v['moved']} | {v['top100_overlap']:.2f} | {v['max_gap']:.2f} | "
              f"{v['max_gap_at']:.0f} | {v['later_gap']:.2f} | {v['later_gap_at']:.0f} |")
    print(f"\nwrote {args.out / 'sweep.csv'} and plots (.png, .svg) to {args.out}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
