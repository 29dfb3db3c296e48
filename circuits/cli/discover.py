"""``circuits discover``: node scores, the circuit with its edges, its features' contexts
(features.json, from --corpus or the corpus the library knows for the model's dictionaries),
its views (SVG, the interactive circuit.html, attribution-graph export; labels from
--labels), JSON, a summary, and
faithfulness/completeness on held-out pairs. Edges are computed by `build` with the library's
edge method for the node method, or --edge-method. Under torchrun every rank takes its shard of
the pairs (scores, edges, node means and faithfulness are all-reduced); rank 0 alone reads the
feature contexts, draws the views and writes the run."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from circuits import distributed
from circuits.attribute import attribute
from circuits.circuit import build
from circuits.cli.common import (
    OPTION_FLAGS,
    UsageError,
    add_common,
    check_device,
    check_methods,
    check_model,
    check_task,
    check_threshold,
    finite,
    given_options,
    load_model,
    load_pairs,
    method_kwargs,
    positive,
    task_files,
)
from circuits.cli.contexts import add_corpus_options, contexts, given_corpus
from circuits.cli.notes import recorded_warnings
from circuits.cli.rundir import run_dir
from circuits.cli.views import write_views
from circuits.features import FILE as FEATURES_FILE
from circuits.labels import apply_labels, check_labels, read_labels
from circuits.methods import EDGE_METHODS, METHODS
from circuits.top import top_nodes
from evaluation import completeness, faithfulness, node_means


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("discover", help="scores, circuit, feature contexts, SVG, HTML view, "
                       "export, JSON and a summary")
    add_common(d)
    d.add_argument("--method", default="relp", help=f"one of {', '.join(METHODS)} (relp)")
    d.add_argument("--node-threshold", type=float, default=None,
                   help="keep nodes with |score| >= this (default: 1%% of the total effect)")
    d.add_argument("--top-k", type=int, default=None, help="keep the k strongest nodes instead")
    d.add_argument("--edge-threshold", type=float, default=None,
                   help="keep edges with |weight| >= this (default: every non-zero edge)")
    d.add_argument("--edge-method", default=None,
                   help=f"edge attribution ({', '.join(EDGE_METHODS)}); default: the library's "
                        f"edge method of the node method ({_edge_defaults()})")
    d.add_argument("--no-edges", action="store_true", help="nodes only")
    d.add_argument("--top", type=positive, default=15, help="nodes to list (15)")
    add_corpus_options(d)
    d.add_argument("--no-features", action="store_true",
                   help="no feature contexts (features.json)")
    d.add_argument("--labels", type=Path, default=None, metavar="FILE",
                   help="labels of features: CSV with the header site,feature,label or a JSON "
                        "list of {site, feature, label}; shown in the SVG and the export")
    d.set_defaults(func=run)


def _edge_defaults() -> str:
    """'atp, ig, relp: their own; exact, atp* -> atp; ...' from the method registry."""
    own = [m for m, record in METHODS.items() if record.edges == m]
    taken = {e: [m for m, record in METHODS.items() if record.edges == e != m] for e in own}
    return "; ".join([f"{', '.join(own)}: their own"]
                     + [f"{', '.join(ms)} -> {e}" for e, ms in taken.items() if ms])


def check(args: argparse.Namespace) -> None:
    check_model(args.model)
    check_device(args.device)
    check_task(args.task)
    check_methods([args.method], list(METHODS))
    check_threshold("--node-threshold", args.node_threshold)
    check_threshold("--edge-threshold", args.edge_threshold)
    if args.top_k is not None and args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {args.top_k}")
    if args.node_threshold is not None and args.top_k is not None:
        raise UsageError("give --node-threshold or --top-k, not both")
    if args.edge_method is not None:
        check_methods([args.edge_method], EDGE_METHODS)
        # build takes the edge method's options from the node scores: a flag the node method
        # does not take would not reach the edges
        node, edge = METHODS[args.method].option_names, METHODS[args.edge_method].option_names
        for name in given_options(args):
            if name in edge and name not in node:
                raise UsageError(
                    f"{OPTION_FLAGS[name]} would not reach the {args.edge_method} edges: they "
                    f"take their options from the node scores, and method {args.method!r} "
                    f"takes no {OPTION_FLAGS[name]}; drop it or score nodes with "
                    f"--method {args.edge_method}"
                )


def run(args: argparse.Namespace) -> None:
    check(args)
    labels = read_labels(args.labels) if args.labels else []
    corpus = None if args.no_features else given_corpus(args)
    inputs = [*task_files(args.task), *(Path(f) for f in (args.labels, args.corpus) if f)]
    with run_dir(args.out, f"{args.task}-{args.method}", args,
                 inputs=inputs) as target, recorded_warnings() as notes:
        model = load_model(args.model, args.device, args.dictionaries, sites=args.sites)
        check_labels(labels, {s: d.d_sae for s, d in model.dictionaries.items()}, "model")
        train, test = load_pairs(args.task, model, args.n, args.eval_n)
        started = time.perf_counter()
        scores = attribute(model, train, args.method, **method_kwargs(args.method, args))
        scores.save(target.work / "scores.safetensors")
        node_seconds = time.perf_counter() - started
        started = time.perf_counter()
        circuit = build(
            scores, node_threshold=args.node_threshold, top_k=args.top_k,
            edge_threshold=args.edge_threshold, edges=False if args.no_edges else None,
            edge_method=None if args.no_edges else args.edge_method,
            model=model, data=train, batch_size=args.batch_size, progress=not args.quiet,
        )
        edge_seconds = time.perf_counter() - started
        apply_labels(circuit, labels)
        circuit.save(target.work / "circuit.json")
        started = time.perf_counter()
        features, read = ((None, "skipped (--no-features)") if args.no_features
                          else (None, "on rank 0") if not distributed.is_main()
                          else contexts(model, circuit, corpus, args))
        if features is not None:
            features.save(target.work / FEATURES_FILE)
        feature_seconds = time.perf_counter() - started
        if distributed.is_main():  # rank 0 alone writes the run (the others' folder is scratch)
            write_views(target.work, circuit, features, slug=target.path.name)
        means = node_means(model, test)
        faith = faithfulness(model, circuit, test, means=means)
        complete = completeness(model, circuit, test, means=means)
        n_error_nodes = sum(1 for _, role in circuit.graph.nodes(data="role") if role == "error")
        summary = {
            "model": model.name, "task": args.task, "method": args.method,
            "edge_method": circuit.meta.edge_method,
            "n_discovery": len(train), "n_evaluation": len(test),
            "node_threshold": circuit.meta.node_threshold, "top_k": args.top_k,
            "edge_threshold": args.edge_threshold,
            "n_nodes": circuit.n_nodes, "n_edges": circuit.n_edges,
            "n_error_nodes": n_error_nodes,
            "faithfulness": finite(faith.value), "completeness": finite(complete.value),
            "m_full": faith.m_full, "m_empty": faith.m_empty, "m_circuit": faith.m_circuit,
            "m_complement": complete.m_circuit,
            "features": read, "seconds_nodes": round(node_seconds, 2),
            "seconds_circuit": round(edge_seconds, 2),
            "seconds_features": round(feature_seconds, 2),
            "world_size": distributed.world_size(),  # processes (torchrun ranks), and each
            "pairs_per_rank": {"discovery": distributed.shard_sizes(len(train)),  # one's shard
                               "evaluation": distributed.shard_sizes(len(test))},
            "warnings": notes.messages,  # e.g. an empty circuit, a ratio from a small gap
        }
        (target.work / "summary.json").write_text(json.dumps(summary, indent=1))
        ranked = top_nodes(scores, args.top)
        (target.work / "top_nodes.json").write_text(
            json.dumps([{**node.__dict__, "label": node.label} for node in ranked], indent=1)
        )
        print(f"\n{len(train)} {args.task} pairs, method {args.method}"
              f" (nodes {node_seconds:.1f}s, circuit {edge_seconds:.1f}s)")
        kept = (f"top {args.top_k}" if args.top_k is not None
                else f"|score| >= {summary['node_threshold']:.4g}")
        print(f"circuit: {circuit.n_nodes} nodes ({n_error_nodes} error), "
              f"{circuit.n_edges} edges, {kept}")
        print(f"on {len(test)} held-out pairs: faithfulness {faith.value:.3f}, completeness "
              f"{complete.value:.3f} (m(M) {faith.m_full:.3f}, m(C) {faith.m_circuit:.3f}, "
              f"m(empty) {faith.m_empty:.3f})")
        print(f"features: {read}" + (f" ({feature_seconds:.1f}s)" if features else ""))
        print(f"\n{'node':<32} {'score':>10}")
        for node in ranked:
            print(f"{node.label:<32} {node.score:>10.4f}")
        print(f"\nfiles: {' '.join(sorted(p.name for p in target.work.iterdir()))}")
