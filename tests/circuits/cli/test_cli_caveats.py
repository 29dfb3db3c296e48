"""The CLI says what the library warns of or refuses: nothing to attribute, an empty circuit
(a warning on stderr and in summary.json), a dictionary with NaN weights or with a config its
weights disagree with (one line, exit 2)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from circuits.cli import main
from saes import loader
from tasks import sva

SMALL = ["--n", "8", "--eval-n", "8", "--batch-size", "8", "--quiet"]
pytestmark = pytest.mark.usefixtures("one_thread")


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_pairs_whose_prompts_agree_are_nothing_to_attribute(tmp_path, capsys):
    """The same prompt on both sides (answers swapped): every score 0; refused, not a "circuit"
    of the whole model with faithfulness 1."""
    pairs = sva.generate("within_rc", 16, seed=0)
    rows = [{"clean_prefix": p.clean, "patch_prefix": p.clean, "clean_answer": p.clean_answer,
             "patch_answer": p.patch_answer} for p in pairs]
    task = tmp_path / "same.jsonl"
    task.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    code = main(["discover", "--task", str(task), "--out", str(tmp_path / "run"), *SMALL])
    assert code == 2
    assert "there is no circuit to build" in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_an_empty_circuit_is_a_warning_in_the_output_and_the_summary(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["discover", "--task", "simple", "--node-threshold", "1000", "--no-edges",
                 "--out", str(out), *SMALL])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_nodes"] == 0
    assert any("the circuit is empty" in w for w in summary["warnings"])
    assert "warning: the circuit is empty" in capsys.readouterr().err


def test_a_dictionary_with_nan_weights_is_one_line_naming_the_site(tmp_path, capsys,
                                                                   monkeypatch):
    weights = tmp_path / "weights"
    shutil.copytree(loader.ORGANISM_DIR, weights)
    file = weights / "dictionaries" / "mlp_2" / "sae_weights.safetensors"
    tensors = load_file(file)
    tensors["W_dec"][5, 7] = float("nan")
    save_file(tensors, file)
    monkeypatch.setattr(loader, "ORGANISM_DIR", weights)
    code = main(["discover", "--task", "simple", "--out", str(tmp_path / "run"), *SMALL])
    assert code == 2
    assert "site mlp_2 has NaN or inf in W_dec" in one_error_line(capsys)
    assert torch.isnan(load_file(file)["W_dec"][5, 7])  # the test did break the file


def test_a_dictionary_whose_config_disagrees_is_one_line(tmp_path, capsys, monkeypatch):
    weights = tmp_path / "weights"
    shutil.copytree(loader.ORGANISM_DIR, weights)
    cfg = weights / "dictionaries" / "resid_0" / "cfg.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "d_sae": 100}))
    monkeypatch.setattr(loader, "ORGANISM_DIR", weights)
    code = main(["discover", "--task", "simple", "--out", str(tmp_path / "run"), *SMALL])
    assert code == 2
    assert "resid_0: its cfg.json and its weights disagree" in one_error_line(capsys)


def test_discover_and_evaluate_on_a_subset_of_sites(tmp_path, capsys):
    """--sites splices half the organism's sites; the circuit has edges across the unspliced
    blocks, and evaluate (which loads the circuit's own sites) reproduces its faithfulness."""
    run = tmp_path / "run"
    sites = "embed,attn_0,resid_1,mlp_2,attn_3,resid_3"
    assert main(["discover", "--task", "simple", "--sites", sites, "--out", str(run),
                 *SMALL]) == 0
    summary = json.loads((run / "summary.json").read_text())
    circuit = json.loads((run / "circuit.json").read_text())
    assert {n["site"] for n in circuit["nodes"]} <= set(sites.split(",")) | {"metric"}
    assert summary["n_edges"] > 0
    assert main(["evaluate", str(run / "circuit.json"), "--task", "simple", "--eval-n", "8",
                 "--out", str(tmp_path / "eval"), "--quiet"]) == 0
    result = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert result["faithfulness"] == pytest.approx(summary["faithfulness"], abs=1e-6)
    assert main(["discover", "--task", "simple", "--sites", "resid_7", "--out",
                 str(tmp_path / "bad"), *SMALL]) == 2
    assert "unknown site 'resid_7'" in one_error_line(capsys)


@pytest.mark.parametrize(("argv", "message"), [
    (["--dictionaries", "pythia-70m-deduped-res-sm"],
     "release 'pythia-70m-deduped-res-sm' is made for pythia-70m-deduped, not organism"),
    (["--model", "pythia-70m-deduped", "--dictionaries", "pythia-70m-deduped-res-smm"],
     "unknown sae_lens release 'pythia-70m-deduped-res-smm' (did you mean"),
])
def test_release_strings_from_the_cli_are_checked(argv, message, tmp_path, capsys):
    """--dictionaries takes sae_lens release strings; a wrong one is one line naming it."""
    assert main(["discover", *argv, "--out", str(tmp_path / "run"), *SMALL]) == 2
    assert message in one_error_line(capsys)
