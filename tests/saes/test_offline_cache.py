"""The stand-in builder: releases by name, --layers and --d-sae, the files sae_lens reads."""

from __future__ import annotations

import json
import re

import pytest
from safetensors import safe_open

from saes.offline_cache import main


def test_pythia_release_at_one_layer(tmp_path):
    main(["--out", str(tmp_path), "--release", "pythia-70m-deduped-att-sm", "--layers", "1",
          "--d-sae", "64"])
    repo = tmp_path / "models--ctigges--pythia-70m-deduped__att-sm_processed" / "snapshots"
    folders = [p.name for p in repo.glob("*/*")]
    assert folders == ["1-att-sm"]  # the directory's folder name, only layer 1
    folder = next(repo.glob("*/1-att-sm"))
    cfg = json.loads((folder / "cfg.json").read_text())
    assert (cfg["hook_name"], cfg["d_sae"], cfg["d_in"]) == ("blocks.1.hook_attn_out", 64, 512)
    with safe_open(folder / "sae_weights.safetensors", "pt") as f:
        assert f.get_slice("W_enc").get_shape() == [512, 64]
    model = tmp_path / "models--EleutherAI--pythia-70m-deduped" / "snapshots"
    assert {p.name for p in model.glob("*/*")} >= {"config.json", "model.safetensors",
                                                   "tokenizer.json"}


@pytest.mark.parametrize(("argv", "message"), [
    (["--release", "pythia-70m-deduped-att-sm", "--layers", "7"], "no dictionary of"),
    (["--release", "gemma-scope-2-270m-pt-res:width_16k_l0_huge"], "no variant or sae id"),
    (["--release", "llama-3-8b-it-res-jh"], "no stand-in for the releases of "
     "meta-llama/Meta-Llama-3-8B-Instruct .*no config of it is shipped; shipped: "
     "EleutherAI/pythia-160m"),
    (["--release", "gemma-scope-2b-pt-res-canonical:layer_3/width_16k/canonical"],
     "laid out for sae_lens' 'gemma_2' loader; the stand-in writes"),
    (["--model", "gpt-5"], "unknown model 'gpt-5'"),
    (["--model", "google/gemma-2-2b", "--tiny"], "no config of it is shipped"),
    (["--layers", "a,b"], "--layers takes block numbers"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), *argv])
    assert re.search(message, capsys.readouterr().err)
    assert not any(tmp_path.iterdir())
