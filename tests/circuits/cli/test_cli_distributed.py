"""The `circuits` command under torchrun, 2 processes on gloo: discover (nodes, edges,
faithfulness) and sweep give what one process gives, with uneven shards (5 pairs: 3 + 2); rank 0
alone writes the run and records the ranks' shards; a rank that fails leaves the earlier run as
it was, and the other rank ends with an error that names it."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from circuits.circuit import Circuit
from circuits.cli import main
from circuits.scores import Scores
from tests.circuits.cli.failing_rank import MESSAGE
from tests.launch import torchrun

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: the organism runs on 1 thread
SMALL = ["--task", "within_rc", "--n", "5", "--eval-n", "5", "--batch-size", "2", "--quiet"]
RTOL = 1e-5


def ran(done) -> None:
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def discovered(tmp_path_factory):
    """(one process, two processes): the same `discover` run."""
    root = tmp_path_factory.mktemp("discover")
    assert main(["discover", *SMALL, "--out", str(root / "one")]) == 0
    ran(torchrun(["-m", "circuits", "--", "discover", *SMALL, "--out", str(root / "two")]))
    return root / "one", root / "two"


def test_discover_on_two_ranks_equals_one_process(discovered):
    one, two = discovered
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    a, b = Scores.load(one / "scores.safetensors"), Scores.load(two / "scores.safetensors")
    assert b.n_examples == a.n_examples == 5
    for site, expected in a.sites.items():
        torch.testing.assert_close(b.sites[site], expected, rtol=RTOL,
                                   atol=RTOL * float(expected.abs().max()))
    c1, c2 = Circuit.load(one / "circuit.json"), Circuit.load(two / "circuit.json")
    assert list(c2.graph.nodes) == list(c1.graph.nodes) and c1.n_nodes > 1
    e1 = {(u, v): w for u, v, w in c1.graph.edges(data="weight")}
    e2 = {(u, v): w for u, v, w in c2.graph.edges(data="weight")}
    assert e2.keys() == e1.keys() and e1
    scale = max(abs(w) for w in e1.values())
    assert all(abs(e2[e] - w) <= RTOL * max(abs(w), scale) for e, w in e1.items())
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    for key in ("faithfulness", "completeness", "m_full", "m_empty", "m_circuit"):
        assert s2[key] == pytest.approx(s1[key], rel=RTOL, abs=RTOL), key
    assert (s1["n_nodes"], s1["n_edges"]) == (s2["n_nodes"], s2["n_edges"])
    assert s1["world_size"] == 1 and s1["pairs_per_rank"]["discovery"] == [5]
    assert s2["world_size"] == 2 and s2["pairs_per_rank"] == {"discovery": [3, 2],
                                                              "evaluation": [3, 2]}
    assert json.loads((two / "run.json").read_text())["world_size"] == "2"
    assert not [p.name for p in two.parent.iterdir() if p.name.startswith(".")]  # no partials


def test_sweep_on_two_ranks_equals_one_process(tmp_path):
    args = ["sweep", *SMALL, "--methods", "relp,neurons", "--node-counts", "0,5,40,400"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    ran(torchrun(["-m", "circuits", "--", *args, "--out", str(tmp_path / "two")]))
    a = pd.read_csv(tmp_path / "one" / "sweep.csv")
    b = pd.read_csv(tmp_path / "two" / "sweep.csv")
    assert list(a.columns) == list(b.columns) and len(a) == len(b) == 8
    pd.testing.assert_frame_equal(b, a, check_exact=False, rtol=RTOL, atol=RTOL)


def test_a_failing_rank_leaves_the_earlier_run_and_says_so(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text('"the earlier run"')
    (out / "run.json").write_text(json.dumps({"files": ["summary.json"]}))
    done = torchrun(["-m", "tests.circuits.cli.failing_rank", "--", "discover", *SMALL,
                     "--no-features", "--out", str(out)])
    assert done.returncode != 0
    assert f"circuits discover: error (rank 1 of 2): {MESSAGE}" in done.stderr
    # rank 0 hears of it in its next collective, or from torchrun's SIGTERM: either names it
    assert "rank 0 of 2" in done.stderr and f"rank 1 failed: ValueError: {MESSAGE}" in (
        done.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no partial folder, no lock
    assert sorted(p.name for p in out.iterdir()) == ["run.json", "summary.json"]
    assert (out / "summary.json").read_text() == '"the earlier run"'


def test_commands_that_are_no_sum_over_pairs_refuse_torchrun(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["render", str(tmp_path / "circuit.json")]) == 2
    assert "runs in one process, not under torchrun" in capsys.readouterr().err


def test_a_leading_double_dash_is_dropped(capsys):
    """torchrun's own parser needs `--` before the subcommand (`--n` would abbreviate its
    --nnodes); circuits takes the arguments after it."""
    assert main(["--", "render", "--help"]) == 0
    assert "usage: circuits render" in capsys.readouterr().out
