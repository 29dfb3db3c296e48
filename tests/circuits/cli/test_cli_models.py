"""`--model NAME` and `--dictionaries RELEASE` for any model transformer_lens knows, on the tiny
offline stand-ins (tests/conftest.py), and `circuits models`: the named models, and the sae_lens
releases that fit a model."""

from __future__ import annotations

import json

import pytest

from circuits.cli import main
from tests.conftest import GPT2_SPEC

SMALL = ["--n", "8", "--eval-n", "8", "--batch-size", "8", "--quiet", "--no-features"]

pytestmark = pytest.mark.usefixtures("one_thread")


def test_models_lists_the_named_models_and_who_has_releases(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("organism", "pythia-70m-deduped", "gemma-3-270m"):
        assert f"  {name} " in out
    assert "gpt2-small = gpt2: 18 release(s)" in out
    assert "meta-llama/Llama-3.1-8B: 7 release(s)" in out


def test_models_lists_the_releases_that_fit_a_model(capsys):
    assert main(["models", "gpt2-small"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("gpt2 (hub: gpt2)")
    assert ("gpt2-small-res-jb: 13 dictionaries at hook_resid_post, hook_resid_pre, layers "
            "0-11, stated L0 10-70; sae_lens format") in out
    assert "gpt2-small-resid-mid-v5-32k" in out and "REFUSED: the residual stream" in out
    assert "llama_scope" not in out
    assert main(["models", "Qwen/Qwen2.5-0.5B"]) == 0
    assert "sae_lens has no release for it; use --dictionaries neurons" in capsys.readouterr().out
    assert main(["models", "--all"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert "gpt2  (sae_lens releases)" in listed and "Qwen/Qwen2.5-0.5B" in listed


def test_an_unknown_model_is_one_line(capsys):
    assert main(["models", "gpt-5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown model 'gpt-5'; choose one of organism" in err


def test_discover_and_evaluate_a_model_by_name(stand_in_cache, tmp_path):
    out = tmp_path / "gpt2"
    assert main(["discover", "--model", "gpt2", "--dictionaries", GPT2_SPEC, "--task",
                 "across_pp", "--top-k", "20", "--out", str(out), *SMALL]) == 0
    meta = json.loads((out / "circuit.json").read_text())["meta"]
    assert meta["model"] == "gpt2" and meta["sites"] == ["embed", "resid_0", "resid_1"]
    again = tmp_path / "evaluated"
    assert main(["evaluate", str(out / "circuit.json"), "--task", "across_pp", "--eval-n", "8",
                 "--out", str(again), "--quiet"]) == 0
    result = json.loads((again / "evaluation.json").read_text())
    assert result["model"] == "gpt2" and result["n_nodes"] == 20  # the circuit's own sites
    # sae_lens' advice to load GPT-2 with centred writing weights is followed, not passed on
    assert not any("model_from_pretrained_kwargs" in w for w in result.get("warnings", []))


@pytest.mark.parametrize(("argv", "message"), [
    (["--model", "meta-llama/Llama-3.1-8B", "--dictionaries", "gpt2-small-res-jb"],
     "release 'gpt2-small-res-jb' is made for gpt2-small, not meta-llama/Llama-3.1-8B"),
    (["--model", "gpt2-smal"], "unknown model 'gpt2-smal'; choose one of organism"),
])
def test_a_release_for_another_model_is_one_line(argv, message, tmp_path, capsys):
    assert main(["discover", *argv, "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err
    assert not (tmp_path / "x").exists()
