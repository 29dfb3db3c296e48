"""Any model transformer_lens knows, by name, with the sae_lens releases made for it: the hub code
path (transformers, then transformer_lens unprocessed, then sae_lens) against tiny offline
stand-ins (tests/conftest.py: GPT-2 small with gpt2-small-res-jb, Llama-3.1-8B with Llama Scope,
Qwen2.5-0.5B, Llama-3.2-1B and Pythia-160M without releases), and model names and release
matching without loading anything."""

from __future__ import annotations

import shutil

import pytest
import torch

from circuits.lrp_rules import FAMILIES, family_of, rules_for
from saes import SplicedModel, load, upstream
from saes.hub import StandInWarning
from saes.names import official, resolve_model, same_model
from saes.releases import model_processing, releases_for, resolve
from saes.sites import resid_pre
from saes.splice import SiteNodes
from tasks import sva
from tests.conftest import GPT2_SPEC, LLAMA_SPEC

pytestmark = pytest.mark.usefixtures("one_thread")

# name as a user types it, dictionaries, then what the config must give
CASES = {
    "gpt2": dict(name="gpt2-small", spec=GPT2_SPEC, loaded_as="gpt2",
                 architecture="GPT2LMHeadModel", family="gpt2", parallel=False, kv=None,
                 norm="LN", bos=True, sites=["embed", "resid_0", "resid_1"]),
    "llama": dict(name="meta-llama/Llama-3.1-8B", spec=LLAMA_SPEC,
                  loaded_as="meta-llama/Llama-3.1-8B", architecture="LlamaForCausalLM",
                  family="llama", parallel=False, kv=2, norm="RMS", bos=True,
                  sites=["resid_0", "attn_1", "mlp_1", "resid_1", "resid_2"]),
    "qwen": dict(name="qwen2.5-0.5b", spec="neurons", loaded_as="Qwen/Qwen2.5-0.5B+neurons",
                 architecture="Qwen2ForCausalLM", family="qwen", parallel=False, kv=2,
                 norm="RMS", bos=False, sites=None),
    "llama-3.2": dict(name="meta-llama/Llama-3.2-1B", spec="neurons",
                      loaded_as="meta-llama/Llama-3.2-1B+neurons", architecture="LlamaForCausalLM",
                      family="llama", parallel=False, kv=2, norm="RMS", bos=True, sites=None),
    "pythia-160m": dict(name="EleutherAI/pythia-160m", spec="neurons",
                        loaded_as="EleutherAI/pythia-160m+neurons",
                        architecture="GPTNeoXForCausalLM", family="neox", parallel=True, kv=None,
                        norm="LN", bos=False, sites=None),
}
_loaded: dict[str, SplicedModel] = {}


@pytest.fixture(params=list(CASES))
def case(request, stand_in_cache) -> tuple[dict, SplicedModel]:
    """(what the case expects, the model loaded by name with its dictionaries; once a session)."""
    expected = CASES[request.param]
    if request.param not in _loaded:
        with pytest.warns(StandInWarning, match=r"is an offline stand-in: .*random weights of "
                                                r"the shrunk \(--tiny\) shapes; tokenizer: "):
            _loaded[request.param] = load(expected["name"], dictionaries=expected["spec"],
                                          device="cpu")
    return expected, _loaded[request.param]


def _tokens(model: SplicedModel) -> torch.Tensor:
    data = model.tokenize(sva.load("across_pp", n=6, tokenizer=model.tokenizer))
    return data.clean_tokens


def test_loaded_by_name_with_sites_from_its_config(case):
    expected, model = case
    cfg = model.cfg
    assert model.name == expected["loaded_as"]
    assert cfg.original_architecture == expected["architecture"] and cfg.n_layers == 3
    assert family_of(model) == expected["family"]
    assert rules_for(model, None) == FAMILIES[expected["family"]]
    assert cfg.parallel_attn_mlp == expected["parallel"]
    assert cfg.n_key_value_heads == expected["kv"]
    assert cfg.normalization_type == expected["norm"] and model.prepend_bos == expected["bos"]
    spliced = [s.name for s in model.spliced_sites]
    assert spliced == (expected["sites"] or [s.name for s in model.sites])
    upstream_of_mlp = {u.name for u in upstream(cfg, model.site("mlp_1"))}
    assert ("attn_1" in upstream_of_mlp) == (not expected["parallel"])  # sequential blocks


def test_transformer_lens_computes_what_transformers_computes(case):
    """The conversion is faithful and unprocessed (GPT-2's centred writing weights, which
    gpt2-small-res-jb asks for, move the residual stream and change no logit)."""
    from transformers import AutoModelForCausalLM

    expected, model = case
    repo = resolve_model(expected["name"]).source
    hf = AutoModelForCausalLM.from_pretrained(repo, dtype=torch.float32).eval()
    tokens = _tokens(model)
    with torch.no_grad():
        ours, theirs = model.logits(tokens, spliced=False), hf(tokens).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_spliced_equals_plain_forward_and_gradient(case):
    _, model = case
    tokens = _tokens(model)
    record: dict[str, SiteNodes] = {}
    spliced = model.logits(tokens, record=record)
    torch.testing.assert_close(spliced, model.logits(tokens, spliced=False), atol=1e-5, rtol=0)
    assert set(record) == set(model.dictionaries)

    def embedding_grad(spliced: bool) -> torch.Tensor:
        model.transformer.zero_grad()
        model.logits(tokens, spliced=spliced)[:, -1, :50].sum().backward()
        grad = model.transformer.embed.W_E.grad.clone()
        model.transformer.zero_grad()
        return grad

    plain = embedding_grad(False)
    assert plain.abs().max() > 0
    torch.testing.assert_close(embedding_grad(True), plain, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_stand_in_dictionaries_fire_as_sparsely_as_their_release_states(which, stand_in_cache):
    expected = CASES[which]
    model = _loaded.get(which) or load(expected["name"], dictionaries=expected["spec"],
                                       device="cpu")
    refs = {ref.source: ref for ref in resolve(expected["spec"])}
    record: dict[str, SiteNodes] = {}
    with torch.no_grad():
        model.logits(_tokens(model), record=record)
    for site, nodes in record.items():
        dictionary = model.dictionaries[site]
        stated = min(refs[dictionary.source].l0 or 40.0, dictionary.d_sae / 4)
        real = nodes.features[:, int(model.prepend_bos):]  # BOS fires none (JumpReLU)
        l0 = (real > 0).float().sum(-1).mean().item()
        assert 0.4 * stated < l0 < 2.5 * stated, (site, l0, stated)


def test_gpt2_res_jb_reads_resid_pre_on_the_centred_model(stand_in_cache):
    """Its dictionaries read blocks.L.hook_resid_pre (= resid_{L-1}), trained on GPT-2 with
    centred writing weights: the residual stream has mean 0 over d_model, the bare one not."""
    gpt2 = _loaded.get("gpt2") or load("gpt2", dictionaries=GPT2_SPEC, device="cpu")
    assert gpt2.dictionaries["resid_0"].source == "gpt2-small-res-jb/blocks.1.hook_resid_pre"
    assert gpt2.dictionaries["resid_0"].neuronpedia_id == "gpt2-small/1-res-jb"
    bare = load("gpt2", dictionaries=False, device="cpu")
    tokens = _tokens(gpt2)
    for model, centred in ((gpt2, True), (bare, False)):
        _, cache = model.transformer.run_with_cache(tokens, names_filter=resid_pre(1))
        mean = cache[resid_pre(1)].mean(-1).abs().max().item()
        assert (mean < 1e-5) == centred, mean
    assert model_processing(resolve(GPT2_SPEC)) == {"center_writing_weights": True}
    with pytest.raises(ValueError, match="centred writing weights, gpt2-small-resid-post-v5-32k"
                                         ".* on the unprocessed model: load them separately"):
        model_processing(resolve("gpt2-small-res-jb:blocks.3.hook_resid_pre"
                                 "+gpt2-small-resid-post-v5-32k:blocks.5.hook_resid_post"))


def test_a_local_checkpoint_folder_loads_and_matches_releases_by_its_name(stand_in_cache,
                                                                         tmp_path):
    snapshot = next((stand_in_cache / "models--gpt2" / "snapshots").iterdir())
    folder = shutil.copytree(snapshot, tmp_path / "gpt2")
    model = load(str(folder), dictionaries=GPT2_SPEC.split("+")[0], device="cpu")
    assert model.name == str(folder) and list(model.dictionaries) == ["embed"]
    other = shutil.copytree(snapshot, tmp_path / "my-checkpoint")
    with pytest.raises(ValueError, match=r"made for gpt2-small, not .*my-checkpoint"):
        load(str(other), dictionaries="gpt2-small-res-jb", device="cpu")


def test_an_architecture_configured_by_name_only_is_checked_against_the_checkpoint():
    """transformer_lens keeps Gemma 2's config by model name: a checkpoint of other shapes
    (a shrunk stand-in) is refused, saying so, rather than converted wrongly."""
    from transformers import Gemma2Config, Gemma2ForCausalLM, PreTrainedTokenizerFast

    from saes.hub import to_hooked
    from saes.standins import stand_in_tokenizer

    config = Gemma2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                          vocab_size=980)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=stand_in_tokenizer())
    with pytest.raises(ValueError, match=r"keeps google/gemma-2-2b's config by name "
                                         r"\(Gemma2ForCausalLM\), and this checkpoint's shapes "
                                         r"differ from it \{'d_model': \(2304, 64\)"):
        to_hooked(Gemma2ForCausalLM(config), tokenizer, name="google/gemma-2-2b")
    with pytest.raises(ValueError, match=r"configures Gemma2ForCausalLM models by name only, "
                                         r"and /tmp/my-checkpoint is none it knows"):
        to_hooked(Gemma2ForCausalLM(config), tokenizer, name="/tmp/my-checkpoint")


# ---- names and release matching: nothing is loaded -------------------------------------------
@pytest.mark.parametrize(("name", "loaded_as", "kind"), [
    ("organism", "organism", "named"),
    ("EleutherAI/pythia-70m-deduped", "pythia-70m-deduped", "named"),
    ("google/gemma-3-270m", "gemma-3-270m", "named"),
    ("gpt2-small", "gpt2", "hub"),
    ("GPT2", "gpt2", "hub"),
    ("pythia-160m", "EleutherAI/pythia-160m", "hub"),
    ("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B", "hub"),
    ("meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-1B", "hub"),
    ("gemma-2-2b", "google/gemma-2-2b", "hub"),
])
def test_model_names_and_aliases(name, loaded_as, kind):
    model = resolve_model(name)
    assert (model.name, model.kind) == (loaded_as, kind)


def test_an_unknown_name_lists_what_names_are():
    with pytest.raises(ValueError, match=r"unknown model 'gpt-3'; choose one of organism, "
                                         r"pythia-70m-deduped, gemma-3-270m, any model "
                                         r"transformer_lens knows .*did you mean"):
        resolve_model("gpt-3")


def test_releases_match_models_by_transformer_lens_name():
    assert official("gpt2-small") == "gpt2"
    assert same_model("gpt2-small", "gpt2") and same_model("gemma-2-2b", "google/gemma-2-2b")
    assert not same_model("pythia-70m-deduped", "organism")
    assert "gpt2-small-res-jb" in releases_for("gpt2") == releases_for("gpt2-small")
    assert "llama_scope_lxr_8x" in releases_for("meta-llama/Llama-3.1-8B")
    assert releases_for("Qwen/Qwen2.5-0.5B") == releases_for("meta-llama/Llama-3.2-1B") == []
    assert releases_for("pythia-70m-deduped") == releases_for("EleutherAI/pythia-70m-deduped")


@pytest.mark.parametrize(("name", "spec", "message"), [
    ("gpt2", "llama_scope_lxr_8x", r"release 'llama_scope_lxr_8x' is made for "
     r"meta-llama/Llama-3.1-8B, not gpt2; releases for gpt2: gpt2-small-attn-out-v5-128k"),
    ("meta-llama/Llama-3.2-1B", "gpt2-small-res-jb", r"made for gpt2-small, not "
     r"meta-llama/Llama-3.2-1B; sae_lens has no release for meta-llama/Llama-3.2-1B"),
    ("gpt2", "gpt2-small-resid-mid-v5-32k", r"hook_resid_mid: the residual stream between "
     r"attention and MLP is no site"),
    ("Qwen/Qwen2.5-0.5B", True, r"Qwen/Qwen2.5-0.5B has no default dictionaries; .*sae_lens "
     r"has none for Qwen/Qwen2.5-0.5B.*dictionaries='neurons'"),
])
def test_refused_before_loading(monkeypatch, name, spec, message):
    import sae_lens

    from saes import loader

    def forbidden(*args, **kwargs):
        raise AssertionError("loaded something before refusing")

    monkeypatch.setattr(sae_lens.SAE, "from_pretrained", forbidden)
    monkeypatch.setattr(loader, "_hub_model", forbidden)
    with pytest.raises(ValueError, match=message):
        load(name, dictionaries=spec, device="cpu")
