"""``circuits evaluate``: faithfulness and completeness of a saved circuit on held-out pairs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from circuits import distributed
from circuits.cli.common import (
    add_common,
    check_device,
    check_task,
    circuit_dictionaries,
    finite,
    known_model,
    load_model,
    load_pairs,
    non_negative,
    read_circuit,
    task_files,
)
from circuits.cli.notes import recorded_warnings
from circuits.cli.rundir import run_dir
from evaluation import completeness, faithfulness, node_means


def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("evaluate", help="faithfulness/completeness of a saved circuit")
    e.add_argument("circuit", type=Path, help="circuit.json written by discover")
    add_common(e, n=None)
    e.set_defaults(model=None)
    e.add_argument("--intact-layers", type=non_negative, default=0,
                   help="never ablate sites of layers below this (embed is layer 0)")
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    check_device(args.device)
    check_task(args.task)
    circuit = read_circuit(args.circuit)
    # a neuron-baseline circuit names its model "<model>+neurons" (identity dictionaries)
    model_name, neurons, _ = (args.model or circuit.meta.model).partition("+")
    known_model(model_name, given=args.model is not None)
    with run_dir(args.out, f"evaluate-{args.task}", args,
                 inputs=[args.circuit, *task_files(args.task)]) as target, \
            recorded_warnings() as notes:
        # the circuit's own sites unless --sites: a circuit of a subset evaluates on that subset
        sites = args.sites or (None if circuit.meta.components_only else list(circuit.meta.sites))
        given = "neurons" if neurons and args.dictionaries is None else args.dictionaries
        model = load_model(model_name, args.device, circuit_dictionaries(circuit, given),
                           sites=sites)
        _, test = load_pairs(args.task, model, 0, args.eval_n)
        means = node_means(model, test)
        faith = faithfulness(model, circuit, test, means=means, intact_layers=args.intact_layers)
        complete = completeness(model, circuit, test, means=means,
                                intact_layers=args.intact_layers)
        result = {
            "circuit": str(args.circuit), "model": model.name, "task": args.task,
            "n_evaluation": len(test), "n_nodes": circuit.n_nodes,
            "faithfulness": finite(faith.value), "completeness": finite(complete.value),
            "m_full": faith.m_full, "m_empty": faith.m_empty, "m_circuit": faith.m_circuit,
            "m_complement": complete.m_circuit, "intact_layers": args.intact_layers,
            "world_size": distributed.world_size(),
            "pairs_per_rank": distributed.shard_sizes(len(test)),
            "warnings": notes.messages,
        }
        (target.work / "evaluation.json").write_text(json.dumps(result, indent=1))
        print(f"{circuit.n_nodes} nodes on {len(test)} {args.task} pairs: faithfulness "
              f"{faith.value:.3f}, completeness {complete.value:.3f} (m(M) {faith.m_full:.3f}, "
              f"m(C) {faith.m_circuit:.3f}, m(empty) {faith.m_empty:.3f})")
