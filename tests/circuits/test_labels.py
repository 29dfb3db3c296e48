"""Labels of features: read from CSV or JSON, checked against the circuit, shown in its SVG."""

from __future__ import annotations

import dataclasses
import json
import re
import xml.etree.ElementTree as ET

import pytest

from circuits import attribute, build
from circuits.labels import apply_labels, read_labels
from tasks import sva

SVG = "{http://www.w3.org/2000/svg}"
XLINK = "{http://www.w3.org/1999/xlink}"


@pytest.fixture(scope="module")
def circuit(tiny):
    data = tiny.tokenize(sva.generate("across_pp", 6, seed=4, tokenizer=tiny.tokenizer))
    scores = attribute(tiny, data, "atp", progress=False)
    ids = {"resid_0": {"neuronpedia": "pythia-70m-deduped/0-res-sm"}}
    return build(dataclasses.replace(scores, dictionaries=ids), top_k=40, edges=False)


def features_of(circuit, site=None):
    return [(a["site"], a["feature"]) for _, a in circuit.graph.nodes(data=True)
            if a["role"] == "feature" and (site is None or a["site"] == site)]


def test_csv_and_json_labels_read_alike(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text('site,feature,label\nresid_0,3,plural subject\nembed,12," ""the"" "\n')
    js = tmp_path / "labels.json"
    js.write_text(json.dumps([{"site": "resid_0", "feature": 3, "label": "plural subject"},
                              {"site": "embed", "feature": 12, "label": ' "the" '}]))
    a, b = read_labels(csv), read_labels(js)
    assert [(x.site, x.feature, x.label) for x in a] == [(x.site, x.feature, x.label) for x in b]
    assert a[1].label == '"the"' and a[1].row.endswith("labels.csv line 3")


@pytest.mark.parametrize("text, message", [
    ("site,feat,label\nresid_0,3,x\n", "has the header ['site', 'feat', 'label']"),
    ("site,feature,label\nresid_0,three,x\n", "line 2: feature 'three' is not a feature"),
    ("site,feature,label\nresid_0,-1,x\n", "line 2: feature '-1' is not a feature"),
    ("site,feature,label\nresid_0,3,\n", "line 2: the label of resid_0/3 is empty"),
    ("site,feature,label\nresid_0,3,a\nresid_0,3,b\n", "line 3: resid_0/3 is labelled again"),
])
def test_bad_label_rows_are_named(tmp_path, text, message):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)):
        read_labels(path)


def test_rows_the_circuit_cannot_have_are_errors_naming_the_row(circuit, tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("site,feature,label\nresid_0,1,fine\nmlp_7,3,nowhere\n")
    with pytest.raises(ValueError, match=r"line 3: site 'mlp_7' is not one of the circuit's"):
        apply_labels(circuit, read_labels(path))
    path.write_text("site,feature,label\nresid_0,64,too far\n")
    with pytest.raises(ValueError, match=r"line 2: feature 64 is outside the dictionary of "
                                         r"site 'resid_0' \(features 0 to 63\)"):
        apply_labels(circuit, read_labels(path))
    assert all(a["label"] is None for _, a in circuit.graph.nodes(data=True))  # none set


def test_labels_and_links_show_in_the_svg(circuit, tmp_path):
    labelled = type(circuit)(circuit.graph.copy(), circuit.meta)
    (site, feature), (other, second) = features_of(labelled)[:2]
    linked = features_of(labelled, "resid_0")[0]
    path = tmp_path / "labels.csv"
    path.write_text(f"site,feature,label\n{site},{feature},subject number\n"
                    f"{other},{second},a label far too long to fit\n"
                    f"{linked[0]},{linked[1]},linked\n")
    assert apply_labels(labelled, read_labels(path)) == 3
    assert labelled.graph.nodes[f"{site}/{feature}"]["label"] == "subject number"
    labelled.to_svg(tmp_path / "c.svg")
    root = ET.parse(tmp_path / "c.svg").getroot()
    nodes = {g.findtext(SVG + "title"): g for g in root.iter(SVG + "g")
             if "node" in (g.get("class") or "").split()}
    texts = ["".join(t.itertext()) for t in nodes[f"{site}/{feature}"].iter(SVG + "text")]
    assert texts == [str(feature), "subject number"]
    texts = ["".join(t.itertext()) for t in nodes[f"{other}/{second}"].iter(SVG + "text")]
    assert texts == [str(second), "a label far t…"]
    # a feature with a Neuronpedia page is a link to it; one without links nowhere
    def links(node):
        return [a.get(XLINK + "href") for a in nodes[node].iter(SVG + "a")
                if a.get(XLINK + "href")]

    assert links(f"{linked[0]}/{linked[1]}") == [
        f"https://www.neuronpedia.org/pythia-70m-deduped/0-res-sm/{linked[1]}"]
    unlinked = next(n for n, a in labelled.graph.nodes(data=True) if a["neuronpedia"] is None)
    assert links(unlinked) == []
