"""The service under pressure: kernel limits over HTTP, the bounded wait queue (503 overloaded
with Retry-After), and the metrics at /metrics after known traffic."""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service_process import ServiceProcess

HOLD = "import os, time\nwhile not os.path.exists(path):\n    time.sleep(0.01)\nreturn 'held'"
SPINNER = """
from bridge_runtime import PythonBridge


class Spinner(PythonBridge):
    def spin(self):
        while True:
            pass


Spinner().run()
"""


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceProcess]:
    """One pool kernel, one call may wait for it, kernels limited to 1024 MB."""
    args = ("--BridgeApp.max_waiting=1", "--BridgeApp.kernel_limits=memory_mb=1024")
    with ServiceProcess(*args, pool_size=1) as svc:
        yield svc


def test_health_says_which_limits_are_in_force_and_the_queue(service: ServiceProcess) -> None:
    with service.client() as c:
        health = c.get("/health").json()
    assert health["max_waiting"] == 1 and health["waiting"] == 0
    assert health["limits"]["limits"]["memory_mb"] == 1024
    assert health["limits"]["mechanism"] == "rlimit"
    enforced = health["limits"]["processes"]
    assert enforced.startswith("not enforced" if os.geteuid() == 0 else "enforced")
    assert health["limits"]["cgroup_v2"].startswith("not used")


def test_a_256_mb_context_allocating_1_gb_answers_memory_error_and_another_answers(
    service: ServiceProcess,
) -> None:
    with service.client() as c:
        small = c.post("/contexts", json={"limits": {"memory_mb": 256}}).json()
        other = c.post("/contexts", json={}).json()
        try:
            r = c.post(
                f"/contexts/{small['id']}/execute", json={"content": "b = bytearray(1 << 30)"}
            )
            assert r.status_code == 200
            assert r.json()["exception"]["ename"] == "MemoryError"
            r = c.post(f"/contexts/{other['id']}/evaluate", json={"expr": "6 * 7"})
            assert r.json()["result"] == 42
            r = c.post(f"/contexts/{small['id']}/evaluate", json={"expr": "'alive'"})
            assert r.json()["result"] == "alive"
        finally:
            c.delete(f"/contexts/{small['id']}")
            c.delete(f"/contexts/{other['id']}")


def test_a_context_past_its_cpu_seconds_is_kernel_died_naming_the_limit(
    service: ServiceProcess,
) -> None:
    with service.client() as c:
        spin = c.post("/contexts", json={"limits": {"cpu_seconds": 2}}).json()
        try:
            r = c.post(f"/contexts/{spin['id']}/execute", json={"content": "while True:\n    pass"})
            assert r.status_code == 503
            body = r.json()
            assert body["error_type"] == "kernel_died"
            assert body["reason"] == "cpu limit 2 s"
            assert c.get("/health").json()["status"] == "ok"
            assert c.post("/evaluate", json={"expr": "1 + 1"}).json()["result"] == 2
        finally:
            c.delete(f"/contexts/{spin['id']}")


def test_a_backend_past_its_cpu_seconds_is_kernel_died_naming_the_limit(
    service: ServiceProcess,
) -> None:
    with service.client() as c:
        body = {"script": SPINNER, "name": "spinner", "limits": {"cpu_seconds": 2}}
        backend = c.post("/backends", json=body).json()
        try:
            r = c.post(f"/backends/{backend['id']}/call", json={"cmd": "spin"})
            assert r.status_code == 503
            assert r.json()["error_type"] == "kernel_died"
            assert r.json()["reason"] == "cpu limit 2 s"
        finally:
            c.delete(f"/backends/{backend['id']}")


def test_limits_looser_than_the_services_or_unknown_are_a_400_naming_the_field(
    service: ServiceProcess,
) -> None:
    with service.client() as c:
        r = c.post("/contexts", json={"limits": {"memory_mb": 4096}})
        assert r.status_code == 400
        assert "limits.memory_mb may not exceed the service's 1024" in r.json()["error"]
        r = c.post("/contexts", json={"limits": {"memory": 100}})
        assert r.status_code == 400 and r.json()["field"] == "limits.memory"
        r = c.post("/backends", json={"script": SPINNER, "limits": {"cpu_seconds": 0}})
        assert r.status_code == 400 and r.json()["field"] == "limits.cpu_seconds"


@pytest.mark.asyncio
async def test_past_the_wait_queue_a_call_is_503_overloaded_with_retry_after(
    service: ServiceProcess,
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "go")
        async with service.async_client() as c:
            body = {"content": HOLD, "inputs": {"path": path}}
            held = asyncio.ensure_future(c.post("/execute", json=body))
            await _until(c, busy=True)
            queued = asyncio.ensure_future(c.post("/evaluate", json={"expr": "1"}))
            await _until(c, waiting=1)
            refused = [await c.post("/evaluate", json={"expr": str(n)}) for n in range(3)]
            for r in refused:
                assert r.status_code == 503
                assert r.json()["error_type"] == "overloaded"
                assert int(r.headers["Retry-After"]) >= 1
            # Refusals are by design under a burst: one warning, then a count every 10 s, not
            # an error line (and a dump of the headers) per refused call.
            log = service.log()
            assert log.count("overloaded: refusing calls with 503") == 1, log[-3000:]
            assert "503 POST /evaluate" not in log, log[-3000:]
            await asyncio.to_thread(Path(path).touch)
            assert (await held).json()["result"] == "held"
            assert (await queued).json()["result"] == 1


async def _until(c: httpx.AsyncClient, *, busy: bool = False, waiting: int = 0) -> None:
    """Until the pool runs a call (*busy*) or *waiting* calls wait, as /health and the
    metrics see it."""
    deadline = time.monotonic() + 30
    while True:
        health = (await c.get("/health")).json()
        if waiting and health["waiting"] >= waiting:
            return
        if busy and _gauge((await c.get("/metrics")).text, 'state="busy"') >= 1:
            return
        assert time.monotonic() < deadline, f"not seen: busy={busy}, waiting={waiting}"
        await asyncio.sleep(0.01)


def _gauge(text: str, label: str) -> float:
    match = re.search(r"^kernel_bridge_pool_kernels\{" + label + r"\} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of *name* with *labels* in a Prometheus text exposition."""
    for line in text.splitlines():
        if not line.startswith(name + ("{" if labels else " ")):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_need_the_token_and_count_known_traffic(service: ServiceProcess) -> None:
    route = "POST /execute"
    with service.client() as c:
        assert httpx.get(f"{service.url}/metrics").status_code == 403  # no token
        before = c.get("/metrics").text
        for n in range(3):
            r = c.post("/execute", json={"content": f"print('x' * {n}); return 1"})
            assert r.status_code == 200
        assert c.post("/execute", json={"content": "1 / 0"}).json()["error_type"] == "python_error"
        assert c.post("/execute", json={"content": 1}).status_code == 400
        context = c.post("/contexts", json={}).json()
        during = c.get("/metrics").text
        c.delete(f"/contexts/{context['id']}")
        after = c.get("/metrics").text
        while _sample(after, "kernel_bridge_pool_kernels", state="idle") < 1:
            after = c.get("/metrics").text  # the context took the warm kernel: replaced

    def grew(name: str, **labels: str) -> float:
        return _sample(during, name, **labels) - _sample(before, name, **labels)

    assert grew("kernel_bridge_requests_total", route=route, outcome="ok") == 3
    assert grew("kernel_bridge_requests_total", route=route, outcome="python_error") == 1
    assert grew("kernel_bridge_requests_total", route=route, outcome="bad_request") == 1
    assert grew("kernel_bridge_requests_total", route="POST /contexts", outcome="ok") == 1
    assert grew("kernel_bridge_request_seconds_count", route=route) == 5
    assert grew("kernel_bridge_output_bytes_total") == 1 + 2 + 3  # "\n", "x\n", "xx\n"
    assert grew("kernel_bridge_contexts") == 1
    started = "kernel_bridge_kernel_start_seconds_count"
    assert _sample(after, started, path="fork") - _sample(before, started, path="fork") == 1
    assert _sample(after, "kernel_bridge_contexts") == _sample(before, "kernel_bridge_contexts")
