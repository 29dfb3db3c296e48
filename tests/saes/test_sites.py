from saes.sites import all_sites, spliced_upstream, upstream


def names(sites):
    return [s.name for s in sites]


def test_sites_in_forward_order(tiny):
    assert names(all_sites(tiny.cfg)) == [
        "embed",
        "attn_0",
        "mlp_0",
        "resid_0",
        "attn_1",
        "mlp_1",
        "resid_1",
    ]
    assert tiny.site("resid_1").hook_name == "blocks.1.hook_resid_post"
    assert tiny.site("embed").hook_name == "blocks.0.hook_resid_pre"


def test_upstream_read_from_config(neox_tokenizer):
    from tests.conftest import tiny_neox

    parallel = tiny_neox(neox_tokenizer, parallel=True)
    sequential = tiny_neox(neox_tokenizer, parallel=False)
    site = {s.name: s for s in all_sites(parallel.cfg)}
    assert names(upstream(parallel.cfg, site["mlp_1"])) == ["resid_0"]
    assert names(upstream(sequential.cfg, site["mlp_1"])) == ["resid_0", "attn_1"]
    assert names(upstream(parallel.cfg, site["attn_0"])) == ["attn_z_0"]  # hook_z, then W_O
    assert names(upstream(parallel.cfg, parallel_z(parallel, "attn_z_0"))) == ["embed"]
    assert names(upstream(parallel.cfg, site["resid_1"])) == ["resid_0", "attn_1", "mlp_1"]
    assert upstream(parallel.cfg, site["embed"]) == []


def parallel_z(model, name):
    return {s.name: s for s in all_sites(model.cfg, with_z=True)}[name]


def test_attn_z_sites_sit_before_attn_and_pass_through_when_not_spliced(tiny):
    with_z = names(all_sites(tiny.cfg, with_z=True))
    assert with_z[:5] == ["embed", "attn_z_0", "attn_0", "mlp_0", "resid_0"]
    z = tiny.site("attn_z_1")
    assert z.hook_name == "blocks.1.attn.hook_z" and z.width(tiny.cfg) == 4 * 8
    sfc = {s.name for s in all_sites(tiny.cfg)}  # SFC's four kinds, no z
    assert names(spliced_upstream(tiny.cfg, tiny.site("attn_1"), sfc)) == ["resid_0"]
    assert names(spliced_upstream(tiny.cfg, tiny.site("attn_1"), sfc | {"attn_z_1"})) == [
        "attn_z_1"]
    assert names(spliced_upstream(tiny.cfg, tiny.site("resid_1"), {"attn_z_1", "embed"})) == [
        "embed", "attn_z_1"]
