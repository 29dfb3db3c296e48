"""Run directories never lose data: a run replaces only an earlier run (deleting only the files
that run wrote), refuses an --out holding its input or another's files, holds a lock against a
second run, swaps directories atomically, and cleans up after a killed run. Through the Python
API of circuits/cli/rundir.py and through the command line."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from circuits.cli import main, rundir
from circuits.cli.common import UsageError
from circuits.cli.rundir import RUN_MARKER, exchange, run_dir
from tests.circuits.test_circuit_file import toy_circuit

REPO = Path(__file__).resolve().parents[3]
ARGS = argparse.Namespace(command="test")
SMALL = ["--n", "12", "--eval-n", "8", "--batch-size", "12", "--quiet"]

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: the organism runs on 1 thread


def make_run(out: Path, files: dict[str, str] | None = None) -> None:
    """A run through the API that writes ``files`` (name -> text)."""
    with run_dir(out, "test", ARGS) as run:
        for name, text in (files or {"a.txt": "a"}).items():
            (run.work / name).parent.mkdir(parents=True, exist_ok=True)
            (run.work / name).write_text(text)


def contents(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` but run.json, with its text."""
    return {p.relative_to(folder).as_posix(): p.read_text() for p in folder.rglob("*")
            if p.is_file() and p.name != RUN_MARKER}


def hidden(parent: Path) -> list[str]:
    """What runs leave beside their run directory: partial and old folders, lock files."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def dead_pid() -> int:
    """The PID of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


# ---- the Python API --------------------------------------------------------------------------
def test_run_json_lists_the_files_the_run_wrote(tmp_path):
    out = tmp_path / "run"
    make_run(out, {"a.txt": "a", "sub/b.txt": "b"})
    meta = json.loads((out / RUN_MARKER).read_text())
    assert meta["files"] == ["a.txt", "sub/b.txt"] and meta["command"] == "test"
    assert contents(out) == {"a.txt": "a", "sub/b.txt": "b"} and hidden(tmp_path) == []


def test_exchange_swaps_two_directories(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("from a")
    (b / "y").write_text("from b")
    if not exchange(a, b):
        pytest.skip("no renameat2(RENAME_EXCHANGE) here: the two-rename fallback is used")
    assert contents(a) == {"y": "from b"} and contents(b) == {"x": "from a"}


def test_an_earlier_run_is_replaced_by_one_exchange_never_missing(tmp_path, monkeypatch):
    """With RENAME_EXCHANGE --out is never renamed away: at no moment is it missing."""
    out = tmp_path / "run"
    make_run(out, {"old.txt": "old", "sub/old.txt": "old"})
    (tmp_path / "probe-a").mkdir()
    (tmp_path / "probe-b").mkdir()
    if not exchange(tmp_path / "probe-a", tmp_path / "probe-b"):
        pytest.skip("no renameat2(RENAME_EXCHANGE) here")
    real_rename = Path.rename

    def rename(self, target):
        assert Path(self) != out, "--out was renamed away"
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    make_run(out, {"new.txt": "new"})
    assert contents(out) == {"new.txt": "new"} and hidden(tmp_path) == []


def test_without_exchange_two_renames_replace_the_run(tmp_path, monkeypatch):
    out = tmp_path / "run"
    make_run(out, {"old.txt": "old"})
    monkeypatch.setattr(rundir, "exchange", lambda a, b: False)
    make_run(out, {"new.txt": "new"})
    assert contents(out) == {"new.txt": "new"} and hidden(tmp_path) == []


def test_a_failed_move_leaves_both_runs_as_they_were(tmp_path, monkeypatch):
    out = tmp_path / "run"
    make_run(out, {"old.txt": "old"})

    def refuse(a, b):
        raise PermissionError(13, "Permission denied", str(b))

    monkeypatch.setattr(rundir, "exchange", refuse)
    with pytest.raises(UsageError, match=f"cannot move the run into --out {out}: Permission"):
        make_run(out, {"new.txt": "new"})
    assert contents(out) == {"old.txt": "old"} and hidden(tmp_path) == []
    # the fallback: the second rename fails, the old run is put back
    monkeypatch.setattr(rundir, "exchange", lambda a, b: False)
    real_rename = Path.rename

    def rename(self, target):
        if Path(target) == out and ".partial-" in Path(self).name:
            raise PermissionError(13, "Permission denied")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(UsageError, match="cannot move the run"):
        make_run(out, {"new.txt": "new"})
    assert contents(out) == {"old.txt": "old"} and hidden(tmp_path) == []


def test_a_directory_holding_foreign_files_is_refused_and_kept(tmp_path):
    cases = {  # what --out holds -> the refusal
        "notes": ({"a.txt": "a"}, {"NOTES.md": "mine", "data/x.csv": "1"},
                  "holds files its run did not write (NOTES.md, data, data/x.csv)"),
        "no-run": ({}, {"thesis.tex": "mine"}, "is not a circuits run directory (thesis.tex)"),
    }
    for name, (run_files, foreign, message) in cases.items():
        out = tmp_path / name
        if run_files:
            make_run(out, run_files)
        for file, text in foreign.items():
            (out / file).parent.mkdir(parents=True, exist_ok=True)
            (out / file).write_text(text)
        before = contents(out)
        with pytest.raises(UsageError, match="move them out or choose another --out") as caught:
            make_run(out, {"new.txt": "new"})
        assert message in str(caught.value)
        assert contents(out) == before
    assert hidden(tmp_path) == []


def test_a_run_json_without_its_list_is_refused(tmp_path):
    """Written by an older version, or naming files outside the run (../x): which files are the
    run's own is unknown, so nothing is deleted."""
    for files in (None, ["../victim.txt"]):
        out = tmp_path / "run"
        out.mkdir(exist_ok=True)
        (out / RUN_MARKER).write_text(json.dumps({"command": "discover", "files": files}))
        (tmp_path / "victim.txt").write_text("mine")
        with pytest.raises(UsageError, match="run.json without the list of its files"):
            make_run(out)
        assert (tmp_path / "victim.txt").read_text() == "mine"


def test_a_listed_file_behind_a_link_to_elsewhere_is_not_deleted(tmp_path):
    """A run.json naming link/x, where link is a link to a folder outside the run, deletes
    nothing there."""
    out, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x").write_text("mine")
    make_run(out)
    (out / "link").symlink_to(elsewhere)
    meta = json.loads((out / RUN_MARKER).read_text())
    (out / RUN_MARKER).write_text(json.dumps({**meta, "files": ["a.txt", "link/x"]}))
    assert rundir.remove_run(out) == ["link"]
    assert (elsewhere / "x").read_text() == "mine"


def test_an_empty_directory_or_a_new_path_is_written(tmp_path):
    (tmp_path / "empty").mkdir()
    make_run(tmp_path / "empty")
    make_run(tmp_path / "new" / "nested")
    assert contents(tmp_path / "empty") == contents(tmp_path / "new" / "nested") == {"a.txt": "a"}


def test_files_added_while_a_run_runs_are_kept(tmp_path, capsys):
    """A file that appears in the old run after the check is moved aside, never deleted."""
    out = tmp_path / "run"
    make_run(out, {"old.txt": "old"})
    with run_dir(out, "test", ARGS) as run:
        (run.work / "new.txt").write_text("new")
        (out / "NOTES.md").write_text("mine")
    kept = tmp_path / f"run.kept-{os.getpid()}"
    assert contents(out) == {"new.txt": "new"} and contents(kept) == {"NOTES.md": "mine"}
    assert f"kept them in {kept}" in capsys.readouterr().err


def test_a_second_run_into_the_same_out_is_refused_while_the_first_runs(tmp_path, capsys):
    out = tmp_path / "run"
    with run_dir(out, "test", ARGS) as run:
        (run.work / "a.txt").write_text("a")
        with pytest.raises(UsageError, match=f"another run \\(pid {os.getpid()}\\) is writing"):
            make_run(out)
        # through the command line: one line, exit code 2, before anything is loaded
        assert main(["discover", "--out", str(out), *SMALL]) == 2
        err = one_line_error(capsys)
        assert f"another run (pid {os.getpid()}) is writing --out {out}" in err
    assert contents(out) == {"a.txt": "a"} and hidden(tmp_path) == []


def test_a_stale_lock_file_of_a_dead_process_does_not_block(tmp_path):
    (tmp_path / ".run.lock").write_text(f"{dead_pid()}\n")
    make_run(tmp_path / "run")
    assert contents(tmp_path / "run") == {"a.txt": "a"} and hidden(tmp_path) == []


def test_what_a_killed_run_left_is_cleaned_up_by_the_next(tmp_path):
    """Hidden folders of dead PIDs: a partial run is removed, an old run swapped out by an
    exchange is removed file by file (a foreign file in it kept visibly), one of a live process
    is left alone."""
    out = tmp_path / "run"
    make_run(out, {"old.txt": "old"})
    dead, live = dead_pid(), os.getppid()
    partial = tmp_path / f".run.partial-{dead}-abc"
    partial.mkdir()
    (partial / "scores.safetensors").write_text("half")
    swapped = tmp_path / f".run.partial-{dead}-xyz"
    make_run(swapped, {"older.txt": "older"})
    (swapped / "NOTES.md").write_text("mine")
    running = tmp_path / f".run.partial-{live}-def"
    running.mkdir()
    make_run(out, {"new.txt": "new"})
    assert contents(out) == {"new.txt": "new"}
    assert contents(tmp_path / f"run.kept-{os.getpid()}") == {"NOTES.md": "mine"}
    assert hidden(tmp_path) == [running.name]


def test_a_kill_between_the_two_renames_is_undone_by_the_next_run(tmp_path):
    """Without an exchange, a process killed between 'out -> .out.old-PID' and 'partial -> out'
    leaves no --out: the next run into it puts the old run back first."""
    out = tmp_path / "run"
    make_run(out, {"old.txt": "old"})
    out.rename(tmp_path / f".run.old-{dead_pid()}")
    with pytest.raises(RuntimeError, match="failed"), run_dir(out, "test", ARGS):
        raise RuntimeError("failed")
    assert contents(out) == {"old.txt": "old"} and hidden(tmp_path) == []


# ---- the command line ------------------------------------------------------------------------
def test_discover_refuses_to_replace_a_run_holding_a_users_file(tmp_path, capsys):
    out = tmp_path / "run"
    make_run(out, {"circuit.json": "{}"})
    (out / "NOTES.md").write_text("my notes")
    assert main(["discover", "--out", str(out), *SMALL]) == 2
    err = one_line_error(capsys)
    assert f"--out {out} holds files its run did not write (NOTES.md)" in err
    assert contents(out) == {"circuit.json": "{}", "NOTES.md": "my notes"}
    assert hidden(tmp_path) == []


def test_evaluate_refuses_the_run_directory_it_reads(tmp_path, capsys):
    """`circuits evaluate runs/demo/circuit.json --out runs/demo` would replace the circuit
    (and the scores beside it) with evaluation.json; so would a task file inside --out."""
    out = tmp_path / "demo"
    make_run(out, {"circuit.json": json.dumps(toy_circuit()), "pairs.jsonl": "{}"})
    before = contents(out)
    circuit = out / "circuit.json"
    assert main(["evaluate", str(circuit), "--out", str(out), "--quiet"]) == 2
    assert f"--out {out} holds this run's input {circuit}" in one_line_error(capsys)
    pairs = out / "pairs.jsonl"
    assert main(["discover", "--task", str(pairs), "--out", str(out), *SMALL]) == 2
    assert f"holds this run's input {pairs}" in one_line_error(capsys)
    assert contents(out) == before and hidden(tmp_path) == []


def test_a_read_only_parent_is_refused_before_the_run(tmp_path, capsys):
    if os.geteuid() != 0:
        parent = tmp_path / "read-only"
        parent.mkdir()
        parent.chmod(0o555)
    else:  # root writes anywhere permissions allow nothing; sysfs refuses even root
        parent = Path("/sys")
        try:
            os.close(os.open(parent / ".circuits-probe", os.O_CREAT | os.O_WRONLY))
            pytest.skip("/sys is writable here")
        except OSError:
            pass
    out = parent / "run"
    assert main(["discover", "--out", str(out), *SMALL]) == 2
    err = one_line_error(capsys)
    assert f"cannot write the run directory {out}" in err and "writable directory" in err


def test_a_killed_discover_blocks_no_one_and_loses_nothing(tmp_path, capsys):
    """A real discover run, SIGKILLed once its partial folder exists: meanwhile a second run is
    refused; afterwards the earlier run is intact, and the next run cleans up and replaces it."""
    out = tmp_path / "run"
    make_run(out, {"circuit.json": "{}"})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-m", "circuits", "discover", "--task", "simple",
                              "--out", str(out), "--quiet"], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not any(".partial-" in name for name in hidden(tmp_path)):
            assert child.poll() is None and time.monotonic() < deadline, "no partial folder"
            time.sleep(0.02)
        assert main(["discover", "--out", str(out), *SMALL]) == 2
        assert f"another run (pid {child.pid}) is writing --out {out}" in one_line_error(capsys)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert contents(out) == {"circuit.json": "{}"}  # the earlier run, untouched
    assert any(".partial-" in name for name in hidden(tmp_path))  # what the kill left
    assert main(["discover", "--task", "simple", "--out", str(out), *SMALL]) == 0
    meta = json.loads((out / RUN_MARKER).read_text())
    written = sorted(p.name for p in out.iterdir() if p.name != RUN_MARKER)
    assert written == meta["files"] and "scores.safetensors" in written
    assert hidden(tmp_path) == []


# ---- amending a run ---------------------------------------------------------------------------
def test_amending_a_run_keeps_its_files_adds_new_ones_and_records_the_command(tmp_path):
    out = tmp_path / "run"
    make_run(out, {"a.txt": "a", "sub/b.txt": "b"})
    first = json.loads((out / RUN_MARKER).read_text())
    with rundir.amend_run(out, argparse.Namespace(command="label")) as run:
        assert contents(run.work) == {"a.txt": "a", "sub/b.txt": "b"}  # copied aside
        (run.work / "a.txt").write_text("changed")
        (run.work / "new.txt").write_text("new")
        assert contents(out) == {"a.txt": "a", "sub/b.txt": "b"}  # untouched meanwhile
    assert contents(out) == {"a.txt": "changed", "sub/b.txt": "b", "new.txt": "new"}
    record = json.loads((out / RUN_MARKER).read_text())
    assert record["command"] == first["command"] and record["argv"] == first["argv"]
    assert record["files"] == ["a.txt", "new.txt", "sub/b.txt"]
    assert [a["command"] for a in record["amended"]] == ["label"]
    assert hidden(tmp_path) == []


def test_a_failed_amendment_leaves_the_run_as_it_was(tmp_path):
    out = tmp_path / "run"
    make_run(out)
    before = (out / RUN_MARKER).read_text()
    with pytest.raises(RuntimeError, match="midway"):
        with rundir.amend_run(out, ARGS) as run:
            (run.work / "a.txt").write_text("half-done")
            raise RuntimeError("midway")
    assert contents(out) == {"a.txt": "a"} and (out / RUN_MARKER).read_text() == before
    assert hidden(tmp_path) == []


def test_only_a_run_directory_is_amended(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="is not a run directory"):
        with rundir.amend_run(folder, ARGS):
            pass
    assert (folder / "notes.txt").read_text() == "mine"
