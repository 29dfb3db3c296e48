"""Reading a run end to end on the organism: discover's feature contexts and export, and the
features, label and export subcommands that amend or read a run."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET

import jsonschema
import pytest

from circuits.circuit import Circuit
from circuits.cli import main
from circuits.export import SCHEMA
from circuits.features import FeatureContexts, circuit_features, key

SMALL = ["--task", "within_rc", "--n", "12", "--eval-n", "8", "--batch-size", "12", "--quiet"]
SVG = "{http://www.w3.org/2000/svg}"

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: the organism runs on 1 thread


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reading") / "run"
    assert main(["discover", *SMALL, "--contexts", "3", "--out", str(out)]) == 0
    return out


@pytest.fixture
def copy(run, tmp_path):
    """A copy of the run to amend."""
    return shutil.copytree(run, tmp_path / "run")


def valid(path) -> dict:
    graph = json.loads(path.read_text())
    jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).validate(graph)
    return graph


def circuit_feature_keys(circuit: Circuit) -> list[str]:
    return [key(s, i) for s, idx in circuit_features(circuit).items() for i in idx]


def test_discover_writes_the_features_contexts_and_the_export(run):
    circuit = Circuit.load(run / "circuit.json")
    features = FeatureContexts.load(run / "features.json")
    assert features.corpus.name.startswith("organism grammar text") and features.k == 3
    assert list(features.features) == circuit_feature_keys(circuit)
    assert all(0 <= f.density <= 1 and len(f.contexts) <= 3 for f in features.features.values())
    assert any(f.contexts for f in features.features.values())
    graph = valid(run / "attribution-graph.json")
    assert len(graph["nodes"]) == circuit.graph.number_of_nodes()
    assert graph["metadata"]["slug"] == "run"
    record = json.loads((run / "run.json").read_text())
    assert {"features.json", "attribution-graph.json"} <= set(record["files"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["features"].startswith(f"contexts of {len(features.features)} features")


def test_features_with_a_corpus_file_amend_the_run(copy):
    corpus = copy.parent / "corpus.txt"
    corpus.write_text("The keys to the cabinet are here.\n\nThe athlete that the managers "
                      "like is tall.\n\nThe men who help the dog are kind.\n")
    files = json.loads((copy / "run.json").read_text())["files"]
    assert main(["features", str(copy), "--corpus", str(corpus), "--contexts", "2",
                 "--quiet"]) == 0
    features = FeatureContexts.load(copy / "features.json")
    assert features.corpus.name == "corpus.txt" and features.corpus.n_documents == 3
    assert features.k == 2
    record = json.loads((copy / "run.json").read_text())
    assert record["command"] == "discover" and record["files"] == files
    assert [a["command"] for a in record["amended"]] == ["features"]
    # the export's clerps now quote the new contexts
    graph = valid(copy / "attribution-graph.json")
    clerps = {n["clerp"] for n in graph["nodes"]}
    strongest = [f.contexts[0].text for f in features.features.values() if f.contexts]
    assert strongest and set(strongest) <= clerps
    assert not [p for p in copy.parent.iterdir() if ".partial-" in p.name]


def test_label_amends_circuit_svg_and_export_and_a_bad_row_changes_nothing(copy, capsys):
    circuit = Circuit.load(copy / "circuit.json")
    (site, feature), (other, second) = [
        k.split("/") for k in circuit_feature_keys(circuit)[:2]]
    labels = copy.parent / "labels.csv"
    labels.write_text(f"site,feature,label\n{site},{feature},subject number\n"
                      f"{other},{second},plural\n")
    assert main(["label", str(copy), str(labels)]) == 0
    assert "labelled 2 node(s)" in capsys.readouterr().out
    labelled = Circuit.load(copy / "circuit.json")
    assert labelled.graph.nodes[f"{site}/{feature}"]["label"] == "subject number"
    root = ET.parse(copy / "circuit.svg").getroot()
    texts = {"".join(t.itertext()) for t in root.iter(SVG + "text")}
    assert {"subject number", "plural"} <= texts
    graph = valid(copy / "attribution-graph.json")
    assert {"subject number", "plural"} <= {n["clerp"] for n in graph["nodes"]}
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    labels.write_text("site,feature,label\nresid_1,9999,too far\n")
    assert main(["label", str(copy), str(labels)]) == 2
    assert "line 2: feature 9999 is outside" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before


def test_export_writes_a_valid_graph(run, tmp_path):
    out = tmp_path / "graph.json"
    assert main(["export", str(run), "--format", "neuronpedia", "--out", str(out),
                 "--slug", "agreement"]) == 0
    graph = valid(out)
    assert graph["metadata"]["slug"] == "agreement"
    assert graph["nodes"] == valid(run / "attribution-graph.json")["nodes"]  # same circuit
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph.json"]  # nothing left behind


def test_amending_refuses_a_run_holding_files_it_did_not_write(copy, capsys):
    (copy / "NOTES.md").write_text("mine")
    labels = copy.parent / "labels.csv"
    labels.write_text("site,feature,label\n")
    assert main(["label", str(copy), str(labels)]) == 2
    assert "holds files its run did not write (NOTES.md)" in capsys.readouterr().err
    assert (copy / "NOTES.md").read_text() == "mine"


def test_discover_with_labels_and_no_features(run, tmp_path):
    circuit = Circuit.load(run / "circuit.json")
    site, feature = circuit_feature_keys(circuit)[0].split("/")
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps([{"site": site, "feature": int(feature), "label": "subj"}]))
    out = tmp_path / "again"
    assert main(["discover", *SMALL, "--no-features", "--labels", str(labels),
                 "--out", str(out)]) == 0
    again = Circuit.load(out / "circuit.json")
    assert again.graph.nodes[f"{site}/{feature}"]["label"] == "subj"
    assert not (out / "features.json").exists()
    assert json.loads((out / "summary.json").read_text())["features"] == (
        "skipped (--no-features)")
    assert "subj" in {n["clerp"] for n in valid(out / "attribution-graph.json")["nodes"]}


def test_pythia_features_link_to_neuronpedia_from_circuit_svg_and_export(pythia_cache, tmp_path,
                                                                         capsys):
    """The offline Pythia stand-in (sae_lens' directory gives the Marks dictionaries their
    Neuronpedia ids): circuit.json and the SVG link each feature to its page, the export
    carries them; `features` reloads the circuit's own dictionaries (by release/sae_id) and
    needs --corpus, as Pythia's training text is not here."""
    out = tmp_path / "pythia"
    argv = ["discover", "--model", "pythia-70m-deduped", "--sites", "resid_1,mlp_2", "--task",
            "simple", "--n", "4", "--eval-n", "4", "--top-k", "12", "--no-edges", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["features"].startswith("skipped: no corpus is known")
    circuit = Circuit.load(out / "circuit.json")
    ids = {"resid_1": "pythia-70m-deduped/1-res-sm", "mlp_2": "pythia-70m-deduped/2-mlp-sm"}
    features = [(n, a) for n, a in circuit.graph.nodes(data=True) if a["role"] == "feature"]
    assert features
    for _, a in features:
        assert a["neuronpedia"] == f"https://www.neuronpedia.org/{ids[a['site']]}/{a['feature']}"
    root = ET.parse(out / "circuit.svg").getroot()
    hrefs = {a.get("{http://www.w3.org/1999/xlink}href") for a in root.iter(SVG + "a")}
    assert {a["neuronpedia"] for _, a in features} <= hrefs
    graph = valid(out / "attribution-graph.json")
    assert graph["metadata"]["scan"] == "pythia-70m-deduped"
    assert {n.get("vis_link") for n in graph["nodes"]} >= {a["neuronpedia"] for _, a in features}
    capsys.readouterr()
    assert main(["features", str(out), "--quiet"]) == 2
    assert "pass --corpus FILE" in capsys.readouterr().err
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "The keys to the cabinet are on the table."}\n'
                      '{"text": "The parents near the school say the children are happy."}\n')
    assert main(["features", str(out), "--corpus", str(corpus), "--quiet"]) == 0
    found = FeatureContexts.load(out / "features.json")
    assert list(found.features) == circuit_feature_keys(circuit)
    assert found.corpus.n_documents == 2
