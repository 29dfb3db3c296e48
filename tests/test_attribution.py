"""Node attribution: each method against a real intervention or an identity it must satisfy."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuits import METHODS, Scores, attribute
from circuits.attention import AttentionHooks, clean_qk
from circuits.context import AttributionContext
from circuits.forward import Targets, forward, valid_positions
from circuits.methods import atp, atp_star
from circuits.methods.base import Options
from circuits.nodes import site_delta
from saes import Dictionary, SplicedModel
from saes.offline_cache import random_dictionary
from saes.sites import all_sites
from saes.splice import SiteNodes
from tasks import logit_diff, sva
from tasks.pairs import Dataset


@pytest.fixture(scope="module")
def data(tiny: SplicedModel) -> Dataset:
    return tiny.tokenize(sva.generate("across_pp", 6, seed=1, tokenizer=tiny.tokenizer))


@pytest.fixture(scope="module")
def sequential(neox_tokenizer) -> SplicedModel:
    """Sequential blocks (GPT-2/Llama style): mlp_L reads attn_L, so a patched attn_L must run
    block L again (the other sites enter after their block)."""
    from tests.conftest import tiny_spliced

    return tiny_spliced(neox_tokenizer, parallel=False, seed=1)


@pytest.fixture(scope="module")
def bare(tiny: SplicedModel) -> SplicedModel:
    return SplicedModel(tiny.transformer, {}, name="tiny-bare", family="neox", prepend_bos=False)


def scores(model, data, method, **kwargs) -> dict[str, torch.Tensor]:
    kwargs = {"aggregation": "none", "per_example": True, "progress": False, **kwargs}
    return attribute(model, data, method, **kwargs).sites


def spliced_nodes(model: SplicedModel, tokens: torch.Tensor) -> dict[str, SiteNodes]:
    record: dict[str, SiteNodes] = {}
    with torch.no_grad():
        model.logits(tokens, record=record)
    return record


# ---- identities of the metric and of aggregation -----------------------------------------------
def test_metric_equals_logit_diff_on_full_logits(tiny: SplicedModel, data: Dataset):
    value, _ = forward(tiny, data.clean_tokens, Targets.of(data))
    expected = logit_diff(tiny.logits(data.clean_tokens, spliced=False), data)
    torch.testing.assert_close(value, expected, atol=1e-5, rtol=1e-5)


def test_sum_and_mean_aggregate_the_per_position_scores(tiny: SplicedModel, data: Dataset):
    full = scores(tiny, data, "atp")
    summed = attribute(tiny, data, "atp", progress=False)
    assert summed.aggregation == "sum" and not summed.per_example
    for name, s in full.items():
        assert s.shape == (len(data), data.seq_len, tiny.dictionaries[name].d_sae + 1)
        torch.testing.assert_close(summed.sites[name], s.sum(1).mean(0), atol=1e-6, rtol=1e-5)


# ---- atp -----------------------------------------------------------------------------------------
def test_atp_equals_autograd_through_the_splice(tiny: SplicedModel, data: Dataset):
    """The sparse path (gathered W_dec rows, no backward through dictionaries) equals
    Δ(node) · node.grad read from the spliced model's own graph."""
    patch = spliced_nodes(tiny, data.patch_tokens)
    record: dict[str, SiteNodes] = {}
    with tiny.spliced(record=record):
        logits = tiny.transformer(data.clean_tokens)
        for nodes in record.values():
            nodes.features.retain_grad()
            nodes.error.retain_grad()
        logit_diff(logits, data).sum().backward()
    tiny.transformer.zero_grad(set_to_none=True)
    got = scores(tiny, data, "atp")
    for name, clean in record.items():
        features = (patch[name].features - clean.features) * clean.features.grad
        error = ((patch[name].error - clean.error) * clean.error.grad).sum(-1)
        expected = torch.cat([features, error[..., None]], dim=-1).detach()
        assert expected.abs().max() > 0, name
        torch.testing.assert_close(got[name], expected, atol=2e-5, rtol=1e-4)


def linear_tail_model(tokenizer) -> SplicedModel:
    """No norms, parallel blocks: attn_1, mlp_1 and resid_1 reach the metric linearly."""
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=128, d_vocab=50304, n_ctx=64,
        act_fn="gelu", normalization_type=None, parallel_attn_mlp=True,
        positional_embedding_type="rotary", rotary_dim=8, default_prepend_bos=False, seed=1,
        initializer_range=0.1,
    )
    model = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="right")
    gen = torch.Generator().manual_seed(1)
    _, cache = model.run_with_cache(torch.randint(0, 1000, (4, 12), generator=gen))
    dicts = {}
    for site in all_sites(cfg):
        w = random_dictionary(cache[site.hook_name].reshape(-1, 32), 48, target_l0=8, gen=gen)
        dicts[site.name] = Dictionary(w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"])
    return SplicedModel(model, dicts, name="linear-tail", family="neox", prepend_bos=False)


def test_atp_equals_exact_where_the_model_is_linear(neox_tokenizer):
    model = linear_tail_model(neox_tokenizer)
    data = model.tokenize(sva.generate("across_pp", 2, tokenizer=model.tokenizer))
    grad, patched = scores(model, data, "atp"), scores(model, data, "exact")
    for name in ("attn_1", "mlp_1", "resid_1"):
        assert patched[name].abs().max() > 1e-3, name
        torch.testing.assert_close(grad[name], patched[name], atol=2e-5, rtol=1e-3)
    # upstream of attention and MLPs the same tolerance fails: the check can fail
    assert not torch.allclose(grad["embed"], patched["embed"], atol=2e-5, rtol=1e-3)


# ---- exact ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("blocks", ["parallel", "sequential"])
def test_exact_equals_one_forward_per_node(blocks, tiny, sequential, data: Dataset):
    """Reference: for every moved node, a copy of the clean prompt run through the spliced
    model with that one node edited to its patch-run value (copies stacked in one batch)."""
    tiny = tiny if blocks == "parallel" else sequential
    example = data.subset([0])
    got = scores(tiny, example, "exact", exact_batch=37)  # odd chunks on purpose
    clean = spliced_nodes(tiny, example.clean_tokens)
    patch = spliced_nodes(tiny, example.patch_tokens)
    base = logit_diff(tiny.logits(example.clean_tokens), example)[0]
    for name in ("embed", "attn_0", "mlp_0", "resid_1"):
        d_sae = tiny.dictionaries[name].d_sae
        moved = (patch[name].features != clean[name].features)[0]  # [pos, d_sae]
        moved = torch.cat([moved, torch.ones(example.seq_len, 1, dtype=torch.bool)], -1)
        pos, node = moved.nonzero().unbind(-1)  # [N]
        rows = torch.arange(len(pos))

        def edit(site, f, err, name=name, pos=pos, node=node, rows=rows, d_sae=d_sae):
            if site.name != name:
                return f, err
            f, err = f.clone(), err.clone()
            is_err = node == d_sae
            err[rows[is_err], pos[is_err]] = patch[name].error[0, pos[is_err]]
            r, p, i = rows[~is_err], pos[~is_err], node[~is_err]
            f[r, p, i] = patch[name].features[0, p, i]
            return f, err

        copies = example.subset(torch.zeros(len(pos), dtype=torch.long))
        with torch.no_grad():
            logits = tiny.logits(copies.clean_tokens, edit=edit)
        expected = torch.zeros(example.seq_len, d_sae + 1)
        expected[pos, node] = logit_diff(logits, copies) - base
        assert expected.abs().max() > 1e-3, name
        torch.testing.assert_close(got[name][0], expected, atol=5e-5, rtol=1e-4)


def test_exact_candidates_patch_only_those_nodes(tiny: SplicedModel, data: Dataset):
    full = scores(tiny, data, "exact")
    mask = torch.zeros(65, dtype=torch.bool)
    mask[torch.arange(0, 65, 3)] = True
    some = scores(tiny, data, "exact", candidates={"mlp_0": mask, "resid_1": torch.tensor([64])})
    torch.testing.assert_close(some["mlp_0"], full["mlp_0"] * mask, atol=1e-6, rtol=0)
    torch.testing.assert_close(some["resid_1"][..., 64], full["resid_1"][..., 64], atol=1e-6,
                               rtol=0)
    assert some["resid_1"][..., :64].abs().max() == 0 and some["embed"].abs().max() == 0


def test_bare_model_scores_components(bare: SplicedModel, data: Dataset):
    """One node per site and position; exact = patching the component from the patch run."""
    got = scores(bare, data, "exact")
    grad = scores(bare, data, "atp")
    assert set(got) == {s.name for s in bare.sites}
    assert got["mlp_0"].shape == (len(data), data.seq_len, 1)
    tl = bare.transformer
    _, patch_cache = tl.run_with_cache(data.patch_tokens)
    base = logit_diff(tl(data.clean_tokens), data)
    site, p = bare.site("attn_1"), 2

    def hook(x, hook):
        x = x.clone()
        x[:, p] = patch_cache[site.hook_name][:, p]
        return x

    with torch.no_grad():
        effect = logit_diff(tl.run_with_hooks(data.clean_tokens, fwd_hooks=[(site.hook_name,
                                                                              hook)]), data)
    torch.testing.assert_close(got["attn_1"][:, p, 0], effect - base, atol=2e-5, rtol=1e-4)
    assert (grad["embed"] - got["embed"]).abs().max() > 0  # a real approximation


# ---- ig ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("blocks", ["parallel", "sequential"])
def test_ig_completeness(blocks, tiny, sequential, data: Dataset):
    """Σ over a site's nodes and positions = metric(site := patch) - metric(clean)."""
    tiny = tiny if blocks == "parallel" else sequential
    data = data.subset([0, 1, 2])
    got = scores(tiny, data, "ig", steps=32, aggregation="sum")
    tl = tiny.transformer
    _, patch_cache = tl.run_with_cache(data.patch_tokens)
    with torch.no_grad():
        base = logit_diff(tl(data.clean_tokens), data)
        for site in tiny.sites:
            patched = tl.run_with_hooks(
                data.clean_tokens,
                fwd_hooks=[(site.hook_name, lambda x, hook: patch_cache[hook.name])],
            )
            effect = logit_diff(patched, data) - base  # [n]
            total = got[site.name].sum(-1)  # [n]
            assert effect.abs().max() > 1e-2, site.name
            torch.testing.assert_close(total, effect, atol=1e-3, rtol=1e-3)


def test_ig_differs_from_atp(tiny: SplicedModel, data: Dataset):
    ig, grad = scores(tiny, data, "ig", steps=4), scores(tiny, data, "atp")
    assert (ig["embed"] - grad["embed"]).abs().max() > 1e-4


# ---- relp ----------------------------------------------------------------------------------------
def test_relp_without_rules_is_atp(tiny: SplicedModel, data: Dataset):
    plain, relp = scores(tiny, data, "atp"), scores(tiny, data, "relp", rules=())
    for name in plain:
        assert torch.equal(plain[name], relp[name]), name
    default = scores(tiny, data, "relp")
    assert (default["embed"] - plain["embed"]).abs().max() > 1e-4


# ---- atp* ----------------------------------------------------------------------------------------
def test_atp_star_switched_off_is_atp(tiny: SplicedModel, data: Dataset):
    plain = dict(atp.score_batch(AttributionContext(tiny, data), Options()))
    off = dict(atp_star.score_batch(AttributionContext(tiny, data), Options(), qk_fix=False,
                                    grad_drop=False))
    for name in plain:
        assert torch.equal(plain[name], off[name]), name


def test_atp_star_graddrop_identities(tiny: SplicedModel, data: Dataset):
    """L = 2. Dropping layer 1 zeroes layer-1 nodes, dropping layer 0 leaves them alone:
    attn_1/mlp_1 score |atp|. No layer reads resid_1: every drop leaves it, 2|atp| / (L - 1)."""
    star = attribute(tiny, data, "atp*", aggregation="none", per_example=True, progress=False)
    assert not star.signed
    plain = scores(tiny, data, "atp")
    for name in ("attn_1", "mlp_1"):
        torch.testing.assert_close(star.sites[name], plain[name].abs(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(star.sites["resid_1"], 2 * plain["resid_1"].abs(), atol=1e-6,
                               rtol=1e-5)
    assert (star.sites["embed"] - plain["embed"].abs()).abs().max() > 1e-4


def test_atp_star_qk_terms_match_patching_queries_and_keys(bare: SplicedModel, data: Dataset):
    """For an embed component at position p, layer 0's query and key terms equal the pattern
    change of really patching q_p (then k_p) to the patch run's value, dotted with ∂L/∂A."""
    tl, p = bare.transformer, 1  # the subject noun: the only token that differs
    names = AttentionHooks.of(0)
    qk_points = {"q": "blocks.0.attn.hook_q", "k": "blocks.0.attn.hook_k"}
    record = [names.input, names.scores, names.pattern] + list(qk_points.values())
    targets = Targets.of(data)
    value, acts = forward(bare, data.clean_tokens, targets, record=record, grad=True)
    (grad_pattern,) = torch.autograd.grad(value.sum(), acts[names.pattern])
    acts = {k: v.detach() for k, v in acts.items()}
    _, patch_acts = forward(bare, data.patch_tokens, targets, record=record)
    site = bare.site("embed")
    valid = valid_positions(data, data.seq_len) & (torch.arange(data.seq_len) == p)
    delta = site_delta(bare, site, acts[site.hook_name], patch_acts[site.hook_name], valid)
    r = acts[names.input]
    (terms,) = atp_star.qk_terms(bare, delta, 0, r, *clean_qk(bare, 0, r),
                                 acts[names.scores], acts[names.pattern], [grad_pattern])
    expected = torch.zeros(len(data))
    for point in qk_points.values():

        def hook(x, hook, point=point):
            x = x.clone()
            x[:, p] = patch_acts[point][:, p]
            return x

        store: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            tl.run_with_hooks(data.clean_tokens, fwd_hooks=[
                (point, hook),
                (names.pattern, lambda x, hook, store=store: store.setdefault("A", x)),
            ])
        expected += ((store["A"] - acts[names.pattern]) * grad_pattern).sum((1, 2, 3))
    assert expected.abs().max() > 1e-4
    torch.testing.assert_close(terms[:, p, 0], expected, atol=1e-5, rtol=1e-4)


# ---- results and inputs --------------------------------------------------------------------------
def test_scores_round_trip(tiny: SplicedModel, data: Dataset, tmp_path):
    original = attribute(tiny, data, "relp", aggregation="none", progress=False)
    path = original.save(tmp_path / "scores.safetensors")
    loaded = Scores.load(path)
    for field in dataclasses.fields(Scores):
        if field.name != "sites":
            assert getattr(loaded, field.name) == getattr(original, field.name), field.name
    assert list(loaded.sites) == list(original.sites)
    for name, tensor in original.sites.items():
        assert torch.equal(loaded.sites[name], tensor)
    assert loaded.error("mlp_0").shape == (data.seq_len,)
    assert loaded.features("mlp_0").shape == (data.seq_len, 64)


def test_score_files_are_told_apart(tiny: SplicedModel, data: Dataset, tmp_path):
    """An EdgeScores file read as Scores (and a missing file) fail with the type named."""
    from circuits import EdgeScores

    scores = attribute(tiny, data, "atp", progress=False)
    path = scores.save(tmp_path / "scores.safetensors")
    with pytest.raises(ValueError, match="not a EdgeScores file"):
        EdgeScores.load(path)
    with pytest.raises(FileNotFoundError, match="no Scores file at"):
        Scores.load(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("nodes", ["features", "components"])
def test_every_registered_method_runs(nodes, tiny, bare, data: Dataset):
    model = tiny if nodes == "features" else bare
    width = 65 if nodes == "features" else 1
    for name in METHODS:
        result = attribute(model, data.subset([0, 1]), name, steps=2 if name == "ig" else None,
                           progress=False)
        assert set(result.sites) == {s.name for s in model.node_sites}
        assert result.components_only == (nodes == "components")
        assert result.signed == (name != "atp*")
        assert all(s.shape == (width,) and torch.isfinite(s).all() for s in result.sites.values())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "gradients"}, "unknown method 'gradients'; choose one of exact, atp"),
        ({"method": "ig", "steps": 0}, "steps must be a positive integer, got 0"),
        ({"method": "atp", "candidates": {"mlp_9": torch.tensor([0])}},
         "unknown site(s) ['mlp_9']"),
        ({"method": "atp", "rules": ("ln",)},
         "rules= is not an option of method 'atp'"),
        ({"method": "relp", "rules": ("lnn",)}, "unknown LRP rule(s) ['lnn']"),
        ({"method": "atp", "aggregation": "mean"}, "unknown aggregation 'mean'"),
    ],
)
def test_bad_input_one_line_errors(tiny: SplicedModel, data: Dataset, kwargs, message):
    with pytest.raises(ValueError) as err:
        attribute(tiny, data, progress=False, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_dataset_for_another_tokenizer_is_refused(tiny: SplicedModel, data: Dataset):
    other = dataclasses.replace(data, tokenizer_id="vocab100-abc")
    with pytest.raises(ValueError, match="tokenized for 'vocab100-abc'"):
        attribute(tiny, other, "atp", progress=False)


def test_per_position_scores_need_one_length(tiny: SplicedModel):
    pairs = sva.generate("simple", 2, tokenizer=tiny.tokenizer) + sva.generate(
        "across_pp", 2, tokenizer=tiny.tokenizer)
    message = r"needs prompts of one token length; got lengths \{2, 5\}"
    with pytest.raises(ValueError, match=message):
        attribute(tiny, pairs, "atp", aggregation="none", progress=False)
    # mixed lengths are fine summed over positions, padded positions scoring 0
    summed = attribute(tiny, pairs, "exact", per_example=True, progress=False)
    alone = attribute(tiny, pairs[:2], "exact", per_example=True, progress=False)
    torch.testing.assert_close(summed.sites["mlp_0"][:2], alone.sites["mlp_0"], atol=2e-5,
                               rtol=1e-4)
