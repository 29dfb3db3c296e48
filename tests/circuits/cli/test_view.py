"""`circuits view RUN`: the run's circuit.html opened in a browser where there is one, its path
printed where there is none, a page built aside for a circuit without one (the run directory
left as it was), a screenshot through headless Chromium; bad input as one line, exit code 2."""

from __future__ import annotations

import json
import webbrowser
from pathlib import Path

import pytest

from circuits.cli import main
from circuits.cli.browser import find_chromium
from circuits.html import write_html
from tests.circuits.synthetic import features_json, synthetic


@pytest.fixture
def run(tmp_path) -> Path:
    """A run directory with circuit.json, features.json and circuit.html."""
    circuit = synthetic(40, 200, seed=3)
    circuit.save(tmp_path / "circuit.json")
    (tmp_path / "features.json").write_text(json.dumps(features_json(circuit)))
    write_html(tmp_path)
    return tmp_path


@pytest.fixture
def opened(monkeypatch) -> list[str]:
    """The URLs webbrowser.open was asked for (no browser is started)."""
    urls: list[str] = []
    monkeypatch.setattr(webbrowser, "open", lambda url: urls.append(url) or True)
    return urls


def test_view_opens_the_page_where_there_is_a_display(run, opened, monkeypatch, capsys):
    monkeypatch.setenv("DISPLAY", ":0")
    assert main(["view", str(run), "--node", "resid_2/err"]) == 0
    page = run / "circuit.html"
    assert opened == [page.resolve().as_uri() + "#node=resid_2/err"]
    assert capsys.readouterr().out.strip() == str(page)


def test_view_prints_the_path_where_there_is_no_browser(run, opened, monkeypatch, capsys):
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER"):
        monkeypatch.delenv(name, raising=False)
    assert main(["view", str(run)]) == 0
    out = capsys.readouterr()
    assert opened == [] and out.out.strip() == str(run / "circuit.html")
    assert "no browser to open it here" in out.err
    assert main(["view", str(run), "--print"]) == 0 and opened == []


def test_a_circuit_without_its_page_gets_one_built_aside(run, opened, capsys):
    (run / "circuit.html").unlink()
    before = sorted(p.name for p in run.iterdir())
    assert main(["view", str(run / "circuit.json"), "--print"]) == 0
    page = Path(capsys.readouterr().out.strip())
    assert page.name == "circuit.html" and page.parent != run and "ctx0of" in page.read_text()
    assert sorted(p.name for p in run.iterdir()) == before  # the run is never written


@pytest.mark.skipif(find_chromium() is None, reason="Chromium not found on PATH (scripts/"
                    "setup.sh installs Debian's chromium)")
def test_view_screenshot_draws_the_page(run, tmp_path, capsys):
    from PIL import Image

    shot = tmp_path / "shot.png"
    assert main(["view", str(run), "--screenshot", str(shot), "--size", "900x600",
                 "--node", "resid_1/err"]) == 0
    image = Image.open(shot).convert("RGB")
    assert image.size == (900, 600) and len(image.getcolors(1 << 20) or []) > 50
    assert f"wrote {shot}" in capsys.readouterr().out


def test_a_screenshot_without_chromium_says_how_to_get_it(run, monkeypatch, capsys):
    from circuits.cli import view

    monkeypatch.setattr(view, "find_chromium", lambda: None)
    assert main(["view", str(run), "--screenshot", str(run / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs Chromium" in err and "apt-get install chromium" in err
    assert not (run / "x.png").exists()


@pytest.mark.parametrize("argv, message", [
    (lambda t: ["view", str(t / "nowhere.html")], "nothing at"),
    (lambda t: ["view", str(t)], "holds neither circuit.html nor circuit.json"),
    (lambda t: ["view", str(t.parent / "circuit.txt")], "is not a circuit file"),
    (lambda t: ["view", str(t), "--screenshot", str(t / "x.jpg")], "must end in .png"),
    (lambda t: ["view", str(t), "--size", "big"], "is not WxH"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "circuit.txt").write_text("not JSON")
    assert main(argv(empty)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err
