"""JupyterLab on the service, in a real browser: a person looking inside a live backend.

Headless Chromium (Debian's ``chromium``, driven by Playwright with that binary: Playwright's
own browser download is never used) opens ``/lab?token=...`` of one ``kernel-bridge serve``
for the whole module, finds the backend by its name in the *Running Terminals and Kernels*
panel, opens its console, and reads and changes what the host's calls see; then reads the
events the host's calls send, live, with ``%bridge events``. Every step waits on JupyterLab's
own elements, never on a sleep, and leaves a screenshot (``KERNEL_BRIDGE_SCREENSHOTS`` names
the folder; a fresh temporary one otherwise). ``make test`` installs Chromium (Makefile).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright
from service_process import ServiceProcess, read_events

CHROMIUM = os.environ.get("KERNEL_BRIDGE_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium dials out at start, which a closed network
# refuses; a fresh profile (Playwright's user_data_dir) keeps the run from any person's.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 60_000  # the longest any one element may take to show up (a loaded machine)
NAME = "probe_backend.py"

PROBE = """\
import threading

from bridge_runtime import PythonBridge


class Probe(PythonBridge):
    concurrent = True

    def __init__(self):
        super().__init__()
        self.counter = 0
        self.entered = threading.Event()
        self.release = threading.Event()

    def increment(self):
        self.counter += 1
        return {"count": self.counter}

    def slow(self):
        \"\"\"A long call: it runs until someone releases it (from the console).\"\"\"
        self.entered.set()
        self.release.wait(60)
        return self.counter

    def emit(self, n, tag):
        for i in range(n):
            self.send_event("tick", {"i": i, "tag": tag})
        return n


if __name__ == "__main__":
    backend = Probe()
    backend.run()
"""


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("KERNEL_BRIDGE_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("lab-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    # JupyterLab's settings and workspaces in folders of the run's own: nothing read from or
    # written to the home folder, and no "fetch Jupyter news?" toast over the screenshots.
    settings = tmp_path_factory.mktemp("lab-settings")
    notification = settings / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    env = {
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path_factory.mktemp("lab-workspaces")),
    }
    with ServiceProcess(pool_size=1, env=env) as svc:
        # The banner names JupyterLab's page, never the token (the token is logged in with).
        assert f"lab: {svc.url}/lab " in svc.banner and svc.token not in svc.banner
        yield svc


@pytest.fixture(scope="module")
def client(service: ServiceProcess) -> Iterator[httpx.Client]:
    with service.client() as c:
        yield c


@pytest.fixture(scope="module")
def backend(client: httpx.Client) -> Iterator[dict[str, Any]]:
    r = client.post("/backends", json={"script": PROBE, "name": NAME})
    assert r.status_code == 201, r.text
    yield r.json()
    client.delete(f"/backends/{r.json()['id']}")


@pytest.fixture(scope="module")
def page(service: ServiceProcess, backend: dict[str, Any]) -> Iterator[Page]:
    """JupyterLab, opened once the backend runs (as a person comes to look at a live one)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium package "
            "(as root); elsewhere install chromium, or set KERNEL_BRIDGE_CHROMIUM to one"
        )
    with (
        sync_playwright() as playwright,
        tempfile.TemporaryDirectory(prefix="kb-chromium-") as profile,
    ):
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 800},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(WAIT_MS)
            expect.set_options(timeout=WAIT_MS)
            page.goto(f"{service.url}/lab?token={service.token}")
            expect(page.locator('[data-id="jp-running-sessions"]')).to_be_visible()
            yield page
        finally:
            context.close()


def call(client: httpx.Client, backend_id: str, cmd: str, **params: Any) -> Any:
    r = client.post(f"/backends/{backend_id}/call", json={"cmd": cmd, "params": params})
    assert r.status_code == 200 and r.json()["success"], r.text
    return r.json()["result"]


def tidy_the_sidebar(page: Page) -> None:
    """For the screenshots only: the Running panel wider, its other sections folded, so the
    kernels and their sessions' names show whole."""
    sections = ("Open Tabs", "Language servers", "Recently Closed", "Workspaces", "Terminals")
    for section in sections:
        title = page.locator(".lm-AccordionPanel-title", has_text=re.compile(section, re.I))
        if title.count() and "lm-mod-expanded" in (title.first.get_attribute("class") or ""):
            title.first.click()
    handle = page.locator("#jp-main-split-panel > .lm-SplitPanel-handle").first
    box = handle.bounding_box() if handle.count() else None
    if box is not None:
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + 120, y, steps=4)
        page.mouse.up()


def run_cell(page: Page, code: str) -> str:
    """Run *code* in the open console as a person does (type, Shift+Enter); its output text."""
    cells = page.locator(".jp-CodeConsole-content .jp-CodeCell")
    before = cells.count()
    page.locator(".jp-CodeConsole-promptCell .cm-content").click()
    page.keyboard.insert_text(code)  # as pasted: no editor auto-closing of brackets
    page.keyboard.press("Shift+Enter")
    expect(cells).to_have_count(before + 1)
    cell = cells.nth(before)
    expect(cell.locator(".jp-InputPrompt")).to_have_text(re.compile(r"\[\d+\]:"))  # ran
    return "\n".join(cell.locator(".jp-OutputArea-output").all_inner_texts()).strip()


def test_a_backend_opens_in_a_console_from_the_running_panel(
    page: Page, client: httpx.Client, backend: dict[str, Any], shots: Path
) -> None:
    for _ in range(3):
        call(client, backend["id"], "increment")

    # The Running panel lists the backend under its name; one click opens its console.
    page.locator('[data-id="jp-running-sessions"]').click()
    tidy_the_sidebar(page)
    label = page.locator(
        "jp-tree-item.jp-mod-kernel-widget .jp-RunningSessions-itemLabel",
        has_text=f"backends/{NAME}",
    )
    expect(label).to_be_visible()
    page.screenshot(path=shots / "1-running-panel.png")
    label.click()
    expect(page.locator(".jp-ConsolePanel .jp-CodeConsole-banner")).to_contain_text("IPython")
    expect(page.locator("#jp-main-dock-panel .lm-TabBar-tab.jp-mod-current")).to_contain_text(
        f"backends/{NAME}"
    )

    # The backend object is at hand, with the state the host's calls left.
    assert run_cell(page, "backend.counter") == "3"
    page.screenshot(path=shots / "2-console-reads-the-counter.png")

    # A change made there is what the host's next call sees.
    assert run_cell(page, "backend.counter = 41") == ""
    assert call(client, backend["id"], "increment") == {"count": 42}

    # While a long call of the host runs in the backend, the console still evaluates: the
    # call is released from the console, so it was running while the console answered.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(call, client, backend["id"], "slow")
        assert run_cell(page, "backend.entered.wait(30), backend.counter") == "(True, 42)"
        assert not slow.done()
        page.screenshot(path=shots / "3-console-during-a-long-call.png")
        run_cell(page, "backend.release.set()")
        assert slow.result(timeout=60) == 42


def test_the_console_shows_the_events_the_host_receives(
    page: Page, client: httpx.Client, backend: dict[str, Any], shots: Path
) -> None:
    """``%bridge events`` in the backend's console (opened by the test before): the events of
    the host's call appear in it as they are sent, and the host's stream gets them too."""
    expect(page.locator(".jp-ConsolePanel .jp-CodeConsole-promptCell")).to_be_visible()
    run_cell(page, "%bridge events")
    display = page.locator(".jp-CodeConsole-content .kernel-bridge-events").last
    expect(display).to_contain_text("0 so far (live)")

    assert call(client, backend["id"], "emit", n=3, tag="sent by the host") == 3
    expect(display).to_contain_text("3 so far (live)")
    for i in range(3):
        expect(display).to_contain_text(f'{{"i": {i}, "tag": "sent by the host"}}')
    assert run_cell(page, "backend.counter") == "42"  # the console is free all along
    page.screenshot(path=shots / "4-console-shows-events-live.png")

    with client.stream("GET", f"/backends/{backend['id']}/events") as r:
        events = [e for _, e in read_events(r.iter_lines(), 3)]
    assert events == [
        {"type": "tick", "data": {"i": i, "tag": "sent by the host"}} for i in range(3)
    ]
    print(f"screenshots: {shots}")
