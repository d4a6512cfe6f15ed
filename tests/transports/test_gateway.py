"""Gateway mode against real gateways on 127.0.0.1 (tests/gateways.py, fixtures in conftest.py).

The core's behaviour checks (test_execute.py) run on the gateways through the parametrized
``shared_bridge``; here are the core's faults, comms and concurrency over a gateway's websocket,
then the faults only a gateway has: a kernel killed on the gateway's host or deleted behind our
back, the gateway stopped mid-call, a wrong token, no gateway at all. ``target`` runs each on a
Jupyter Kernel Gateway (websocket protocol v1, ipykernel 7) and on an Enterprise Gateway (its
own venv, ipykernel 6).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
import tornado.web
from calls import running_execute, running_slow_call
from gateways import GATEWAY_KINDS, GatewayProcess, bridge_options, free_port
from paths import TOOLBOX
from procs import alive

import bridge

pytestmark = pytest.mark.asyncio


@dataclass
class Target:
    kind: str
    bridge: bridge.AsyncBridge
    gateway: GatewayProcess


@pytest_asyncio.fixture(scope="module", params=GATEWAY_KINDS)
async def target(request: pytest.FixtureRequest) -> AsyncIterator[Target]:
    """An AsyncBridge on each kind of gateway (the gateways are the session's, conftest.py)."""
    options = bridge_options(request, request.param)
    async with bridge.AsyncBridge(pool_size=2, timeout=30, **options) as b:  # type: ignore[arg-type]
        yield Target(request.param, b, request.getfixturevalue(request.param))


# -- the core's faults and comms, over the gateway's websocket ------------------------------


async def test_kernel_language_reads_the_gateways_kernel_specs(target: Target) -> None:
    assert await target.bridge.kernel_language("python3") == "python"
    assert await target.bridge.kernel_language("no-such-kernel") is None


async def test_concurrent_calls_keep_their_output(target: Target) -> None:
    code = "import time\nfor i in range(3):\n    print(tag, i, flush=True)\n    time.sleep(0.02)"
    results = await asyncio.gather(
        *(target.bridge.execute(code, inputs={"tag": f"call{n}"}) for n in range(4))
    )
    for n, r in enumerate(results):
        assert r.stdout == "".join(f"call{n} {i}\n" for i in range(3))


async def test_output_flood_arrives_in_order(target: Target) -> None:
    r = await target.bridge.execute("for i in range(20000):\n    print(i)")
    assert r.success and not r.truncated
    assert r.stdout.splitlines() == [str(i) for i in range(20000)]


async def test_comm_binary_buffers(target: Target) -> None:
    async with target.bridge.session() as s:
        await s.execute(
            "import comm\n"
            "def _target(c, msg):\n"
            "    @c.on_msg\n"
            "    def _echo(m):\n"
            "        c.send({'got': m['content']['data']}, "
            "buffers=[bytes(b)[::-1] for b in m['buffers']])\n"
            "comm.get_comm_manager().register_target('test-echo', _target)"
        )
        kernel = s.kernel
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        comm_id = kernel.open_comm(
            "test-echo", {}, lambda msg: reply.done() or reply.set_result(msg)
        )
        blob = bytes(range(256)) * 4096  # 1 MiB, every byte value
        kernel.send_comm(comm_id, {"n": 1}, buffers=[blob])
        msg = await asyncio.wait_for(reply, 10)
        assert msg["content"]["data"] == {"got": {"n": 1}}
        assert [bytes(b) for b in msg["buffers"]] == [blob[::-1]]
        with pytest.raises(bridge.InvalidRequest, match="websocket accepts"):
            kernel.send_comm(comm_id, {}, buffers=[blob * 11])  # 11 MiB: the gateway would
        assert (await s.evaluate("1 + 1")).value == 2  # drop the connection; we refuse it
        kernel.close_comm(comm_id)


async def test_timeout_interrupts_then_replaces(target: Target) -> None:
    b = target.bridge
    started = time.monotonic()
    with pytest.raises(bridge.ExecutionTimeout) as caught:
        await b.execute("import time\nprint('before', flush=True)\ntime.sleep(60)", timeout=1)
    assert not caught.value.restarted
    assert caught.value.result.stdout == "before\n"
    stubborn = "import signal, time\nsignal.signal(signal.SIGINT, lambda *_: None)\ntime.sleep(60)"
    with pytest.raises(bridge.ExecutionTimeout) as caught:
        await b.execute(stubborn, timeout=1)
    assert caught.value.restarted
    assert time.monotonic() - started < 2 * (1 + 2)
    assert (await b.evaluate("6 * 7")).value == 42  # the pool is still usable


async def test_kernel_death_is_seen(target: Target) -> None:
    started = time.monotonic()
    with pytest.raises(bridge.KernelDied) as caught:
        await target.bridge.execute("import os\nprint('bye', flush=True)\nos._exit(3)")
    assert time.monotonic() - started < 5
    assert caught.value.result is not None and caught.value.result.stdout == "bye\n"
    # No exit code through a gateway: it shows a death as a restart, the state gone all the same
    assert "died" in str(caught.value) and target.gateway.url in str(caught.value)
    assert (await target.bridge.evaluate("1 + 1")).value == 2


# -- only on a gateway ----------------------------------------------------------------------


async def test_kernel_killed_on_the_gateway_host(target: Target) -> None:
    async with target.bridge.session() as s:
        pid = (await s.evaluate("__import__('os').getpid()")).value
        assert pid in target.gateway.kernel_processes()  # a child of the gateway, not ours
        call = await running_execute(s)
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        with pytest.raises(bridge.KernelDied):
            await call
        assert time.monotonic() - killed < 5
        with pytest.raises(bridge.KernelDied, match="state is lost"):
            await s.execute("1")


async def test_kernel_deleted_by_someone_else(target: Target) -> None:
    gateway = target.gateway
    async with target.bridge.session() as s:
        call = await running_execute(s)
        status, _ = await asyncio.to_thread(
            gateway.request, "DELETE", f"/api/kernels/{s.kernel_id}"
        )
        assert status == 204
        deleted = time.monotonic()
        with pytest.raises(bridge.KernelDied):
            await call
        assert time.monotonic() - deleted < 5


async def test_missing_kernels_are_found_by_rest(target: Target) -> None:
    """The liveness backstop (for deaths the websocket does not show): Kernel Gateway lists
    kernels in one request, Enterprise Gateway (listing off by default) one by one."""
    factory = target.bridge.factory
    assert isinstance(factory, bridge.transports.gateway.factory.GatewayFactory)
    live = {k.kernel_id for k in target.bridge.pool.kernels}
    assert await factory.gateway.missing({*live, "0" * 32}) == {"0" * 32}


async def test_wrong_token_is_refused(kernel_gateway: GatewayProcess) -> None:
    before = kernel_gateway.kernel_ids()
    b = bridge.AsyncBridge(pool_size=1, gateway_url=kernel_gateway.url, gateway_token="wrong")
    with pytest.raises(bridge.KernelStartError) as caught:
        await b.start()
    await b.aclose()
    message = str(caught.value)
    assert kernel_gateway.url in message and "401" in message and "token" in message
    assert kernel_gateway.kernel_ids() == before


async def test_unreachable_gateway() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    b = bridge.AsyncBridge(pool_size=1, gateway_url=url, startup_timeout=10)
    started = time.monotonic()
    with pytest.raises(bridge.KernelStartError, match="unreachable") as caught:
        await b.start()
    await b.aclose()
    assert url in str(caught.value)
    assert time.monotonic() - started < 10


async def test_plain_http_instead_of_the_websocket() -> None:
    """A gateway (or a proxy in front of it) that answers the websocket upgrade with 200."""
    kernels: set[str] = set()

    class Kernels(tornado.web.RequestHandler):
        def post(self) -> None:
            kernel_id = str(uuid.uuid4())
            kernels.add(kernel_id)
            self.set_status(201)
            self.finish({"id": kernel_id, "name": "python3"})

    class OneKernel(tornado.web.RequestHandler):
        def delete(self, kernel_id: str) -> None:
            kernels.discard(kernel_id)
            self.set_status(204)

    class Channels(tornado.web.RequestHandler):
        def get(self, kernel_id: str) -> None:
            self.finish("not a websocket")

    app = tornado.web.Application(
        [
            (r"/api/kernels", Kernels),
            (r"/api/kernels/([^/]+)", OneKernel),
            (r"/api/kernels/([^/]+)/channels", Channels),
        ]
    )
    port = free_port()
    server = app.listen(port, address="127.0.0.1")
    url = f"http://127.0.0.1:{port}"
    threads = set(threading.enumerate())
    try:
        b = bridge.AsyncBridge(pool_size=1, gateway_url=url, startup_timeout=10)
        with pytest.raises(bridge.KernelStartError, match="not a websocket") as caught:
            await b.start()
        await b.aclose()
        assert f"ws://127.0.0.1:{port}/api/kernels/" in str(caught.value)
        assert kernels == set()  # the kernel it made was deleted
        # asyncio's default executor (tornado resolves names there) keeps idle workers
        left = {t for t in threading.enumerate() if not t.name.startswith("asyncio_")}
        assert left <= threads
    finally:
        server.stop()


async def test_a_redirect_is_not_followed() -> None:
    """A gateway that redirects the kernel start elsewhere: the start body (with its env) and
    the token must not go there; the error names where it pointed."""
    seen: list[tuple[str, str, bytes]] = []

    class Elsewhere(tornado.web.RequestHandler):
        def post(self) -> None:
            seen.append(
                (
                    self.request.path,
                    self.request.headers.get("Authorization", ""),
                    self.request.body,
                )
            )
            self.set_status(201)
            self.finish({"id": str(uuid.uuid4()), "name": "python3"})

    elsewhere = tornado.web.Application([(r"/.*", Elsewhere)])
    other_port = free_port()
    other = elsewhere.listen(other_port, address="127.0.0.1")
    target = f"http://127.0.0.1:{other_port}/api/kernels"

    class Redirecting(tornado.web.RequestHandler):
        def post(self) -> None:
            self.redirect(target, status=307)  # 307 keeps the method and the body

    app = tornado.web.Application([(r"/api/kernels", Redirecting)])
    port = free_port()
    server = app.listen(port, address="127.0.0.1")
    try:
        b = bridge.AsyncBridge(
            pool_size=1,
            gateway_url=f"http://127.0.0.1:{port}",
            gateway_token="secret-token",
            env={"KERNEL_SECRET": "s3cr3t"},
            startup_timeout=10,
        )
        with pytest.raises(bridge.KernelStartError, match="307") as caught:
            await b.start()
        await b.aclose()
        assert target in str(caught.value) and "not followed" in str(caught.value)
        assert seen == []
    finally:
        server.stop()
        other.stop()


async def test_settings_from_the_environment(
    kernel_gateway: GatewayProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_GATEWAY_URL", kernel_gateway.url)
    monkeypatch.setenv("JUPYTER_GATEWAY_AUTH_TOKEN", kernel_gateway.token)
    before = kernel_gateway.kernel_ids()
    async with bridge.AsyncBridge(pool_size=1) as b:
        assert b.gateway_url == kernel_gateway.url
        ours = kernel_gateway.kernel_ids() - before
        assert {k.kernel_id for k in b.pool.kernels} == ours
        assert (await b.evaluate("2 ** 10")).value == 1024
    assert bridge.AsyncBridge(gateway_url="").gateway_url == ""  # local, whatever the env says
    with pytest.raises(bridge.InvalidRequest, match="kernel spec"):
        bridge.AsyncBridge(python="python3")


async def test_closing_deletes_every_kernel(kernel_gateway: GatewayProcess) -> None:
    before = kernel_gateway.kernel_ids()
    options = {"gateway_url": kernel_gateway.url, "gateway_token": kernel_gateway.token}
    async with bridge.AsyncBridge(pool_size=2, **options) as b:
        session = b.session()
        await session.start()  # a session's kernel, and the pool starts a replacement
        deadline = time.monotonic() + 30
        while len(kernel_gateway.kernel_ids() - before) < 3:
            assert time.monotonic() < deadline, "the pool did not replace the kernel"
            await asyncio.sleep(0.1)
        pids = kernel_gateway.kernel_processes()
    assert kernel_gateway.kernel_ids() == before
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids - kernel_gateway.kernel_processes()):
        assert time.monotonic() < deadline, "kernel processes outlived their deletion"
        await asyncio.sleep(0.1)


async def test_gateway_stopped_mid_call() -> None:
    """On a gateway of its own, speaking the legacy (JSON) websocket protocol."""
    gateway = await asyncio.to_thread(GatewayProcess("kernel_gateway", legacy_protocol=True).start)
    try:
        options = {"gateway_url": gateway.url, "gateway_token": gateway.token}
        async with bridge.AsyncBridge(pool_size=1, **options) as b:
            kernel = b.pool.kernels[0]
            assert not kernel.transport.channels.v1  # type: ignore[attr-defined]
            r = await b.execute("print('legacy')\nreturn [1, 'two']")
            assert (r.stdout, r.value) == ("legacy\n", [1, "two"])
            call = await running_execute(b)
            stopping = asyncio.ensure_future(asyncio.to_thread(gateway.stop))
            stopped = time.monotonic()
            with pytest.raises(bridge.KernelDied, match="gateway"):
                await call
            assert time.monotonic() - stopped < 5
            assert await stopping == []
    finally:
        gateway.stop()


async def test_cli_on_a_gateway(kernel_gateway: GatewayProcess) -> None:
    before = kernel_gateway.kernel_ids()

    def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bridge", *args, "--gateway-url", kernel_gateway.url],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
            env={**os.environ, **env},
        )

    token = {"JUPYTER_GATEWAY_AUTH_TOKEN": kernel_gateway.token}
    done = await asyncio.to_thread(cli, "exec", "import os\nreturn os.getpid()", "--json", **token)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"] not in (None, os.getpid())
    done = await asyncio.to_thread(cli, "eval", "6 * 7", "--gateway-token", "wrong")
    assert done.returncode == 2
    assert kernel_gateway.url in done.stderr and "401" in done.stderr
    assert kernel_gateway.kernel_ids() == before  # the CLI deleted the kernel it made


async def test_backend_killed_on_the_gateway_host_restarts(target: Target) -> None:
    """A backend's kernel killed on the gateway's host: its call fails at once, the backend
    comes back with the script sent again, and terminate() deletes its kernel there."""
    exits: list[dict[str, Any]] = []
    restarts: list[dict[str, Any]] = []
    backend = await target.bridge.spawn(TOOLBOX, restart=True, env={"CONCURRENT": "1"})
    try:
        backend.on("exit", exits.append)
        backend.on("restart", restarts.append)
        first = backend.kernel_id
        assert target.gateway.has_kernel(first)
        assert backend.connection_file == ""  # the gateway keeps it to itself
        await backend.call("slow", {"seconds": 0})  # state the restart will lose
        pending = await running_slow_call(backend, 60)
        os.kill(backend.info["pid"], signal.SIGKILL)
        killed = time.monotonic()
        with pytest.raises(bridge.KernelDied, match="died"):
            await pending
        assert time.monotonic() - killed < 5
        deadline = time.monotonic() + 30
        while not restarts:
            assert time.monotonic() < deadline, "the backend did not come back"
            await asyncio.sleep(0.05)
        assert exits[-1]["restarting"] is True and restarts[-1]["ok"] is True
        assert backend.alive and backend.kernel_id != first
        assert (await backend.call("state"))["counter"] == 0  # a fresh run of the script
        assert not target.gateway.has_kernel(first)
    finally:
        await backend.terminate()
    assert not target.gateway.has_kernel(backend.kernel_id)
