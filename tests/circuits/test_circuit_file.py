"""Reading circuit.json: a file of any wrong structure is a ValueError naming the file and its
problem, found before anything is built from it (a negative index never picks the error node, a
huge site shape allocates nothing)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
import torch

from circuits.circuit import Circuit


def toy_circuit(per_position: bool = False) -> dict[str, Any]:
    """A valid circuit.json of two sites of 3 nodes (2 features + the error node): a feature of
    embed and the error node of resid_0 (at position 1 if per_position), an edge between them
    and one to the metric."""
    pos = 1 if per_position else None
    at = "@1" if per_position else ""
    shape = [4, 3] if per_position else [3]
    return {
        "format": "circuits.circuit/2",
        "meta": {"method": "atp", "model": "organism",
                 "aggregation": "none" if per_position else "sum", "node_threshold": 0.5,
                 "top_k": None, "edge_threshold": None, "n_examples": 3, "signed": True,
                 "components_only": False, "options": {}, "edges": True, "edge_method": "atp",
                 "tokens": ["The", " cat", " is", " here"] if per_position else None,
                 "sites": ["embed", "resid_0"],
                 "site_shapes": {"embed": shape, "resid_0": shape}},
        "nodes": [
            {"id": f"embed/1{at}", "site": "embed", "layer": -1, "row": 0, "role": "feature",
             "index": 1, "feature": 1, "position": pos, "effect": 0.75},
            {"id": f"resid_0/err{at}", "site": "resid_0", "layer": 0, "row": 1,
             "role": "error", "index": 2, "feature": None, "position": pos, "effect": -0.5},
            {"id": "metric", "site": "metric", "layer": None, "row": 2, "role": "metric",
             "index": None, "feature": None, "position": None, "effect": None},
        ],
        "edges": [{"source": f"embed/1{at}", "target": f"resid_0/err{at}", "weight": 0.25},
                  {"source": f"resid_0/err{at}", "target": "metric", "weight": -0.5}],
    }


def edit(change: Callable[[dict], Any], per_position: bool = False) -> dict[str, Any]:
    data = copy.deepcopy(toy_circuit(per_position))
    change(data)
    return data


def set_in(keys: tuple, value: Any) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        target = data
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return change


def drop(keys: tuple) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        target = data
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]
    return change


def test_the_toy_circuit_reads_and_selects_its_nodes(tmp_path):
    for per_position in (False, True):
        path = tmp_path / "c.json"
        path.write_text(json.dumps(toy_circuit(per_position)))
        circuit = Circuit.load(path)
        masks = circuit.selection()
        assert circuit.n_nodes == 2 and circuit.n_edges == 2
        if per_position:
            assert masks["embed"][1].tolist() == [False, True, False]
            assert masks["resid_0"].sum() == 1 and masks["resid_0"][1, 2]
        else:
            assert masks["embed"].tolist() == [False, True, False]
            assert masks["resid_0"].tolist() == [False, False, True]
        assert Circuit.from_json(circuit.to_json()).to_json() == circuit.to_json()


HUGE = 10**12

CASES = [  # (what, change, per_position, message)
    ("empty object", lambda d: d.clear(), False, "its format is None, not 'circuits.circuit/2'"),
    ("no nodes", drop(("nodes",)), False, "lacks the key(s) ['nodes']"),
    ("meta a list", set_in(("meta",), []), False, '"meta" is a list, not an object'),
    ("meta lacks sites", drop(("meta", "sites")), False, "lacks the key(s) ['sites']"),
    ("unknown meta key", set_in(("meta", "colour"), 1), False, "unknown circuit meta key"),
    ("n_examples a string", set_in(("meta", "n_examples"), "3"), False,
     "'n_examples' is '3'; it must be an integer >= 0"),
    ("unknown aggregation", set_in(("meta", "aggregation"), "mean"), False, "'aggregation'"),
    ("negative threshold", set_in(("meta", "node_threshold"), -1), False,
     "'node_threshold' is -1"),
    ("top_k a bool", set_in(("meta", "top_k"), True), False, "'top_k' is True"),
    ("negative site size", set_in(("meta", "site_shapes", "embed"), [-3]), False,
     "'site_shapes'"),
    ("huge site shape", set_in(("meta", "site_shapes", "embed"), [HUGE]), False,
     f"add up to {HUGE + 3} nodes"),
    ("huge per-position shape", set_in(("meta", "site_shapes", "embed"), [4, HUGE]), True,
     "add up to"),
    ("shapes of other sites", set_in(("meta", "sites"), ["embed", "mlp_0"]), False,
     "they must be the same"),
    ("2-d shape summed", set_in(("meta", "site_shapes", "embed"), [4, 3]), False,
     "has 1-d shapes"),
    ("positions differ", set_in(("meta", "site_shapes", "embed"), [5, 3]), True,
     "have [4, 5] positions"),
    ("tokens too few", set_in(("meta", "tokens"), ["The"]), True, "1 labels for 4 positions"),
    ("nodes a dict", set_in(("nodes",), {}), False, '"nodes" is a dict, not a list'),
    ("node a string", set_in(("nodes", 0), "embed/1"), False, "node 0 is a str"),
    ("node without id", drop(("nodes", 0, "id")), False, "node 0 has no string 'id'"),
    ("node without effect", drop(("nodes", 0, "effect")), False, "lacks the key(s) ['effect']"),
    ("negative index", set_in(("nodes", 1, "index"), -1), False,
     "has index -1; site 'resid_0' has nodes 0 to 2"),
    ("index out of range", set_in(("nodes", 0, "index"), 3), False, "has index 3"),
    ("index a string", set_in(("nodes", 0, "index"), "1"), False, "has index '1'"),
    ("index a bool", set_in(("nodes", 0, "index"), True), False, "has index True"),
    ("unknown site", set_in(("nodes", 0, "site"), "mlp_9"), False, "has site 'mlp_9'"),
    ("feature at the error index", set_in(("nodes", 0, "index"), 2), False,
     "has role 'feature', but index 2 of site 'embed' is its error node"),
    ("wrong feature", set_in(("nodes", 0, "feature"), 2), False, "has feature 2"),
    ("effect a string", set_in(("nodes", 0, "effect"), "big"), False, "has effect 'big'"),
    ("label a number", set_in(("nodes", 0, "label"), 3), False,
     "has label 3; it must be a string or null"),
    ("link a list", set_in(("nodes", 0, "neuronpedia"), ["x"]), False, "has neuronpedia ['x']"),
    ("id of another node", set_in(("nodes", 0, "id"), "embed/2"), False,
     "has the wrong id: its site, index and position make it 'embed/1'"),
    ("duplicate id", lambda d: d["nodes"].append(dict(d["nodes"][0])), False,
     "the id 'embed/1' is taken"),
    ("position when summed", set_in(("nodes", 0, "position"), 0), False,
     "in a circuit summed over positions"),
    ("position out of range", set_in(("nodes", 0, "position"), 4), True,
     "has position 4; the circuit has positions 0 to 3"),
    ("negative position", set_in(("nodes", 0, "position"), -1), True, "has position -1"),
    ("no position", set_in(("nodes", 0, "position"), None), True, "has position None"),
    ("edge to nowhere", set_in(("edges", 0, "target"), "resid_0/7"), False,
     "edge 0 has target 'resid_0/7', which is not a node"),
    ("edge from the metric", set_in(("edges", 1, "source"), "metric"), False,
     "leaves the metric node"),
    ("weight a string", set_in(("edges", 0, "weight"), "0.25"), False, "has weight '0.25'"),
    ("edges an object", set_in(("edges",), {"a": 1}), False, '"edges" is a dict'),
]


@pytest.mark.parametrize("what, change, per_position, message", CASES,
                         ids=[case[0] for case in CASES])
def test_a_malformed_circuit_file_is_a_value_error_naming_the_problem(
        what, change, per_position, message, tmp_path, monkeypatch):
    path = tmp_path / "circuit.json"
    path.write_text(json.dumps(edit(change, per_position)))
    allocated = []
    monkeypatch.setattr(torch, "zeros", lambda *a, **k: allocated.append(a))  # nothing built
    with pytest.raises(ValueError) as caught:
        Circuit.load(path)
    assert message in str(caught.value) and str(path) in str(caught.value)
    assert "\n" not in str(caught.value) and not allocated


def test_a_file_that_is_not_a_circuit_names_itself(tmp_path):
    cases = {"list.json": "[1, 2]", "broken.json": '{"nodes": [', "binary.json": b"\xff\xfe"}
    for name, content in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        with pytest.raises(ValueError, match=f"{path} is not a circuit file"):
            Circuit.load(path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "circuit.json").write_text(json.dumps(toy_circuit()))
    with pytest.raises(ValueError, match=f"{run} is a directory.*pass {run}/circuit.json"):
        Circuit.load(run)
    with pytest.raises(FileNotFoundError, match="no circuit file"):
        Circuit.load(tmp_path / "missing.json")
