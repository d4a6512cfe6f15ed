"""`kernel-bridge serve --gateway-url`: the service's pool and backends on a real Kernel Gateway.

One gateway (the session's, tests/gateways.py) and one service process for the module; the last
test stops the service and checks that it deleted its kernels on the gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from gateways import GatewayProcess
from service_process import (
    KernelSocket,
    ServiceProcess,
    execute_over_websocket,
    idle,
    read_events,
)

TICKER = """\
from bridge_runtime import PythonBridge


class Ticker(PythonBridge):
    def __init__(self):
        super().__init__()
        self.counter = 0

    def tick(self, n):
        for i in range(n):
            self.send_event("tick", {"i": i})
        self.counter += n
        return self.counter


if __name__ == "__main__":
    backend = Ticker()
    backend.run()
"""


@pytest.fixture(scope="module")
def before(kernel_gateway: GatewayProcess) -> set[str]:
    """The gateway's kernels before the service (other modules' session fixtures have some)."""
    return kernel_gateway.kernel_ids()


@pytest.fixture(scope="module")
def service(kernel_gateway: GatewayProcess, before: set[str]) -> Iterator[ServiceProcess]:
    options = ("--gateway-url", kernel_gateway.url, "--gateway-token", kernel_gateway.token)
    with ServiceProcess(*options, pool_size=1) as svc:
        yield svc


@pytest.fixture(scope="module")
def client(service: ServiceProcess) -> Iterator[httpx.Client]:
    with service.client() as c:
        yield c


def ours(gateway: GatewayProcess, before: set[str]) -> set[str]:
    return gateway.kernel_ids() - before


def listed(client: httpx.Client) -> set[str]:
    r = client.get("/api/kernels")
    assert r.status_code == 200, r.text
    return {k["id"] for k in r.json()}


def sessions(client: httpx.Client) -> list[dict[str, Any]]:
    r = client.get("/api/sessions")
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()
    return found


async def events_in_console(
    service: ServiceProcess, client: httpx.Client, backend_id: str, kernel_id: str
) -> str:
    """``%bridge events`` in a console on the backend's kernel, then a host call that sends two
    events: the text of the display once it shows both."""
    async with KernelSocket(service, kernel_id) as socket:
        watch = socket.execute("%bridge events")
        await socket.read(watch, idle)
        url = f"/backends/{backend_id}/call"
        r = await asyncio.to_thread(client.post, url, json={"cmd": "tick", "params": {"n": 2}})
        assert r.json()["result"] == 4, r.text

        def shows_both(msg: dict[str, Any]) -> bool:
            text = msg["content"].get("data", {}).get("text/plain", "")
            return msg["header"]["msg_type"] == "update_display_data" and "#2" in text

        updates = await socket.read(watch, shows_both)
        text: str = updates[-1]["content"]["data"]["text/plain"]
        return text


def test_calls_run_on_kernels_the_gateway_started(
    client: httpx.Client, kernel_gateway: GatewayProcess, before: set[str]
) -> None:
    r = client.post("/execute", json={"content": "import os\nprint('hi')\nreturn os.getpid()"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] and body["stdout"] == "hi\n"
    assert body["result"] in kernel_gateway.kernel_processes()  # a child of the gateway
    r = client.post("/evaluate", json={"expr": "6 * 7"})
    assert r.json()["result"] == 42
    assert len(ours(kernel_gateway, before)) == 1  # the pool of one
    assert client.get("/health").json()["kernels"] == 1
    assert kernel_gateway.url in client.get("/version").json()["kernel_python"]


def test_backend_on_the_gateway_seen_by_the_server(
    service: ServiceProcess,
    client: httpx.Client,
    kernel_gateway: GatewayProcess,
    before: set[str],
) -> None:
    """Create, call, events, delete; in between, Jupyter Server's own /api/kernels lists the
    backend's kernel, its /api/sessions lists the backend by name (JupyterLab's Running panel),
    and a JupyterLab-style websocket through the service reaches it."""
    pool = ours(kernel_gateway, before)
    assert pool <= listed(client)  # the pool's kernel, through the server's gateway client
    r = client.post("/backends", json={"script": TICKER, "name": "ticker.py"})
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    kernel_id = created["kernel_id"]
    try:
        assert ours(kernel_gateway, before) == pool | {kernel_id}
        assert kernel_id in listed(client)
        [session] = sessions(client)  # the backend's; the pool's kernel is no session
        assert (session["id"], session["name"]) == (created["session_id"], "backends/ticker.py")
        assert (session["type"], session["kernel"]["id"]) == ("console", kernel_id)
        call = client.post(
            f"/backends/{created['id']}/call", json={"cmd": "tick", "params": {"n": 2}}
        )
        assert call.json()["result"] == 2, call.text
        with client.stream("GET", f"/backends/{created['id']}/events") as events:
            assert [e for _, e in read_events(events.iter_lines(), 2)] == [
                {"type": "tick", "data": {"i": i}} for i in range(2)
            ]
        seen = asyncio.run(execute_over_websocket(service, kernel_id, "backend.counter"))
        assert seen == "2"
        shown = asyncio.run(events_in_console(service, client, created["id"], kernel_id))
        assert 'tick  {"i": 0}' in shown and 'tick  {"i": 1}' in shown
    finally:
        r = client.delete(f"/backends/{created['id']}")
    assert r.json() == {"id": created["id"], "deleted": True}
    assert ours(kernel_gateway, before) == pool  # deleted on the gateway
    assert kernel_id not in listed(client)
    assert sessions(client) == []


def test_wrong_gateway_token_stops_the_service(
    kernel_gateway: GatewayProcess, before: set[str]
) -> None:
    """Settings from the environment, as Jupyter Server reads them; the service refuses to
    start and says why, rather than answer every request with an error."""
    env = {"JUPYTER_GATEWAY_URL": kernel_gateway.url, "JUPYTER_GATEWAY_AUTH_TOKEN": "wrong"}
    svc = ServiceProcess(pool_size=1, env=env)
    try:
        with pytest.raises(RuntimeError, match="exited early"):
            svc.start()
        assert svc.stop() == 2
        log = svc.log()
        assert kernel_gateway.url in log and "401" in log and "token" in log
    finally:
        svc.close()


def test_closing_the_service_deletes_its_kernels(
    service: ServiceProcess, kernel_gateway: GatewayProcess, before: set[str]
) -> None:
    assert ours(kernel_gateway, before)
    assert service.stop() == 0
    assert ours(kernel_gateway, before) == set()


def test_a_local_kernel_manager_is_refused_with_a_gateway(kernel_gateway: GatewayProcess) -> None:
    """Only Jupyter Server's GatewayMappingKernelManager can list a gateway's kernels."""
    from jupyter_client.multikernelmanager import AsyncMultiKernelManager

    import bridge

    with pytest.raises(bridge.InvalidRequest, match="GatewayMappingKernelManager"):
        bridge.AsyncBridge(gateway_url=kernel_gateway.url, kernel_manager=AsyncMultiKernelManager())
