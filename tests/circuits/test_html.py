"""circuit.html, the interactive view: a self-contained page (nothing fetched), laid out like the
SVG, and, in a real headless Chromium (skipped without one), one element per node, the panel
after a click, the sliders, the search box, a 500-node 10k-edge circuit, a screenshot."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import pytest

from circuits import render
from circuits.circuit import Circuit
from circuits.html import read_features, save_html, to_html, view_data, write_html
from tests.circuits.synthetic import features_json, synthetic, synthetic_json

EVIL = '</script><img src=x onerror="document.title=1">'  # a label that must stay text


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Circuit, dict, Path]:
    """60 nodes, 400 edges, contexts for every feature, a label and a link on one node."""
    data = synthetic_json(60, 400, seed=2)
    first = next(n for n in data["nodes"] if n["role"] == "feature")
    first.update(label=f"plural subject {EVIL}",
                 neuronpedia="https://www.neuronpedia.org/pythia-70m-deduped/0-res-sm/1")
    circuit = Circuit.from_json(data)
    features = features_json(circuit)
    path = save_html(circuit, tmp_path_factory.mktemp("html") / "circuit.html", features)
    return circuit, features, path


def open_page(browser, path: Path, fragment: str = "") -> float:
    """Open the page and wait until it has drawn; returns the seconds that took."""
    started = time.perf_counter()
    browser.open(path.resolve().as_uri() + fragment)
    browser.wait_for("window.circuitView && window.circuitView.ready")
    seconds = time.perf_counter() - started
    errors = [e["params"] for e in browser.events if e["method"] == "Runtime.exceptionThrown"]
    assert not errors, errors
    return seconds


def click_node(browser, node: str) -> float:
    """A real mouse click on a node's element; returns the seconds until the panel shows it."""
    where = browser.evaluate(f"""(() => {{
        const g = document.querySelector('#graph .node[data-id="{node}"]');
        g.scrollIntoView({{block: "center", inline: "center"}});
        const r = g.getBoundingClientRect();
        return [r.x + r.width / 2, r.y + r.height / 2]; }})()""")
    started = time.perf_counter()
    browser.click(*where)
    browser.wait_for(f"document.querySelector('#panel .node-id')?.textContent === '{node}'")
    return time.perf_counter() - started


def counts(browser) -> tuple[int, int]:
    """(nodes, edges) the page says it shows, after the next frame is drawn."""
    browser.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    shown = browser.evaluate("({...document.getElementById('counts').dataset})")
    return int(shown["nodes"]), int(shown["edges"])


def set_slider(browser, slider: str, value: int) -> None:
    browser.evaluate(f"""(() => {{ const s = document.getElementById("{slider}");
        s.value = {value}; s.dispatchEvent(new Event("input")); }})()""")


# ---- the page, without a browser ------------------------------------------------------------
def test_the_page_fetches_nothing(small):
    page = small[2].read_text()
    assert not re.search(r"<(script|img|iframe|link)[^>]*\s(src|href)\s*=", page, re.I)
    assert not re.search(r"@import|url\(", page), "CSS must not load anything"
    assert "<link" not in page.lower() and page.count("<script") == 2  # data and code, inline
    assert EVIL not in page  # the label's "</script>" cannot end the data's script element


def test_view_data_has_every_node_at_render_s_place_and_edges_by_strength(small):
    circuit, features, _ = small
    data = view_data(circuit, features)
    assert [n["id"] for n in data["nodes"]] == list(circuit.graph.nodes)
    assert len(data["nodes"]) == circuit.n_nodes + 1 and data["nodes"][-1]["role"] == "metric"
    pinned = render.layout(circuit.graph, circuit.meta)
    by_x = sorted(circuit.graph.nodes, key=lambda n: (-pinned.xy[n][1], pinned.xy[n][0]))
    assert by_x == [n["id"] for n in sorted(data["nodes"], key=lambda n: (n["y"], n["x"]))]
    weights = [abs(w) for _, _, w in data["edges"]]
    assert weights == sorted(weights, reverse=True) and len(weights) == circuit.n_edges
    ids = [n["id"] for n in data["nodes"]]
    assert {(ids[u], ids[v]) for u, v, _ in data["edges"]} == set(circuit.graph.edges)
    rows = [r["label"] for r in data["rows"]]
    assert rows == [s for s in circuit.meta.sites if s in rows] + ["metric"]
    assert rows[0] == "embed" and data["rows"][0]["y"] > data["rows"][-1]["y"]  # embed below
    feature_nodes = [n for n in data["nodes"] if n["role"] == "feature"]
    assert all(n["key"] in data["features"] for n in feature_nodes)
    labelled = next(n for n in data["nodes"] if n["label"])
    assert labelled["neuronpedia"].startswith("https://www.neuronpedia.org/")


def test_per_position_nodes_take_the_contexts_of_their_feature_and_a_token_column():
    circuit = synthetic(40, 150, per_position=True, seed=1)
    data = view_data(circuit, features_json(circuit))
    node = next(n for n in data["nodes"] if n["role"] == "feature")
    assert "@" in node["id"] and node["key"] == node["id"].split("@")[0]
    assert node["token"] == circuit.meta.tokens[node["position"]]
    assert [c["label"] for c in data["columns"]] == list(circuit.meta.tokens)
    assert all(c["y"] > max(n["y"] for n in data["nodes"]) for c in data["columns"])


def test_write_html_reads_the_run_s_circuit_and_features(tmp_path, small):
    circuit, features, _ = small
    circuit.save(tmp_path / "circuit.json")
    assert "ctx0of" not in write_html(tmp_path).read_text()  # no features.json: no contexts
    (tmp_path / "features.json").write_text(json.dumps(features))
    page = write_html(tmp_path)
    assert page == tmp_path / "circuit.html" and "ctx0of" in page.read_text()


@pytest.mark.parametrize("change, message", [
    (lambda f: f.update(format="circuits.features/0"), "format is 'circuits.features/0'"),
    (lambda f: f["features"].update({"resid_0/1@2": {"contexts": []}}), "carries a position"),
    (lambda f: next(iter(f["features"].values()))["contexts"][0].update(mark=99),
     "context 0 of feature"),
])
def test_a_broken_features_file_is_named_with_its_problem(tmp_path, small, change, message):
    features = json.loads(json.dumps(small[1]))
    change(features)
    path = tmp_path / "features.json"
    path.write_text(json.dumps(features))
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        read_features(path)
    assert str(path) in str(err.value)
    with pytest.raises(ValueError, match=re.escape(message)):
        to_html(small[0], features)


# ---- in Chromium ------------------------------------------------------------------------------
def test_one_element_per_node_and_the_contexts_after_a_click(browser, small):
    circuit, _, path = small
    open_page(browser, path)
    assert browser.evaluate("document.querySelectorAll('#graph .node').length") \
        == circuit.n_nodes + 1  # and the metric
    ids = browser.evaluate("[...document.querySelectorAll('#graph .node')]"
                           ".map(g => g.dataset.id)")
    assert ids == list(circuit.graph.nodes)
    node = next(n for n, a in circuit.graph.nodes(data=True) if a.get("label"))
    click_node(browser, node)
    panel = browser.evaluate("document.getElementById('panel').innerText")
    feature = circuit.graph.nodes[node]["feature"]
    assert all(f"ctx{j}of{feature}" in panel for j in range(3)), panel
    assert EVIL in panel and browser.evaluate("document.title") != "1"  # shown as text
    assert "strongest outgoing edges" in panel and "score" in panel
    marked = browser.evaluate("[...document.querySelectorAll('#panel mark')]"
                              ".map(m => m.textContent)")
    assert marked == [f" ctx{j}of{feature}" for j in range(3)]
    link = browser.evaluate("document.querySelector('#panel a[href^=\"https:\"]').href")
    assert link == circuit.graph.nodes[node]["neuronpedia"]


def test_a_click_highlights_the_paths_through_the_node(browser, small):
    circuit, _, path = small
    open_page(browser, path)
    graph = circuit.graph
    node = max((n for n in graph if n != "metric"),
               key=lambda n: min(graph.in_degree(n), graph.out_degree(n)))
    click_node(browser, node)
    dim = set(browser.evaluate("[...document.querySelectorAll('#graph .node.dim')]"
                               ".map(g => g.dataset.id)"))
    selected = browser.evaluate("document.querySelector('#graph .node.selected').dataset.id")
    import networkx as nx

    through = nx.ancestors(graph, node) | nx.descendants(graph, node) | {node}
    assert selected == node and dim == set(graph) - through and dim
    fragment = browser.evaluate("location.hash")
    browser.evaluate("document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape'}))")
    assert browser.evaluate("document.querySelectorAll('#graph .node.dim').length") == 0
    browser.open("about:blank")
    open_page(browser, path, fragment)  # the address of a selection selects it on opening
    assert browser.evaluate("document.querySelector('#panel .node-id').textContent") == node
    assert browser.evaluate("document.querySelectorAll('#graph .node.dim').length") == len(dim)
    other = next(n for n in graph if n not in (node, "metric"))
    browser.evaluate(f"location.hash = '#node={other}'")  # and when the address changes
    browser.wait_for(f"document.querySelector('#panel .node-id').textContent === '{other}'")


def test_the_sliders_change_what_is_shown(browser, small):
    circuit, _, path = small
    open_page(browser, path)
    assert counts(browser) == (circuit.n_nodes, circuit.n_edges)
    set_slider(browser, "edge-threshold", 500)
    nodes, edges = counts(browser)
    weights = sorted(abs(w) for _, _, w in circuit.graph.edges(data="weight"))
    cut = float(browser.evaluate("window.circuitView.state.edgeMin"))
    assert nodes == circuit.n_nodes and 0 < edges < circuit.n_edges
    assert edges == sum(w >= cut for w in weights)
    set_slider(browser, "node-threshold", 700)
    fewer, fewer_edges = counts(browser)
    hidden = browser.evaluate("document.querySelectorAll('#graph .node.hidden').length")
    assert 0 < fewer < circuit.n_nodes and hidden == circuit.n_nodes - fewer
    assert fewer_edges <= edges
    set_slider(browser, "node-threshold", 0)
    set_slider(browser, "edge-threshold", 0)
    assert counts(browser) == (circuit.n_nodes, circuit.n_edges)


def test_the_search_box_finds_a_feature(browser, small):
    circuit, _, path = small
    open_page(browser, path)
    node = [n for n, a in circuit.graph.nodes(data=True) if a["role"] == "feature"][7]
    browser.evaluate(f"""(() => {{ const s = document.getElementById("search");
        s.value = "{node}"; s.dispatchEvent(new Event("input"));
        s.dispatchEvent(new KeyboardEvent("keydown", {{key: "Enter"}})); }})()""")
    found = browser.evaluate("[...document.querySelectorAll('#graph .node.match')]"
                             ".map(g => g.dataset.id)")
    assert found == [node]
    assert browser.evaluate("document.querySelector('#panel .node-id').textContent") == node
    browser.evaluate("""(() => { const s = document.getElementById("search");
        s.value = "plural subject"; s.dispatchEvent(new Event("input")); })()""")
    labelled = [n for n, a in circuit.graph.nodes(data=True) if a.get("label")]
    assert browser.evaluate("[...document.querySelectorAll('#graph .node.match')]"
                            ".map(g => g.dataset.id)") == labelled


def test_a_screenshot_is_not_blank_and_nothing_is_fetched(browser, small, tmp_path):
    from PIL import Image

    circuit, _, path = small
    open_page(browser, path)
    node = next(n for n, a in circuit.graph.nodes(data=True) if a.get("label"))
    click_node(browser, node)
    shot = browser.screenshot(tmp_path / "view.png")
    image = Image.open(io.BytesIO(shot.read_bytes())).convert("RGB")
    assert image.size == (1400, 900)
    colours = image.getcolors(maxcolors=1 << 20) or []
    white = sum(count for count, rgb in colours if min(rgb) >= 250)
    assert len(colours) > 100 and white < 0.9 * image.width * image.height
    urls = [e["params"]["request"]["url"] for e in browser.events
            if e["method"] == "Network.requestWillBeSent"]
    assert urls and all(u.startswith(("file:", "data:", "about:")) for u in urls), urls


def test_a_500_node_10k_edge_circuit_loads_and_answers_a_click(browser, tmp_path, capsys):
    circuit = synthetic(500, 10_000, seed=0)
    path = save_html(circuit, tmp_path / "big.html", features_json(circuit, every=2))
    load = open_page(browser, path)
    assert browser.evaluate("document.querySelectorAll('#graph .node').length") == 501
    nodes, edges = counts(browser)
    assert nodes == 500 and 1000 < edges < 3000  # the ~2000 strongest edges drawn on opening
    graph = circuit.graph
    node = max((n for n in graph if n != "metric"), key=graph.degree)
    click = click_node(browser, node)
    started = time.perf_counter()
    set_slider(browser, "edge-threshold", 0)
    assert counts(browser) == (500, 10_000)
    slide = time.perf_counter() - started
    again = click_node(browser, next(n for n in graph if n != node and n != "metric"))
    inside = browser.evaluate("[window.circuitView.initMs, window.circuitView.state.selectMs,"
                              " window.circuitView.state.drawMs]")
    with capsys.disabled():
        print(f"\n500 nodes, 10k edges, seconds through the protocol: page load {load:.2f}, "
              f"click {click:.2f}, slider to all 10k edges {slide:.2f}, click {again:.2f}; "
              "in the page, ms: script {:.0f}, last click {:.1f}, last drawing {:.1f}"
              .format(*inside))
    assert max(load, click, slide, again) < 5.0  # generous: responsive means well under 1 s
