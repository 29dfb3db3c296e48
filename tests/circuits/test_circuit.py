"""The circuit graph: build from scores (and edges), lossless JSON, selection masks, SVG."""

from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET

import networkx as nx
import pytest
import torch

from circuits import Circuit, attribute, attribute_edges, build, render, select_nodes
from circuits.circuit import _node
from circuits.meta import CircuitMeta
from saes import SplicedModel
from tasks import sva
from tasks.pairs import Dataset

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def data(tiny: SplicedModel) -> Dataset:
    return tiny.tokenize(sva.generate("across_pp", 6, seed=4, tokenizer=tiny.tokenizer))


@pytest.fixture(scope="module")
def scores(tiny: SplicedModel, data: Dataset):
    return attribute(tiny, data, "atp", progress=False)


@pytest.fixture(scope="module")
def circuit(tiny, data, scores) -> Circuit:
    return build(scores, top_k=30, model=tiny, data=data)


def svg_nodes(path) -> tuple[list[ET.Element], list[ET.Element]]:
    root = ET.parse(path).getroot()  # raises if the SVG is not XML
    groups = list(root.iter(SVG + "g"))
    nodes = [g for g in groups if "circuit" in g.get("class", "").split()]
    edges = [g for g in groups if g.get("class") == "edge"]
    return nodes, edges


def test_build_keeps_the_selected_nodes_and_the_edges_among_them(circuit, scores, tiny, data):
    selection = select_nodes(scores, top_k=30)
    assert circuit.n_nodes == 30 and "metric" in circuit.graph
    for site, mask in circuit.selection().items():
        assert torch.equal(mask, selection[site].cpu()), site
    edges = attribute_edges(tiny, data, "atp", selection, progress=False)
    expected = {(u, d): w for u, d, w in circuit.graph.edges(data="weight")}
    assert len(expected) == edges.n_edges > 0
    for up, u, down, d, weight in edges.edges():  # every edge, under its nodes' ids
        source = _node(scores, up, u)[0]
        target = "metric" if down == "metric" else _node(scores, down, d)[0]
        assert expected[(source, target)] == weight
    effect = nx.get_node_attributes(circuit.graph, "effect")
    for node, attrs in circuit.graph.nodes(data=True):
        if attrs["role"] != "metric":
            assert effect[node] == float(scores.sites[attrs["site"]][attrs["index"]])
    cut = torch.tensor([abs(w) for w in expected.values()]).median().item()
    thresholded = build(scores, top_k=30, edges=edges, edge_threshold=cut)
    assert 0 < thresholded.n_edges < circuit.n_edges
    assert all(abs(w) >= cut for _, _, w in thresholded.graph.edges(data="weight"))


def test_selection_has_every_site_with_the_scores_shape(scores):
    circuit = build(scores, node_threshold=float("inf"))  # nothing kept
    masks = circuit.selection()
    assert list(masks) == list(scores.sites) and circuit.n_nodes == 0
    for site, mask in masks.items():
        assert mask.shape == scores.sites[site].shape and not mask.any()


def test_json_round_trip_is_lossless(circuit, tmp_path):
    back = Circuit.load(circuit.save(tmp_path / "c.json"))
    assert isinstance(back.meta, CircuitMeta) and back.meta == circuit.meta
    assert list(back.graph.nodes(data=True)) == list(circuit.graph.nodes(data=True))
    assert list(back.graph.edges(data=True)) == list(circuit.graph.edges(data=True))
    for site, mask in circuit.selection().items():
        assert torch.equal(back.selection()[site], mask)


def test_per_position_circuit_round_trips_and_draws_tokens(tiny, data, tmp_path):
    per_pos = attribute(tiny, data, "atp", aggregation="none", progress=False)
    circuit = build(per_pos, top_k=25, model=tiny, data=data)
    assert all(a["position"] is not None for n, a in circuit.graph.nodes(data=True)
               if n != "metric")
    assert circuit.meta.tokens == tuple(tiny.tokenizer.decode([t])
                                        for t in data.clean_tokens[0].tolist())
    back = Circuit.load(circuit.save(tmp_path / "p.json"))
    assert list(back.graph.edges(data=True)) == list(circuit.graph.edges(data=True))
    assert all(back.selection()[s].shape == per_pos.sites[s].shape for s in per_pos.sites)
    nodes, edges = svg_nodes(circuit.to_svg(tmp_path / "p.svg"))
    assert len(nodes) == circuit.graph.number_of_nodes() and len(edges) == circuit.n_edges
    tokens = circuit.to_dot().count('"token:')
    assert tokens == data.seq_len
    summed = build(per_pos, top_k=25, aggregation="sum")
    assert summed.meta.aggregation == "sum"
    assert summed.selection()["embed"].shape == per_pos.sites["embed"].shape[1:]


def test_svg_is_xml_with_one_element_per_node_also_at_150_nodes(tiny, data, scores, tmp_path):
    circuit = build(scores, top_k=150)  # nodes only: no metric node
    nodes, _ = svg_nodes(circuit.to_svg(tmp_path / "big.svg"))
    assert circuit.n_nodes == len(nodes) == 150
    titles = {g.find(SVG + "title").text for g in nodes}
    assert titles == set(circuit.graph.nodes)


def test_without_graphviz_the_dot_source_is_written(circuit, tmp_path, monkeypatch):
    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    with pytest.warns(UserWarning, match="apt-get install graphviz"):
        out = circuit.to_svg(tmp_path / "c.svg")
    assert out.suffix == ".dot" and out.read_text().startswith("digraph")
    assert not (tmp_path / "c.svg").exists()


def test_edges_come_from_the_registry_or_edge_method(scores, tiny, data):
    """atp* has no edge definition: its edges are atp's (METHODS["atp*"].edges); edge_method
    overrides, and one without an edge definition is refused with the choices."""
    unsigned = dataclasses.replace(scores, method="atp*", options={})
    selection = select_nodes(unsigned, top_k=5)
    star = build(unsigned, top_k=5, model=tiny, data=data)
    atp = attribute_edges(tiny, data, "atp", selection, progress=False)
    assert star.meta.edge_method == "atp" and star.meta.method == "atp*"
    assert star.n_edges == atp.n_edges > 0
    relp = build(unsigned, top_k=5, model=tiny, data=data, edge_method="relp")
    expected = attribute_edges(tiny, data, "relp", selection, progress=False)
    assert relp.meta.edge_method == "relp"
    weights = {(u, v): w for u, v, w in relp.graph.edges(data="weight")}
    for up, u, down, d, weight in expected.edges():
        target = "metric" if down == "metric" else _node(unsigned, down, d)[0]
        assert weights[(_node(unsigned, up, u)[0], target)] == weight
    with pytest.raises(ValueError, match="no edge definition; use one of atp, ig, relp"):
        build(unsigned, top_k=5, model=tiny, data=data, edge_method="exact")
    with pytest.raises(ValueError, match="edge_method='atp' needs edges computed here"):
        build(unsigned, top_k=5, edge_method="atp")
    with pytest.raises(ValueError, match="computed with 'atp'"):
        build(unsigned, top_k=5, edges=atp, edge_method="relp")
    assert build(unsigned, top_k=5).n_edges == 0  # nodes only is fine


def test_edges_use_the_options_the_scores_record(tiny, data):
    """relp scores with rules=() (plain AtP backward): their relp edges use () too."""
    plain = attribute(tiny, data, "relp", rules=(), progress=False)
    circuit = build(plain, top_k=8, model=tiny, data=data)
    edges = attribute_edges(tiny, data, "relp", select_nodes(plain, top_k=8), rules=(),
                            progress=False)
    assert plain.options["rules"] == [] and circuit.meta.edge_method == "relp"
    weights = {(u, v): w for u, v, w in circuit.graph.edges(data="weight")}
    assert len(weights) == edges.n_edges > 0
    for up, u, down, d, weight in edges.edges():
        target = "metric" if down == "metric" else _node(plain, down, d)[0]
        assert weights[(_node(plain, up, u)[0], target)] == weight


def test_a_circuit_file_of_the_first_format_still_reads(tmp_path):
    """Written before the renames: "bare" in meta, "kind" on nodes."""
    old = {
        "format": "circuits.circuit/1",
        "meta": {"method": "atp", "model": "toy", "aggregation": "sum", "node_threshold": 0.5,
                 "top_k": None, "edge_threshold": None, "n_examples": 3, "signed": True,
                 "bare": False, "options": {}, "edges": True, "edge_method": "atp",
                 "tokens": None, "sites": ["embed", "resid_0"],
                 "site_shapes": {"embed": [3], "resid_0": [3]}},
        "nodes": [
            {"id": "embed/1", "site": "embed", "layer": -1, "row": 0, "kind": "feature",
             "index": 1, "feature": 1, "position": None, "effect": 0.75},
            {"id": "resid_0/err", "site": "resid_0", "layer": 0, "row": 1, "kind": "error",
             "index": 2, "feature": None, "position": None, "effect": -0.5},
            {"id": "metric", "site": "metric", "layer": None, "row": 2, "kind": "metric",
             "index": None, "feature": None, "position": None, "effect": None},
        ],
        "edges": [{"source": "embed/1", "target": "resid_0/err", "weight": 0.25},
                  {"source": "resid_0/err", "target": "metric", "weight": -0.5}],
    }
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    circuit = Circuit.load(path)
    assert circuit.meta.components_only is False and circuit.meta.sites == ("embed", "resid_0")
    assert dict(circuit.graph.nodes(data="role")) == {
        "embed/1": "feature", "resid_0/err": "error", "metric": "metric"}
    assert circuit.n_nodes == 2 and circuit.n_edges == 2
    masks = circuit.selection()
    assert masks["embed"].tolist() == [False, True, False]
    assert masks["resid_0"].tolist() == [False, False, True]
    again = circuit.to_json()  # written in the current format: the renamed keys, and the
    assert again["format"] == "circuits.circuit/2" and "bare" not in again["meta"]
    assert [k for k in again["meta"]] == [  # dictionaries' origins the old format lacked
        "components_only" if k == "bare" else k for k in old["meta"]] + ["dictionaries", "prompt"]
    assert again["meta"]["dictionaries"] == {}
    assert all("kind" not in n and "role" in n for n in again["nodes"])
    assert Circuit.from_json(again).meta == circuit.meta
    assert "digraph" in circuit.to_dot()


def test_default_threshold_keeps_some_but_not_all_nodes(scores):
    circuit = build(scores)
    total = sum(v.numel() for v in scores.sites.values())
    assert 0 < circuit.n_nodes < total
    assert circuit.meta.node_threshold > 0


def test_edges_of_a_smaller_selection_are_refused(scores, tiny, data):
    edges = attribute_edges(tiny, data, "atp", select_nodes(scores, top_k=5), progress=False)
    with pytest.raises(ValueError, match="have no edges computed"):
        build(scores, top_k=20, edges=edges)


def test_default_threshold_keeps_at_most_500_nodes_where_effects_are_spread(scores):
    """Random scores (the total effect near 0, so 1% of it keeps nearly everything): capped."""
    gen = torch.Generator().manual_seed(0)
    spread = dataclasses.replace(scores, sites={
        k: torch.randn(300, generator=gen) * 1e-3 for k in scores.sites})
    assert sum(v.numel() for v in spread.sites.values()) > 1000
    assert build(spread).n_nodes == 500


def test_nothing_to_attribute_is_refused_not_a_whole_model_circuit(tiny, data):
    """Clean and patch prompts alike: every score is 0; attribute warns, build refuses (the
    default threshold would be 0 and keep every node, a "circuit" with faithfulness 1)."""
    same = dataclasses.replace(data, patch_tokens=data.clean_tokens.clone())
    with pytest.warns(RuntimeWarning, match="every atp score is 0"):
        scores = attribute(tiny, same, "atp", progress=False)
    with pytest.raises(ValueError, match="there is no circuit to build"):
        build(scores)


def test_an_empty_circuit_is_warned_of(scores):
    largest = max(float(v.abs().max()) for v in scores.sites.values())
    with pytest.warns(RuntimeWarning, match="the circuit is empty"):
        empty = build(scores, node_threshold=2 * largest)
    assert empty.n_nodes == 0


def test_features_link_to_neuronpedia_where_their_dictionary_has_an_id(scores, tiny, data):
    """A feature node's "neuronpedia" is its page under its site's Neuronpedia id; error
    nodes and sites without an id get None; "label" starts as None; the prompt is recorded."""
    ids = {"resid_0": {"neuronpedia": "pythia-70m-deduped/0-res-sm"}}
    linked = build(dataclasses.replace(scores, dictionaries=ids), top_k=60, edges=False,
                   model=tiny, data=data)
    pages = {n: a["neuronpedia"] for n, a in linked.graph.nodes(data=True)}
    resid = [n for n, a in linked.graph.nodes(data=True)
             if a["site"] == "resid_0" and a["role"] == "feature"]
    assert resid, "no resid_0 feature in the circuit to link"
    for n in resid:
        feature = linked.graph.nodes[n]["feature"]
        assert pages[n] == f"https://www.neuronpedia.org/pythia-70m-deduped/0-res-sm/{feature}"
    assert all(page is None for n, page in pages.items() if n not in resid)
    assert all(a["label"] is None for _, a in linked.graph.nodes(data=True))
    first = data.clean_tokens[0, : int(data.lengths[0])].tolist()
    assert linked.meta.prompt == tuple(tiny.tokenizer.decode([t]) for t in first)
    assert Circuit.from_json(json.loads(json.dumps(linked.to_json()))).meta == linked.meta
