"""Release strings: parsed against sae_lens' directory, errors that list what exists, refusals
before anything is loaded. Fast: no model, no dictionary is loaded here."""

from __future__ import annotations

import pytest

from saes import load
from saes.releases import parse, resolve

RES = "gemma-scope-2-270m-pt-res"
MLP = "gemma-scope-2-270m-pt-mlp"
ATT = "gemma-scope-2-270m-pt-att"


def test_a_variant_picks_one_id_per_layer():
    refs = resolve(f"{RES}:width_16k_l0_medium+{MLP}:width_16k_l0_medium", model="gemma-3-270m")
    layers = (5, 9, 12, 15)
    assert [r.sae_id for r in refs] == [f"layer_{n}_width_16k_l0_medium" for n in layers] * 2
    assert [r.hook_name for r in refs[:4]] == [f"blocks.{n}.hook_resid_post" for n in layers]
    assert [r.hook_name for r in refs[4:]] == [f"blocks.{n}.hook_mlp_out" for n in layers]
    assert refs[2].neuronpedia_id == "gemma-3-270m/12-gemmascope-2-res-16k"
    assert refs[2].source == f"{RES}/layer_12_width_16k_l0_medium"
    assert refs[2].path == "resid_post/layer_12_width_16k_l0_medium"
    assert refs[2].repo_id == "google/gemma-scope-2-270m-pt"
    assert refs[4].neuronpedia_id is None  # the directory lists none for the mlp release
    assert [r.l0 for r in refs[:4]] == [55.0, 60.0, 60.0, 60.0]  # "l0_medium", per layer


def test_pythia_releases_name_sites_by_hook():
    refs = resolve("pythia-70m-deduped-res-sm+pythia-70m-deduped-att-sm",
                   model="pythia-70m-deduped")
    assert len(refs) == 13
    assert refs[0].hook_name == "blocks.0.hook_resid_pre"
    assert refs[0].neuronpedia_id == "pythia-70m-deduped/e-att-sm"  # sic, sae_lens' directory
    assert refs[1].neuronpedia_id == "pythia-70m-deduped/0-res-sm"
    assert refs[7].hook_name == "blocks.0.hook_attn_out" and refs[7].l0 is None
    one = resolve("pythia-70m-deduped-mlp-sm:blocks.3.hook_mlp_out", model="pythia-70m-deduped")
    assert [(r.sae_id, r.path) for r in one] == [("blocks.3.hook_mlp_out", "3-mlp-sm")]


def test_parse_splits_on_plus_and_colon():
    parts = parse(f" {RES}:width_16k_l0_small + {MLP} ")
    assert parts == [(RES, "width_16k_l0_small"), (MLP, None)]
    for bad in ("", f"{RES}+", f"{RES}:", "+"):
        with pytest.raises(ValueError, match="release string|names sae_lens releases"):
            parse(bad)


@pytest.mark.parametrize(("spec", "message"), [
    (f"{RES}:width_16k_l0_huge",
     r"release 'gemma-scope-2-270m-pt-res' has no variant or sae id 'width_16k_l0_huge'; its "
     r"variants are width_16k_l0_big \(layers 5, 9, 12, 15\), width_16k_l0_medium .*"
     r"width_1m_l0_small"),
    ("gemma-scope-2-270m-pt-rs:width_16k_l0_medium",
     r"unknown sae_lens release 'gemma-scope-2-270m-pt-rs' \(did you mean "
     r"gemma-scope-2-270m-pt-res.*releases for gemma-3-270m: gemma-scope-2-270m-pt-att, .*"
     r"gemma-scope-2-270m-pt-res, "),
    (f"{RES}:layer_13_width_16k_l0_medium", r"no variant or sae id 'layer_13_width_16k_l0_medium'"),
    (RES, r"layer_12_width_16k_l0_big and .*layer_12_width_16k_l0_medium both read "
          r"blocks.12.hook_resid_post: one dictionary per site; pick a variant"),
    (f"{RES}:width_16k_l0_small+{RES}:layer_5_width_16k_l0_big",
     r"both read blocks.5.hook_resid_post: one dictionary per site$"),
    ("gemma-scope-2-270m-it-res:width_16k_l0_medium",
     r"release 'gemma-scope-2-270m-it-res' is made for google/gemma-3-270m-it, not gemma-3-270m"),
    ("pythia-70m-deduped-res-sm",
     r"release 'pythia-70m-deduped-res-sm' is made for pythia-70m-deduped, not gemma-3-270m"),
])
def test_unknown_or_wrong_releases_list_what_exists(spec, message):
    with pytest.raises(ValueError, match=message):
        resolve(spec, model="gemma-3-270m")


def test_pythia_ids_are_listed_when_a_variant_is_unknown():
    with pytest.raises(ValueError, match=r"it has no variants; its sae ids are "
                                         r"blocks.0.hook_resid_pre, blocks.0.hook_resid_post, "):
        resolve("pythia-70m-deduped-res-sm:width_16k", model="pythia-70m-deduped")


@pytest.fixture
def nothing_may_load(monkeypatch, tmp_path):
    """Loading a model or a dictionary fails the test: errors must come before. (No trained
    dictionaries either: they would be gemma-3-270m's defaults.)"""
    import sae_lens

    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path))

    from saes import gemma, loader

    def forbidden(*args, **kwargs):
        raise AssertionError("loaded something before refusing")

    monkeypatch.setattr(sae_lens.SAE, "from_pretrained", forbidden)
    monkeypatch.setattr(gemma, "load_gemma", forbidden)
    monkeypatch.setattr(loader, "_hub_model", forbidden)


@pytest.mark.parametrize("spec", [
    f"{ATT}:width_16k_l0_medium",
    "gemma-scope-2-270m-pt-att-all:layer_3_width_16k_l0_small",
])
def test_attention_dictionaries_read_hook_z_at_attn_z_sites(spec):
    """Gemma Scope 2's att releases read attn.hook_z: the attn_z_L sites, not attn_L."""
    from transformer_lens import HookedTransformerConfig

    from saes.sites import site_by_hook_name

    cfg = HookedTransformerConfig(n_layers=18, d_model=640, n_heads=4, d_head=256, n_ctx=64,
                                  d_vocab=10, act_fn="gelu")
    refs = resolve(spec, model="gemma-3-270m")
    assert refs and all(r.hook_name.endswith("attn.hook_z") for r in refs)
    sites = [site_by_hook_name(cfg, r.hook_name) for r in refs]
    assert {s.kind for s in sites} == {"attn_z"} and all(s.width(cfg) == 1024 for s in sites)


def test_transcoders_are_refused_before_loading(nothing_may_load):
    with pytest.raises(ValueError, match=r"hook_mlp_in: transcoders"):
        load("gemma-3-270m", dictionaries="gemma-scope-2-270m-pt-transcoders-all:width_16k_l0_big",
             device="cpu")


@pytest.mark.parametrize(("name", "kwargs", "message"), [
    ("gemma-3-270m", {"dictionaries": "pythia-70m-deduped-res-sm"},
     r"made for pythia-70m-deduped, not gemma-3-270m"),
    ("pythia-70m-deduped", {"dictionaries": f"{RES}:width_16k_l0_medium"},
     r"made for google/gemma-3-270m, not pythia-70m-deduped; releases for pythia-70m-deduped: "
     r"pythia-70m-deduped-att-sm"),
    ("organism", {"dictionaries": "pythia-70m-deduped-res-sm"},
     r"not organism; sae_lens has no release for organism"),
    ("gemma-3-270m", {"dictionaries": True}, r"gemma-3-270m has no default dictionaries; name a "
                                             r"sae_lens release, e\.g\. dictionaries="),
    ("gemma-3-270m", {"sites": ["resid_5"]}, r"no default dictionaries"),
    ("gemma-3-270m", {"dictionaries": " "}, r"names nothing"),
])
def test_refused_before_loading(nothing_may_load, name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load(name, device="cpu", **kwargs)
