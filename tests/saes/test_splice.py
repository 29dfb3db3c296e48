"""The splice is a change of basis: same forward, same upstream gradient, exact reconstruction."""

from __future__ import annotations

import pytest
import torch

from saes import Dictionary, SplicedModel
from saes.splice import SiteNodes

TOKENS = torch.tensor(
    [[510, 13585, 326, 253, 15071, 751, 310], [510, 5753, 2822, 253, 25455, 403, 1048]]
)


def test_spliced_forward_equals_plain(tiny: SplicedModel):
    plain = tiny.logits(TOKENS, spliced=False)
    spliced = tiny.logits(TOKENS)
    assert len(tiny.dictionaries) == len(tiny.sites) == 7
    torch.testing.assert_close(spliced, plain, atol=1e-5, rtol=0)


def test_splice_is_not_a_no_op(tiny: SplicedModel):
    """Sanity check for the test above: zeroing the error nodes does change the logits."""
    plain = tiny.logits(TOKENS, spliced=False)
    no_error = tiny.logits(TOKENS, edit=lambda site, f, err: (f, torch.zeros_like(err)))
    assert (no_error - plain).abs().max() > 1e-2


def test_upstream_gradient_equals_plain(tiny: SplicedModel):
    def embedding_grad(spliced: bool) -> torch.Tensor:
        tiny.transformer.zero_grad()
        logits = tiny.logits(TOKENS, spliced=spliced)
        logits[:, -1, :50].sum().backward()
        grad = tiny.transformer.embed.W_E.grad.clone()
        tiny.transformer.zero_grad()
        return grad

    plain, spliced = embedding_grad(False), embedding_grad(True)
    assert plain.abs().max() > 0
    torch.testing.assert_close(spliced, plain, atol=1e-6, rtol=1e-4)


def test_features_plus_error_reproduce_activation(tiny: SplicedModel):
    record: dict[str, SiteNodes] = {}
    with tiny.spliced(record=record):
        _, cache = tiny.transformer.run_with_cache(TOKENS)
    # run_with_cache stores each hook point's output after the splice; compare to the plain run
    _, plain = tiny.transformer.run_with_cache(TOKENS)
    for name, nodes in record.items():
        site = tiny.site(name)
        dictionary = tiny.dictionaries[name]
        x = plain[site.hook_name]
        torch.testing.assert_close(
            dictionary.decode(nodes.features) + nodes.error, x, atol=1e-5, rtol=0
        )
        active = (nodes.features > 0).float().sum(-1).mean()
        assert 0 < active < dictionary.d_sae / 2, f"{name}: mean L0 {active} is not sparse"


def test_node_gradients_follow_the_decoder(tiny: SplicedModel):
    """Gradient at the features = W_dec · gradient at the error node (both are copies)."""
    record: dict[str, SiteNodes] = {}
    with tiny.spliced(record=record):
        logits = tiny.transformer(TOKENS)
        for nodes in record.values():
            nodes.features.retain_grad()
            nodes.error.retain_grad()
        logits[:, -1, 7].sum().backward()
    for name, nodes in record.items():
        g = nodes.error.grad
        assert g is not None and g.abs().max() > 0, name
        expected = g @ tiny.dictionaries[name].W_dec.detach().T
        torch.testing.assert_close(nodes.features.grad, expected, atol=1e-6, rtol=1e-5)


def test_edit_patches_a_feature(tiny: SplicedModel):
    """Setting one feature through an edit equals adding its decoder row to the plain model."""
    site = tiny.site("mlp_0")
    dictionary = tiny.dictionaries["mlp_0"]

    def edit(s, f, err):
        if s.name == "mlp_0":
            f = f.clone()
            f[:, -1, 3] += 2.0
        return f, err

    edited = tiny.logits(TOKENS, edit=edit)
    delta = 2.0 * dictionary.W_dec[3].detach()

    def add(x, hook):
        x = x.clone()
        x[:, -1] += delta
        return x

    expected = tiny.transformer.run_with_hooks(TOKENS, fwd_hooks=[(site.hook_name, add)])
    torch.testing.assert_close(edited, expected, atol=1e-5, rtol=0)


def test_width_mismatch_names_site_and_fix(tiny: SplicedModel):
    wrong = Dictionary.identity_of(tiny.cfg.d_model + 1)
    with pytest.raises(ValueError, match=r"site attn_0 has d_in=33 but the site has width 32"):
        SplicedModel(tiny.transformer, {"attn_0": wrong}, name="tiny", family="neox",
                     prepend_bos=False)


def test_nan_weights_are_refused_naming_the_site(tiny: SplicedModel):
    d = tiny.dictionaries["mlp_1"]
    broken = Dictionary(d.W_enc.detach().clone(), d.b_enc.detach(), d.W_dec.detach().clone(),
                        d.b_dec.detach())
    with torch.no_grad():
        broken.W_dec[3, 0] = float("inf")
    with pytest.raises(ValueError, match=r"site mlp_1 has NaN or inf in W_dec"):
        SplicedModel(tiny.transformer, {"mlp_1": broken}, name="tiny", family="neox",
                     prepend_bos=False)


def test_unknown_site(tiny: SplicedModel):
    with pytest.raises(ValueError, match=r"unknown site 'attn_9'.*L in 0\.\.1"):
        tiny.site("attn_9")
    with pytest.raises(ValueError, match="no dictionary at site"):
        with tiny.spliced(sites=["nope"]):
            pass


def test_identity_dictionary_has_zero_error(tiny: SplicedModel):
    neurons = SplicedModel(
        tiny.transformer,
        {s.name: Dictionary.identity_of(tiny.cfg.d_model) for s in tiny.sites},
        name="tiny",
        family="neox",
        prepend_bos=False,
    )
    record: dict[str, SiteNodes] = {}
    logits = neurons.logits(TOKENS, record=record)
    torch.testing.assert_close(logits, tiny.logits(TOKENS, spliced=False), atol=1e-5, rtol=0)
    assert all(n.error.abs().max() == 0 for n in record.values())


def test_hook_z_dictionaries_splice_exactly(tiny: SplicedModel):
    """Dictionaries on attn.hook_z (heads concatenated, before W_O): spliced == plain, and the
    splice sees [b, pos, heads·d_head]."""
    from saes.offline_cache import random_dictionary

    gen = torch.Generator().manual_seed(0)
    _, cache = tiny.transformer.run_with_cache(TOKENS)
    dicts = {}
    for layer in range(tiny.cfg.n_layers):
        z = cache[f"blocks.{layer}.attn.hook_z"].flatten(-2).reshape(-1, 32)
        w = random_dictionary(z, 48, target_l0=6, gen=gen)
        dicts[f"attn_z_{layer}"] = Dictionary(w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"])
    model = SplicedModel(tiny.transformer, dicts, name="tiny-z", family="neox", prepend_bos=False)
    assert [s.name for s in model.node_sites] == ["attn_z_0", "attn_z_1"]
    record: dict[str, SiteNodes] = {}
    with torch.no_grad():
        spliced = model.logits(TOKENS, record=record)
        plain = model.logits(TOKENS, spliced=False)
    torch.testing.assert_close(spliced, plain, atol=1e-5, rtol=1e-5)
    assert record["attn_z_1"].features.shape[-1] == 48
    assert record["attn_z_1"].error.shape == (*TOKENS.shape, 32)
    assert record["attn_z_1"].features.ne(0).any()
