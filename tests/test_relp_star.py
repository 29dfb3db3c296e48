"""RelP* and the QK fix on Gemma-style attention (QK-norm, grouped-query attention, sliding
window, soft-capped scores, per-layer rotary bases): identities and exactness against the
model's own attention, on tiny random models."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuits import attribute
from circuits.attention import AttentionHooks, clean_qk
from circuits.context import AttributionContext
from circuits.forward import Targets, forward, valid_positions
from circuits.lrp_rules import rule_hooks
from circuits.methods import atp_star, column, relp_star
from circuits.methods.base import Options, RuledOptions
from circuits.nodes import site_delta
from saes import SplicedModel
from saes.sites import resid_pre
from tasks import sva
from tasks.pairs import Dataset


def gemma_like(tokenizer, *, layers: int = 2, attn_only: bool = False, post_norms: bool = True,
               seed: int = 0) -> SplicedModel:
    cfg = HookedTransformerConfig(
        n_layers=layers, d_model=32, n_heads=4, n_key_value_heads=2, d_head=8, d_mlp=64,
        d_vocab=50304, n_ctx=64, act_fn="gelu_pytorch_tanh", normalization_type="RMS",
        gated_mlp=True, use_qk_norm=True, use_normalization_before_and_after=post_norms,
        positional_embedding_type="rotary", rotary_dim=8, rotary_base=10000,
        rotary_base_local=100, attn_types=(["local", "global"] * layers)[:layers],
        window_size=2, attn_scores_soft_cap=3.0, attn_only=attn_only, default_prepend_bos=False,
        seed=seed, initializer_range=0.3,
    )
    model = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="right")
    with torch.no_grad():  # QK-norm weights away from 1, so that the norm matters
        for block in model.blocks:
            block.attn.q_norm.w.uniform_(0.5, 2.0)
            block.attn.k_norm.w.uniform_(0.5, 2.0)
    return SplicedModel(model, {}, name="tiny-gemma", family="gemma", prepend_bos=False)


@pytest.fixture(scope="module")
def gemma(neox_tokenizer) -> SplicedModel:
    return gemma_like(neox_tokenizer)


@pytest.fixture(scope="module")
def data(gemma: SplicedModel) -> Dataset:
    return gemma.tokenize(sva.generate("across_rc", 4, seed=2, tokenizer=gemma.tokenizer))


def scores(model, data, method, **kwargs) -> dict[str, torch.Tensor]:
    kwargs = {"aggregation": "none", "per_example": True, "progress": False, **kwargs}
    return attribute(model, data, method, **kwargs).sites


def _patched_pattern(model, data, layer, point, new, p):
    """hook_pattern of `layer` on the clean run with `point` (rotated q or k) at p := new."""
    store: dict[str, torch.Tensor] = {}

    def put(x, hook):
        x = x.clone()
        x[:, p] = new[:, p]
        return x

    def keep(x, hook):
        store["A"] = x
        return x

    with torch.no_grad():
        model.transformer.run_with_hooks(data.clean_tokens, fwd_hooks=[
            (point, put), (f"blocks.{layer}.attn.hook_pattern", keep)])
    return store["A"]


@pytest.mark.parametrize(("layer", "site_name"), [(0, "embed"), (1, "embed"), (1, "resid_0")])
def test_qk_terms_equal_the_models_own_pattern_change(gemma, data, layer, site_name):
    """For a node at position p read by `layer`: the query + key terms equal the pattern change
    when the model itself computes q_p (then k_p) from its input with the node added, with
    every other query, key and value clean, dotted with ∂L/∂A."""
    names = AttentionHooks.of(layer)
    attn = f"blocks.{layer}.attn."
    site = gemma.site(site_name)
    record = [names.input, names.scores, names.pattern] + [site.hook_name]
    targets = Targets.of(data)
    value, acts = forward(gemma, data.clean_tokens, targets, record=record, grad=True)
    (grad_pattern,) = torch.autograd.grad(value.sum(), acts[names.pattern])
    acts = {k: v.detach() for k, v in acts.items()}
    _, patch = forward(gemma, data.patch_tokens, targets, record=[site.hook_name])
    r = acts[names.input]
    q, k = clean_qk(gemma, layer, r)
    checked = 0
    for p in range(data.seq_len):
        valid = valid_positions(data, data.seq_len) & (torch.arange(data.seq_len) == p)
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
            gemma.transformer.run_with_hooks(data.clean_tokens, fwd_hooks=[
                (resid_pre(layer), add), (attn + "hook_rot_q", keep), (attn + "hook_rot_k", keep)],
                stop_at_layer=layer + 1)
        expected = torch.zeros(len(data))
        for point in ("hook_rot_q", "hook_rot_k"):
            A = _patched_pattern(gemma, data, layer, attn + point, new[attn + point], p)
            expected += ((A - acts[names.pattern]) * grad_pattern).sum((1, 2, 3))
        assert expected.abs().max() > 1e-5, p
        torch.testing.assert_close(terms[:, p, 0], expected, atol=1e-6, rtol=1e-4)
        assert terms[:, [i for i in range(data.seq_len) if i != p]].abs().max() == 0
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


def test_relp_star_without_attention_effect_is_relp(neox_tokenizer, data):
    """W_Q = W_K = 0: every pattern is constant, so no gradient crosses a softmax, the QK terms
    are exactly 0 and RelP* is RelP; with the real weights they differ."""
    model = gemma_like(neox_tokenizer)
    real = scores(model, data, "relp*")
    with torch.no_grad():
        for block in model.transformer.blocks:
            block.attn.W_Q.zero_()
            block.attn._W_K.zero_()
    star, relp = scores(model, data, "relp*"), scores(model, data, "relp")
    for name in relp:
        torch.testing.assert_close(star[name], relp[name], atol=1e-6, rtol=1e-5)
    assert max((real[n] - star[n]).abs().max() for n in real) > 1e-3


def test_relp_star_without_qk_fix_is_relp_with_the_ah_rule(gemma, data):
    """Patterns as leaves of the forward (RelP*'s way) = the AH rule's detach (lrp_rules)."""
    for rules in [(), ("ln", "identity", "half")]:
        options = RuledOptions(rules=rules)
        off = dict(relp_star.relp_star(AttributionContext(gemma, data), options, qk_fix=False))
        ah = scores(gemma, data, "relp", rules=(*rules, "ah"))
        for name in ah:
            torch.testing.assert_close(off[name], ah[name], atol=1e-6, rtol=1e-5)


def test_relp_star_terms_are_the_difference_from_relp_with_ah(gemma, data):
    """RelP* - (RelP + AH) = Σ over reading layers of the QK terms (atp_star.qk_terms with
    ∂L/∂A of the RelP + AH backward): zero at the last residual site (no attention reads it),
    non-zero upstream."""
    rules = ("ln", "identity", "half")
    star = scores(gemma, data, "relp*")
    ah = scores(gemma, data, "relp", rules=(*rules, "ah"))
    torch.testing.assert_close(star["resid_1"], ah["resid_1"], atol=1e-6, rtol=1e-5)
    assert (star["embed"] - ah["embed"]).abs().max() > 1e-4
    assert (star["resid_0"] - ah["resid_0"]).abs().max() > 1e-4
    # the QK terms, from the helpers, per site
    n_layers = gemma.cfg.n_layers
    names = [AttentionHooks.of(a) for a in range(n_layers)]
    sites = gemma.node_sites
    leaves: dict[str, torch.Tensor] = {}
    hooks = rule_hooks(gemma.transformer, rules) + [
        (n.pattern, relp_star.pattern_leaf_hook(leaves)) for n in names]
    record = [s.hook_name for s in sites] + [p for n in names for p in (n.input, n.scores)]
    targets = Targets.of(data)
    value, acts = forward(gemma, data.clean_tokens, targets, record=record, hooks=hooks, grad=True)
    patterns = [leaves[n.pattern] for n in names]
    grad_pattern = torch.autograd.grad(value.sum(), patterns, allow_unused=True)
    acts = {k: v.detach() for k, v in acts.items()}
    _, patch = forward(gemma, data.patch_tokens, targets, record=[s.hook_name for s in sites])
    valid = valid_positions(data, data.seq_len)
    for site in sites:
        delta = site_delta(gemma, site, acts[site.hook_name], patch[site.hook_name], valid)
        expected = torch.zeros_like(star[site.name])
        for a in range(atp_star.first_reader(site), n_layers):
            r = acts[names[a].input]
            (term,) = atp_star.qk_terms(gemma, delta, a, r, *clean_qk(gemma, a, r),
                                        acts[names[a].scores], patterns[a].detach(),
                                        [grad_pattern[a]])
            expected += term
        torch.testing.assert_close(star[site.name] - ah[site.name], expected, atol=1e-5,
                                   rtol=1e-4)


def test_atp_star_runs_the_qk_fix_on_gemma_attention(gemma, data):
    """No fallback warning on QK-norm / GQA attention; the QK fix changes AtP."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ctx = AttributionContext(gemma, data)
        fixed = dict(atp_star.score_batch(ctx, Options(), grad_drop=False))
    plain = scores(gemma, data, "atp")
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


# ---- column patching -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gemma", "neox-parallel", "neox-sequential-features"])
def test_column_is_exact_at_the_metric_position(kind, gemma, neox_tokenizer):
    """A node at the metric's position reaches the metric only through its own column, which
    column patching computes exactly: equal to exact patching there, for every site."""
    from tests.conftest import tiny_neox, tiny_spliced

    if kind == "gemma":
        model = gemma
    elif kind == "neox-parallel":
        model = SplicedModel(tiny_neox(neox_tokenizer, seed=4), {}, name="p", family="neox",
                             prepend_bos=False)
    else:
        model = tiny_spliced(neox_tokenizer, parallel=False, seed=2)
    data = model.tokenize(sva.generate("within_rc", 3, seed=1, tokenizer=model.tokenizer))
    col = column_scores(model, data, budget=None)
    exact = scores(model, data, "exact")
    last = data.seq_len - 1
    for name in exact:
        assert exact[name][:, last].abs().max() > 1e-3, name
        torch.testing.assert_close(col[name][:, last], exact[name][:, last], atol=2e-5,
                                   rtol=1e-4)


def test_column_is_exact_for_one_attention_layer(neox_tokenizer):
    """One layer whose MLP writes 0, no norm after the attention: every node's effect is its
    column plus one attention hop followed by linear maps, so column patching equals exact."""
    model = gemma_like(neox_tokenizer, layers=1, post_norms=False, seed=3)
    model.transformer.ln_final = torch.nn.Identity()
    with torch.no_grad():
        model.transformer.blocks[0].mlp.W_out.zero_()
        model.transformer.blocks[0].mlp.b_out.zero_()
    data = model.tokenize(sva.generate("across_rc", 4, seed=5, tokenizer=model.tokenizer))
    col = column_scores(model, data, budget=None)
    exact, relp = scores(model, data, "exact"), scores(model, data, "relp*")
    assert exact["embed"][:, :-1].abs().max() > 1e-3  # hops, not only the metric's position
    for name in exact:
        torch.testing.assert_close(col[name], exact[name], atol=2e-5, rtol=1e-4)
    assert not torch.allclose(relp["embed"], exact["embed"], atol=1e-3)


@pytest.mark.parametrize("frozen", [False, True])
def test_column_of_depth_zero_is_relp(gemma, data, frozen):
    """Columns followed for 0 blocks: the change scored by R at the block it enters, i.e. RelP
    (with the AH rule when patterns are frozen), at every site entering the residual stream
    between blocks (not the last block's, nor attn_L of a sequential block: its column runs
    block L's MLP first)."""
    col = column_scores(gemma, data, depth=0, frozen_patterns=frozen)
    rules = ("ln", "identity", "half") + (("ah",) if frozen else ())
    relp = scores(gemma, data, "relp", rules=rules)
    for name in ("embed", "mlp_0", "resid_0"):
        assert relp[name].abs().max() > 1e-4, name
        torch.testing.assert_close(col[name], relp[name], atol=1e-6, rtol=1e-5)


def test_column_budget_follows_the_largest_nodes_first(gemma, data):
    """An unlimited budget follows every column; budget 0 follows only the columns that run
    no block (depth 0 for the rest); in between, registered 'column' differs from both."""
    full = column_scores(gemma, data, budget=None)
    huge = column_scores(gemma, data, budget=1e9)
    none = column_scores(gemma, data, budget=0.0)
    zero = column_scores(gemma, data, depth=0)
    some = column_scores(gemma, data, budget=0.5)
    for name in full:
        torch.testing.assert_close(huge[name], full[name], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(none[name], zero[name], atol=1e-6, rtol=1e-5)
    assert max((some[n] - full[n]).abs().max() for n in full) > 1e-4
    assert max((some[n] - zero[n]).abs().max() for n in full) > 1e-4


def test_column_records_the_rules_it_applies(gemma, data):
    """Column patching never applies AH (module docstring): an explicit "ah", or the gemma
    family's default that includes it, leaves the scores as without it, and Scores.options
    records the rules without "ah"."""
    kwargs = {"aggregation": "none", "per_example": True, "progress": False}
    with_ah = attribute(gemma, data, "column", rules=("ln", "identity", "ah"), **kwargs)
    without = attribute(gemma, data, "column", rules=("ln", "identity"), **kwargs)
    assert with_ah.options["rules"] == ["ln", "identity"]
    for name in without.sites:
        torch.testing.assert_close(with_ah.sites[name], without.sites[name], atol=0, rtol=0)
    default = attribute(gemma, data, "column", **kwargs)
    assert default.options["rules"] == ["ln", "identity", "half"]
    assert attribute(gemma, data, "relp*", **kwargs).options["rules"][-1] == "ah"


def column_scores(model, data, **kwargs) -> dict:
    """column.column_patching on the whole dataset as one batch, site -> [b, pos, n_nodes]."""
    return dict(column.column_patching(AttributionContext(model, data), RuledOptions(), **kwargs))
