"""The `circuits` command end to end on the organism: each subcommand's outputs, and bad input
as one line on stderr, exit code 2, nothing written."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pandas as pd
import pytest

from circuits.circuit import Circuit
from circuits.cli import main
from circuits.scores import Scores

SMALL = ["--n", "12", "--eval-n", "8", "--batch-size", "12", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: the organism runs on 1 thread


@pytest.fixture(scope="module")
def discovered(tmp_path_factory):
    """One `discover` run shared by the tests that read its outputs."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["discover", "--task", "within_rc", "--top", "5", "--out", str(out), *SMALL]) == 0
    return out


def test_discover_writes_a_complete_run(discovered):
    files = {p.name for p in discovered.iterdir()}
    assert {"scores.safetensors", "circuit.json", "circuit.svg", "circuit.html", "summary.json",
            "run.json", "top_nodes.json"} <= files
    listed = json.loads((discovered / "run.json").read_text())["files"]
    assert set(listed) == files - {"run.json"}  # circuit.html among the run's own files
    summary = json.loads((discovered / "summary.json").read_text())
    circuit = Circuit.load(discovered / "circuit.json")
    scores = Scores.load(discovered / "scores.safetensors")
    assert scores.method == "relp" and scores.n_examples == 12
    assert summary["n_nodes"] == circuit.n_nodes > 0 and summary["n_edges"] == circuit.n_edges
    assert circuit.n_edges > 0 and 0 < summary["faithfulness"] <= 1.5
    top = json.loads((discovered / "top_nodes.json").read_text())
    magnitudes = [abs(node["score"]) for node in top]
    assert len(top) == 5 and magnitudes == sorted(magnitudes, reverse=True)
    assert not [p for p in discovered.parent.iterdir() if ".partial-" in p.name]


def test_evaluate_reproduces_the_discover_summary(discovered, tmp_path, capsys):
    """Same circuit, same held-out pairs: the same faithfulness and completeness."""
    out = tmp_path / "eval"
    code = main(["evaluate", str(discovered / "circuit.json"), "--task", "within_rc",
                 "--eval-n", "8", "--out", str(out), "--quiet"])
    assert code == 0
    result = json.loads((out / "evaluation.json").read_text())
    summary = json.loads((discovered / "summary.json").read_text())
    for key in ("faithfulness", "completeness", "m_full", "m_empty"):
        assert result[key] == pytest.approx(summary[key], abs=1e-5), key
    assert f"{summary['faithfulness']:.3f}" in capsys.readouterr().out


def test_render_draws_one_svg_node_per_circuit_node(discovered, tmp_path):
    out = tmp_path / "drawn.svg"
    assert main(["render", str(discovered / "circuit.json"), "--out", str(out)]) == 0
    circuit = Circuit.load(discovered / "circuit.json")
    svg = ET.parse(out).getroot()
    ns = {"svg": "http://www.w3.org/2000/svg"}
    titles = {g.findtext("svg:title", namespaces=ns) for g in svg.iterfind(".//svg:g", ns)
              if "node" in (g.get("class") or "").split()}
    assert set(circuit.graph.nodes) <= titles


def test_the_interactive_view_has_one_element_per_circuit_node(discovered, browser):
    circuit = Circuit.load(discovered / "circuit.json")
    browser.open((discovered / "circuit.html").resolve().as_uri())
    browser.wait_for("window.circuitView && window.circuitView.ready")
    ids = browser.evaluate("[...document.querySelectorAll('#graph .node')].map(g => g.dataset.id)")
    assert ids == list(circuit.graph.nodes) and len(ids) == circuit.n_nodes + 1  # + the metric


def test_sweep_writes_csv_and_plots(tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["sweep", "--task", "simple", "--methods", "atp,relp,atp*,neurons",
                 "--node-counts", "1,10,100000", "--edges", "--edge-nodes", "10", "--out", str(out),
                 *SMALL])
    assert code == 0
    table = pd.read_csv(out / "sweep.csv")
    assert set(table["method"]) == {"atp", "relp", "atp*", "neurons"} and len(table) == 12
    ten = table[table["top_k"] == 10].set_index("method")["n_edges"]
    assert (ten > 0).all()  # every method's 10-node circuit has edges (atp*'s from atp), counted
    assert table[table["top_k"] == 100000]["n_edges"].isna().all()  # beyond the edges' nodes
    everything = table[table["top_k"] == 100000]
    assert everything["faithfulness"].to_numpy() == pytest.approx(1.0, abs=1e-4)
    assert (out / "sweep.png").stat().st_size > 0 and (out / "sweep.svg").exists()
    # MIB's integrated metrics: one per method, finite, in the CSV and the printed table
    per_method = table.groupby("method")[["cpr", "cmd"]].nunique()
    assert (per_method == 1).all().all() and table[["cpr", "cmd"]].notna().all().all()
    header = next(line for line in capsys.readouterr().out.splitlines() if "faithfulness" in line)
    assert header.split()[-2:] == ["cpr", "cmd"]


def test_compare_tables_methods_against_exact(tmp_path):
    out = tmp_path / "compare"
    code = main(["compare", "--task", "across_pp", "--methods", "atp,relp", "--n", "6",
                 "--out", str(out), "--quiet"])
    assert code == 0
    table = pd.read_csv(out / "agreement.csv")
    pooled = table[table["site"] == "all sites"].set_index("method")["r"]
    # the organism is close to linear between sites and metric: AtP tracks exact closely
    assert pooled["atp"] > 0.9 and pooled["relp"] > 0.8
    assert "| **all sites** |" in (out / "agreement.md").read_text()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["discover", "--task", "across_the_sea"], "unknown task 'across_the_sea'"),
        (["discover", "--method", "magic"], "unknown method(s) ['magic']"),
        (["discover", "--model", "gpt-5"], "unknown model 'gpt-5'"),
        (["discover", "--node-threshold", "-1"], "--node-threshold must be a number"),
        (["sweep", "--thresholds", "0.1,abc"], "is not a comma-separated list"),
        (["discover", "--n", "0"], "must be at least 1"),
        (["discover", "--edge-method", "exact"], "unknown method(s) ['exact']"),
        (["discover", "--method", "atp", "--edge-method", "relp", "--rules", "ln"],
         "--rules would not reach the relp edges"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(argv, message, tmp_path, capsys):
    code = main([*argv, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_directory(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code = main(["discover", "--out", str(blocker / "run"), *SMALL])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "cannot write the run directory" in err


def test_corrupted_circuit_file(tmp_path, capsys):
    broken = tmp_path / "circuit.json"
    broken.write_text('{"graph": {"nodes": [')
    for command in ("render", "evaluate"):
        assert main([command, str(broken)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "is not a circuit file" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["circuit.json"]


def test_a_failed_run_keeps_the_previous_one(discovered, capsys):
    """A run that fails after the checks (here: too many pairs asked) leaves --out as it was."""
    before = {p.name: p.stat().st_mtime_ns for p in discovered.iterdir()}
    code = main(["discover", "--task", "within_rc", "--n", "999999", "--out", str(discovered),
                 "--quiet"])
    assert code == 2 and "asked for n=999999" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in discovered.iterdir()} == before
    assert not [p for p in discovered.parent.iterdir() if ".partial-" in p.name]


def test_discover_top_k_without_edges(tmp_path):
    out = tmp_path / "top"
    assert main(["discover", "--task", "simple", "--top-k", "7", "--no-edges", "--out", str(out),
                 *SMALL]) == 0
    circuit = Circuit.load(out / "circuit.json")
    summary = json.loads((out / "summary.json").read_text())
    assert circuit.n_nodes == summary["n_nodes"] == 7 and circuit.n_edges == 0


def test_discover_with_a_method_without_edges_of_its_own(tmp_path):
    """atp* scores magnitudes and has no edge definition: its circuit's edges come from atp."""
    out = tmp_path / "star"
    assert main(["discover", "--task", "simple", "--method", "atp*", "--top-k", "10",
                 "--out", str(out), *SMALL]) == 0
    summary = json.loads((out / "summary.json").read_text())
    circuit = Circuit.load(out / "circuit.json")
    assert summary["edge_method"] == "atp" and circuit.meta.edge_method == "atp"
    assert circuit.meta.method == "atp*" and circuit.n_edges > 0
