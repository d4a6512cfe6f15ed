"""Gateway mode against real gateways on 127.0.0.1: the same checks locally and remotely, then
the faults only a gateway has.

``target`` is one parametrized fixture: a bridge on local kernels, on a Jupyter Kernel Gateway
(websocket protocol v1, ipykernel 7) and on an Enterprise Gateway (its own venv, ipykernel 6).
Each gateway is shared by the module and stopped at its end, with a check that none of its
kernels outlived it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from gateways import KINDS, GatewayProcess, alive, free_port

import bridge

pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module")
def kernel_gateway() -> Iterator[GatewayProcess]:
    gateway = GatewayProcess("kernel_gateway").start()
    yield gateway
    assert gateway.stop() == [], "kernels outlived the gateway"


@pytest.fixture(scope="module")
def enterprise_gateway() -> Iterator[GatewayProcess]:
    gateway = GatewayProcess("enterprise_gateway").start()
    yield gateway
    assert gateway.stop() == [], "kernels outlived the gateway"


@dataclass
class Target:
    kind: str
    bridge: bridge.AsyncBridge
    gateway: GatewayProcess | None


@pytest_asyncio.fixture(scope="module", params=["local", *KINDS])
async def target(request: pytest.FixtureRequest) -> AsyncIterator[Target]:
    gateway = None
    options: dict[str, Any] = {"gateway_url": ""}  # local, whatever the environment says
    if request.param != "local":
        gateway = request.getfixturevalue(request.param)
        options = {"gateway_url": gateway.url, "gateway_token": gateway.token}
    async with bridge.AsyncBridge(pool_size=2, timeout=30, **options) as b:
        yield Target(request.param, b, gateway)


def gateway_params() -> pytest.MarkDecorator:
    return pytest.mark.parametrize("target", KINDS, indirect=True)


# -- the core's behaviour, on every target --------------------------------------------------


async def test_value_stdout_stderr(target: Target) -> None:
    r = await target.bridge.execute(
        "import sys\nprint('hi')\nprint('oops', file=sys.stderr)\nreturn {'a': [1, 2.5, None]}"
    )
    assert r.success, r.error
    assert r.value == {"a": [1, 2.5, None]}
    assert r.stdout == "hi\n"
    assert r.stderr == "oops\n"
    assert (await target.bridge.evaluate("1 + 2 * 3")).value == 7
    assert (await target.bridge.execute("x = 2\nx * 21")).value == 42


async def test_mime_bundles(target: Target) -> None:
    r = await target.bridge.execute(
        "from IPython.display import HTML, display\n"
        "display(HTML('<b>shown</b>'))\n"
        "return HTML('<i>value</i>')"
    )
    assert r.success, r.error
    assert r.outputs[0]["output_type"] == "display_data"
    assert r.outputs[0]["data"]["text/html"] == "<b>shown</b>"
    assert r.data["text/html"] == "<i>value</i>"
    assert "text/plain" in r.data


async def test_traceback(target: Target) -> None:
    r = await target.bridge.execute("def f():\n    raise ValueError('boom')\nf()")
    assert not r.success
    assert r.error is not None
    assert (r.error.ename, r.error.evalue) == ("ValueError", "boom")
    assert "f()" in r.error.traceback
    assert "\x1b[" not in r.error.traceback
    with pytest.raises(bridge.ExecutionError, match="boom"):
        r.raise_for_error()


async def test_inputs_isolation_attest(target: Target) -> None:
    b = target.bridge
    r = await b.execute("return upstream['n'] + 1", inputs={"upstream": {"n": 41}})
    assert r.value == 42
    await b.execute("leftover = 1")
    assert (await b.execute("return 'leftover' in globals()")).value is False
    seen: list[dict[str, Any]] = []
    b.on_attest = seen.append
    try:
        r = await b.execute("attest('user:alice', 'reviewed', contexts='doc:42')\nreturn 1")
    finally:
        b.on_attest = None
    assert r.success, r.error
    assert [a["subjects"] for a in r.attestations] == [["user:alice"]]
    assert r.attestations[0]["source"] == "python"
    assert seen == r.attestations


async def test_execute_file_and_variables(target: Target, tmp_path: Any) -> None:
    script = tmp_path / "job.py"
    script.write_text("import os\nname = os.path.basename(__file__)\ncount = 3\n")
    r = await target.bridge.execute_file(script, capture_variables=True)
    assert r.success, r.error
    assert r.variables == {"name": "job.py", "count": 3}


async def test_session_keeps_state(target: Target) -> None:
    async with target.bridge.session() as s:
        await s.execute("x = 41")
        assert (await s.evaluate("x + 1")).value == 42


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
    if target.kind == "local":
        assert caught.value.exit_code == 3
    else:  # the gateway shows a death as a restart: the state is gone all the same
        assert "died" in str(caught.value) and target.gateway is not None
        assert target.gateway.url in str(caught.value)
    assert (await target.bridge.evaluate("1 + 1")).value == 2


# -- only on a gateway ----------------------------------------------------------------------


@gateway_params()
async def test_kernel_killed_on_the_gateway_host(target: Target) -> None:
    assert target.gateway is not None
    async with target.bridge.session() as s:
        pid = (await s.evaluate("__import__('os').getpid()")).value
        assert pid in target.gateway.kernel_processes()  # a child of the gateway, not ours
        call = asyncio.ensure_future(s.execute("import time\ntime.sleep(30)"))
        await asyncio.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        with pytest.raises(bridge.KernelDied):
            await call
        assert time.monotonic() - killed < 5
        with pytest.raises(bridge.KernelDied, match="state is lost"):
            await s.execute("1")


@gateway_params()
async def test_kernel_deleted_by_someone_else(target: Target) -> None:
    gateway = target.gateway
    assert gateway is not None
    async with target.bridge.session() as s:
        call = asyncio.ensure_future(s.execute("import time\ntime.sleep(30)"))
        await asyncio.sleep(0.5)
        status, _ = await asyncio.to_thread(
            gateway.request, "DELETE", f"/api/kernels/{s.kernel_id}"
        )
        assert status == 204
        deleted = time.monotonic()
        with pytest.raises(bridge.KernelDied):
            await call
        assert time.monotonic() - deleted < 5


@gateway_params()
async def test_missing_kernels_are_found_by_rest(target: Target) -> None:
    """The liveness backstop (for deaths the websocket does not show): Kernel Gateway lists
    kernels in one request, Enterprise Gateway (listing off by default) one by one."""
    factory = target.bridge.factory
    assert isinstance(factory, bridge._gateway.GatewayFactory)
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
            assert not kernel.client.v1  # type: ignore[attr-defined]
            r = await b.execute("print('legacy')\nreturn [1, 'two']")
            assert (r.stdout, r.value) == ("legacy\n", [1, "two"])
            call = asyncio.ensure_future(b.execute("import time\ntime.sleep(30)"))
            await asyncio.sleep(0.5)
            stopping = asyncio.ensure_future(asyncio.to_thread(gateway.stop))
            stopped = time.monotonic()
            with pytest.raises(bridge.KernelDied, match="gateway"):
                await call
            assert time.monotonic() - stopped < 5
            assert await stopping == []
    finally:
        gateway.stop()
