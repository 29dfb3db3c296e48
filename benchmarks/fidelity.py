"""Fidelity on a real model: gradient methods against activation patching on Gemma-3-270M.

Component level (a bare model: one node per site and position, aggregation "none"): for every
task, `exact` patches each component (embed, attn_L, mlp_L, resid_L = hook_resid_post) at each
position from the patch run into the clean run, one at a time; every other method estimates the
same effects. The table gives Pearson r between a method and exact over all layers × positions
of the scores averaged over the task's prompt pairs, per component kind ("resid" pools embed and
resid_0..L-1, i.e. every hook_resid_pre and the last hook_resid_post). Methods whose scores are
magnitudes (atp*, through GradDrop) are compared with the mean |exact|. The cost table gives
each method's CPU time per task and its ratio to atp, measured in the same process, one thread,
the fastest of --rounds interleaved rounds (exact: one run).

Tasks: IOI ("then"/"when" templates, one token length) and the four agreement constructions of
tasks.sva (simple, within_rc, across_rc, across_pp), prompts generated with the model's tokenizer.

    OMP_NUM_THREADS=1 python benchmarks/fidelity.py [--ioi-n 8] [--sva-n 16] [--rounds 2]
        [--tasks ioi,simple,...] [--methods atp,relp,...] [--per-example] [--out table.md]

Methods (columns of the table): the registered atp, relp (LN + Identity + Half), relp+AH (LN +
Identity + Half + AH), relp (Id+AH) (Identity + AH, the gemma default), atp+AH, atp*, relp*
(with LN + Identity + Half), column (within its default budget), and benchmark-only variants:
atp+QK (AtP*'s QK fix without GradDrop), column-all (every moved node followed), column-all+AH
(R with frozen patterns), column-K (columns K blocks deep, then linear).

Needs the Gemma GGUF packages or the cache of saes/gemma.py (about 3 GB of memory).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from circuits import attribute  # noqa: E402
from circuits.methods import METHODS, Method, RuledOptions, atp_star, column  # noqa: E402
from circuits.scores import read_tensors, write_tensors  # noqa: E402
from evaluation.agreement import pearson  # noqa: E402
from saes import SplicedModel, load  # noqa: E402
from tasks import ioi, sva  # noqa: E402
from tasks.pairs import Dataset  # noqa: E402

TASKS = ("ioi", *sva.CONSTRUCTIONS)
KINDS = ("resid", "attn", "mlp")
EXACT_CACHE_KEY = "benchmarks.fidelity.exact"  # header of a cached exact-score file


@dataclass(frozen=True)
class Variant:
    """A column of the table: a registered method with its options."""

    label: str
    method: str
    rules: tuple[str, ...] | None = None  # relp / relp*: LRP rules (None: the family's set)
    magnitude: bool = False  # scores are |effect| estimates: compare with mean |exact|


VARIANTS: dict[str, Variant] = {
    v.label: v
    for v in (
        Variant("atp", "atp"),
        Variant("relp", "relp", ("ln", "identity", "half")),  # the RelP paper's set
        Variant("relp+AH", "relp", ("ln", "identity", "half", "ah")),
        Variant("atp+AH", "relp", ("ah",)),
        Variant("relp (Id+AH)", "relp", ("identity", "ah")),  # feature-level best on Gemma
        Variant("atp*", "atp*", magnitude=True),
        Variant("atp+QK", "atp+QK"),
        Variant("relp*", "relp*", ("ln", "identity", "half")),  # + AH: RelP*'s own
        Variant("column", "column"),
        Variant("column-all", "column-all"),
        Variant("column-all+AH", "column-all+AH"),
        Variant("column (no rules)", "column", ()),
        Variant("column (LN)", "column", ("ln",)),
        Variant("column (Id+Half)", "column", ("identity", "half")),
        *(Variant(f"column-{k}", f"column-{k}") for k in (2, 4, 8)),
    )
}
DEFAULT = ("atp", "relp", "relp+AH", "relp (Id+AH)", "atp+AH", "atp*", "relp*", "column",
           "column-all")
# benchmark-only entries of the method registry: variants of registered methods
COLUMN = {"edges": "relp", "options": RuledOptions, "resolve_rules": column.column_rules}
EXTRA = {
    "atp+QK": Method("atp+QK", partial(atp_star.score_batch, grad_drop=False),
                     "AtP*'s QK fix without GradDrop", edges="atp"),
    "column-all": Method("column-all", partial(column.column_patching, budget=None),
                         "column patching of every moved node", **COLUMN),
    "column-all+AH": Method("column-all+AH", partial(
        column.column_patching, budget=None, frozen_patterns=True),
        "column patching of every moved node, R with patterns constant", **COLUMN),
} | {
    f"column-{k}": Method(f"column-{k}", partial(column.column_patching, budget=None, depth=k),
                          f"column patching, columns {k} blocks deep, then linear", **COLUMN)
    for k in (2, 4, 8)
}


def task_data(model: SplicedModel, task: str, n: int, seed: int) -> Dataset:
    if task == "ioi":
        pairs = ioi.generate(n, seed=seed, tokenizer=model.tokenizer, templates=("then", "when"))
    else:
        pairs = sva.generate(task, n, seed=seed, tokenizer=model.tokenizer)
    return model.tokenize(pairs)


def by_kind(model: SplicedModel, sites: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per component kind: scores [n, layers, pos] (resid: embed, resid_0, ..., resid_{L-1})."""
    n_layers = model.cfg.n_layers
    out = {
        "resid": [sites["embed"]] + [sites[f"resid_{layer}"] for layer in range(n_layers)],
        "attn": [sites[f"attn_{layer}"] for layer in range(n_layers)],
        "mlp": [sites[f"mlp_{layer}"] for layer in range(n_layers)],
    }
    return {k: torch.stack([s[..., 0].cpu() for s in v], dim=1) for k, v in out.items()}


def timed(fn: Callable[[], dict[str, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], float]:
    """(result, CPU seconds)."""
    start = time.process_time()
    out = fn()
    return out, time.process_time() - start


def scores(model: SplicedModel, data: Dataset, variant: Variant, args) -> dict[str, torch.Tensor]:
    result = attribute(
        model, data, variant.method, aggregation="none", per_example=True,
        batch_size=args.batch_size, rules=variant.rules,
        exact_batch=args.exact_batch if variant.method == "exact" else None, progress=False,
    )
    return result.sites


def measure(model: SplicedModel, task: str, args) -> tuple[dict, dict, dict]:
    """(r per variant and kind, CPU seconds per variant, notes) for one task."""
    n = args.ioi_n if task == "ioi" else args.sva_n
    data = task_data(model, task, n, args.seed)
    cached = (None if args.exact_cache is None
              else args.exact_cache / f"{task}-{n}-{args.seed}.safetensors")
    if cached is not None and cached.exists():  # safetensors + a JSON header: no pickle
        meta, exact = read_tensors(cached, EXACT_CACHE_KEY, "exact-score cache")
        t_exact = float(meta["seconds"])
    else:
        exact, t_exact = timed(lambda: scores(model, data, Variant("exact", "exact"), args))
        if cached is not None:
            write_tensors(cached, exact, EXACT_CACHE_KEY, {"seconds": t_exact})
    exact_k = by_kind(model, exact)
    r: dict[str, dict[str, float]] = {}
    r_pooled: dict[str, dict[str, float]] = {}
    cost = {"exact": t_exact}
    got_all = {}
    for _ in range(args.rounds):  # interleaved rounds, the fastest kept: the CPU is shared
        for label in args.methods:
            got_all[label], t = timed(lambda v=VARIANTS[label]: scores(model, data, v, args))
            cost[label] = min(cost.get(label, t), t)
    for label in args.methods:
        variant = VARIANTS[label]
        got = got_all[label]
        got_k = by_kind(model, got)
        r[label], r_pooled[label] = {}, {}
        for kind in KINDS:
            ref = exact_k[kind].abs() if variant.magnitude else exact_k[kind]
            r[label][kind] = pearson(got_k[kind].mean(0), ref.mean(0))
            r_pooled[label][kind] = pearson(got_k[kind], ref)
    with torch.no_grad():
        from circuits.forward import Targets, forward

        base, _ = forward(model, data.clean_tokens, Targets.of(data))
    notes = {"n": len(data), "seq": data.seq_len, "metric": float(base.mean())}
    return {"mean": r, "pooled": r_pooled}, cost, notes


def r_table(results: dict, labels: list[str], which: str) -> str:
    lines = ["| task | component | " + " | ".join(labels) + " |",
             "|---|---|" + "---|" * len(labels)]
    for task, (r, _, notes) in results.items():
        for kind in KINDS:
            cells = [f"{r[which][label][kind]:.2f}" for label in labels]
            lines.append(f"| {task} ({notes['n']} pairs, {notes['seq']} tokens) | {kind} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost_table(results: dict, labels: list[str]) -> str:
    cols = ["exact", *labels]
    lines = ["| task | " + " | ".join(f"{c} s (× atp)" for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for task, (_, cost, _) in results.items():
        base = cost["atp"] if "atp" in cost else float("nan")
        lines.append(f"| {task} | " + " | ".join(
            f"{cost[c]:.1f} ({cost[c] / base:.1f})" for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ioi-n", type=int, default=8, help="IOI prompt pairs")
    parser.add_argument("--sva-n", type=int, default=16, help="pairs per agreement construction")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma list of {TASKS}")
    parser.add_argument("--methods", default=",".join(DEFAULT),
                        help=f"comma list of {list(VARIANTS)} (atp is always run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--exact-batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2,
                        help="timing rounds of the fast methods, fastest kept (exact: one)")
    parser.add_argument("--per-example", action="store_true",
                        help="also print r pooled over prompts × layers × positions")
    parser.add_argument("--exact-cache", type=Path, default=None,
                        help="folder to keep exact scores in between runs (development)")
    parser.add_argument("--out", type=Path, default=None, help="also write the tables here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    tasks = args.tasks.split(",")
    labels = args.methods.split(",")
    bad = [t for t in tasks if t not in TASKS] + [m for m in labels if m not in VARIANTS]
    if bad:
        sys.exit(f"unknown task(s)/method(s) {bad}; tasks: {TASKS}, methods: {list(VARIANTS)}")
    args.methods = ["atp"] + [m for m in labels if m != "atp"]

    METHODS.update(EXTRA)
    model = load("gemma-3-270m", dictionaries=False, device="cpu")
    warm = task_data(model, "simple", 2, args.seed)
    attribute(model, warm, "atp", progress=False)  # warm-up
    results = {}
    for task in tasks:
        start = time.perf_counter()
        results[task] = measure(model, task, args)
        print(f"[{task}: {time.perf_counter() - start:.0f} s wall]", file=sys.stderr, flush=True)
    out = [
        "## Pearson r with exact activation patching, Gemma-3-270M, component level\n",
        "Scores averaged over each task's prompt pairs, r over layers × positions; "
        "atp* (GradDrop: magnitudes) against the mean |exact|.\n",
        r_table(results, args.methods, "mean"),
    ]
    if args.per_example:
        out += ["\n## Pearson r pooled over prompt pairs × layers × positions\n",
                r_table(results, args.methods, "pooled")]
    out += ["\n## CPU seconds per task (one thread) and ratio to atp, same process\n",
            cost_table(results, args.methods),
            "\nMean clean metric (logit[patch answer] − logit[clean answer]) per task: "
            + ", ".join(f"{t} {notes['metric']:.2f}" for t, (_, _, notes) in results.items())]
    text = "\n".join(out)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
