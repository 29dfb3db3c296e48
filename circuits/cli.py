"""The ``circuits`` command: a thin layer over the Python API (everything here is importable).

    circuits discover --task across_pp --method relp        scores, circuit, SVG, JSON, summary
    circuits sweep --methods relp,ig,atp                     CSV and plot over thresholds
    circuits evaluate runs/x/circuit.json                    faithfulness / completeness
    circuits render runs/x/circuit.json                      SVG of a saved circuit
    circuits compare --methods atp,relp,ig                   methods against exact patching

Every run writes one run directory and prints where. Bad input (unknown task, method or model,
unwritable output, thresholds out of range, a corrupted circuit file) is one line on stderr and
exit code 2; the run directory is assembled in a temporary folder and moved into place only
when complete, so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from circuits.attribute import attribute
from circuits.circuit import Circuit, build, circuit_edges
from circuits.methods import EDGE_METHODS, METHODS, IGOptions
from circuits.select import select_nodes
from circuits.top import top_nodes
from evaluation import completeness, faithfulness, node_means, plot_sweep, sweep
from evaluation.agreement import agreement, agreement_table
from saes.loader import MODELS, load
from tasks import sva
from tasks.pairs import PromptPair

RUN_MARKER = "run.json"  # written last into every run directory
OPTION_FLAGS = {"steps": "--steps", "rules": "--rules"}  # method option -> its flag


class UsageError(Exception):
    """Bad input from the command line: printed as one line, exit code 2."""


# ---- checks made before anything is loaded ---------------------------------------------------
def check_task(task: str) -> None:
    """A construction name or a path to a JSONL file of prompt pairs."""
    if task in sva.CONSTRUCTIONS:
        return
    if not task.endswith((".json", ".jsonl")) and "/" not in task:
        raise UsageError(
            f"unknown task {task!r}; use one of {', '.join(sva.CONSTRUCTIONS)} or a JSONL path"
        )
    if not Path(task).is_file():
        raise UsageError(f"task file {task} does not exist; pass an existing JSONL file")


def check_model(name: str | None) -> None:
    if name is not None and name not in MODELS:
        raise UsageError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


def check_methods(methods: list[str], allowed: tuple[str, ...] | list[str]) -> None:
    unknown = [m for m in methods if m not in allowed]
    if unknown or not methods:
        raise UsageError(
            f"unknown method(s) {unknown or methods}; choose from {', '.join(allowed)}"
        )


def check_threshold(name: str, value: float | None, *, upper: float | None = None) -> None:
    if value is None:
        return
    if math.isnan(value) or value < 0 or (upper is not None and value > upper):
        span = f"[0, {upper}]" if upper is not None else ">= 0"
        raise UsageError(f"{name} must be a number in {span}, got {value}")


def split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_numbers(name: str, text: str, kind: type) -> list:
    """'0.1,0.01' or, for floats, 'logspace:START:STOP:N' (powers of ten, as numpy)."""
    try:
        if kind is float and text.startswith("logspace:"):
            _, start, stop, n = text.split(":")
            a, b, k = float(start), float(stop), int(n)
            if k < 1:
                raise ValueError
            return [10 ** (a + (b - a) * i / max(k - 1, 1)) for i in range(k)]
        values = [kind(item) for item in split_list(text)]
    except ValueError:
        raise UsageError(
            f"{name} {text!r} is not a comma-separated list of {kind.__name__}s"
            + (" or logspace:START:STOP:N" if kind is float else "")
        ) from None
    if not values:
        raise UsageError(f"{name} is empty; give at least one value")
    for value in values:
        check_threshold(name, value)
    return values


# ---- run directories: complete or absent -----------------------------------------------------
@dataclass
class Run:
    path: Path  # where the run ends up
    work: Path  # where it is written meanwhile


@contextmanager
def run_dir(out: Path | None, name: str, args: argparse.Namespace) -> Iterator[Run]:
    """A run directory assembled in a hidden temporary sibling and moved into place at the end.

    An existing ``out`` is replaced only if it is an earlier run (it holds run.json) or empty; a
    failure removes the temporary folder and leaves ``out`` as it was.
    """
    path = out or Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {path} is a file; pass a directory")
    if path.is_dir() and any(path.iterdir()) and not (path / RUN_MARKER).exists():
        raise UsageError(
            f"--out {path} exists and is not a circuits run directory; pass a new or empty one"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
        umask = os.umask(0)
        os.umask(umask)
        work.chmod(0o777 & ~umask)  # mkdtemp makes it private; a run directory is not
    except OSError as err:
        raise UsageError(f"cannot write the run directory {path}: {err.strerror}") from err
    try:
        yield Run(path, work)
        meta = {"command": args.command, "argv": sys.argv[1:], "finished": time.ctime(),
                **{k: str(v) for k, v in vars(args).items() if k != "func"}}
        (work / RUN_MARKER).write_text(json.dumps(meta, indent=1))
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            work.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            work.rename(path)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    print(f"\nwrote {path}/")


# ---- data ------------------------------------------------------------------------------------
def load_pairs(task: str, model, n: int, eval_n: int) -> tuple[list[PromptPair], list[PromptPair]]:
    """Discovery and evaluation pairs (n or eval_n may be 0: none): the train and test splits of
    a construction, or the first n and the next eval_n pairs of a JSONL file."""
    if task in sva.CONSTRUCTIONS:
        train = sva.load(task, "train", n=n, tokenizer=model.tokenizer) if n else []
        test = sva.load(task, "test", n=eval_n, tokenizer=model.tokenizer) if eval_n else []
        return train, test
    pairs = sva.load(task, tokenizer=model.tokenizer)
    if len(pairs) < n + eval_n:
        raise UsageError(
            f"{task} has {len(pairs)} usable pairs for this model; --n {n} + --eval-n {eval_n} "
            f"need {n + eval_n}: lower them"
        )
    return pairs[:n], pairs[n : n + eval_n]


def given_options(args: argparse.Namespace) -> dict:
    """The method options given on the command line (flags left out are absent)."""
    rules = None if args.rules is None else [] if args.rules == "none" else split_list(args.rules)
    given = {"steps": args.steps, "rules": rules}
    return {name: value for name, value in given.items() if value is not None}


def method_kwargs(method: str, args: argparse.Namespace) -> dict:
    """attribute() keywords for ``method``: batch size, progress, and of the method options given
    on the command line those that are the method's own (``METHODS[method].option_names``)."""
    own = METHODS[method].option_names
    return {"batch_size": args.batch_size, "progress": not args.quiet,
            **{k: v for k, v in given_options(args).items() if k in own}}


def load_model(name: str, device: str | None, dictionaries=None):
    print(f"loading {name} ...", flush=True)
    model = load(name, device=device, dictionaries=dictionaries)
    print(repr(model))
    return model


# ---- subcommands -----------------------------------------------------------------------------
def discover(args: argparse.Namespace) -> None:
    check_model(args.model)
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
    with run_dir(args.out, f"{args.task}-{args.method}", args) as run:
        model = load_model(args.model, args.device)
        train, test = load_pairs(args.task, model, args.n, args.eval_n)
        started = time.perf_counter()
        scores = attribute(model, train, args.method, **method_kwargs(args.method, args))
        scores.save(run.work / "scores.safetensors")
        node_seconds = time.perf_counter() - started
        started = time.perf_counter()
        circuit = build(
            scores, node_threshold=args.node_threshold, top_k=args.top_k,
            edge_threshold=args.edge_threshold, edges=False if args.no_edges else None,
            edge_method=None if args.no_edges else args.edge_method,
            model=model, data=train, batch_size=args.batch_size, progress=not args.quiet,
        )
        edge_seconds = time.perf_counter() - started
        circuit.save(run.work / "circuit.json")
        svg = circuit.to_svg(run.work / "circuit.svg")
        means = node_means(model, test)
        faith = faithfulness(model, circuit, test, means=means)
        complete = completeness(model, circuit, test, means=means)
        summary = {
            "model": model.name, "task": args.task, "method": args.method,
            "edge_method": circuit.meta.edge_method,
            "n_discovery": len(train), "n_evaluation": len(test),
            "node_threshold": circuit.meta.node_threshold, "top_k": args.top_k,
            "edge_threshold": args.edge_threshold,
            "n_nodes": circuit.n_nodes, "n_edges": circuit.n_edges,
            "n_error_nodes": sum(1 for _, r in circuit.graph.nodes(data="role") if r == "error"),
            "faithfulness": _finite(faith.value), "completeness": _finite(complete.value),
            "m_full": faith.m_full, "m_empty": faith.m_empty, "m_circuit": faith.m_circuit,
            "m_complement": complete.m_circuit,
            "seconds_nodes": round(node_seconds, 2), "seconds_circuit": round(edge_seconds, 2),
        }
        (run.work / "summary.json").write_text(json.dumps(summary, indent=1))
        ranked = top_nodes(scores, args.top)
        (run.work / "top_nodes.json").write_text(
            json.dumps([{**node.__dict__, "label": node.label} for node in ranked], indent=1)
        )
        print(f"\n{len(train)} {args.task} pairs, method {args.method}"
              f" (nodes {node_seconds:.1f}s, circuit {edge_seconds:.1f}s)")
        kept = (f"top {args.top_k}" if args.top_k is not None
                else f"|score| >= {summary['node_threshold']:.4g}")
        print(f"circuit: {circuit.n_nodes} nodes ({summary['n_error_nodes']} error), "
              f"{circuit.n_edges} edges, {kept}")
        print(f"on {len(test)} held-out pairs: faithfulness {faith.value:.3f}, completeness "
              f"{complete.value:.3f} (m(M) {faith.m_full:.3f}, m(C) {faith.m_circuit:.3f}, "
              f"m(empty) {faith.m_empty:.3f})")
        print(f"\n{'node':<32} {'score':>10}")
        for node in ranked:
            print(f"{node.label:<32} {node.score:>10.4f}")
        print(f"\nfiles: scores.safetensors circuit.json {Path(svg).name} summary.json "
              "top_nodes.json")


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def sweep_command(args: argparse.Namespace) -> None:
    check_model(args.model)
    check_task(args.task)
    methods = split_list(args.methods)
    check_methods(methods, list(METHODS) + ["neurons"])
    thresholds = parse_numbers("--thresholds", args.thresholds, float) if args.thresholds else None
    counts = parse_numbers("--node-counts", args.node_counts, int) if args.node_counts else None
    if thresholds and counts:
        raise UsageError("give --thresholds or --node-counts, not both")
    with run_dir(args.out, f"sweep-{args.task}", args) as run:
        model = load_model(args.model, args.device)
        train, test = load_pairs(args.task, model, args.n, args.eval_n)
        all_scores, all_edges = {}, {}
        for method in methods:
            if method == "neurons":
                continue
            all_scores[method] = attribute(model, train, method, **method_kwargs(method, args))
            all_scores[method].save(run.work / f"scores-{_file_safe(method)}.safetensors")
            if args.edges and method in EDGE_METHODS:
                all_edges[method] = _sweep_edges(model, train, all_scores[method], args)
        table = sweep(model, all_scores, test, thresholds=thresholds, node_counts=counts,
                      edges=all_edges, progress=not args.quiet)
        if "neurons" in methods:  # the neuron baseline: identity dictionaries, scored with relp
            neurons = load(args.model, device=args.device, dictionaries="neurons")
            scores = attribute(neurons, train, "relp", **method_kwargs("relp", args))
            scores.save(run.work / "scores-neurons.safetensors")
            edges = {"neurons": _sweep_edges(neurons, train, scores, args)} if args.edges else {}
            extra = sweep(neurons, {"neurons": scores}, test, thresholds=thresholds,
                          node_counts=counts, edges=edges, progress=not args.quiet)
            table = pd.concat([table, extra], ignore_index=True)
        table.insert(0, "task", args.task)
        table.to_csv(run.work / "sweep.csv", index=False)
        plot_sweep(table, run.work / "sweep", title=f"{model.name}: {args.task}")
        shown = ["method", "threshold", "top_k", "n_nodes", "faithfulness", "completeness"]
        print(table[shown].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        print("\nfiles: sweep.csv sweep.png sweep.svg scores-*.safetensors")


def _sweep_edges(model, train, scores, args):
    """Edges once per method among its top --edge-nodes nodes; sweep counts those kept."""
    selection = select_nodes(scores, top_k=args.edge_nodes)
    return circuit_edges(scores, selection, model, train, batch_size=args.batch_size,
                         progress=not args.quiet)


def _file_safe(method: str) -> str:
    return method.replace("*", "_star")


def read_circuit(path: Path) -> Circuit:
    try:
        return Circuit.load(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{path} is not a circuit file (invalid JSON: {err}); "
                         "pass a circuit.json written by `circuits discover`") from err
    except (KeyError, TypeError) as err:
        raise UsageError(f"{path} is not a circuit file (missing {err}); "
                         "pass a circuit.json written by `circuits discover`") from err


def evaluate_command(args: argparse.Namespace) -> None:
    check_task(args.task)
    circuit = read_circuit(args.circuit)
    # a neuron-baseline circuit names its model "<model>+neurons" (identity dictionaries)
    model_name, neurons, _ = (args.model or circuit.meta.model).partition("+")
    if model_name not in MODELS:
        raise UsageError(f"the circuit's model {model_name!r} is not one of {MODELS}; "
                         "pass --model")
    with run_dir(args.out, f"evaluate-{args.task}", args) as run:
        model = load_model(model_name, args.device, "neurons" if neurons else None)
        _, test = load_pairs(args.task, model, 0, args.eval_n)
        means = node_means(model, test)
        faith = faithfulness(model, circuit, test, means=means, intact_layers=args.intact_layers)
        complete = completeness(model, circuit, test, means=means,
                                intact_layers=args.intact_layers)
        result = {
            "circuit": str(args.circuit), "model": model.name, "task": args.task,
            "n_evaluation": len(test), "n_nodes": circuit.n_nodes,
            "faithfulness": _finite(faith.value), "completeness": _finite(complete.value),
            "m_full": faith.m_full, "m_empty": faith.m_empty, "m_circuit": faith.m_circuit,
            "m_complement": complete.m_circuit, "intact_layers": args.intact_layers,
        }
        (run.work / "evaluation.json").write_text(json.dumps(result, indent=1))
        print(f"{circuit.n_nodes} nodes on {len(test)} {args.task} pairs: faithfulness "
              f"{faith.value:.3f}, completeness {complete.value:.3f} (m(M) {faith.m_full:.3f}, "
              f"m(C) {faith.m_circuit:.3f}, m(empty) {faith.m_empty:.3f})")


def render_command(args: argparse.Namespace) -> None:
    circuit = read_circuit(args.circuit)
    out = args.out or args.circuit.with_suffix(".svg")
    if out.suffix != ".svg":
        raise UsageError(f"--out {out} must end in .svg")
    if not os.access(out.parent if out.parent.exists() else Path("."), os.W_OK):
        raise UsageError(f"cannot write {out}: its directory is not writable")
    # drawn next to the target, then moved: a failed drawing leaves no half-written SVG
    with tempfile.TemporaryDirectory(prefix=".render-", dir=out.parent) as work:
        drawn = Path(circuit.to_svg(Path(work) / out.name))
        for produced in Path(work).iterdir():
            produced.replace(out.parent / produced.name)
    print(f"{circuit.n_nodes} nodes, {circuit.n_edges} edges\nwrote {out.parent / drawn.name}")


def compare_command(args: argparse.Namespace) -> None:
    check_model(args.model)
    check_task(args.task)
    methods = split_list(args.methods)
    check_methods(methods, [m for m in METHODS if m != "exact"])
    with run_dir(args.out, f"compare-{args.task}", args) as run:
        components_only = args.bare or args.model == "gemma-3-270m"
        model = load_model(args.model, args.device, False if components_only else None)
        train, _ = load_pairs(args.task, model, args.n, 0)
        aggregation = "none" if components_only else "sum"
        timings = {}
        all_scores = {}
        for method in ["exact", *methods]:
            started = time.perf_counter()
            all_scores[method] = attribute(model, train, method, aggregation=aggregation,
                                           **method_kwargs(method, args))
            timings[method] = time.perf_counter() - started
            all_scores[method].save(run.work / f"scores-{_file_safe(method)}.safetensors")
        exact = all_scores.pop("exact")
        table = agreement(all_scores, exact, by="kind" if components_only else "site")
        table.to_csv(run.work / "agreement.csv", index=False)
        base = timings.get("atp")
        times = " · ".join(
            f"{m} {t:.1f}s" + (f" ({t / base:.1f}× atp)" if base else "")
            for m, t in timings.items()
        )
        text = (f"Pearson r against exact patching, {len(train)} {args.task} pairs, "
                f"{model.name}{' (components)' if components_only else ''}\n\n"
                f"{agreement_table(table)}\n\ntimes: {times}\n")
        (run.work / "agreement.md").write_text(text)
        print("\n" + text)


# ---- the parser ------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser, *, n: int | None = 100, eval_n: int | None = 40) -> None:
    p.add_argument("--model", default="organism",
                   help=f"one of {', '.join(MODELS)} (default: organism, offline, shipped in "
                        "this repo)")
    p.add_argument("--task", default="across_pp",
                   help=f"agreement construction ({', '.join(sva.CONSTRUCTIONS)}) or a JSONL "
                        "file of prompt pairs (default: across_pp)")
    if n is not None:
        p.add_argument("--n", type=_positive, default=n,
                       help=f"prompt pairs for attribution (default {n})")
    if eval_n is not None:
        p.add_argument("--eval-n", type=_positive, default=eval_n,
                       help=f"held-out pairs for evaluation (default {eval_n})")
    p.add_argument("--batch-size", type=_positive, default=32, help="pairs per batch (32)")
    p.add_argument("--steps", type=_positive, default=None,
                   help=f"ig interpolation steps (default {IGOptions.steps})")
    ruled = ", ".join(m for m, record in METHODS.items() if record.takes_rules)
    p.add_argument("--rules", default=None,
                   help=f"LRP rules of {ruled}, comma-separated (ln,identity,half,ah) or 'none' "
                        "(default: the model family's set)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--out", type=Path, default=None,
                   help="run directory (default runs/<what>-<time>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _edge_defaults() -> str:
    """'atp, ig, relp: their own; exact, atp* -> atp; ...' from the method registry."""
    own = [m for m, record in METHODS.items() if record.edges == m]
    taken = {e: [m for m, record in METHODS.items() if record.edges == e != m] for e in own}
    return "; ".join([f"{', '.join(own)}: their own"]
                     + [f"{', '.join(ms)} -> {e}" for e, ms in taken.items() if ms])


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line (no usage block) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="circuits", description="Sparse-feature circuit discovery: score nodes and "
                "edges, build a circuit, evaluate it by mean ablation, draw it, sweep thresholds, "
                "compare methods with exact patching. Each subcommand has its own --help.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    d = sub.add_parser("discover", help="scores, circuit, SVG, JSON and a summary")
    _common(d)
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
    d.add_argument("--top", type=int, default=15, help="nodes to list (15)")
    d.set_defaults(func=discover)

    s = sub.add_parser("sweep", help="faithfulness/completeness over thresholds: CSV and plot")
    _common(s)
    s.add_argument("--methods", default="relp,ig,atp,neurons",
                   help="comma-separated methods; 'neurons' adds the neuron baseline (relp on "
                        "identity dictionaries) (default relp,ig,atp,neurons)")
    s.add_argument("--thresholds", default=None,
                   help="node thresholds: '0.1,0.01' or logspace:-4:0:15")
    s.add_argument("--node-counts", default=None,
                   help="circuit sizes (top k nodes), e.g. '5,10,20,50' (default: 0 and 16 "
                        "counts spaced geometrically up to all nodes)")
    s.add_argument("--edges", action="store_true",
                   help=f"also count edges (n_edges) of the methods with edges of their own "
                        f"({', '.join(EDGE_METHODS)}): edge attribution once per method among "
                        "its top --edge-nodes nodes; larger circuits get n_edges NaN")
    s.add_argument("--edge-nodes", type=_positive, default=500,
                   help="nodes among which --edges computes edges (500)")
    s.set_defaults(func=sweep_command)

    e = sub.add_parser("evaluate", help="faithfulness/completeness of a saved circuit")
    e.add_argument("circuit", type=Path, help="circuit.json written by discover")
    _common(e, n=None)
    e.set_defaults(model=None)
    e.add_argument("--intact-layers", type=int, default=0,
                   help="never ablate sites of layers below this (embed is layer 0)")
    e.set_defaults(func=evaluate_command)

    r = sub.add_parser("render", help="SVG from a saved circuit")
    r.add_argument("circuit", type=Path, help="circuit.json written by discover")
    r.add_argument("--out", type=Path, default=None,
                   help="SVG file to write (default: the circuit's path with .svg)")
    r.set_defaults(func=render_command)

    c = sub.add_parser("compare", help="methods against exact patching (Pearson r per site)")
    _common(c, n=20, eval_n=None)
    c.add_argument("--methods", default="atp,relp,ig,atp*",
                   help="comma-separated methods to compare with exact (atp,relp,ig,atp*)")
    c.add_argument("--bare", action="store_true",
                   help="components instead of features (always so for gemma-3-270m)")
    c.set_defaults(func=compare_command)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a malformed command line (2)
        return int(stop.code or 0)
    try:
        args.func(args)
    except (UsageError, ValueError, FileNotFoundError) as err:
        print(f"circuits {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
