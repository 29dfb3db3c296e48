"""AtP*: switched off it is AtP; GradDrop's identities; the QK fix against the model's own
attention (queries and keys patched), also on Gemma-style attention."""

from __future__ import annotations

import warnings

import pytest
import torch

from circuits import attribute
from circuits.attention import AttentionHooks, clean_qk
from circuits.context import AttributionContext
from circuits.forward import Targets, forward, valid_positions
from circuits.methods import atp, atp_star
from circuits.methods.base import Options
from circuits.nodes import site_delta
from saes import SplicedModel
from saes.sites import resid_pre
from tasks import sva
from tasks.pairs import Dataset
from tests.circuits.conftest import scores
from tests.circuits.methods.conftest import gemma_like, patched_pattern


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


@pytest.mark.parametrize(("layer", "site_name"), [(0, "embed"), (1, "embed"), (1, "resid_0")])
def test_qk_terms_equal_the_models_own_pattern_change(gemma, gemma_data, layer, site_name):
    """For a node at position p read by `layer`: the query + key terms equal the pattern change
    when the model itself computes q_p (then k_p) from its input with the node added, with
    every other query, key and value clean, dotted with ∂L/∂A."""
    names = AttentionHooks.of(layer)
    attn = f"blocks.{layer}.attn."
    site = gemma.site(site_name)
    record = [names.input, names.scores, names.pattern] + [site.hook_name]
    targets = Targets.of(gemma_data)
    value, acts = forward(gemma, gemma_data.clean_tokens, targets, record=record, grad=True)
    (grad_pattern,) = torch.autograd.grad(value.sum(), acts[names.pattern])
    acts = {k: v.detach() for k, v in acts.items()}
    _, patch = forward(gemma, gemma_data.patch_tokens, targets, record=[site.hook_name])
    r = acts[names.input]
    q, k = clean_qk(gemma, layer, r)
    checked = 0
    for p in range(gemma_data.seq_len):
        seq = gemma_data.seq_len
        valid = valid_positions(gemma_data, seq) & (torch.arange(seq) == p)
        delta = site_delta(gemma, site, acts[site.hook_name], patch[site.hook_name], valid)
        (terms,) = atp_star.qk_terms(gemma, delta, layer, r, q, k, acts[names.scores],
                                     acts[names.pattern], [grad_pattern])
        if delta.d_error.abs().max() == 0:  # the node does not move: no term
            assert terms.abs().max() == 0
            continue
        checked += 1
        # q_p and k_p as the model computes them with the node's change added to the layer input
        new: dict[str, torch.Tensor] = {}

        def add(x, hook, delta=delta):
            return x + delta.d_error

        def keep(x, hook, new=new):
            new[hook.name] = x
            return x

        with torch.no_grad():
            gemma.transformer.run_with_hooks(gemma_data.clean_tokens, fwd_hooks=[
                (resid_pre(layer), add), (attn + "hook_rot_q", keep), (attn + "hook_rot_k", keep)],
                stop_at_layer=layer + 1)
        expected = torch.zeros(len(gemma_data))
        for point in ("hook_rot_q", "hook_rot_k"):
            A = patched_pattern(gemma, gemma_data, layer, attn + point, new[attn + point], p)
            expected += ((A - acts[names.pattern]) * grad_pattern).sum((1, 2, 3))
        assert expected.abs().max() > 1e-5, p
        torch.testing.assert_close(terms[:, p, 0], expected, atol=1e-6, rtol=1e-4)
        assert terms[:, [i for i in range(gemma_data.seq_len) if i != p]].abs().max() == 0
    assert checked > 0


def test_qk_terms_are_the_metric_change_where_only_the_softmax_is_nonlinear(neox_tokenizer):
    """One attention-only layer, no norm after it: the metric is linear in the pattern, so the
    query (key) term of a node is exactly metric(q_p (k_p) as the patched model computes it)
    - metric(clean); this is far from the linear estimate for a saturated softmax."""
    model = gemma_like(neox_tokenizer, layers=1, attn_only=True, post_norms=False, seed=3)
    model.transformer.ln_final = torch.nn.Identity()
    data = model.tokenize(sva.generate("across_rc", 4, seed=5, tokenizer=model.tokenizer))
    targets = Targets.of(data)
    names, attn = AttentionHooks.of(0), "blocks.0.attn."
    points = [attn + "hook_rot_q", attn + "hook_rot_k"]
    value, acts = forward(model, data.clean_tokens, targets,
                          record=[names.input, names.scores, names.pattern], grad=True)
    (grad_pattern,) = torch.autograd.grad(value.sum(), acts[names.pattern])
    acts = {k: v.detach() for k, v in acts.items()}
    record = ["blocks.0.hook_resid_pre"] + points
    _, patch = forward(model, data.patch_tokens, targets, record=record)
    site = model.site("embed")
    r = acts[names.input]
    base = value.detach()
    q, k = clean_qk(model, 0, r)
    checked = 0
    for p in range(data.seq_len):
        valid = valid_positions(data, data.seq_len) & (torch.arange(data.seq_len) == p)
        delta = site_delta(model, site, r, patch[site.hook_name], valid)
        (terms,) = atp_star.qk_terms(model, delta, 0, r, q, k, acts[names.scores],
                                     acts[names.pattern], [grad_pattern])
        expected = torch.zeros(len(data))
        for point in points:
            def put(x, hook, point=point, p=p):
                x = x.clone()
                x[:, p] = patch[point][:, p]
                return x

            patched, _ = forward(model, data.clean_tokens, targets, hooks=[(point, put)])
            expected += patched - base
        if delta.d_error.abs().max() > 0:
            assert expected.abs().max() > 1e-4
            torch.testing.assert_close(terms[:, p, 0], expected, atol=1e-5, rtol=1e-4)
            checked += 1
    assert checked > 0


def test_atp_star_runs_the_qk_fix_on_gemma_attention(gemma, gemma_data):
    """No fallback warning on QK-norm / GQA attention; the QK fix changes AtP."""

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ctx = AttributionContext(gemma, gemma_data)
        fixed = dict(atp_star.score_batch(ctx, Options(), grad_drop=False))
    plain = scores(gemma, gemma_data, "atp")
    assert (fixed["embed"] - plain["embed"]).abs().max() > 1e-4
    torch.testing.assert_close(fixed["resid_1"], plain["resid_1"], atol=1e-6, rtol=1e-5)


def test_atp_star_drop_of_the_nodes_own_layer_scores_0(neox_tokenizer):
    """L = 3, QK fix and GradDrop on. Dropping layer l gates every path from attn_l / mlp_l
    nodes, the QK terms of the layers that read them included: I*_l = 0 for them (the module
    docstring, Kramár et al. Eq. 11), so c(n) = (Σ_{l'≠l} |I*_l'|) / (L - 1). Other variants
    and upstream nodes keep their QK terms."""
    from tests.conftest import tiny_spliced

    model = tiny_spliced(neox_tokenizer, layers=3)
    data = model.tokenize(sva.generate("across_pp", 4, seed=1, tokenizer=model.tokenizer))
    est = dict(atp_star.variant_estimates(AttributionContext(model, data)))
    assert all(len(e) == 3 for e in est.values())
    for layer in range(3):
        for kind in ("attn", "mlp"):
            name = f"{kind}_{layer}"
            assert torch.equal(est[name][layer], torch.zeros_like(est[name][layer])), name
            others = [e for v, e in enumerate(est[name]) if v != layer]
            assert max(e.abs().max() for e in others) > 1e-5, name
    star = dict(atp_star.score_batch(AttributionContext(model, data), Options()))
    for name in ("attn_0", "mlp_0"):
        torch.testing.assert_close(star[name], (est[name][1].abs() + est[name][2].abs()) / 2)
    # the QK fix is on: attn_0 / mlp_0 under drop 1 carry layer 2's QK terms, so differ from AtP
    # with the same drop (no QK fix)
    lin = dict(atp_star.variant_estimates(AttributionContext(model, data), qk_fix=False))
    assert (est["attn_0"][1] - lin["attn_0"][1]).abs().max() > 1e-6
