"""Backends over HTTP, and the same kernels seen through Jupyter Server's own API."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from service_process import ServiceProcess, execute_over_websocket, read_events

from bridge.server import multipart

PROBE = """\
import os
import time

from bridge_runtime import PythonBridge


class Probe(PythonBridge):
    def __init__(self):
        super().__init__()
        self.counter = 0

    def increment(self):
        self.counter += 1
        return {"count": self.counter}

    def env(self):
        return dict(os.environ)

    def fail(self):
        raise ValueError("no good")

    def slow(self, seconds):
        time.sleep(seconds)
        return "done"

    def die(self):
        os.kill(os.getpid(), 9)

    def emit(self, n):
        for i in range(n):
            self.send_event("tick", {"i": i})
        return n

    def blob(self):
        return b"\\x00\\x01"

    def grid(self):
        import numpy as np

        return np.arange(6, dtype="float32").reshape(2, 3)

    def describe(self, value):
        return {"type": type(value).__name__, "dtype": str(getattr(value, "dtype", "")),
                "shape": list(getattr(value, "shape", [])), "length": len(value)}

    def count(self, n, fail_at=-1):
        self.closed = False
        try:
            for i in range(n):
                if i == fail_at:
                    raise ValueError(f"failed at {i}")
                yield {"i": i, "raw": bytes([i % 256])} if i < 3 else i
        finally:
            self.closed = True

    def closed_yet(self):
        return getattr(self, "closed", None)


if __name__ == "__main__":
    print("probe ready")
    backend = Probe()
    backend.run()
"""

MAX_BACKENDS = 3


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceProcess]:
    with ServiceProcess(f"--BridgeApp.max_backends={MAX_BACKENDS}", pool_size=1) as svc:
        yield svc


@pytest.fixture(scope="module")
def client(service: ServiceProcess) -> Iterator[httpx.Client]:
    with service.client() as c:
        yield c


@pytest.fixture(scope="module")
def probe(client: httpx.Client) -> Iterator[dict[str, Any]]:
    """One backend shared by the tests that only call it."""
    r = client.post("/backends", json={"script": PROBE})
    assert r.status_code == 201, r.text
    yield r.json()
    client.delete(f"/backends/{r.json()['id']}")


def call(client: httpx.Client, backend_id: str, cmd: str, **params: Any) -> httpx.Response:
    return client.post(f"/backends/{backend_id}/call", json={"cmd": cmd, "params": params})


def failure(r: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert (body["success"], body["error_type"], body["status"]) == (False, error_type, status)
    return body


def test_create_list_get_call_delete(client: httpx.Client) -> None:
    r = client.post("/backends", json={"script": PROBE, "env": {"MODE": "x"}})
    assert r.status_code == 201, r.text
    created = r.json()
    assert set(created["methods"]) >= {"increment", "env", "fail", "slow"}
    assert created["alive"] is True
    backend_id = created["id"]
    assert created in client.get("/backends").json()["backends"]
    assert client.get(f"/backends/{backend_id}").json() == created
    assert created["kernel_id"] in {k["id"] for k in client.get("/api/kernels").json()}
    body = call(client, backend_id, "env").json()
    assert body["success"] is True and body["result"]["MODE"] == "x"
    assert body["error"] is None and body["duration_ms"] > 0

    r = client.delete(f"/backends/{backend_id}")
    assert r.json() == {"id": backend_id, "deleted": True}
    failure(client.get(f"/backends/{backend_id}"), 404, "not_found")
    assert created["kernel_id"] not in {k["id"] for k in client.get("/api/kernels").json()}


def test_calls_keep_state_and_report_errors(client: httpx.Client, probe: dict[str, Any]) -> None:
    pid = probe["id"]
    counts = [call(client, pid, "increment").json()["result"]["count"] for _ in range(3)]
    assert counts == [counts[0], counts[0] + 1, counts[0] + 2]
    body = call(client, pid, "fail").json()
    assert body["success"] is False
    assert body["error_type"] == "python_error"
    assert body["exception"]["ename"] == "ValueError"
    assert "ValueError" in body["error"] and "no good" in body["error"]
    body = failure(call(client, pid, "nope"), 400, "bad_request")
    assert "increment" in body["error"]  # names the methods there are
    blob = call(client, pid, "blob").json()["result"]
    assert blob["kind"] == "bytes" and blob["base64"] == "AAE="


def test_call_timeout_is_504_and_the_backend_lives_on(
    client: httpx.Client, probe: dict[str, Any]
) -> None:
    r = client.post(
        f"/backends/{probe['id']}/call",
        json={"cmd": "slow", "params": {"seconds": 30}, "timeout_secs": 0.5},
    )
    failure(r, 504, "timeout")
    assert call(client, probe["id"], "increment").json()["success"] is True


def test_unknown_backend_is_404_everywhere(client: httpx.Client) -> None:
    missing = uuid.uuid4().hex
    failure(client.get(f"/backends/{missing}"), 404, "not_found")
    failure(client.delete(f"/backends/{missing}"), 404, "not_found")
    failure(call(client, missing, "x"), 404, "not_found")
    failure(client.get(f"/backends/{missing}/events"), 404, "not_found")


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({}, "script"),
        ({"script": 5}, "script"),
        ({"script": "x = 1", "env": {"A": 1}}, "env"),
        ({"script": "x = 1", "extra": 1}, "extra"),
    ],
)
def test_bad_backend_requests_name_the_field(
    client: httpx.Client, body: dict[str, Any], names: str
) -> None:
    answer = failure(client.post("/backends", json=body), 400, "bad_request")
    assert answer["field"] == names and answer["error"].startswith(f"{names}: ")


def test_bad_call_requests(client: httpx.Client, probe: dict[str, Any]) -> None:
    url = f"/backends/{probe['id']}/call"
    failure(client.post(url, json={}), 400, "bad_request")
    failure(client.post(url, json={"cmd": "env", "params": [1]}), 400, "bad_request")
    failure(client.post(url, content=b"{nope"), 400, "bad_request")


def test_a_script_that_raises_is_a_python_error_as_from_any_route(client: httpx.Client) -> None:
    r = client.post("/backends", json={"script": "import os\n1 / 0\n"})
    body = failure(r, 200, "python_error")  # the status of a Python error on every route
    raised = body["exception"]
    assert (raised["ename"], raised["evalue"]) == ("ZeroDivisionError", "division by zero")
    assert "ZeroDivisionError" in raised["traceback"]
    r = client.post("/backends", json={"script": "x = 1\n"})  # never calls run()
    failure(r, 400, "bad_request")


def test_a_killed_backend_is_503_kernel_died(client: httpx.Client) -> None:
    created = client.post("/backends", json={"script": PROBE}).json()
    try:
        r = call(client, created["id"], "die")
        failure(r, 503, "kernel_died")
        failure(call(client, created["id"], "increment"), 503, "kernel_died")
        assert client.get(f"/backends/{created['id']}").json()["alive"] is False
    finally:
        client.delete(f"/backends/{created['id']}")


def test_the_backend_limit_is_429(client: httpx.Client, probe: dict[str, Any]) -> None:
    ids = []
    try:
        for _ in range(MAX_BACKENDS - 1):  # the probe is one
            r = client.post("/backends", json={"script": PROBE})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        failure(client.post("/backends", json={"script": PROBE}), 429, "limit_reached")
    finally:
        for backend_id in ids:
            client.delete(f"/backends/{backend_id}")


def test_the_token_never_reaches_a_backend(
    client: httpx.Client, probe: dict[str, Any], service: ServiceProcess
) -> None:
    env = call(client, probe["id"], "env").json()["result"]
    assert not [k for k, v in env.items() if service.token in v]


# -- events --------------------------------------------------------------------------------------


def test_events_stream_replays_then_follows(service: ServiceProcess, client: httpx.Client) -> None:
    created = client.post("/backends", json={"script": PROBE}).json()
    url = f"/backends/{created['id']}/events"
    try:
        assert call(client, created["id"], "emit", n=3).json()["result"] == 3  # before the stream
        # ?token= as an EventSource sends it; no Authorization header.
        with (
            httpx.Client(base_url=service.url, timeout=30) as plain,
            plain.stream("GET", f"{url}?token={service.token}") as r,
        ):
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = r.iter_lines()
            replayed = [e for _, e in read_events(lines, 4)]
            # What the script printed while starting came before any stream existed.
            assert replayed[0] == {"type": "stdout", "data": "probe ready\n"}
            assert replayed[1:] == [{"type": "tick", "data": {"i": i}} for i in range(3)]
            call(client, created["id"], "emit", n=2)
            live = read_events(lines, 2)
            assert [e["data"]["i"] for _, e in live] == [0, 1]
        # A reconnecting EventSource sends the last id it saw and gets what came after.
        first_live = live[0][0]
        with client.stream("GET", url, headers={"Last-Event-ID": str(first_live)}) as r:
            assert read_events(r.iter_lines(), 1) == [live[1]]
    finally:
        client.delete(f"/backends/{created['id']}")


def test_events_stream_ends_when_the_backend_is_deleted(client: httpx.Client) -> None:
    created = client.post("/backends", json={"script": PROBE}).json()
    with client.stream("GET", f"/backends/{created['id']}/events") as r:
        client.delete(f"/backends/{created['id']}")
        lines = list(r.iter_lines())
    assert "event: end" in lines


# -- JupyterLab ----------------------------------------------------------------------------------


def test_jupyterlab_sees_and_opens_a_backend(service: ServiceProcess, client: httpx.Client) -> None:
    created = client.post("/backends", json={"script": PROBE}).json()
    try:
        listed = {k["id"]: k for k in client.get("/api/kernels").json()}
        assert created["kernel_id"] in listed
        for _ in range(3):
            call(client, created["id"], "increment")
        # The backend instance is live in its kernel: a Jupyter client reads its state.
        seen = asyncio.run(execute_over_websocket(service, created["kernel_id"], "backend.counter"))
        assert seen == "3"
        # ...and can change it; the host sees the change on its next call.
        asyncio.run(execute_over_websocket(service, created["kernel_id"], "backend.counter = 10"))
        assert call(client, created["id"], "increment").json()["result"] == {"count": 11}
    finally:
        client.delete(f"/backends/{created['id']}")


# -- binary values and streamed generator methods ------------------------------------------------


def test_binary_values_as_base64_json_or_as_multipart_parts(
    client: httpx.Client, probe: dict[str, Any]
) -> None:
    path = f"/backends/{probe['id']}/call"
    body = client.post(path, json={"cmd": "grid"}).json()  # JSON, the default
    assert body["result"]["kind"] == "ndarray" and body["result"]["__bridge_buffer__"] is None
    assert body["result"]["dtype"] == "<f4" and body["result"]["shape"] == [2, 3]
    expected = np.arange(6, dtype="float32").tobytes()
    r = client.post(path, json={"cmd": "grid"}, headers={"Accept": "multipart/mixed"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("multipart/mixed;")
    text, parts = multipart.decode(r.content, r.headers["content-type"])
    answer = httpx.Response(200, content=text).json()
    assert answer["success"] is True and answer["result"]["__bridge_buffer__"] == 0
    assert "base64" not in answer["result"] and [bytes(p) for p in parts] == [expected]
    # An answer with no binary value stays JSON.
    r = client.post(path, json={"cmd": "increment"}, headers={"Accept": "multipart/mixed"})
    assert r.headers["content-type"].startswith("application/json")

    # Requests: a multipart body whose params name its parts; base64 inline in JSON.
    value = {"__bridge_buffer__": 0, "kind": "ndarray", "dtype": "<i2", "shape": [2, 2]}
    chunks, content_type = multipart.encode(
        httpx.Request("POST", "/", json={"cmd": "describe", "params": {"value": value}}).content,
        [np.arange(4, dtype="int16").tobytes()],
    )
    r = client.post(
        path,
        content=b"".join(bytes(c) for c in chunks),
        headers={"Content-Type": content_type},
    )
    assert r.json()["result"] == {"type": "ndarray", "dtype": "int16", "shape": [2, 2], "length": 2}
    inline = {"__bridge_buffer__": None, "kind": "bytes", "base64": "AAEC"}
    described = call(client, probe["id"], "describe", value=inline).json()["result"]
    assert described == {"type": "bytes", "dtype": "", "shape": [], "length": 3}
    body = failure(call(client, probe["id"], "describe", value=value), 400, "bad_request")
    assert body["field"] == "params.value" and "part 0" in body["error"]


def sse_events(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    event = "message"
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            yield event, httpx.Response(200, content=line[6:]).json()


def test_a_generator_method_streams_its_items_as_sse(
    client: httpx.Client, probe: dict[str, Any]
) -> None:
    path = f"/backends/{probe['id']}/call"
    events = {"Accept": "text/event-stream"}
    body = {"cmd": "count", "params": {"n": 5}}
    with client.stream("POST", path, json=body, headers=events) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        got = list(sse_events(r))
    items = [data for event, data in got if event == "item"]
    raw = {"__bridge_buffer__": None, "kind": "bytes", "base64": "AA=="}
    assert items[0] == {"i": 0, "raw": raw}
    assert items[3:] == [3, 4] and len(items) == 5
    assert got[-1][0] == "end" and got[-1][1]["success"] is True and got[-1][1]["items"] == 5

    # Closing the connection closes the generator: its finally has run when the next call
    # (which a serial backend runs after it) answers.
    body = {"cmd": "count", "params": {"n": 10**9}}
    with client.stream("POST", path, json=body, headers=events) as r:
        first = next(sse_events(r))
        assert first == ("item", {"i": 0, "raw": first[1]["raw"]})
    assert call(client, probe["id"], "closed_yet").json()["result"] is True

    # An exception after two items: the end carries it; a plain method is refused as JSON.
    body = {"cmd": "count", "params": {"n": 5, "fail_at": 2}}
    with client.stream("POST", path, json=body, headers=events) as r:
        got = list(sse_events(r))
    assert [e for e, _ in got] == ["item", "item", "end"]
    assert got[-1][1]["error_type"] == "python_error"
    assert got[-1][1]["exception"]["evalue"] == "failed at 2"
    r = client.post(path, json={"cmd": "increment"}, headers=events)
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["exception"]["ename"] == "TypeError"
    assert "not a generator method" in r.json()["exception"]["evalue"]
    # Without the event stream, a generator's call answers its items as a list.
    items = call(client, probe["id"], "count", n=5).json()["result"]
    assert items[3:] == [3, 4]
