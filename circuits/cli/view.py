"""``circuits view RUN``: open a run's interactive view (circuit.html) in a browser, or print its
path where there is none; ``--screenshot`` draws it in headless Chromium instead.

RUN is a run directory, its circuit.html, or a circuit.json. A circuit without its page (a run
of an older version, a circuit.json saved from Python) gets one built in a temporary folder: a
run directory is never written here, since its run.json lists the files its run wrote.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import webbrowser
from pathlib import Path
from urllib.parse import quote

from circuits.cli.browser import INSTALL, Browser, BrowserError, find_chromium
from circuits.cli.common import UsageError, read_circuit
from circuits.html import read_features, save_html


def add_parser(sub: argparse._SubParsersAction) -> None:
    v = sub.add_parser("view", help="open the interactive view (circuit.html) of a run")
    v.add_argument("run", type=Path, help="a run directory, its circuit.html or a circuit.json")
    v.add_argument("--node", default=None,
                   help="select this node on opening, e.g. resid_2/31 (its paths highlighted)")
    v.add_argument("--print", dest="print_only", action="store_true",
                   help="print the page's path and open nothing")
    v.add_argument("--screenshot", type=Path, default=None,
                   help="write a PNG of the page drawn by headless Chromium, open nothing")
    v.add_argument("--size", default="1400x900", help="--screenshot's window, WxH (1400x900)")
    v.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    size = _size(args.size)
    if args.screenshot is not None:
        _check_png(args.screenshot)
        if find_chromium() is None:
            raise UsageError(f"--screenshot needs Chromium, and none is on PATH; {INSTALL}")
    page = page_of(args.run)
    url = page.resolve().as_uri() + ("" if args.node is None else "#node=" + quote(args.node))
    if args.screenshot is not None:
        try:
            with Browser(width=size[0], height=size[1]) as browser:
                browser.open(url)
                browser.wait_for("window.circuitView && window.circuitView.ready")
                browser.screenshot(args.screenshot)
        except BrowserError as err:
            raise UsageError(f"could not draw {page} in Chromium: {err}") from err
        print(f"wrote {args.screenshot}")
        return
    print(page)
    if args.print_only:
        return
    if not _can_open() or not webbrowser.open(url):
        print("no browser to open it here; open the file above in one (it needs no server)",
              file=sys.stderr)


def page_of(run: Path) -> Path:
    """The circuit.html to show for RUN, built in a temporary folder if RUN has none."""
    if not run.exists():
        raise UsageError(f"nothing at {run}; pass a run directory, its circuit.html or a "
                         "circuit.json")
    if run.is_dir():
        if (run / "circuit.html").is_file():
            return run / "circuit.html"
        source = run / "circuit.json"
        if not source.is_file():
            raise UsageError(f"{run} holds neither circuit.html nor circuit.json; pass the "
                             "directory `circuits discover` wrote")
    elif run.suffix == ".html":
        return run
    else:
        source = run
    circuit = read_circuit(source)
    features = source.parent / "features.json"
    page = Path(tempfile.mkdtemp(prefix="circuits-view-")) / "circuit.html"
    save_html(circuit, page, read_features(features) if features.is_file() else None)
    print(f"{source.parent} has no circuit.html; built one in {page.parent}", file=sys.stderr)
    return page


def _can_open() -> bool:
    """Whether webbrowser may find a graphical browser: on Linux and BSD it needs a display
    (without one it falls back to text browsers, which run no JavaScript) or $BROWSER."""
    if sys.platform in ("darwin", "win32") or os.environ.get("BROWSER"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--size {text!r} is not WxH, e.g. 1400x900") from None
    if not (200 <= width <= 8000 and 200 <= height <= 8000):
        raise UsageError(f"--size {text!r}: each side must be 200 to 8000 pixels")
    return width, height


def _check_png(path: Path) -> None:
    if path.suffix.lower() != ".png":
        raise UsageError(f"--screenshot {path} must end in .png")
    if not path.parent.is_dir():
        raise UsageError(f"cannot write {path}: the directory {path.parent} does not exist")
