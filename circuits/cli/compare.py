"""``circuits compare``: node scores of several methods against exact activation patching
(Pearson r per site, or per component kind on a model without dictionaries), with timings."""

from __future__ import annotations

import argparse
import time

from circuits.attribute import attribute
from circuits.cli.common import (
    add_common,
    check_device,
    check_methods,
    check_model,
    check_task,
    file_safe,
    load_model,
    load_pairs,
    method_kwargs,
    split_list,
    task_files,
)
from circuits.cli.rundir import run_dir
from circuits.methods import METHODS
from circuits.types import Aggregation
from evaluation.agreement import agreement, agreement_table


def add_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("compare", help="methods against exact patching (Pearson r per site)")
    add_common(c, n=20, eval_n=None)
    c.add_argument("--methods", default="atp,relp,ig,atp*",
                   help="comma-separated methods to compare with exact (atp,relp,ig,atp*)")
    c.add_argument("--bare", action="store_true",
                   help="components instead of features (always so for a model loaded without "
                        "dictionaries, e.g. gemma-3-270m)")
    c.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    check_model(args.model)
    check_device(args.device)
    check_task(args.task)
    methods = split_list(args.methods)
    check_methods(methods, [m for m in METHODS if m != "exact"])
    with run_dir(args.out, f"compare-{args.task}", args,
                 inputs=task_files(args.task)) as target:
        # a model without dictionaries (gemma-3-270m by default, or --bare) compares components
        model = load_model(args.model, args.device, False if args.bare else args.dictionaries,
                           sites=args.sites)
        components_only = model.components_only
        train, _ = load_pairs(args.task, model, args.n, 0)
        aggregation: Aggregation = "none" if components_only else "sum"
        timings = {}
        all_scores = {}
        for method in ["exact", *methods]:
            started = time.perf_counter()
            all_scores[method] = attribute(model, train, method, aggregation=aggregation,
                                           **method_kwargs(method, args))
            timings[method] = time.perf_counter() - started
            all_scores[method].save(target.work / f"scores-{file_safe(method)}.safetensors")
        exact = all_scores.pop("exact")
        table = agreement(all_scores, exact, by="kind" if components_only else "site")
        table.to_csv(target.work / "agreement.csv", index=False)
        base = timings.get("atp")
        times = " · ".join(
            f"{m} {t:.1f}s" + (f" ({t / base:.1f}× atp)" if base else "")
            for m, t in timings.items()
        )
        text = (f"Pearson r against exact patching, {len(train)} {args.task} pairs, "
                f"{model.name}{' (components)' if components_only else ''}\n\n"
                f"{agreement_table(table)}\n\ntimes: {times}\n")
        (target.work / "agreement.md").write_text(text)
        print("\n" + text)
