"""Contexts over HTTP: sessions with ids, Jupyter Server kernels, their limits and their deaths."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from procs import alive
from service_process import KernelSocket, ServiceProcess, idle

MAX_CONTEXTS = 3


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("root")
    (folder / "work").mkdir()
    (folder / "work" / "data.txt").write_text("data in work\n")
    (folder / "step.py").write_text("steps = globals().get('steps', 0) + 1\nprint('step', steps)\n")
    return folder


@pytest.fixture(scope="module")
def service(root: Path) -> Iterator[ServiceProcess]:
    with ServiceProcess(
        "--root", str(root), f"--BridgeApp.max_contexts={MAX_CONTEXTS}", pool_size=1
    ) as svc:
        yield svc


@pytest.fixture(scope="module")
def client(service: ServiceProcess) -> Iterator[httpx.Client]:
    with service.client() as c:
        yield c


@pytest.fixture
def context(client: httpx.Client) -> Iterator[dict[str, Any]]:
    r = client.post("/contexts", json={})
    assert r.status_code == 201, r.text
    yield r.json()
    client.delete(f"/contexts/{r.json()['id']}")


def test_state_lasts_from_call_to_call_and_restart_clears_it(
    client: httpx.Client, root: Path
) -> None:
    r = client.post(
        "/contexts",
        json={"name": "state-test", "env": {"CTX_MODE": "on"}, "cwd": "work", "timeout_secs": 60},
    )
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["name"] == "state-test"
    assert info["cwd"] == str((root / "work").resolve())
    assert set(info) >= {"id", "name", "kernel_id", "created"}
    base = f"/contexts/{info['id']}"
    try:
        run = client.post(f"{base}/execute", json={"content": "import os\ncounter = 41"})
        assert run.status_code == 200 and run.json()["success"], run.text
        r = client.post(f"{base}/execute", json={"content": "counter += 1\nreturn counter"})
        assert r.json()["result"] == 42
        r = client.post(
            f"{base}/evaluate",
            json={"expr": "(counter, os.environ['CTX_MODE'], open('data.txt').read())"},
        )
        assert r.json()["result"] == [42, "on", "data in work\n"]
        # The working folder is state too: a chdir lasts.
        client.post(f"{base}/execute", json={"content": "os.chdir('..')"})
        assert client.post(f"{base}/evaluate", json={"expr": "os.getcwd()"}).json()[
            "result"
        ] == str(root.resolve())
        # Files run in the context's namespace, and see what it has.
        for n in (1, 2):
            r = client.post(f"{base}/execute-file", json={"path": "step.py"})
            assert r.json()["stdout"] == f"step {n}\n", r.text
        # The one-off pool does not see any of it.
        assert (
            client.post("/evaluate", json={"expr": "'counter' in globals()"}).json()["result"]
            is False
        )
        r = client.post(f"{base}/restart")
        assert r.status_code == 200, r.text
        after = r.json()
        assert after["id"] == info["id"] and after["name"] == "state-test"
        assert after["kernel_id"] != info["kernel_id"]
        r = client.post(f"{base}/evaluate", json={"expr": "counter"})
        assert r.status_code == 200 and "NameError" in r.json()["error"]
        # Same env and cwd after the restart.
        r = client.post(
            f"{base}/evaluate",
            json={"expr": "(__import__('os').environ['CTX_MODE'], __import__('os').getcwd())"},
        )
        assert r.json()["result"] == ["on", str((root / "work").resolve())], r.text
    finally:
        assert client.delete(base).json() == {"id": info["id"], "deleted": True}
    assert client.get(base).status_code == 404
    assert client.delete(base).status_code == 404
    assert client.post(f"{base}/execute", json={"content": "1"}).status_code == 404


def test_contexts_are_jupyter_server_kernels_listed_by_the_service(
    client: httpx.Client, context: dict[str, Any]
) -> None:
    kernels = {k["id"] for k in client.get("/api/kernels").json()}
    assert context["kernel_id"] in kernels
    listed = client.get("/contexts").json()["contexts"]
    assert context["id"] in {c["id"] for c in listed}
    got = client.get(f"/contexts/{context['id']}").json()
    assert got["name"] == f"context-{context['id'][:8]}"
    assert got["alive"] is True and got["busy"] is False
    client.delete(f"/contexts/{context['id']}")
    assert context["kernel_id"] not in {k["id"] for k in client.get("/api/kernels").json()}


def test_a_dead_kernel_answers_kernel_died_until_restarted(
    client: httpx.Client, context: dict[str, Any]
) -> None:
    base = f"/contexts/{context['id']}"
    client.post(f"{base}/execute", json={"content": "x = 1"})
    pid = client.post(f"{base}/evaluate", json={"expr": "__import__('os').getpid()"}).json()[
        "result"
    ]
    r = client.post(
        f"{base}/execute", json={"content": "import os, signal\nos.kill(os.getpid(), 9)"}
    )
    assert r.status_code == 503 and r.json()["error_type"] == "kernel_died", r.text
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid)
    for path, body in (
        ("execute", {"content": "1"}),
        ("evaluate", {"expr": "x"}),
        ("execute-file", {"path": "step.py"}),
    ):
        r = client.post(f"{base}/{path}", json=body)
        assert r.status_code == 503, r.text
        assert r.json()["error_type"] == "kernel_died"
        assert "restart" in r.json()["error"]
    assert client.get(base).json()["alive"] is False
    assert client.post(f"{base}/restart").json()["alive"] is True
    r = client.post(f"{base}/evaluate", json={"expr": "1 + 1"})
    assert r.json()["result"] == 2


def test_refusals_name_what_is_wrong(client: httpx.Client, root: Path) -> None:
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"cwd": "/"}, 403, "outside"),
        ({"cwd": "../"}, 403, "outside"),
        ({"cwd": "no-such-folder"}, 404, "no such folder"),
        ({"cwd": "step.py"}, 400, "not a folder"),
        ({"name": "has space"}, 400, "name"),
        ({"name": ""}, 400, "name"),
        ({"env": {"A": 1}}, 400, "env"),
        ({"env": {"A=B": "1"}}, 400, "env"),
        ({"timeout_secs": 0}, 400, "timeout_secs"),
        ({"nope": 1}, 400, "unknown field"),
    ]
    for body, status, word in cases:
        r = client.post("/contexts", json=body)
        assert r.status_code == status, (body, r.text)
        assert word in r.json()["error"], (body, r.text)
    assert client.get("/contexts").json()["contexts"] == []  # nothing was left behind


def test_an_env_too_large_for_exec_is_a_400_naming_env_before_a_kernel_starts(
    client: httpx.Client,
) -> None:
    """Past what exec() takes a launch fails with "Argument list too long": not a busy
    service (a client would retry forever) but a refusal naming env, before any start."""
    kernels = {k["id"] for k in client.get("/api/kernels").json()}
    for env in ({"BIG": "x" * 300_000}, {f"V{i}": "x" * 100_000 for i in range(8)}):
        r = client.post("/contexts", json={"name": "too-big", "env": env})
        assert r.status_code == 400, r.text
        assert r.json()["error"].startswith("env"), r.text
    assert client.get("/contexts").json()["contexts"] == []
    assert {k["id"] for k in client.get("/api/kernels").json()} == kernels
    r = client.post("/contexts", json={"name": "big-enough", "env": {"BIG": "x" * 100_000}})
    assert r.status_code == 201, r.text
    try:
        code = {"content": "import os\nreturn len(os.environ['BIG'])"}
        assert client.post(f"/contexts/{r.json()['id']}/execute", json=code).json()["result"] == (
            100_000
        )
    finally:
        client.delete(f"/contexts/{r.json()['id']}")


def test_names_are_unique_and_the_limit_answers_429(client: httpx.Client) -> None:
    made = []
    try:
        r = client.post("/contexts", json={"name": "only-one"})
        assert r.status_code == 201
        made.append(r.json()["id"])
        r = client.post("/contexts", json={"name": "only-one"})
        assert r.status_code == 409 and r.json()["error_type"] == "conflict"
        while len(made) < MAX_CONTEXTS:
            r = client.post("/contexts")
            assert r.status_code == 201, r.text
            made.append(r.json()["id"])
        r = client.post("/contexts")
        assert r.status_code == 429 and r.json()["error_type"] == "limit_reached"
        assert str(MAX_CONTEXTS) in r.json()["error"]
    finally:
        for context_id in made:
            client.delete(f"/contexts/{context_id}")
    assert client.post("/contexts").status_code == 201  # room again
    for c in client.get("/contexts").json()["contexts"]:
        client.delete(f"/contexts/{c['id']}")


def _settled_kernels(client: httpx.Client, owned: int) -> set[str]:
    """/api/kernels once it lists the pool's kernel and *owned* others (the pool refills in
    the background), and each of those others has exactly one session."""
    deadline = time.monotonic() + 60
    while True:
        kernels = {k["id"] for k in client.get("/api/kernels").json()}
        sessions = [s["kernel"]["id"] for s in client.get("/api/sessions").json()]
        if len(kernels) == 1 + owned and len(sessions) == len(set(sessions)) == owned:
            return kernels
        assert time.monotonic() < deadline, f"kernels {kernels}, sessions on {sessions}"
        time.sleep(0.1)


def _at_once(*calls: Any) -> list[httpx.Response]:
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def test_concurrent_restarts_of_one_context_leave_one_kernel(
    client: httpx.Client, service: ServiceProcess
) -> None:
    r = client.post("/contexts", json={"name": "rs"})
    assert r.status_code == 201, r.text
    context_id = r.json()["id"]
    with service.client() as a, service.client() as b, service.client() as c:
        answers = _at_once(
            *(lambda x=x: x.post(f"/contexts/{context_id}/restart") for x in (a, b, c))
        )
    assert [r.status_code for r in answers] == [200, 200, 200], [r.text for r in answers]
    kernels = _settled_kernels(client, owned=1)
    info = client.get(f"/contexts/{context_id}").json()
    assert info["alive"] and info["kernel_id"] in kernels
    sessions = [(s["name"], s["kernel"]["id"]) for s in client.get("/api/sessions").json()]
    assert sessions == [("contexts/rs", info["kernel_id"])]
    assert client.delete(f"/contexts/{context_id}").status_code == 200
    _settled_kernels(client, owned=0)


def test_a_delete_during_a_restart_leaves_no_kernel(
    client: httpx.Client, service: ServiceProcess
) -> None:
    r = client.post("/contexts", json={"name": "del-rs", "env": {"X": "1"}})
    assert r.status_code == 201, r.text
    context_id = r.json()["id"]
    with service.client() as a, service.client() as b:
        restart, delete = _at_once(
            lambda: a.post(f"/contexts/{context_id}/restart"),
            lambda: b.delete(f"/contexts/{context_id}"),
        )
    assert delete.status_code == 200, delete.text
    # Either the restart came first and finished, or the context was gone when it came.
    assert restart.status_code in (200, 404), restart.text
    assert client.get(f"/contexts/{context_id}").status_code == 404
    _settled_kernels(client, owned=0)


def test_a_name_is_reserved_while_its_context_starts(
    client: httpx.Client, service: ServiceProcess
) -> None:
    body = {"name": "one-name", "env": {"X": "1"}}  # a kernel of its own: slow to start
    with service.client() as a, service.client() as b, service.client() as c:
        answers = _at_once(*(lambda x=x: x.post("/contexts", json=body) for x in (a, b, c)))
    assert sorted(r.status_code for r in answers) == [201, 409, 409], [r.text for r in answers]
    named = [c for c in client.get("/contexts").json()["contexts"] if c["name"] == "one-name"]
    assert len(named) == 1
    assert client.delete(f"/contexts/{named[0]['id']}").status_code == 200
    _settled_kernels(client, owned=0)
    r = client.post("/contexts", json=body)  # free again once deleted
    assert r.status_code == 201, r.text
    client.delete(f"/contexts/{r.json()['id']}")


def test_calls_in_one_context_run_one_at_a_time(
    service: ServiceProcess, context: dict[str, Any]
) -> None:
    base = f"/contexts/{context['id']}"
    code = (
        "import time\nlog = globals().setdefault('log', [])\n"
        "log.append(n)\ntime.sleep(0.3)\nlog.append(n)"
    )
    with service.client() as c, concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = [
            pool.submit(c.post, f"{base}/execute", json={"content": code, "inputs": {"n": n}})
            for n in range(3)
        ]
        assert all(f.result().json()["success"] for f in futures)
        log = c.post(f"{base}/evaluate", json={"expr": "log"}).json()["result"]
    assert len(log) == 6
    assert all(log[i] == log[i + 1] for i in range(0, 6, 2))  # never interleaved


def test_idle_contexts_are_culled(root: Path) -> None:
    with (
        ServiceProcess(
            "--root", str(root), "--BridgeApp.context_idle_timeout=2", pool_size=1
        ) as svc,
        svc.client() as c,
    ):
        idle = c.post("/contexts", json={"name": "idle"}).json()
        busy = c.post("/contexts", json={"name": "busy"}).json()
        # A call longer than the idle timeout: a context with a call running is not idle.
        r = c.post(
            f"/contexts/{busy['id']}/execute",
            json={"content": "import time\ntime.sleep(3.5)\nreturn 'finished'"},
        )
        assert r.json()["result"] == "finished"
        assert c.get(f"/contexts/{idle['id']}").status_code == 404
        assert idle["kernel_id"] not in {k["id"] for k in c.get("/api/kernels").json()}
        assert c.get(f"/contexts/{busy['id']}").status_code == 200
        deadline = time.monotonic() + 20
        while c.get(f"/contexts/{busy['id']}").status_code == 200:
            assert time.monotonic() < deadline, "the idle context was never culled"
            time.sleep(0.25)


def test_env_values_reach_the_kernel_and_secrets_do_not(
    client: httpx.Client, service: ServiceProcess
) -> None:
    r = client.post("/contexts", json={"env": {"ONLY_HERE": "yes"}})
    base = f"/contexts/{r.json()['id']}"
    try:
        got = client.post(
            f"{base}/evaluate",
            json={
                "expr": "(__import__('os').environ.get('ONLY_HERE'), "
                "'JUPYTER_TOKEN' in __import__('os').environ)"
            },
        ).json()["result"]
        assert got == ["yes", False]
        assert os.environ.get("ONLY_HERE") is None
    finally:
        client.delete(base)


def kernel_record(client: httpx.Client, kernel_id: str, state: str) -> dict[str, Any]:
    """Jupyter Server's record of the kernel (/api/kernels/{id}) once it shows *state*."""
    deadline = time.monotonic() + 60
    while True:
        record: dict[str, Any] = client.get(f"/api/kernels/{kernel_id}").json()
        if record["execution_state"] == state:
            return record
        assert time.monotonic() < deadline, f"still {record['execution_state']}, not {state}"


def wait_for(gate: Path) -> str:
    """Kernel code that runs until *gate* exists."""
    return f"import os, time\nwhile not os.path.exists({str(gate)!r}):\n    time.sleep(0.005)\n"


def test_the_server_tracks_activity_of_bridge_calls_and_of_other_clients(
    service: ServiceProcess, client: httpx.Client, context: dict[str, Any], tmp_path: Path
) -> None:
    """Busy while a call runs, idle after it, last_activity moved: for a call of the bridge
    and for an execute_request of another client (a console on the kernel's websocket),
    though the server no longer watches the bridge's kernels itself (bridge/server/activity.py)."""
    kernel_id = context["kernel_id"]
    first = kernel_record(client, kernel_id, "idle")
    gate = tmp_path / "bridge-call"
    with concurrent.futures.ThreadPoolExecutor(1) as pool, service.client() as other:
        url = f"/contexts/{context['id']}/execute"
        call = pool.submit(other.post, url, json={"content": wait_for(gate) + "return 7"})
        kernel_record(client, kernel_id, "busy")
        gate.touch()
        assert call.result().json()["result"] == 7
    after_call = kernel_record(client, kernel_id, "idle")
    assert after_call["last_activity"] > first["last_activity"]  # ISO 8601, UTC: in order

    console_gate = tmp_path / "console"

    async def console() -> None:
        async with KernelSocket(service, kernel_id) as socket:
            msg_id = socket.execute(wait_for(console_gate) + "6 * 7")
            await asyncio.to_thread(kernel_record, client, kernel_id, "busy")
            console_gate.touch()
            await socket.read(msg_id, idle)

    asyncio.run(console())
    after_console = kernel_record(client, kernel_id, "idle")
    assert after_console["last_activity"] > after_call["last_activity"]


def test_the_server_subscribes_to_no_bridge_kernel_twice(
    service: ServiceProcess, context: dict[str, Any]
) -> None:
    """Jupyter Server's own activity watcher (a second IOPub connection per kernel) is stopped
    for the bridge's kernels: the service connects to each kernel port once (the bridge's)."""
    ours = psutil.Process(service.pid).net_connections(kind="tcp")
    service_port = int(service.url.rsplit(":", 1)[1])
    outbound = collections.Counter(
        c.raddr.port
        for c in ours
        if c.raddr and c.laddr.port != service_port and c.status == psutil.CONN_ESTABLISHED
    )
    assert outbound, "the service holds no connection to its kernels"
    assert max(outbound.values()) == 1, outbound
