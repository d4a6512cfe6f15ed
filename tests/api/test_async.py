"""AsyncBridge under concurrency: calls spread over the pool, outputs stay with their call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from calls import running_execute
from jupyter_core.paths import jupyter_runtime_dir
from paths import EXAMPLES
from procs import alive, is_kernel, tagged_processes

import bridge

ECHO = EXAMPLES / "echo_backend.py"


@pytest.mark.asyncio
async def test_concurrent_calls_spread_and_keep_their_own_output(
    abridge: bridge.AsyncBridge,
) -> None:
    code = (
        "import os, time\n"
        "for i in range(3):\n"
        "    print(token, i, flush=True)\n"
        "    time.sleep(0.01)\n"
        "return os.getpid()"
    )
    tokens = [f"token-{n:03d}" for n in range(24)]
    results = await asyncio.gather(*(abridge.execute(code, inputs={"token": t}) for t in tokens))
    for token, r in zip(tokens, results, strict=True):
        assert r.success, r.error
        assert r.stdout == "".join(f"{token} {i}\n" for i in range(3))
    assert len({r.value for r in results}) == 2  # both kernels of the pool did work


@pytest.mark.asyncio
async def test_sessions_run_beside_one_off_calls(abridge: bridge.AsyncBridge) -> None:
    async with abridge.session() as s:
        await s.execute("counter = 0")
        await asyncio.gather(*(s.execute("counter += 1") for _ in range(10)))
        one_offs = await asyncio.gather(*(abridge.evaluate(f"{n} * 2") for n in range(5)))
        assert (await s.evaluate("counter")).value == 10
    assert [r.value for r in one_offs] == [0, 2, 4, 6, 8]


@pytest.mark.asyncio
async def test_on_attest_sees_each_record_as_it_is_made() -> None:
    seen: list[tuple[float, dict[str, Any]]] = []
    later: list[str] = []
    heard = asyncio.Event()

    async def async_hook(record: dict[str, Any]) -> None:
        later.append(record["subjects"][0])
        heard.set()

    def hook(record: dict[str, Any]) -> None:
        seen.append((time.monotonic(), record))

    async with bridge.AsyncBridge(pool_size=1, on_attest=hook) as b:
        started = time.monotonic()
        r = await b.execute(
            "import time\nattest('early', 'made')\ntime.sleep(1)\nattest('late', 'made')"
        )
        ended = time.monotonic()
        assert [rec for _, rec in seen] == r.attestations
        assert seen[0][0] - started < ended - started - 0.5  # delivered during the call
        b.on_attest = async_hook
        await b.execute("attest('from-async-hook', 'made')")
        await asyncio.wait_for(heard.wait(), 10)
        assert later == ["from-async-hook"]


@pytest.mark.asyncio
async def test_a_cancelled_call_leaves_a_usable_kernel() -> None:
    async with bridge.AsyncBridge(pool_size=1) as b:
        pid = (await b.evaluate("__import__('os').getpid()")).value
        task = await running_execute(b, 60)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Winding the call down, the kernel is still the pool's: the next call waits for it
        # instead of starting a surplus kernel.
        status = b.status()
        assert (status.idle + status.busy, status.starting) == (1, 0)
        r = await b.execute("import os\nreturn os.getpid()", timeout=10)
        assert r.value == pid  # interrupted and reused, not replaced
        assert len(b.pool.kernels) == 1 and b.status().starting == 0


@pytest.mark.asyncio
async def test_calls_after_close_fail_clearly() -> None:
    b = bridge.AsyncBridge(pool_size=1)
    with pytest.raises(bridge.BridgeClosed, match="not started"):
        await b.execute("1")
    async with b:
        pass
    with pytest.raises(bridge.BridgeClosed, match="closed"):
        await b.execute("1")
    with pytest.raises(bridge.BridgeClosed):
        await b.start()
    with pytest.raises(bridge.BridgeClosed):
        b.python  # noqa: B018
    with pytest.raises(bridge.BridgeClosed):
        async with b.session():
            pass


# A call that says when it has started (its first output), then sleeps.
SLEEPER = "print('started', flush=True)\nimport time\ntime.sleep({})"


def _set(event: asyncio.Event) -> Callable[[dict[str, Any]], None]:
    return lambda _output: event.set()


@pytest.mark.asyncio
async def test_closing_during_calls_fails_them_without_hanging() -> None:
    b = bridge.AsyncBridge(pool_size=1)
    await b.start()
    started = asyncio.Event()
    running = asyncio.ensure_future(b.execute(SLEEPER.format(60), on_output=_set(started)))
    waiting = asyncio.ensure_future(b.execute("1"))
    await started.wait()  # the first call runs; the second waits for its kernel
    await asyncio.wait_for(b.aclose(), 15)
    for task in (running, waiting):
        with pytest.raises((bridge.KernelDied, bridge.BridgeClosed)):
            await asyncio.wait_for(task, 5)


@pytest.mark.asyncio
async def test_other_clients_of_a_kernel_do_not_disturb_the_bridge(
    abridge: bridge.AsyncBridge,
) -> None:
    async with abridge.session() as s:
        kc = (
            s.kernel.transport.manager.client()
        )  # shares the manager's Session, as km.client() does
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=30)
            reply = await kc.execute_interactive("y = 5", output_hook=lambda m: None, timeout=30)
            assert reply["content"]["status"] == "ok"
            mine, theirs = await asyncio.gather(
                s.evaluate("y * 2", timeout=10),
                kc.execute_interactive("z = y + 1", output_hook=lambda m: None, timeout=30),
            )
            assert mine.value == 10 and theirs["content"]["status"] == "ok"
            assert (await s.evaluate("z", timeout=10)).value == 6
        finally:
            kc.stop_channels()


@pytest.mark.asyncio
async def test_pool_size_zero_serves_sessions_and_refuses_one_off_calls() -> None:
    async with bridge.AsyncBridge(pool_size=0) as b:
        assert b.pool.kernels == []
        with pytest.raises(bridge.InvalidRequest, match="pool_size=0"):
            await b.execute("1")
        async with b.session() as s:
            assert (await s.evaluate("40 + 2")).value == 42


@pytest.mark.asyncio
async def test_back_to_back_calls_do_not_grow_the_pool() -> None:
    async with bridge.AsyncBridge(pool_size=1) as b:
        pids = {(await b.evaluate("__import__('os').getpid()")).value for _ in range(10)}
        # A surplus start is counted the moment the pool begins it (a finished one would be
        # in the factory's kernels): no window to wait for.
        assert b.status().starting == 0
        assert len(pids) == 1
        assert len(b.factory.kernels) == 1 and len(b.pool.kernels) == 1


@pytest.mark.asyncio
async def test_closing_while_starting_leaves_nothing_running() -> None:
    kernels = _kernel_processes()
    b = bridge.AsyncBridge(pool_size=1)
    starting = asyncio.ensure_future(b.start())
    deadline = time.monotonic() + 60
    while not _kernel_processes() - kernels:  # the start is under way: its kernel exists
        assert time.monotonic() < deadline, "no kernel process was started"
        await asyncio.sleep(0.01)
    await b.aclose()
    with pytest.raises(bridge.BridgeClosed, match="closed while it was starting"):
        await starting
    with pytest.raises(bridge.BridgeClosed):
        await b.evaluate("1")
    deadline = time.monotonic() + 10  # a SIGKILLed kernel takes a moment to be reaped
    while _kernel_processes() - kernels and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert _kernel_processes() - kernels == set()


@pytest.mark.asyncio
async def test_a_timeout_racing_the_await_fallback_is_an_execution_timeout() -> None:
    async with bridge.AsyncBridge(pool_size=1) as b:
        for _ in range(5):
            try:
                r = await b.execute("import asyncio\nawait asyncio.sleep(0)\n1", timeout=0.002)
            except bridge.ExecutionTimeout as exc:
                assert not exc.restarted or "killed" in str(exc)
            else:
                assert r.success and r.value == 1
        assert (await b.evaluate("2")).value == 2


@pytest.mark.asyncio
async def test_a_session_call_after_a_cancelled_one_is_not_interrupted() -> None:
    async with bridge.AsyncBridge(pool_size=0) as b, b.session() as s:
        await s.execute("x = 1")
        started = asyncio.Event()
        task = asyncio.ensure_future(s.execute(SLEEPER.format(60), on_output=_set(started)))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        r = await s.execute("import time\ntime.sleep(0.2)\nx + 1", timeout=10)
        assert r.success and r.value == 2


@pytest.mark.asyncio
async def test_waiting_for_a_free_kernel_is_bounded_by_the_timeout() -> None:
    async with bridge.AsyncBridge(pool_size=1) as b:
        started = asyncio.Event()
        busy = asyncio.ensure_future(
            b.execute(SLEEPER.format(3), timeout=10, on_output=_set(started))
        )
        await started.wait()
        started = time.monotonic()
        with pytest.raises(bridge.ExecutionTimeout, match="no kernel was free"):
            await b.execute("1", timeout=0.5)
        assert time.monotonic() - started < 2
        assert (await busy).success


@pytest.mark.asyncio
async def test_host_secrets_stay_out_of_the_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTER_TOKEN", "host-secret")
    monkeypatch.setenv("JUPYTER_GATEWAY_AUTH_TOKEN", "gateway-secret")
    async with bridge.AsyncBridge(pool_size=1, gateway_url="") as b:
        names = "('JUPYTER_TOKEN', 'JUPYTER_GATEWAY_AUTH_TOKEN')"
        r = await b.evaluate(f"[k for k in {names} if k in __import__('os').environ]")
        assert r.value == []


def _kernel_processes() -> set[int]:
    return {pid for pid, _ in tagged_processes() if is_kernel(pid)}


def _connection_files() -> set[Path]:
    return set(Path(jupyter_runtime_dir()).glob("kernel-*.json"))


@pytest.mark.asyncio
@pytest.mark.parametrize("delay", [0.01, 0.03, 0.06, 0.1, 0.2, 0.5])
async def test_a_start_cancelled_midway_leaves_no_kernel(
    delay: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spawn given up on (an HTTP client gone, a wait_for past its time) at any moment of
    its kernel's start: the kernel does not outlive the cancel, nor its connection file."""
    # A runtime folder of its own: the shared one sees other kernels come and go meanwhile.
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    kernels, files = _kernel_processes(), _connection_files()
    async with bridge.AsyncBridge(pool_size=0) as b:
        task = asyncio.ensure_future(b.spawn(ECHO))
        await asyncio.sleep(delay)
        if task.done():  # the start won the race (a forked kernel is quick): terminate it
            await (await task).terminate()
        else:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        deadline = time.monotonic() + 5  # SIGKILLed processes take a moment to be reaped
        while _kernel_processes() - kernels and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert _kernel_processes() - kernels == set()
        assert _connection_files() - files == set()
        async with b.session() as s:  # the bridge goes on working
            assert (await s.evaluate("6 * 7")).value == 42


@pytest.mark.asyncio
async def test_kernel_language_reads_the_kernel_specs_where_the_kernels_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tmp_path / "jupyter" / "kernels" / "fake-r"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text('{"argv": ["R"], "display_name": "R", "language": "R"}')
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    async with bridge.AsyncBridge(pool_size=0) as b:  # no kernel needed to read specs
        assert await b.kernel_language("fake-r") == "R"
        assert await b.kernel_language("python3") == "python"  # ipykernel's own
        assert await b.kernel_language("kernel-bridge") == "python"  # the bridge's
        assert await b.kernel_language("no-such-kernel") is None
        with pytest.raises(bridge.InvalidRequest, match="kernel spec name"):
            await b.kernel_language("")


@pytest.mark.asyncio
async def test_a_session_folder_is_checked_against_a_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "inside").mkdir(parents=True)
    (root / "file.txt").write_text("x")
    b = bridge.AsyncBridge(pool_size=0)  # the checks need no kernel: nothing starts
    assert b.session(cwd="inside", root=root).cwd == str((root / "inside").resolve())
    for cwd, reason in [
        (str(tmp_path), "forbidden"),
        ("../root/../..", "forbidden"),
        ("missing", "not_found"),
        ("file.txt", "bad_request"),
    ]:
        with pytest.raises(bridge.ScriptRefused) as refused:
            b.session(cwd=cwd, root=root)
        assert refused.value.reason == reason, cwd
    await b.aclose()


@pytest.mark.asyncio
async def test_a_session_closed_without_waiting_is_shut_down_by_the_bridge() -> None:
    async with bridge.AsyncBridge(pool_size=0) as b:
        s = b.session()
        await s.start()
        pid = (await s.evaluate("__import__('os').getpid()")).value
        await s.aclose(wait=False)  # returns at once; the kernel goes in the background
        with pytest.raises(bridge.BridgeClosed):
            await s.evaluate("1")
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert not alive(pid)
        s2 = b.session()
        await s2.start()
        pid2 = (await s2.evaluate("__import__('os').getpid()")).value
        await s2.aclose(wait=False)
    assert not alive(pid2)  # the bridge's close waited for it


@pytest.mark.asyncio
async def test_on_kernel_activity_hears_each_iopub_message_with_its_state() -> None:
    """A call's busy and idle status (which the bridge itself skips unread) and its output
    reach the hook with the request's type, and only the status messages carry a state."""
    heard: list[tuple[str, str, str | None, str | None]] = []
    idle = asyncio.Event()

    def hook(kernel_id: str, msg_type: str, parent: str | None, state: str | None) -> None:
        heard.append((kernel_id, msg_type, parent, state))
        if parent == "comm_msg" and state == "idle" and ("comm_msg", "busy") in states():
            idle.set()

    def states() -> list[tuple[str | None, str | None]]:
        return [(m[2], m[3]) for m in heard if m[1] == "status"]

    async with bridge.AsyncBridge(pool_size=1, on_kernel_activity=hook) as b:
        kernel_id = b.pool.kernels[0].kernel_id
        heard.clear()  # the start-up's (its last idle may still come: an idle counts after a busy)
        r = await b.execute("print('hi')\nreturn 1")
        assert r.stdout == "hi\n" and r.value == 1
        async with asyncio.timeout(30):
            await idle.wait()  # the idle status may follow the reply
    assert {m[0] for m in heard} == {kernel_id}
    busy = states().index(("comm_msg", "busy"))
    assert ("comm_msg", "idle") in states()[busy + 1 :]
    assert ("stream", "comm_msg", None) in {m[1:] for m in heard}
    assert all(m[3] is None for m in heard if m[1] != "status")
