"""The attribution-graph export: valid against Neuronpedia's schema (jsonschema), node ids of
circuit-tracer's conventions (../shared/data/PROVENANCE.md), every node with influence, clerps
from labels and contexts; on the organism, its neuron baseline and a per-position circuit."""

from __future__ import annotations

import dataclasses
import json
import re

import jsonschema
import pytest

from circuits import attribute, build
from circuits.export import SCHEMA, save_attribution_graph, to_attribution_graph
from circuits.features import feature_contexts
from circuits.labels import Label, apply_labels
from saes import load
from saes.corpus import default_corpus
from tasks import sva

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def organism():
    return load("organism", device="cpu")


@pytest.fixture(scope="module")
def train(organism):
    return sva.load("across_pp", n=12, tokenizer=organism.tokenizer)


@pytest.fixture(scope="module")
def summed(organism, train):
    scores = attribute(organism, train, "relp", progress=False)
    return build(scores, top_k=40, model=organism, data=train)


def validate(graph: dict) -> None:
    jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).validate(graph)


def check_conventions(graph: dict, circuit) -> None:
    """Ids as circuit-tracer writes them, agreeing with each node's own fields; every node has
    influence; links join nodes of the graph; one node per circuit node, one link per edge."""
    nodes = graph["nodes"]
    ids = [n["node_id"] for n in nodes]
    assert len(set(ids)) == len(ids) == circuit.graph.number_of_nodes()
    n_sites = len(circuit.meta.sites)
    for n in nodes:
        layer, feature, ctx = n["layer"], n["feature"], n["ctx_idx"]
        assert isinstance(n["influence"], float) and 0 <= n["influence"] <= 1 + 1e-9
        assert 0 <= ctx < len(graph["metadata"]["prompt_tokens"])
        if n["feature_type"] == "cross layer transcoder":
            assert n["node_id"] == f"{layer}_{feature}_{ctx}" and 1 <= int(layer) <= n_sites
        elif n["feature_type"] == "mlp reconstruction error":
            assert n["node_id"] == f"0_{layer}_{ctx}" and feature in (None, -1)
        else:
            assert n["feature_type"] == "logit" and int(layer) == n_sites + 1
            assert n["node_id"] == f"{n_sites + 1}_{feature}_{ctx}"
            assert re.fullmatch(r'Output ".*" \(p=\d\.\d{3}\)', n["clerp"])
    assert sum(n["feature_type"] == "logit" for n in nodes) == 1
    assert len(graph["links"]) == circuit.n_edges > 0
    assert all(link["source"] in ids and link["target"] in ids for link in graph["links"])
    # influence is cumulative: the weakest node's covers everything
    assert max(n["influence"] for n in nodes) == pytest.approx(1.0)


def test_the_organism_circuit_exports_valid_with_labels_and_contexts(organism, summed, tmp_path):
    labelled = type(summed)(summed.graph.copy(), summed.meta)
    features = [(a["site"], a["feature"]) for _, a in labelled.graph.nodes(data=True)
                if a["role"] == "feature"]
    apply_labels(labelled, [Label(*features[0], "plural subject", "test")])
    contexts = feature_contexts(organism, labelled, default_corpus(organism, n_rows=100), k=2)
    graph = to_attribution_graph(labelled, contexts, slug="demo")
    validate(graph)
    check_conventions(graph, labelled)
    assert graph["metadata"]["slug"] == "demo"
    assert graph["metadata"]["prompt_tokens"] == list(labelled.meta.prompt)
    by_id = {n["node_id"]: n for n in graph["nodes"]}
    layer = {s: i + 1 for i, s in enumerate(labelled.meta.sites)}
    site, feature = features[0]
    last = len(labelled.meta.prompt) - 1
    assert by_id[f"{layer[site]}_{feature}_{last}"]["clerp"] == "plural subject"
    site, feature = features[1]
    strongest = contexts.get(site, feature).contexts[0]
    assert by_id[f"{layer[site]}_{feature}_{last}"]["clerp"] == strongest.text
    assert "«" in strongest.text
    # the most influential node is the one with the largest |effect|: influence = its share
    top = max((a for _, a in labelled.graph.nodes(data=True) if a["role"] != "metric"),
              key=lambda a: abs(a["effect"]))
    total = sum(abs(a["effect"]) for _, a in labelled.graph.nodes(data=True)
                if a["role"] != "metric")
    first = min((n for n in graph["nodes"] if n["feature_type"] != "logit"),
                key=lambda n: n["influence"])
    assert first["influence"] == pytest.approx(abs(top["effect"]) / total)
    path = save_attribution_graph(labelled, tmp_path / "graph.json", contexts)
    validate(json.loads(path.read_text()))


def test_the_neuron_baseline_circuit_exports_valid(train):
    neurons = load("organism", dictionaries="neurons", device="cpu")
    scores = attribute(neurons, train, "relp", progress=False)
    circuit = build(scores, top_k=30, model=neurons, data=train)
    graph = to_attribution_graph(circuit)
    validate(graph)
    check_conventions(graph, circuit)
    assert graph["metadata"]["scan"] == "organism+neurons"
    assert all("vis_link" not in n for n in graph["nodes"])  # no Neuronpedia ids: no links


def test_a_per_position_circuit_exports_valid_one_column_per_position(organism, train):
    scores = attribute(organism, train, "relp", aggregation="none", progress=False)
    circuit = build(scores, top_k=40, model=organism, data=train)
    graph = to_attribution_graph(circuit)
    validate(graph)
    check_conventions(graph, circuit)
    assert graph["metadata"]["prompt_tokens"] == list(circuit.meta.tokens)
    positions = {n["ctx_idx"] for n in graph["nodes"] if n["feature_type"] != "logit"}
    expected = {a["position"] for _, a in circuit.graph.nodes(data=True) if a["role"] != "metric"}
    assert positions == expected and len(positions) > 1


def test_feature_pages_become_vis_links_and_the_scan_their_model(summed):
    ids = {s: {"neuronpedia": f"pythia-70m-deduped/{i}-res-sm"}
           for i, s in enumerate(summed.meta.sites)}
    graph_nodes = summed.graph.copy()
    for _, a in graph_nodes.nodes(data=True):
        if a["role"] == "feature":
            a["neuronpedia"] = f"https://www.neuronpedia.org/x/{a['feature']}"
    linked = type(summed)(graph_nodes, dataclasses.replace(summed.meta, dictionaries=ids))
    graph = to_attribution_graph(linked)
    validate(graph)
    assert graph["metadata"]["scan"] == "pythia-70m-deduped"
    features = [n for n in graph["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert all(n["vis_link"] == f"https://www.neuronpedia.org/x/{n['feature']}"
               for n in features)


def test_an_invalid_graph_fails_the_schema(summed):
    """Not vacuous: the validator rejects a node without its required fields."""
    graph = to_attribution_graph(summed)
    del graph["nodes"][0]["ctx_idx"]
    with pytest.raises(jsonschema.ValidationError):
        validate(graph)
