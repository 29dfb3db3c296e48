"""Every bad input to the command line is one line on stderr naming it, and exit code 2, found
before the long computation and with nothing written: devices, counts, output paths, circuit
files of any wrong structure, an offline hub without a cache, a dictionary whose config and
weights disagree. A bug (any other exception) keeps its traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from circuits.cli import common, main
from tests.circuits.test_circuit_file import drop, edit, set_in, toy_circuit

REPO = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: the organism runs on 1 thread


def write(path: Path, data: dict) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def circuit(tmp: Path) -> str:
    return write(tmp / "circuit.json", toy_circuit())


def broken(change: Callable[[dict], object], per_position: bool = False):
    """argv maker for a circuit file changed by ``change``."""
    return lambda tmp: write(tmp / "circuit.json", edit(change, per_position))


HUGE = 10**15

CASES: list[tuple[str, Callable[[Path], list[str]], str]] = [  # (what, argv, message)
    ("device tpu", lambda t: ["discover", "--device", "tpu"], "unknown --device 'tpu'"),
    ("device empty", lambda t: ["sweep", "--device", ""], "unknown --device ''"),
    ("device typo", lambda t: ["compare", "--device", "CPU"], "unknown --device 'CPU'"),
    ("cuda without CUDA", lambda t: ["discover", "--device", "cuda"],
     "--device cuda: CUDA is not available here; use --device cpu"),
    ("cuda for evaluate", lambda t: ["evaluate", circuit(t), "--device", "cuda:0"],
     "--device cuda:0: CUDA is not available"),
    ("top zero", lambda t: ["discover", "--top", "0"], "argument --top: must be at least 1, got 0"),
    ("top negative", lambda t: ["discover", "--top", "-3"], "argument --top: must be at least 1"),
    ("intact layers negative", lambda t: ["evaluate", circuit(t), "--intact-layers", "-1"],
     "argument --intact-layers: must be at least 0, got -1"),
    ("render into a directory", lambda t: ["render", circuit(t), "--out", str(t)],
     "is a directory; pass the SVG file to write"),
    ("render into a missing directory",
     lambda t: ["render", circuit(t), "--out", str(t / "nowhere" / "c.svg")],
     "/nowhere does not exist; create it or pass another --out"),
    ("evaluate into a file",
     lambda t: ["evaluate", circuit(t), "--out", write(t / "taken.json", {})],
     "taken.json is a file; pass a directory"),
    ("evaluate a directory", lambda t: ["evaluate", str(t)], "is a directory, not a circuit file"),
    ("evaluate a missing file", lambda t: ["evaluate", str(t / "none.json")],
     "no circuit file at"),
    ("circuit with a negative index",
     lambda t: ["render", broken(set_in(("nodes", 1, "index"), -1))(t)],
     "node 1 ('resid_0/err') has index -1"),
    ("circuit with an index past the end",
     lambda t: ["evaluate", broken(set_in(("nodes", 0, "index"), 7))(t)], "has index 7"),
    ("circuit with a position out of range",
     lambda t: ["render", broken(set_in(("nodes", 0, "position"), 9), per_position=True)(t)],
     "has position 9"),
    ("circuit with a huge site shape",
     lambda t: ["evaluate", broken(set_in(("meta", "site_shapes", "embed"), [HUGE]))(t)],
     f"add up to {HUGE + 3} nodes"),
    ("circuit without sites", lambda t: ["render", broken(drop(("meta", "sites")))(t)],
     "lacks the key(s) ['sites']"),
    ("circuit with a wrong type",
     lambda t: ["evaluate", broken(set_in(("meta", "n_examples"), "many"))(t)],
     "'n_examples' is 'many'"),
    ("circuit not JSON", lambda t: ["render", str(t / "bad.json")], "is not a circuit file"),
    ("features of no run", lambda t: ["features", str(t / "none")], "holds no circuit.json"),
    ("features without a corpus for the model",
     lambda t: ["features", run_of(t, set_in(("meta", "model"), "pythia-70m-deduped"))],
     "no corpus is known for the dictionaries of pythia-70m-deduped; pass --corpus FILE"),
    ("features from a missing corpus",
     lambda t: ["features", run_of(t), "--corpus", str(t / "none.txt")],
     "none.txt does not exist; pass a text file"),
    ("discover from a missing corpus", lambda t: ["discover", "--corpus", str(t / "none.txt")],
     "none.txt does not exist; pass a text file"),
    ("discover with labels of another header",
     lambda t: ["discover", "--labels", text(t / "l.csv", "site,feat,label\nembed,1,x\n")],
     "has the header ['site', 'feat', 'label']"),
    ("label a missing labels file", lambda t: ["label", run_of(t), str(t / "none.csv")],
     "none.csv does not exist"),
    ("label a site the circuit lacks",
     lambda t: ["label", run_of(t), text(t / "l.csv", "site,feature,label\nmlp_9,1,x\n")],
     "l.csv line 2: site 'mlp_9' is not one of the circuit's sites ['embed', 'resid_0']"),
    ("label a feature past the dictionary",
     lambda t: ["label", run_of(t), text(t / "l.csv", "site,feature,label\nembed,2,x\n")],
     "line 2: feature 2 is outside the dictionary of site 'embed' (features 0 to 1)"),
    ("export in an unknown format",
     lambda t: ["export", run_of(t), "--format", "svg", "--out", str(t / "g.json")],
     "unknown --format 'svg'; choose from neuronpedia"),
    ("export into a directory", lambda t: ["export", run_of(t), "--out", str(t)],
     "is a directory; pass the JSON file to write"),
]


def run_of(tmp: Path, change: Callable[[dict], object] = lambda data: None) -> str:
    """A run directory holding the toy circuit (changed by ``change``)."""
    write(tmp / "circuit.json", edit(change))
    return str(tmp)


def text(path: Path, content: str) -> str:
    path.write_text(content)
    return str(path)


@pytest.mark.parametrize("what, argv, message", CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_naming_it_exit_2(what, argv, message, tmp_path, capsys,
                                                monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)  # a default runs/ would appear here
    (tmp_path / "bad.json").write_text('{"format": ')
    args = argv(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and message in err, err
    assert err.startswith(f"circuits {args[0]}")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_a_cuda_index_that_does_not_exist(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert main(["discover", "--device", "cuda:3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--device cuda:3: there are 1 CUDA device(s); use cuda:0 to cuda:0" in err


def test_a_multi_line_library_error_becomes_one_line(monkeypatch, capsys, tmp_path):
    def fail(*args, **kwargs):
        raise ValueError("first line\n  second line\n")

    monkeypatch.setattr(common, "load", fail)
    assert main(["discover", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert capsys.readouterr().err == "circuits discover: error: first line; second line\n"


def test_a_bug_while_loading_keeps_its_traceback(monkeypatch, tmp_path):
    """Only the loader's messages for missing or mismatched files become one line."""
    def bug(*args, **kwargs):
        raise RuntimeError("index out of range in self")

    monkeypatch.setattr(common, "load", bug)
    with pytest.raises(RuntimeError, match="index out of range"):
        main(["discover", "--out", str(tmp_path / "run"), "--quiet"])
    assert list(tmp_path.iterdir()) == []


# ---- the hub, through a fresh process (the cache location is read at import) -----------------
def terminal_lines(stderr: str) -> list[str]:
    """stderr as a terminal shows it: of each line what follows its last carriage return (a
    progress bar redraws and clears itself that way), blank lines dropped."""
    shown = [line.rsplit("\r", 1)[-1].strip() for line in stderr.split("\n")]
    return [line for line in shown if line]


def circuits(argv: list[str], cache: Path, cwd: Path) -> tuple[int, str]:
    """Exit code and stderr of `python3 -m circuits ARGV` offline with the hub cache ``cache``
    (stderr as bytes decoded: text mode would turn carriage returns into newlines)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
           "HF_HUB_CACHE": str(cache)}
    done = subprocess.run([sys.executable, "-m", "circuits", *argv], cwd=cwd, env=env,
                          capture_output=True, timeout=300)
    return done.returncode, done.stderr.decode()


def test_an_offline_hub_without_a_cache_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    code, stderr = circuits(["discover", "--model", "pythia-70m-deduped", "--out", "run",
                             "--quiet"], tmp_path / "empty", tmp_path)
    lines = terminal_lines(stderr)
    assert code == 2 and len(lines) == 1, stderr
    assert "cannot load EleutherAI/pythia-70m-deduped: it is not in the local" in lines[0]
    assert "python -m saes.offline_cache" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_a_dictionary_whose_config_and_weights_disagree_is_one_line(pythia_cache, tmp_path):
    """The offline stand-in cache with every residual dictionary's cfg.json claiming twice its
    features: torch's multi-line size-mismatch error becomes one line naming the dictionary and
    what to fix."""
    cache = tmp_path / "cache"
    cache.mkdir()
    for repo in pythia_cache.iterdir():
        if "res-sm" not in repo.name:
            (cache / repo.name).symlink_to(repo)
            continue
        shutil.copytree(repo, cache / repo.name, copy_function=os.symlink)
        for cfg in (cache / repo.name).rglob("cfg.json"):
            data = json.loads(cfg.read_text())
            cfg.unlink()
            cfg.write_text(json.dumps({**data, "d_sae": 2 * data["d_sae"]}))
    code, stderr = circuits(["discover", "--model", "pythia-70m-deduped", "--out", "run",
                             "--quiet"], cache, tmp_path)
    lines = terminal_lines(stderr)
    assert code == 2 and len(lines) == 1, stderr
    assert ("dictionary pythia-70m-deduped-res-sm/blocks.0.hook_resid_pre: its cfg.json and "
            "its weights disagree (size mismatch for") in lines[0]
    assert "re-download or rebuild it" in lines[0] and "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
