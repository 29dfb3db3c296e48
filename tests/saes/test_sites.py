from saes.sites import all_sites, upstream


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
    assert names(upstream(parallel.cfg, site["attn_0"])) == ["embed"]
    assert names(upstream(parallel.cfg, site["resid_1"])) == ["resid_0", "attn_1", "mlp_1"]
    assert upstream(parallel.cfg, site["embed"]) == []
