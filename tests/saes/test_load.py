"""load(): the hub code path for Pythia-70M-deduped, run against the offline stand-in cache."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from saes import load
from saes.dictionary import neuronpedia_ids, sources
from saes.splice import SiteNodes

TOKENS = torch.tensor([[510, 13585, 326, 253, 15071, 751, 310]])


@pytest.fixture(scope="module")
def pythia(pythia_cache):
    return load("pythia-70m-deduped", device="cpu")


def test_pythia_loads_all_19_marks_dictionaries(pythia):
    assert pythia.cfg.n_layers == 6 and pythia.cfg.d_model == 512
    assert pythia.cfg.parallel_attn_mlp and pythia.cfg.rotary_dim == 16
    assert [s.name for s in pythia.spliced_sites] == [s.name for s in pythia.sites]
    assert len(pythia.dictionaries) == 19
    assert {d.d_sae for d in pythia.dictionaries.values()} == {256}


def test_pythia_spliced_equals_plain(pythia):
    record: dict[str, SiteNodes] = {}
    spliced = pythia.logits(TOKENS, record=record)
    torch.testing.assert_close(spliced, pythia.logits(TOKENS, spliced=False), atol=1e-5, rtol=0)
    l0 = {k: (v.features > 0).float().sum(-1).mean().item() for k, v in record.items()}
    assert all(2 < x < 128 for x in l0.values()), l0


def test_pythia_tokenizer_is_the_real_one(pythia):
    ids = pythia.tokenizer(" The athlete that the managers like", add_special_tokens=False)
    assert ids["input_ids"] == [
        380,
        27799,
        326,
        253,
        15071,
        751,
    ]


def test_sites_subset(pythia_cache):
    model = load("pythia-70m-deduped", sites=["resid_2", "mlp_0"], device="cpu")
    assert sorted(model.dictionaries) == ["mlp_0", "resid_2"]


def test_bare_model_has_no_dictionaries(pythia_cache):
    assert load("pythia-70m-deduped", dictionaries=False, device="cpu").dictionaries == {}


def test_unknown_model():
    with pytest.raises(ValueError, match=r"unknown model 'gpt-5'; choose one of organism"):
        load("gpt-5")


def test_gemma_has_no_default_dictionaries(tmp_path, monkeypatch):
    """Before the dictionaries trained here are built (saes.trained), Gemma has no default."""
    import saes.loader

    monkeypatch.setattr(saes.loader, "trained_dictionaries", lambda: tmp_path / "none")
    with pytest.raises(ValueError, match="no default dictionaries; name a sae_lens release.*"
                                         "dictionaries=False"):
        load("gemma-3-270m", dictionaries=True)


def test_pythia_default_is_the_three_marks_releases_with_neuronpedia_ids(pythia):
    ids = neuronpedia_ids(pythia.dictionaries)
    assert len(ids) == 19 and ids["resid_3"] == "pythia-70m-deduped/3-res-sm"
    assert ids["attn_0"] == "pythia-70m-deduped/0-att-sm"
    assert ids["embed"] == "pythia-70m-deduped/e-att-sm"  # sic: sae_lens' directory says so
    by_site = sources(pythia.dictionaries)
    assert by_site["mlp_5"] == "pythia-70m-deduped-mlp-sm/blocks.5.hook_mlp_out"
    assert by_site["embed"] == "pythia-70m-deduped-res-sm/blocks.0.hook_resid_pre"


@pytest.mark.parametrize(("spec", "sites", "expected"), [
    ("pythia-70m-deduped-res-sm", None, ["embed"] + [f"resid_{n}" for n in range(6)]),
    ("pythia-70m-deduped-mlp-sm:blocks.3.hook_mlp_out", None, ["mlp_3"]),
    ("pythia-70m-deduped-res-sm+pythia-70m-deduped-att-sm", ["attn_2", "resid_2"],
     ["attn_2", "resid_2"]),
])
def test_pythia_by_release_string(pythia_cache, spec, sites, expected):
    model = load("pythia-70m-deduped", dictionaries=spec, sites=sites, device="cpu")
    assert [s.name for s in model.spliced_sites] == expected
    assert {d.d_sae for d in model.dictionaries.values()} == {256}
    assert all(d.release is not None and d.release in spec for d in model.dictionaries.values())


def test_offline_without_cache_says_how_to_fix(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)}
    run = subprocess.run(
        [sys.executable, "-c", "from saes import load; load('pythia-70m-deduped')"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert "not in the local Hugging Face cache" in run.stderr
    assert "python -m saes.offline_cache" in run.stderr


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"sites": ["resid_9"]}, r"unknown site 'resid_9'"),
    ({"sites": "resid_0"}, r"sites must be a list of site names"),
    ({"sites": []}, r"sites=\[\] splices no dictionary"),
    ({"sites": ["resid_0"], "dictionaries": False}, r"dictionaries=False loads none"),
    ({"sites": ["resid_0"], "dictionaries": "neurons"}, None),
])
def test_sites_that_cannot_be_honoured_are_refused(kwargs, message):
    """Never silently fewer dictionaries than asked for (then bare components are scored)."""
    if message is None:
        model = load("organism", device="cpu", **kwargs)
        assert list(model.dictionaries) == kwargs["sites"] and not model.components_only
        return
    with pytest.raises(ValueError, match=message):
        load("organism", device="cpu", **kwargs)


def test_a_dictionary_whose_config_and_weights_disagree_is_named(tmp_path, monkeypatch):
    import json
    import shutil

    from saes import loader

    weights = tmp_path / "weights"
    shutil.copytree(loader.ORGANISM_DIR, weights)
    cfg = weights / "dictionaries" / "attn_1" / "cfg.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "d_sae": 128}))
    monkeypatch.setattr(loader, "ORGANISM_DIR", weights)
    with pytest.raises(ValueError, match=r"dictionary .*attn_1: its cfg.json and its weights "
                                         r"disagree \(size mismatch for W_dec"):
        load("organism", device="cpu")
