"""Edge attribution: identities it must satisfy, a one-backward-per-node reference through the
spliced model's own graph, and exact two-node patching on the model organism."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuits import METHODS, EdgeScores, attribute, attribute_edges, select_nodes
from circuits.edges import METRIC, site_graph
from circuits.lrp_rules import rule_hooks, rules_for
from saes import Dictionary, SplicedModel
from saes.sites import all_sites, resid_pre
from saes.splice import SiteNodes
from tasks import logit_diff, sva
from tasks.pairs import Dataset


@pytest.fixture(scope="module")
def data(tiny: SplicedModel) -> Dataset:
    return tiny.tokenize(sva.generate("across_pp", 5, seed=2, tokenizer=tiny.tokenizer))


def everything(model: SplicedModel, seq: int | None = None) -> dict[str, torch.Tensor]:
    """Select every node of every site ([n_nodes], or [seq, n_nodes] per position)."""
    out = {}
    for site in site_graph(model).sites:
        size = model.dictionaries[site.name].d_sae + 1
        out[site.name] = torch.ones((size,) if seq is None else (seq, size), dtype=torch.bool)
    return out


# ---- a model in which every site is linear in its upstream sites ------------------------------
def linear_model(tokenizer, parallel: bool = True, with_z: bool = False) -> SplicedModel:
    """No norms, attention with constant (uniform causal) patterns, ReLU MLPs whose
    pre-activations are always positive, and linear dictionaries (JumpReLU at -inf): every
    feature and error node is affine in the upstream sites, and the metric in the last site."""
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=50304, n_ctx=32,
        act_fn="relu", normalization_type=None, parallel_attn_mlp=parallel,
        positional_embedding_type="standard", default_prepend_bos=False, seed=3,
        initializer_range=0.2,
    )
    model = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="right")
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_Q.zero_()
            block.attn.W_K.zero_()
            block.mlp.b_in.fill_(100.0)
    gen = torch.Generator().manual_seed(3)
    dicts = {}
    for site in all_sites(cfg, with_z=with_z):  # hook_z: 2 heads × 8 = 16 wide too
        d_sae = 24  # more features than dimensions, and random: a non-zero error node
        dicts[site.name] = Dictionary(
            torch.randn(16, d_sae, generator=gen) * 0.3, torch.randn(d_sae, generator=gen),
            torch.randn(d_sae, 16, generator=gen) * 0.3, torch.randn(16, generator=gen),
            threshold=torch.full((d_sae,), -torch.inf),
        )
    return SplicedModel(model, dicts, name="linear", family="neox", prepend_bos=False)


@pytest.mark.parametrize("method", ["atp", "relp", "ig"])
@pytest.mark.parametrize(("aggregation", "parallel"), [("sum", True), ("none", True),
                                                       ("sum", False)])
def test_incoming_edges_sum_to_the_node_score_where_sites_are_linear(
    neox_tokenizer, method, aggregation, parallel
):
    """Parallel blocks (Pythia) and sequential ones (GPT-2, Llama: attn_L feeds mlp_L)."""
    model = linear_model(neox_tokenizer, parallel=parallel)
    data = model.tokenize(sva.generate("simple", 4, seed=0, tokenizer=model.tokenizer))
    assert data.uniform_length
    scores = attribute(model, data, method, aggregation=aggregation, progress=False,
                       steps=3 if method == "ig" else None)
    seq = data.seq_len if aggregation == "none" else None
    edges = attribute_edges(model, data, method, everything(model, seq), progress=False,
                            steps=3 if method == "ig" else None)
    incoming: dict[str, torch.Tensor] = {}
    for (_, down), w in edges.weights.items():
        incoming[down] = incoming.get(down, 0) + w.sum(1)  # [n_down]
    assert set(incoming) == {s for s in scores.sites if s != "embed"}
    for site, total in incoming.items():
        node = scores.sites[site].flatten()[edges.nodes[site]]
        assert node.abs().max() > 1e-2, site
        torch.testing.assert_close(total, node, atol=2e-4, rtol=2e-3)
    for site, w in edges.metric.items():  # last site -> metric: the node score itself
        torch.testing.assert_close(w, scores.sites[site].flatten()[edges.nodes[site]],
                                   atol=2e-4, rtol=2e-3)


def test_the_identity_fails_where_sites_are_not_linear(tiny: SplicedModel, data: Dataset):
    """Same check on a model with LayerNorm, GELU and ReLU dictionaries: it can fail."""
    scores = attribute(tiny, data, "atp", progress=False)
    edges = attribute_edges(tiny, data, "atp", everything(tiny), progress=False)
    total = sum(w.sum(1) for (_, down), w in edges.weights.items() if down == "attn_1")
    node = scores.sites["attn_1"][edges.nodes["attn_1"]]
    assert total.abs().max() > 1e-3 and node.abs().max() > 1e-3  # both are real numbers
    # and they differ by far more than the tolerance the linear model meets
    assert (total - node).abs().max() > 20 * (2e-4 + 2e-3 * node.abs().max())


# ---- one backward per downstream node, through the spliced model's own graph ------------------
def reference_edges(
    model: SplicedModel, data: Dataset, selection: dict[str, torch.Tensor], hooks=(),
    site_grads: dict[str, torch.Tensor] | None = None,
) -> dict[tuple[str, str], torch.Tensor]:
    """w(u -> d) = Σ Δu · ∂(g_d · d)/∂u by autograd through the splice: the downstream node is
    the spliced site's feature (through its encoder) or error term, every site between u and d
    held fixed (its nodes detached), one backward per downstream node. g_d: the gradient of the
    metric at the node, or from ``site_grads`` (site -> [b, pos, d] at the site) if given."""
    tl = model.transformer
    clean, patch = data.clean_tokens, data.patch_tokens
    nodes_patch: dict[str, SiteNodes] = {}
    with torch.no_grad():
        model.logits(patch, record=nodes_patch)
    nodes: dict[str, SiteNodes] = {}
    with tl.hooks(fwd_hooks=list(hooks)), model.spliced(record=nodes):
        value = logit_diff(tl(clean), data).sum()
    grads = torch.autograd.grad(
        value, [t for n in nodes.values() for t in (n.features, n.error)])
    g = {name: grads[2 * i: 2 * i + 2] for i, name in enumerate(nodes)}  # (g_f, g_err)
    if site_grads is not None:
        g = {name: (x @ model.dictionaries[name].W_dec.detach().T, x)
             for name, x in site_grads.items()}
    plan = site_graph(model)
    order = [s.name for s in plan.sites]
    out = {}
    for down in plan.sites:
        for up in plan.upstream[down.name]:
            between = order[order.index(up.name) + 1: order.index(down.name)]

            def cut(site, f, err, between=between):
                if site.name in between:
                    return f.detach(), err.detach()
                return f, err

            rec: dict[str, SiteNodes] = {}
            with tl.hooks(fwd_hooks=list(hooks)), model.spliced(record=rec, edit=cut):
                tl(clean)
            u, d = rec[up.name], rec[down.name]
            du_f = nodes_patch[up.name].features - u.features.detach()  # [b, pos, d_sae]
            du_e = nodes_patch[up.name].error - u.error.detach()  # [b, pos, d]
            rows = []
            for i in selection[down.name].nonzero()[:, 0].tolist():
                if i == d.features.shape[-1]:
                    phi = (g[down.name][1] * d.error).sum()
                else:
                    phi = (g[down.name][0][..., i] * d.features[..., i]).sum()
                gf, ge = torch.autograd.grad(phi, [u.features, u.error], retain_graph=True,
                                             allow_unused=True)
                gf = torch.zeros_like(du_f) if gf is None else gf
                ge = torch.zeros_like(du_e) if ge is None else ge
                w = torch.cat([(du_f * gf).sum((0, 1)), (du_e * ge).sum()[None]])
                rows.append(w[selection[up.name]] / len(data))
            out[(up.name, down.name)] = torch.stack(rows)
    return out


def some_nodes(model: SplicedModel, data: Dataset, method: str) -> dict[str, torch.Tensor]:
    scores = attribute(model, data, method, progress=False)
    return select_nodes(scores, top_k=40)


@pytest.mark.parametrize("method", ["atp", "relp"])
@pytest.mark.parametrize("which", ["tiny", "sequential"])
def test_batched_edges_equal_one_backward_per_node(which, method, tiny, sequential, data):
    model = tiny if which == "tiny" else sequential
    selection = some_nodes(model, data, method)
    edges = attribute_edges(model, data, method, selection, batch_size=3, progress=False)
    hooks = rule_hooks(model.transformer, rules_for(model, None)) if method == "relp" else ()
    expected = reference_edges(model, data, selection, hooks)
    assert set(edges.weights) == set(expected)
    assert sum(int(w.count_nonzero()) for w in edges.weights.values()) > 50
    for pair, w in expected.items():
        torch.testing.assert_close(edges.weights[pair], w, atol=1e-5, rtol=1e-3, msg=str(pair))


def test_ig_edges_equal_the_reference_with_the_integrated_gradient(tiny, data):
    """ig edges: SFC's definition, the downstream gradient ḡ averaged over D's own clean->patch
    path, the Jacobian at the clean run."""
    from circuits.forward import Targets, entry, forward
    from circuits.methods.ig import site_gradient

    selection = some_nodes(tiny, data, "ig")
    edges = attribute_edges(tiny, data, "ig", selection, steps=4, progress=False)
    sites = site_graph(tiny).sites
    entries = {s.name: entry(tiny, s) for s in sites}
    names = [s.hook_name for s in sites] + [e.resid for e in entries.values()]
    _, clean = forward(tiny, data.clean_tokens, Targets.of(data), record=names)
    _, patch = forward(tiny, data.patch_tokens, Targets.of(data), record=names)
    targets = Targets.of(data)
    grads = {s.name: site_gradient(tiny, targets, entries[s.name], clean[entries[s.name].resid],
                                   clean[s.hook_name], patch[s.hook_name], 4) for s in sites}
    expected = reference_edges(tiny, data, selection, site_grads=grads)
    plain = attribute_edges(tiny, data, "atp", selection, progress=False)
    for pair, w in expected.items():
        torch.testing.assert_close(edges.weights[pair], w, atol=1e-5, rtol=1e-3, msg=str(pair))
    assert any(not torch.allclose(edges.weights[p], plain.weights[p]) for p in expected)


def test_edges_into_a_bare_resid_site_sum_to_its_node_score(tiny, data):
    """resid_L = resid_{L-1} + attn_L + mlp_L exactly, so on a bare model (components as nodes)
    the incoming edges of resid_L sum to its atp score on any model, linear or not."""
    bare = SplicedModel(tiny.transformer, {}, name="tiny-bare", family="neox", prepend_bos=False)
    scores = attribute(bare, data, "atp", progress=False)
    selection = {s: torch.ones(1, dtype=torch.bool) for s in scores.sites}
    edges = attribute_edges(bare, data, "atp", selection, progress=False)
    for layer in range(tiny.cfg.n_layers):
        down = f"resid_{layer}"
        total = sum(w[:, 0] for (_, d), w in edges.weights.items() if d == down)
        torch.testing.assert_close(total, scores.sites[down], atol=1e-6, rtol=1e-5)
    assert edges.weights[("embed", "attn_0")].abs().item() > 0


def test_relp_with_no_rules_is_atp(tiny: SplicedModel, data: Dataset):
    selection = some_nodes(tiny, data, "atp")
    a = attribute_edges(tiny, data, "atp", selection, progress=False)
    r = attribute_edges(tiny, data, "relp", selection, rules=(), progress=False)
    r_rules = attribute_edges(tiny, data, "relp", selection, progress=False)
    for pair in a.weights:
        torch.testing.assert_close(r.weights[pair], a.weights[pair])
    assert any(not torch.allclose(r_rules.weights[p], a.weights[p]) for p in a.weights)


def test_per_position_edges_sum_to_position_summed_edges(tiny: SplicedModel, data: Dataset):
    """Edges per position pair, summed over both positions, are the position-summed edges;
    edges into resid and mlp sites only connect equal positions."""
    data = tiny.tokenize(sva.generate("across_pp", 4, seed=0, tokenizer=tiny.tokenizer))
    seq = data.seq_len  # the subject (the token that differs) is not the last one
    per_pos = attribute_edges(tiny, data, "atp", everything(tiny, seq), progress=False)
    summed = attribute_edges(tiny, data, "atp", everything(tiny), progress=False)
    for (up, down), w in per_pos.weights.items():
        n_up, n_down = per_pos.shapes[up][-1], per_pos.shapes[down][-1]
        full = w.view(seq, n_down, seq, n_up)  # [p_down, node_down, p_up, node_up]
        torch.testing.assert_close(full.sum((0, 2)), summed.weights[(up, down)],
                                   atol=1e-5, rtol=1e-4)
        if not down.startswith("attn"):
            off = ~torch.eye(seq, dtype=torch.bool)
            assert full.permute(0, 2, 1, 3)[off].abs().max() == 0, (up, down)
        else:
            later = torch.triu(torch.ones(seq, seq, dtype=torch.bool), 1)  # p_up > p_down
            assert full.permute(0, 2, 1, 3)[later].abs().max() == 0
            assert full.permute(0, 2, 1, 3)[~torch.eye(seq, dtype=torch.bool)].abs().max() > 0


def test_edge_scores_round_trip(tiny: SplicedModel, data: Dataset, tmp_path):
    edges = attribute_edges(tiny, data, "atp", some_nodes(tiny, data, "atp"), progress=False)
    back = EdgeScores.load(edges.save(tmp_path / "edges.safetensors"))
    assert list(back.edges()) == list(edges.edges()) and back.n_edges == edges.n_edges > 0
    assert back.shapes == edges.shapes and back.method == "atp"
    assert any(down == METRIC for _, _, down, _, _ in back.edges())


def test_edges_of_a_method_come_from_the_method_its_record_names(tiny: SplicedModel,
                                                                  data: Dataset):
    """exact and atp* have no edge definition of their own: their edges are atp's (one policy,
    METHODS[m].edges), and EdgeScores says so; a mask of the wrong shape names the site."""
    selection = some_nodes(tiny, data, "atp")
    atp = attribute_edges(tiny, data, "atp", selection, progress=False)
    for method in ("exact", "atp*"):
        assert METHODS[method].edges == "atp"
        edges = attribute_edges(tiny, data, method, selection, progress=False)
        assert edges.method == "atp" and edges.n_edges == atp.n_edges > 0
        assert all(torch.equal(edges.weights[k], w) for k, w in atp.weights.items())
    assert METHODS["column"].edges == METHODS["relp*"].edges == "relp"
    with pytest.raises(ValueError, match=r"selection\['embed'\] has shape \(3,\)"):
        attribute_edges(tiny, data, "atp", {"embed": torch.ones(3, dtype=torch.bool)})


# ---- exact two-node patching on the model organism --------------------------------------------
def two_node_effect(model, data, up, u, down, d, alpha: float) -> float:
    """Patch node u by alpha·Δu, let it move node d through the direct path only (the other
    sites of the block held clean), patch d alone by that move, and read the metric's change
    (all paths from d to the metric), averaged over examples."""
    from circuits.forward import Targets, entry, forward, valid_positions
    from circuits.nodes import site_delta, sparse_decode

    targets = Targets.of(data)
    names = [s.hook_name for s in model.sites] + [resid_pre(n) for n in range(model.cfg.n_layers)]
    base, clean = forward(model, data.clean_tokens, targets, record=names)
    _, patch = forward(model, data.patch_tokens, targets, record=names)
    U, D = model.site(up), model.site(down)
    delta = site_delta(model, U, clean[U.hook_name], patch[U.hook_name],
                       valid_positions(data, data.seq_len))
    if u == delta.n_nodes - 1:
        move = delta.d_error  # [b, pos, d]
    else:
        k = delta.feature_index[:, 2] == u
        move = sparse_decode(model.dictionaries[up].W_dec, delta.feature_index[k],
                             delta.d_features[k],
                             delta.d_error.shape)
    x = clean[D.hook_name]
    if D.kind == "resid":
        x_moved = x + alpha * move  # resid_L = resid_{L-1} + attn_L + mlp_L
    else:
        out = {}

        def keep(act, hook):
            out["x"] = act
            return act

        with torch.no_grad(), model.transformer.hooks(fwd_hooks=[(D.hook_name, keep)]):
            model.transformer.blocks[D.layer](clean[resid_pre(D.layer)] + alpha * move)
        x_moved = out["x"]
    change = node_change(model.dictionaries[down], d, x, x_moved)
    with torch.no_grad():
        enter = entry(model, D)
        value, _ = forward(model, clean[enter.resid] + change, targets, start_at_layer=enter.start)
    return float((value - base).mean())


def assert_edges_are_derivatives(effect, model, data, edges, *, floor: float) -> None:
    """Each edge (up, u, down, d, w) is the central difference of two-node patching ``effect``
    at ±1% of Δu, within 2% (atol 1e-4); the difference itself is no smaller than ``floor``."""
    alpha = 1e-2
    for up, u, down, d, w in edges:
        exact = (effect(model, data, up, u, down, d, alpha)
                 - effect(model, data, up, u, down, d, -alpha)) / (2 * alpha)
        assert abs(exact) > floor
        assert abs(w - exact) <= 0.02 * abs(exact) + 1e-4, (up, u, down, d, w, exact)


@torch.no_grad()
def node_change(dic: Dictionary, d: int, x: torch.Tensor, x_moved: torch.Tensor) -> torch.Tensor:
    """How node d of a site moves the site's activation when the site goes from x to x_moved:
    the error node's move, or feature d's move times its decoder row."""
    if d == dic.d_sae:  # error node
        return (x_moved - dic.decode(dic.encode(x_moved))) - (x - dic.decode(dic.encode(x)))
    return (dic.encode(x_moved)[..., d] - dic.encode(x)[..., d])[..., None] * dic.W_dec[d]


def test_organism_edges_agree_with_two_node_patching():
    """The atp edge is the derivative of two-node patching: for the strongest edge of each kind
    (resid→attn/mlp/resid, attn/mlp→resid; into features and into error nodes), the central
    difference of two-node patching at ±1% of Δu agrees with it to 2% (atol 1e-4). (Full
    patching, alpha=1, differs by up to the linearisation error of AtP; see the README note.)"""
    from saes import load

    model = load("organism")
    data = model.tokenize(sva.load("across_pp", n=40))
    scores = attribute(model, data, "atp", progress=False)
    edges = attribute_edges(model, data, "atp", select_nodes(scores, top_k=40), progress=False)
    best = {}
    for up, u, down, d, w in edges.edges():
        if down == METRIC:
            continue
        key = (up.split("_")[0], down.split("_")[0], d == edges.shapes[down][-1] - 1)
        if key not in best or abs(w) > abs(best[key][-1]):
            best[key] = (up, u, down, d, w)
    assert len(best) >= 6
    assert_edges_are_derivatives(two_node_effect, model, data, best.values(), floor=1e-3)


# ---- a subset of the sites spliced ------------------------------------------------------------
def subset(model: SplicedModel, names: list[str]) -> SplicedModel:
    """The same model with dictionaries at ``names`` only."""
    return SplicedModel(model.transformer, {n: model.dictionaries[n] for n in names},
                        name=f"{model.name}[{','.join(names)}]", family=model.family,
                        prepend_bos=model.prepend_bos)


def test_the_site_graph_of_a_subset_spans_the_unspliced_sites(neox_tokenizer):
    model = subset(linear_model(neox_tokenizer), ["embed", "mlp_0", "resid_1"])
    graph = site_graph(model)
    assert not graph.complete
    assert {k: [u.name for u in v] for k, v in graph.upstream.items()} == {
        "embed": [], "mlp_0": ["embed"], "resid_1": ["embed", "mlp_0"]}
    assert [s.name for s in graph.last] == ["resid_1"]
    attn_only = site_graph(subset(linear_model(neox_tokenizer), ["embed", "attn_1"]))
    assert [s.name for s in attn_only.last] == ["embed", "attn_1"]  # embed reaches it past attn_1


@pytest.mark.parametrize("method", ["atp", "relp", "ig"])
@pytest.mark.parametrize("names", [["embed", "mlp_0", "resid_1"], ["embed", "attn_1"],
                                   ["embed", "attn_z_0", "attn_0", "attn_z_1", "resid_1"]])
def test_incoming_edges_sum_to_the_node_score_across_unspliced_blocks(neox_tokenizer, method,
                                                                       names):
    """With only some sites spliced, an edge spans the unspliced blocks between its sites; on a
    model linear between sites a node's incoming edges still sum to its score, and the metric
    edges of the sites the metric reads sum to the change of the metric (embed is a cut)."""
    model = subset(linear_model(neox_tokenizer, with_z=True), names)
    data = model.tokenize(sva.generate("simple", 4, seed=0, tokenizer=model.tokenizer))
    steps = 3 if method == "ig" else None
    scores = attribute(model, data, method, progress=False, steps=steps)
    edges = attribute_edges(model, data, method, everything(model), progress=False, steps=steps)
    incoming: dict[str, torch.Tensor] = {}
    for (_, down), w in edges.weights.items():
        incoming[down] = incoming.get(down, 0) + w.sum(1)
    assert set(incoming) == set(names) - {"embed"}
    for site, total in incoming.items():
        node = scores.sites[site][edges.nodes[site]]
        assert node.abs().max() > 1e-2, site
        torch.testing.assert_close(total, node, atol=2e-4, rtol=2e-3)
    metric_total = sum(w.sum() for w in edges.metric.values())
    torch.testing.assert_close(metric_total, scores.sites["embed"].sum(), atol=2e-4, rtol=2e-3)


def take_every_upstream_site(monkeypatch, direction: str) -> None:
    """Across unspliced blocks each upstream site's edges are computed forward (JVPs of its
    moves) or backward (in its downstream sites' VJPs), whichever circuits.edges thinks
    cheaper; "forward"/"backward" force one way for every site, "chosen" leaves the choice."""
    import circuits.edges

    if direction != "chosen":
        monkeypatch.setattr(circuits.edges, "_forward_sites", lambda sites, pairs, *_: (
            {up for up, _ in pairs} if direction == "forward" else set()))


@pytest.mark.parametrize("cached", [True, False])
@pytest.mark.parametrize("direction", ["backward", "forward", "chosen"])
@pytest.mark.parametrize("method", ["atp", "relp"])
def test_edges_across_unspliced_blocks_equal_one_backward_per_node(
    sequential, data, method, direction, cached, monkeypatch
):
    """Across unspliced blocks (sequential blocks: mlp_0 reaches attn_1 through resid_0, embed
    everything through attn_0), edges from packed VJPs, from packed JVPs, or the chosen mix,
    equal the straightforward reference: one backward per downstream node through the spliced
    model, the node sites between held; several batches, the last one smaller. cached: the cut
    forward covers the positions from the first that moves, the unchanged prefix a key-value
    cache (else every position, from the embedding)."""
    import circuits.edges

    model = subset(sequential, ["embed", "mlp_0", "attn_1", "resid_1"])
    assert not site_graph(model).complete
    take_every_upstream_site(monkeypatch, direction)
    starts: list[int] = []
    first_move = circuits.edges._first_move
    monkeypatch.setattr(circuits.edges, "_first_move", lambda *args: starts.append(
        first_move(*args) if cached else 0) or starts[-1])
    selection = some_nodes(model, data, method)
    edges = attribute_edges(model, data, method, selection, batch_size=3, progress=False)
    assert len(starts) == 2 and (min(starts) >= 1 if cached else set(starts) == {0})  # batches
    hooks = rule_hooks(model.transformer, rules_for(model, None)) if method == "relp" else ()
    expected = reference_edges(model, data, selection, hooks)
    assert set(edges.weights) == set(expected) >= {("embed", "attn_1"), ("mlp_0", "resid_1")}
    assert sum(int(w.count_nonzero()) for w in edges.weights.values()) > 50
    for pair, w in expected.items():
        torch.testing.assert_close(edges.weights[pair], w, rtol=1e-5,
                                   atol=1e-5 * float(w.abs().max()), msg=str(pair))


@pytest.mark.parametrize("direction", ["backward", "forward"])
def test_per_position_edges_across_unspliced_blocks_sum_to_position_summed_edges(
    tiny, direction, monkeypatch
):
    model = subset(tiny, ["embed", "mlp_0", "attn_1", "resid_1"])
    data = model.tokenize(sva.generate("across_pp", 4, seed=0, tokenizer=model.tokenizer))
    seq = data.seq_len
    take_every_upstream_site(monkeypatch, direction)
    per_pos = attribute_edges(model, data, "relp", everything(model, seq), progress=False)
    summed = attribute_edges(model, data, "relp", everything(model), progress=False)
    for (up, down), w in per_pos.weights.items():
        full = w.view(seq, per_pos.shapes[down][-1], seq, per_pos.shapes[up][-1])
        torch.testing.assert_close(full.sum((0, 2)), summed.weights[(up, down)],
                                   atol=1e-5, rtol=1e-4)
        later = torch.triu(torch.ones(seq, seq, dtype=torch.bool), 1)  # p_up > p_down
        assert full.permute(0, 2, 1, 3)[later].abs().max() == 0, (up, down)


def two_node_effect_of_a_subset(model, data, up, u, down, d, alpha: float) -> float:
    """Two-node patching with some sites spliced: move node u by alpha·Δu, every other spliced
    site held at its clean value, and read how node d moves; patch d alone by that move (all
    paths from d to the metric), mean change of the metric."""
    from circuits.forward import Targets, forward, valid_positions
    from circuits.nodes import site_delta, sparse_decode

    targets = Targets.of(data)
    names = [s.hook_name for s in model.node_sites]
    base, clean = forward(model, data.clean_tokens, targets, record=names)
    _, patch = forward(model, data.patch_tokens, targets, record=names)
    U, D = model.site(up), model.site(down)
    delta = site_delta(model, U, clean[U.hook_name], patch[U.hook_name],
                       valid_positions(data, data.seq_len))
    k = delta.feature_index[:, 2] == u
    move = (delta.d_error if u == delta.error_index else sparse_decode(
        model.dictionaries[up].W_dec, delta.feature_index[k], delta.d_features[k],
        delta.d_error.shape))
    arrived = {}

    def moved_or_clean(x, hook):
        if hook.name == D.hook_name:
            arrived["x"] = x
            return x
        return clean[hook.name] + (alpha * move if hook.name == U.hook_name else 0)

    forward(model, data.clean_tokens, targets, hooks=[(n, moved_or_clean) for n in names])
    x, x_moved = clean[D.hook_name], arrived["x"]
    change = node_change(model.dictionaries[down], d, x, x_moved)
    value, _ = forward(model, data.clean_tokens, targets,
                       hooks=[(D.hook_name, lambda act, hook: act + change)])
    return float((value - base).mean())


def test_organism_subset_edges_agree_with_two_node_patching():
    """The organism with half its sites spliced: the strongest atp edge of each pair of site
    kinds is the derivative of two-node patching across the unspliced sites between (central
    difference at ±1% of Δu, within 2%)."""
    from saes import load

    names = ["embed", "attn_0", "resid_1", "mlp_2", "attn_3", "resid_3"]
    model = load("organism", sites=names)
    data = model.tokenize(sva.load("across_pp", n=40))
    scores = attribute(model, data, "atp", progress=False)
    edges = attribute_edges(model, data, "atp", select_nodes(scores, top_k=100), progress=False)
    best = {}
    for up, u, down, d, w in edges.edges():
        if down != METRIC and ((up, down) not in best or abs(w) > abs(best[(up, down)][-1])):
            best[(up, down)] = (up, u, down, d, w)
    assert {("embed", "attn_0"), ("embed", "resid_1"), ("resid_1", "mlp_2"),
            ("resid_1", "resid_3")} <= set(best)  # edges across unspliced blocks among them
    assert_edges_are_derivatives(two_node_effect_of_a_subset, model, data, best.values(),
                                 floor=1e-4)


def test_attention_dictionaries_on_hook_z_score_like_exact_patching(neox_tokenizer):
    """attn_z nodes (hook_z, before W_O; error node in z space): on the linear model atp is
    exact patching and ig equals atp; ablation keeps full = 1, empty = 0; the methods that
    recompute attention from the residual stream refuse them."""
    from circuits.select import full_selection
    from evaluation import faithfulness

    names = ["embed", "attn_z_0", "attn_z_1", "resid_1"]
    model = subset(linear_model(neox_tokenizer, with_z=True), names)
    data = model.tokenize(sva.generate("simple", 6, seed=1, tokenizer=model.tokenizer))
    exact = attribute(model, data, "exact", aggregation="none", progress=False)
    for method in ("atp", "ig"):
        got = attribute(model, data, method, aggregation="none", progress=False,
                        steps=4 if method == "ig" else None)
        for site in ("attn_z_0", "attn_z_1"):
            assert exact.sites[site].abs().max() > 1e-2
            torch.testing.assert_close(got.sites[site], exact.sites[site], atol=1e-4, rtol=1e-3)
    assert exact.error("attn_z_1").abs().max() > 0  # the error node, in z space, moves
    assert faithfulness(model, full_selection(model), data).value == pytest.approx(1, abs=1e-4)
    assert faithfulness(model, full_selection(model, False), data).value == pytest.approx(0)
    for method in ("atp*", "relp*", "column"):
        with pytest.raises(ValueError, match=r"cannot score nodes inside attention"):
            attribute(model, data, method, progress=False)
