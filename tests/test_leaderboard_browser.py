"""The leaderboard page in a real browser: headless Chromium loads ``leaderboard.html``;
every image decodes, every task's table is there, and the console stays clean.

    python -m pytest -n 0 -q tests/test_leaderboard_browser.py

Needs Debian's ``chromium`` (``apt-get install -y chromium``; ``.ci/run`` installs it
when missing; set ``CHROMIUM`` to use another binary) and the ``websocket-client``
package (the ``test`` extra). Without either the tests skip, saying which is missing.
The browser is driven through its DevTools protocol: console messages, uncaught
exceptions and the browser's own error log are collected as events, and image
loading is read from the page's DOM after every image has been decoded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from evals import leaderboard as L
from tests.test_leaderboard import METRIC_META, _make_run, _two_stage_run

websocket = pytest.importorskip(
    "websocket", reason="websocket-client is not installed (pip install -e '.[test]')")

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or set CHROMIUM)",
                allow_module_level=True)

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--mute-audio", "--remote-debugging-port=0")
TIMEOUT_S = 60.0

# Runs in the page once it has loaded: waits for every image to decode (a broken one
# rejects), then reports the images, the tables and the headings.
PAGE_PROBE = """
(async () => {
  const imgs = Array.from(document.images);
  const decoded = await Promise.all(imgs.map(i => i.decode().then(() => true, () => false)));
  return JSON.stringify({
    images: imgs.map((i, k) => ({alt: i.alt, decoded: decoded[k], complete: i.complete,
                                 width: i.naturalWidth, height: i.naturalHeight})),
    tables: Array.from(document.querySelectorAll("table")).map(t => ({
      section: (() => { let e = t; while (e && e.tagName !== "H2") e = e.previousElementSibling;
                        return e ? e.textContent : null; })(),
      header: Array.from(t.querySelectorAll("thead th")).map(th => th.textContent),
      rows: t.querySelectorAll("tbody tr").length})),
    headings: Array.from(document.querySelectorAll("h1, h2")).map(h => h.textContent),
  });
})()
"""


class Browser:
    """One headless Chromium; ``check(path)`` opens a page in a fresh tab and probes it."""

    def __init__(self) -> None:
        self.profile = tempfile.mkdtemp(prefix="leaderboard-chromium-")
        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Chromium writes its port and browser endpoint here once it listens.
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + TIMEOUT_S
        while not (port_file.is_file() and len(port_file.read_text().split()) >= 2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr \
                    else ""
                self.close()
                raise RuntimeError(f"Chromium did not start: {err[-2000:]}")
            time.sleep(0.05)
        port, path = port_file.read_text().split()[:2]
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}",
                                              timeout=TIMEOUT_S, suppress_origin=True)
        self.next_id = 0

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             events: list | None = None) -> dict[str, Any]:
        """A DevTools command; returns its result. Events meanwhile go to ``events``."""
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            if events is not None and "method" in reply:
                events.append(reply)

    def wait_for(self, method: str, events: list) -> None:
        while not any(e["method"] == method for e in events):
            events.append(json.loads(self.ws.recv()))

    def check(self, page: Path) -> dict[str, Any]:
        """Loads ``page`` and returns the probe's findings plus ``console_errors``."""
        events: list[dict] = []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                            events=events)["sessionId"]
        try:
            for domain in ("Page", "Runtime", "Log"):
                self.send(f"{domain}.enable", session=session, events=events)
            self.send("Page.navigate", {"url": page.resolve().as_uri()}, session, events)
            self.wait_for("Page.loadEventFired", events)
            probe = self.send("Runtime.evaluate", {"expression": PAGE_PROBE,
                                                   "awaitPromise": True,
                                                   "returnByValue": True}, session, events)
            if "exceptionDetails" in probe:
                raise RuntimeError(f"page probe failed: {probe['exceptionDetails']}")
            found = json.loads(probe["result"]["value"])
        finally:
            self.send("Target.closeTarget", {"targetId": target}, events=events)
        found["console_errors"] = console_errors(events, session)
        return found

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


def console_errors(events: list[dict], session: str) -> list[str]:
    """Error-level console calls, uncaught exceptions and browser log errors of a tab."""
    out = []
    for e in events:
        if e.get("sessionId") != session:
            continue
        p = e.get("params", {})
        if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console." + p["type"] + ": " + " ".join(
                str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif e["method"] == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append("exception: " + str(d.get("exception", {}).get("description")
                                           or d.get("text")))
        elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            entry = p["entry"]
            out.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}")
    return out


@pytest.fixture(scope="module")
def browser():
    b = Browser()
    yield b
    b.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A report over four small fake runs (three tasks, samples, two-stage training logs,
    periodic evaluations), one of them reached through a symlink."""
    root = tmp_path_factory.mktemp("runs")
    _make_run(root, "depth_tiny", "depth", "givt", "tiny",
              [(100, {"RMSE": 0.91, "AbsRel": 0.3}), (300, {"RMSE": 0.61, "AbsRel": 0.21})],
              [2.0, 1.5, 1.2], num_params={"givt": 1_234_567}, png=True)
    _make_run(root, "depth_vae", "depth", "vae", "tiny", [(200, {"RMSE": 0.35})], [1.0, 0.5])
    _make_run(root, "gen", "imagenet", "givt", "tiny", [(300, {"FID": 12.5, "IS": 8.2})],
              [3.0, 2.0, 1.0], png=True)
    store = tmp_path_factory.mktemp("store")
    (root / "panoptic_linked").symlink_to(_two_stage_run(store, "pan", task="panoptic"))
    out = tmp_path_factory.mktemp("report")
    assert L.main(["--root", str(root), "--out", str(out), "--format", "html"]) == 0
    return out / "leaderboard.html"


def test_page_loads_cleanly(browser, report):
    page = report.read_text()
    found = browser.check(report)
    n_img = len(re.findall(r"<img\b", page))
    assert n_img >= 9 and len(found["images"]) == n_img  # 6 plots, 3+ thumbnails
    broken = [i["alt"] for i in found["images"] if not (i["decoded"] and i["width"] > 0)]
    assert not broken, f"images that did not load: {broken}"
    sections = {t["section"]: t for t in found["tables"]}
    # the tasks of the runs' records, by name (the leaderboard itself knows none)
    assert list(sections) == ["depth", "imagenet", "panoptic"], found["tables"]
    for task, table in sections.items():
        assert table["header"][:len(L.BASE_COLUMNS)] == list(L.BASE_COLUMNS)
        # a run's row at least, and the published rows its records' metric_meta declares
        assert table["rows"] > len(METRIC_META[task]["references"]) >= 3, task
    assert "RMSE" in sections["depth"]["header"] and "FID" in sections["imagenet"]["header"]
    assert found["headings"][0] == "Leaderboard"
    assert found["console_errors"] == []


def test_check_catches_broken_image_and_console_error(browser, report, tmp_path):
    """The check is not vacuous: a corrupted data URI and a console error both show."""
    page = report.read_text()
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    corrupt = page.replace(uris[1], "iVBORw0KGgo" + "A" * 64, 1)
    corrupt = corrupt.replace("</body>", "<script>console.error('probe: boom')</script></body>")
    bad = tmp_path / "bad.html"
    bad.write_text(corrupt)
    found = browser.check(bad)
    broken = [k for k, i in enumerate(found["images"]) if not (i["decoded"] and i["width"] > 0)]
    assert broken == [1]
    assert any("probe: boom" in e for e in found["console_errors"]), found["console_errors"]
