"""``circuits sweep``: faithfulness and completeness over node thresholds or node counts, per
method (and the neuron baseline), as a CSV and a plot; with --edges, edge counts too. Each method
also gets MIB's integrated metrics (CPR, CMD over the node fractions 0.1 % to 100 %; see
evaluation/mib.py), in the CSV and the printed table."""

from __future__ import annotations

import argparse

import pandas as pd

from circuits import distributed
from circuits.attribute import attribute
from circuits.circuit import circuit_edges
from circuits.cli.common import (
    UsageError,
    add_common,
    check_device,
    check_methods,
    check_model,
    check_task,
    file_safe,
    load_model,
    load_pairs,
    method_kwargs,
    parse_numbers,
    positive,
    split_list,
    task_files,
)
from circuits.cli.rundir import run_dir
from circuits.edges import EdgeScores
from circuits.methods import METHODS
from circuits.scores import Scores
from circuits.select import select_nodes
from evaluation import plot_sweep, sweep
from saes.splice import SplicedModel
from tasks.pairs import PromptPair


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("sweep", help="faithfulness/completeness over thresholds: CSV and plot")
    add_common(s)
    s.add_argument("--methods", default="relp,ig,atp,neurons",
                   help="comma-separated methods; 'neurons' adds the neuron baseline (relp on "
                        "identity dictionaries) (default relp,ig,atp,neurons)")
    s.add_argument("--thresholds", default=None,
                   help="node thresholds: '0.1,0.01' or logspace:-4:0:15")
    s.add_argument("--node-counts", default=None,
                   help="circuit sizes (top k nodes), e.g. '5,10,20,50' (default: 0 and 16 "
                        "counts spaced geometrically up to all nodes)")
    s.add_argument("--edges", action="store_true",
                   help="also count edges (n_edges): edge attribution once per method among "
                        "its top --edge-nodes nodes, with the edge definition the method's "
                        "record names (exact, atp* -> atp; relp*, column -> relp); larger "
                        "circuits get n_edges NaN")
    s.add_argument("--edge-nodes", type=positive, default=500,
                   help="nodes among which --edges computes edges (500)")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    check_model(args.model)
    check_device(args.device)
    check_task(args.task)
    methods = split_list(args.methods)
    check_methods(methods, list(METHODS) + ["neurons"])
    thresholds = parse_numbers("--thresholds", args.thresholds, float) if args.thresholds else None
    counts = parse_numbers("--node-counts", args.node_counts, int) if args.node_counts else None
    if thresholds and counts:
        raise UsageError("give --thresholds or --node-counts, not both")
    with run_dir(args.out, f"sweep-{args.task}", args,
                 inputs=task_files(args.task)) as target:
        model = load_model(args.model, args.device, args.dictionaries, sites=args.sites)
        train, test = load_pairs(args.task, model, args.n, args.eval_n)
        all_scores, all_edges = {}, {}
        for method in methods:
            if method == "neurons":
                continue
            all_scores[method] = attribute(model, train, method, **method_kwargs(method, args))
            all_scores[method].save(target.work / f"scores-{file_safe(method)}.safetensors")
            if args.edges:
                all_edges[method] = _edges(model, train, all_scores[method], args)
        table = sweep(model, all_scores, test, thresholds=thresholds, node_counts=counts,
                      edges=all_edges, progress=not args.quiet)
        if "neurons" in methods:  # the neuron baseline: identity dictionaries, scored with relp
            neurons = load_model(args.model, args.device, "neurons", sites=args.sites,
                                 quiet=True)
            scores = attribute(neurons, train, "relp", **method_kwargs("relp", args))
            scores.save(target.work / "scores-neurons.safetensors")
            edges = {"neurons": _edges(neurons, train, scores, args)} if args.edges else {}
            extra = sweep(neurons, {"neurons": scores}, test, thresholds=thresholds,
                          node_counts=counts, edges=edges, progress=not args.quiet)
            table = pd.concat([table, extra], ignore_index=True)
        table.insert(0, "task", args.task)
        table.to_csv(target.work / "sweep.csv", index=False)
        if distributed.is_main():  # rank 0 alone writes the run (the others' folder is scratch)
            plot_sweep(table, target.work / "sweep", title=f"{model.name}: {args.task}")
        shown = ["method", "threshold", "top_k", "n_nodes", "faithfulness", "completeness", "cpr",
                 "cmd"]
        print(table[shown].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        print("\nfiles: sweep.csv sweep.png sweep.svg scores-*.safetensors")


def _edges(model: SplicedModel, train: list[PromptPair], scores: Scores,
           args: argparse.Namespace) -> EdgeScores:
    """Edges once per method among its top --edge-nodes nodes; sweep counts those kept."""
    selection = select_nodes(scores, top_k=args.edge_nodes)
    return circuit_edges(scores, selection, model, train, batch_size=args.batch_size,
                         progress=not args.quiet)
