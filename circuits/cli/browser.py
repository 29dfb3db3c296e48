"""Headless Chromium driven over its DevTools protocol, standard library only: for
`circuits view --screenshot` and the HTML view's tests.

Chromium is started with ``--remote-debugging-pipe``: it reads protocol messages (JSON, each
ended by a NUL byte) on file descriptor 3 and writes its answers and events on 4, so there is
no port to open and no client package to install. One page is attached (``Target.attachToTarget``
with ``flatten``); `call` sends a command to it and waits for its answer, keeping the events
that arrive meanwhile in ``events``. No browser is ever downloaded: `find_chromium` looks for
one installed (Debian's ``chromium``; ``$CHROMIUM`` names another).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
INSTALL = "install Chromium (Debian/Ubuntu: `apt-get install chromium`) or set $CHROMIUM"


class BrowserError(RuntimeError):
    """Chromium failed to start, answered with an error, or did not answer in time."""


_TRAMPOLINE = """import os, sys
a, b = int(sys.argv[1]), int(sys.argv[2])
os.dup2(a, 3); os.dup2(b, 4); os.close(a); os.close(b)
os.execv(sys.argv[3], sys.argv[3:])"""


def _above(fd: int, low: int) -> int:
    """``fd`` moved to the lowest free descriptor >= low."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, low)
    os.close(fd)
    return moved


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable: $CHROMIUM, else the first of NAMES on PATH."""
    given = os.environ.get("CHROMIUM")
    if given:
        return shutil.which(given)
    return next((path for path in map(shutil.which, NAMES) if path), None)


class Browser:
    """One headless page; use as a context manager (the browser is closed at its end)."""

    def __init__(self, executable: str | None = None, *, width: int = 1400, height: int = 900,
                 timeout: float = 30.0) -> None:
        executable = executable or find_chromium()
        if executable is None:
            raise BrowserError(f"no Chromium found on PATH; {INSTALL}")
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._profile = tempfile.mkdtemp(prefix="circuits-chromium-")
        self._log = open(Path(self._profile) / "stderr.log", "wb")  # noqa: SIM115
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()
        # the child's ends above 9, so that putting them at 3 and 4 overwrites neither
        to_browser, from_browser = (_above(fd, 10) for fd in (to_browser, from_browser))
        flags = [
            "--headless", "--remote-debugging-pipe", "--disable-gpu", "--no-first-run",
            "--no-default-browser-check", "--disable-extensions", "--disable-dev-shm-usage",
            "--hide-scrollbars", "--mute-audio", f"--user-data-dir={self._profile}",
            f"--window-size={width},{height}", "about:blank",
        ]
        # without its sandbox: Chromium refuses it as root, and containers often lack what it
        # needs; this browser only ever opens pages this toolkit wrote
        flags.insert(0, "--no-sandbox")
        # a Python trampoline puts the two pipe ends at descriptors 3 and 4, then becomes
        # Chromium (dash, /bin/sh on Debian, cannot redirect descriptors above 9)
        self._process = subprocess.Popen(
            [sys.executable, "-c", _TRAMPOLINE, str(to_browser), str(from_browser), executable,
             *flags], stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
            pass_fds=(to_browser, from_browser))
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._closed = False
        self._next_id = 0
        self._session: str | None = None
        try:
            targets = self.call("Target.getTargets")["targetInfos"]
            page = next(t for t in targets if t["type"] == "page")
            self._session = self.call("Target.attachToTarget", targetId=page["targetId"],
                                      flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Network"):
                self.call(f"{domain}.enable")
            self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                      deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the protocol ------------------------------------------------------------------------
    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send a command (to the page once attached) and return its result."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self._session is not None:
            message["sessionId"] = self._session
        try:
            os.write(self._write, json.dumps(message).encode() + b"\0")
        except OSError as err:
            raise BrowserError(f"Chromium is not listening ({err}); {self._stderr()}") from err
        answer = self._wait(lambda m: m.get("id") == self._next_id, method)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error'].get('message', answer['error'])}")
        return answer.get("result", {})

    def wait_event(self, name: str) -> dict[str, Any]:
        """The first event ``name`` not yet taken from ``events``, waiting for it if needed."""
        for k, event in enumerate(self.events):
            if event.get("method") == name:
                return self.events.pop(k)
        event = self._wait(lambda m: m.get("method") == name, name)
        self.events.remove(event)
        return event

    def _wait(self, done, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if done(message):
                    return message
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"no answer to {what} within {self.timeout:g} s")
            ready, _, _ = select.select([self._read], [], [], left)
            if ready:
                chunk = os.read(self._read, 1 << 20)
                if not chunk:
                    raise BrowserError(f"Chromium exited while waiting for {what}; "
                                       f"{self._stderr()}")
                self._buffer += chunk

    def _stderr(self) -> str:
        self._log.flush()
        lines = (Path(self._profile) / "stderr.log").read_text(errors="replace").splitlines()
        useful = [line for line in lines if "dbus" not in line][-5:]  # no system bus: noise
        return "its last words: " + (" | ".join(useful) or "none")

    # ---- what a test or a screenshot needs ---------------------------------------------------
    def open(self, url: str) -> None:
        """Navigate the page and wait for its load event (none comes for a change of the
        fragment only, which loads nothing)."""
        self.events.clear()
        answer = self.call("Page.navigate", url=url)
        if answer.get("errorText"):
            raise BrowserError(f"cannot open {url}: {answer['errorText']}")
        if answer.get("loaderId"):  # absent for a navigation within the same document
            self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (a promise is awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"JavaScript error: {text}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float | None = None) -> Any:
        """Poll ``expression`` until it is truthy; returns its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"{expression} stayed falsy for {timeout or self.timeout} s")
            time.sleep(0.05)

    def click(self, x: float, y: float) -> None:
        """A real left click at page coordinates (x, y) of the viewport."""
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                      clickCount=0 if kind == "mouseMoved" else 1)

    def screenshot(self, path: str | Path) -> Path:
        """The viewport as a PNG at ``path``."""
        path = Path(path)
        png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        path.write_bytes(png)
        return path

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._process.poll() is None:
            try:
                self._session = None
                os.write(self._write, json.dumps({"id": 0, "method": "Browser.close"}).encode()
                         + b"\0")
                self._process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()
        for fd in (self._read, self._write):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()
        shutil.rmtree(self._profile, ignore_errors=True)
