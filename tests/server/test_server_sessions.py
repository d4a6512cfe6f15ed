"""Every backend is a Jupyter Server session: what JupyterLab lists, and opens a console on.

Through the server's own sessions API (``/api/sessions``, what JupyterLab's Running panel
reads) and a websocket to the kernel (what its console opens); the browser itself is in
tests/lab/test_browser.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from service_process import KernelSocket, ServiceProcess, idle, read_events

PROBE = """\
import os

from bridge_runtime import PythonBridge


class Probe(PythonBridge):
    def __init__(self):
        super().__init__()
        self.counter = 0

    def increment(self):
        self.counter += 1
        return {"count": self.counter}

    def emit(self, n):
        for i in range(n):
            self.send_event("tick", {"i": i})
        return n

    def die(self):
        os.kill(os.getpid(), 9)


if __name__ == "__main__":
    backend = Probe()
    backend.run()
"""


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceProcess]:
    with ServiceProcess(pool_size=1) as svc:
        yield svc


@pytest.fixture(scope="module")
def client(service: ServiceProcess) -> Iterator[httpx.Client]:
    with service.client() as c:
        yield c


def sessions(client: httpx.Client) -> dict[str, dict[str, Any]]:
    r = client.get("/api/sessions")
    assert r.status_code == 200, r.text
    return {s["id"]: s for s in r.json()}


def create(client: httpx.Client, **body: Any) -> dict[str, Any]:
    r = client.post("/backends", json={"script": PROBE, **body})
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


def call(client: httpx.Client, backend_id: str, cmd: str, **params: Any) -> httpx.Response:
    return client.post(f"/backends/{backend_id}/call", json={"cmd": cmd, "params": params})


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """Poll the service until *condition()* is true (kernel deaths are noticed in the
    background: there is no request to wait on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def test_a_backend_is_a_console_session_named_after_its_script(client: httpx.Client) -> None:
    created = create(client, name="probe.py")
    try:
        assert created["name"] == "probe.py"
        session = sessions(client)[created["session_id"]]
        assert session["name"] == session["path"] == "backends/probe.py"
        assert session["type"] == "console"
        assert session["kernel"]["id"] == created["kernel_id"]
        assert client.get(f"/api/sessions/{created['session_id']}").json() == session
    finally:
        client.delete(f"/backends/{created['id']}")
    assert created["session_id"] not in sessions(client)
    # The session went, not by the server's DELETE, which would have shut the kernel down
    # under the backend: the kernel went by the backend's own shutdown.
    assert created["kernel_id"] not in {k["id"] for k in client.get("/api/kernels").json()}


def test_without_a_name_the_class_names_it(client: httpx.Client) -> None:
    created = create(client)
    try:
        assert created["name"] == "Probe"
        assert sessions(client)[created["session_id"]]["name"] == "backends/Probe"
    finally:
        client.delete(f"/backends/{created['id']}")


def test_same_names_get_paths_of_their_own(client: httpx.Client) -> None:
    """JupyterLab opens a session's console by its path: two of one script stay apart."""
    first, second = create(client, name="twin.py"), create(client, name="twin.py")
    try:
        listed = sessions(client)
        one, two = listed[first["session_id"]], listed[second["session_id"]]
        assert one["name"] == two["name"] == "backends/twin.py"
        assert (one["path"], two["path"]) == ("backends/twin.py", "backends/twin.py (2)")
        assert one["kernel"]["id"] != two["kernel"]["id"]
    finally:
        client.delete(f"/backends/{first['id']}")
        client.delete(f"/backends/{second['id']}")


def test_the_pool_kernels_are_no_sessions(client: httpx.Client) -> None:
    created = create(client, name="probe.py")
    try:
        kernels = {k["id"] for k in client.get("/api/kernels").json()}
        in_sessions = {s["kernel"]["id"] for s in sessions(client).values()}
        assert in_sessions == {created["kernel_id"]}
        assert len(kernels - in_sessions) == 1  # the pool of one, listed as a kernel only
    finally:
        client.delete(f"/backends/{created['id']}")


def test_a_dead_kernel_ends_its_session_and_a_restart_opens_one(client: httpx.Client) -> None:
    plain = create(client, name="mortal.py")
    phoenix = create(client, name="phoenix.py", restart=True)
    try:
        for backend in (plain, phoenix):
            assert call(client, backend["id"], "die").status_code == 503
        wait_for(lambda: plain["session_id"] not in sessions(client), "the dead one's session")

        def restarted() -> dict[str, Any] | None:
            info: dict[str, Any] = client.get(f"/backends/{phoenix['id']}").json()
            fresh = info["alive"] and info["session_id"] not in (None, phoenix["session_id"])
            return info if fresh else None

        info = wait_for(restarted, "the restarted backend's new session")
        listed = sessions(client)
        assert phoenix["session_id"] not in listed
        assert listed[info["session_id"]]["name"] == "backends/phoenix.py"
        assert listed[info["session_id"]]["kernel"]["id"] == info["kernel_id"]
        assert info["kernel_id"] != phoenix["kernel_id"]
    finally:
        client.delete(f"/backends/{plain['id']}")
        client.delete(f"/backends/{phoenix['id']}")


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("", "name: Expected `str` of length >= 1"),
        (5, "name: Expected `str | null`, got `int`"),
        ("x" * 256, "name: Expected `str` of length <= 255"),
        ("two\nlines", "printable"),
    ],
)
def test_bad_names_are_400(client: httpx.Client, name: Any, says: str) -> None:
    r = client.post("/backends", json={"script": PROBE, "name": name})
    assert r.status_code == 400, r.text
    assert says in r.json()["error"]


def test_live_events_in_the_console_and_the_host_still_gets_them(
    service: ServiceProcess, client: httpx.Client
) -> None:
    """``%bridge events`` in the console of the session: its display is updated with each
    event after its cell finished, while the host's stream receives the same events."""
    created = create(client, name="probe.py")

    async def scenario() -> list[dict[str, Any]]:
        async with KernelSocket(service, created["kernel_id"]) as socket:
            status = socket.execute("%bridge")
            text = "".join(m["content"].get("text", "") for m in await socket.read(status, idle))
            assert "backend: Probe (the variable 'backend')" in text
            assert "host connected: yes" in text
            watch = socket.execute("%bridge events")
            await socket.read(watch, idle)  # the cell is done; its display lives on
            assert (await socket.run("1 + 1")) == "2"  # and the console is free
            # What JupyterLab sends when it closes a comm the kernel never opened: the kernel
            # warns on a thread of its own, which is not the backend's output (no event).
            socket.send("comm_close", {"comm_id": "never-opened", "data": {}})
            r = await asyncio.to_thread(call, client, created["id"], "emit", n=3)
            assert r.json()["result"] == 3

            def shows_all(msg: dict[str, Any]) -> bool:
                text = msg["content"].get("data", {}).get("text/plain", "")
                return msg["header"]["msg_type"] == "update_display_data" and "#3" in text

            updates = await socket.read(watch, shows_all)
            stop = socket.execute("%bridge events stop")
            said = "".join(m["content"].get("text", "") for m in await socket.read(stop, idle))
            assert "stopped 1 live event display(s)" in said

            def stopped(msg: dict[str, Any]) -> bool:
                text = msg["content"].get("data", {}).get("text/plain", "")
                return msg["header"]["msg_type"] == "update_display_data" and "(stopped" in text

            await socket.read(watch, stopped)
            return updates

    try:
        updates = asyncio.run(scenario())
        text = updates[-1]["content"]["data"]["text/plain"]
        assert "events of Probe: 3 so far (live)" in text
        for i in range(3):
            assert f'tick  {{"i": {i}}}' in text
        with client.stream("GET", f"/backends/{created['id']}/events") as r:
            assert [e for _, e in read_events(r.iter_lines(), 3)] == [
                {"type": "tick", "data": {"i": i}} for i in range(3)
            ]
    finally:
        client.delete(f"/backends/{created['id']}")


def test_each_context_is_a_session_named_after_it_until_it_ends(client: httpx.Client) -> None:
    r = client.post("/contexts", json={"name": "analysis"})
    assert r.status_code == 201, r.text
    context = r.json()
    listed = sessions(client)[context["session_id"]]
    assert listed["name"] == "contexts/analysis" and listed["type"] == "console"
    assert listed["kernel"]["id"] == context["kernel_id"]
    # A restart is a new kernel: the session moves with it, under the same name.
    r = client.post(f"/contexts/{context['id']}/restart")
    assert r.status_code == 200, r.text
    restarted = r.json()
    assert restarted["kernel_id"] != context["kernel_id"]
    now = sessions(client)
    assert context["session_id"] not in now
    assert now[restarted["session_id"]]["name"] == "contexts/analysis"
    assert now[restarted["session_id"]]["kernel"]["id"] == restarted["kernel_id"]
    assert client.delete(f"/contexts/{context['id']}").status_code == 200
    assert restarted["session_id"] not in sessions(client)
