"""Backends that die, fail to start, or are terminated: errors within their timeout, no leaks."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from calls import running_slow_call
from jupyter_client.asynchronous import AsyncKernelClient
from paths import ROOT, TOOLBOX

import bridge

ECHO = ROOT / "kernels" / "examples" / "echo_backend.py"

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def launched(launch: dict[str, bool]) -> AsyncIterator[bridge.AsyncBridge]:
    """A bridge whose kernels are forked, then one whose kernels are new interpreters."""
    async with bridge.AsyncBridge(pool_size=0, timeout=60, **launch) as b:
        yield b


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def wait_for(predicate: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_death_fails_pending_calls_and_restart_brings_it_back(
    launched: bridge.AsyncBridge,
) -> None:
    exits: list[dict[str, Any]] = []
    restarts: list[dict[str, Any]] = []
    async with await launched.spawn(TOOLBOX, restart=True, env={"CONCURRENT": "1"}) as backend:
        backend.on("exit", exits.append)
        backend.on("restart", restarts.append)
        # Each way to die: os._exit in the method, a segfault, SIGKILL from outside.
        deaths = [
            ("exit", {"code": 3, "signal": None}),
            ("segfault", {"code": None, "signal": signal.SIGSEGV}),
            ("kill", {"code": None, "signal": signal.SIGKILL}),
        ]
        for round_, (how, status) in enumerate(deaths, start=1):
            first_kernel = backend.kernel_id
            pid = backend.info["pid"]
            await backend.call("slow", {"seconds": 0})  # state that the restart will lose
            pending = await running_slow_call(backend, 60)  # slow() runs when it dies
            started = time.monotonic()
            if how == "kill":
                os.kill(pid, signal.SIGKILL)
            else:  # a concurrent backend: crash() runs while slow() is pending
                with pytest.raises(bridge.KernelDied):
                    await backend.call("crash", {"how": how})
            with pytest.raises(bridge.KernelDied) as info:
                await pending
            assert time.monotonic() - started < 5
            assert "died" in str(info.value)
            assert (info.value.exit_code, info.value.signal) == (status["code"], status["signal"])
            assert not backend.alive  # restarting
            # A call made now waits for the fresh kernel; the script ran again, state anew.
            assert (await backend.call("state"))["counter"] == 0
            assert len(restarts) == round_
            assert exits[-1]["code"] == status["code"]
            assert exits[-1]["signal"] == status["signal"]
            assert exits[-1]["restarting"] is True
            assert restarts[-1]["ok"] is True and restarts[-1]["kernel_id"] != first_kernel
            assert backend.alive and backend.restarts == round_
            assert backend.kernel_id == restarts[-1]["kernel_id"]
            assert gone(pid)


async def test_death_without_restart_leaves_it_dead(launched: bridge.AsyncBridge) -> None:
    backend = await launched.spawn(TOOLBOX, env={"CONCURRENT": "1"})
    try:
        exits: list[dict[str, Any]] = []
        backend.on("exit", exits.append)
        items = backend.stream("acount", {"n": 1_000_000, "delay": 0.05})
        assert await anext(items) == 0  # a stream open when the kernel dies
        with pytest.raises(bridge.KernelDied):
            await backend.call("crash", {"how": "exit"})
        with pytest.raises(bridge.KernelDied, match="during acount"):
            async for _ in items:
                pass
        await wait_for(lambda: bool(exits))
        assert exits == [{"code": 3, "signal": None, "reason": "exit code 3", "restarting": False}]
        assert not backend.alive
        with pytest.raises(bridge.KernelDied, match="died"):
            await backend.call("add", {"a": 1})
        await backend.restart()  # by hand, it can come back
        assert backend.alive and await backend.call("add", {"a": 1}) == 1
    finally:
        await backend.terminate()


async def test_terminate_fails_pending_calls_and_is_idempotent(
    launched: bridge.AsyncBridge,
) -> None:
    backend = await launched.spawn(TOOLBOX)
    pid = backend.info["pid"]
    pending = await running_slow_call(backend, 60)  # terminated during slow, not before it
    await backend.terminate()
    with pytest.raises(bridge.BridgeClosed, match="terminated during slow"):
        await pending
    await backend.terminate()
    assert not backend.alive and backend.terminated
    assert gone(pid)
    assert not Path(backend.connection_file).exists()  # noqa: ASYNC240
    with pytest.raises(bridge.BridgeClosed, match="terminated"):
        await backend.call("add", {"a": 1})


async def test_closing_the_bridge_terminates_its_backends() -> None:
    async with bridge.AsyncBridge(pool_size=0) as b:
        backend = await b.spawn(TOOLBOX)
        pid = backend.info["pid"]
    assert backend.terminated and gone(pid)
    with pytest.raises(bridge.BridgeClosed):
        await b.spawn(TOOLBOX)


# -- start-up failures ---------------------------------------------------------------------------


async def test_script_that_raises_gives_its_traceback(
    abridge: bridge.AsyncBridge, tmp_path: Path
) -> None:
    script = tmp_path / "broken.py"
    script.write_text(
        "from bridge_runtime import PythonBridge\n"
        "\n"
        "def load_config():\n"
        "    raise KeyError('missing setting')\n"
        "\n"
        "load_config()\n"
    )
    with pytest.raises(bridge.BackendStartError) as info:
        await abridge.spawn(script)
    message = str(info.value)
    assert "KeyError" in message and "missing setting" in message
    # IPython's traceback, naming the script's file (not an ipykernel cell) and its lines
    assert f"File {script}:6" in info.value.traceback
    assert f"File {script}:4, in load_config()" in info.value.traceback
    assert "----> 4     raise KeyError('missing setting')" in info.value.traceback


async def test_script_that_never_calls_run(abridge: bridge.AsyncBridge, tmp_path: Path) -> None:
    script = tmp_path / "no_run.py"
    script.write_text(
        "from bridge_runtime import PythonBridge\n"
        "class Quiet(PythonBridge):\n"
        "    pass\n"
        "backend = Quiet()\n"
    )
    with pytest.raises(bridge.BackendStartError, match=r"did not call run\(\)"):
        await abridge.spawn(script)


async def test_kernel_that_does_not_start(tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'no kernel here' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    async with bridge.AsyncBridge(pool_size=0, python=fake, startup_timeout=10) as b:
        with pytest.raises(bridge.BackendStartError, match="did not start"):
            await b.spawn(TOOLBOX)


async def test_bad_arguments(abridge: bridge.AsyncBridge, tmp_path: Path) -> None:
    with pytest.raises(bridge.InvalidRequest, match="no such file"):
        await abridge.spawn(tmp_path / "missing.py")
    with pytest.raises(bridge.InvalidRequest, match="env"):
        await abridge.spawn(TOOLBOX, env={"X": 1})  # type: ignore[dict-item]
    with pytest.raises(bridge.InvalidRequest, match="python_paths"):
        await abridge.spawn(TOOLBOX, python_paths="/tmp")  # type: ignore[arg-type]


async def test_python_paths_and_script_folder_are_importable(
    abridge: bridge.AsyncBridge, tmp_path: Path
) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "kb_helper_lib.py").write_text("FACTOR = 7\n")
    app = tmp_path / "app"
    app.mkdir()
    (app / "kb_sibling.py").write_text("OFFSET = 1\n")
    (app / "uses_paths.py").write_text(
        "from bridge_runtime import PythonBridge\n"
        "import kb_helper_lib, kb_sibling\n"
        "class Calc(PythonBridge):\n"
        "    def scale(self, x):\n"
        "        return x * kb_helper_lib.FACTOR + kb_sibling.OFFSET\n"
        "    def where(self):\n"
        "        return __file__\n"
        "if __name__ == '__main__':\n"
        "    Calc().run()\n"
    )
    async with await abridge.spawn(app / "uses_paths.py", python_paths=[lib]) as backend:
        assert await backend.call("scale", {"x": 6}) == 43
        assert await backend.call("where") == str(app / "uses_paths.py")


async def run_attached(backend: bridge.AsyncBackend, code: str) -> None:
    """Run *code* in the backend's kernel as a person attached with JupyterLab would."""
    client = AsyncKernelClient()
    client.load_connection_file(backend.connection_file)
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=10)
        reply = await client.execute_interactive(code, timeout=10, output_hook=lambda msg: None)
    finally:
        client.stop_channels()
    assert reply["content"]["status"] == "ok", reply["content"]


async def test_running_the_script_again_hands_the_host_to_the_new_backend(
    abridge: bridge.AsyncBridge,
) -> None:
    async with await abridge.spawn(ECHO, timeout=10) as backend:
        events: list[Any] = []
        backend.on("reborn", events.append)
        await backend.call("increment")
        assert await backend.call("increment") == {"count": 2}
        await run_attached(
            backend,
            "backend = EchoBackend()\n"
            "backend.counter = 100\n"
            "backend.send_event('reborn', 'before run')\n"
            "backend.run()\n"
            "backend.send_event('reborn', 'after run')",
        )
        assert await backend.call("increment") == {"count": 101}  # the new instance
        assert (await backend.call("echo", {"data": "hi"}))["echo"] == "hi"
        await wait_for(lambda: len(events) == 2)
        assert events == ["before run", "after run"]
        assert backend.alive and backend.info["class"] == "EchoBackend"


async def test_a_call_pending_when_the_script_runs_again_fails_at_once(
    abridge: bridge.AsyncBridge,
) -> None:
    async with await abridge.spawn(TOOLBOX, timeout=30) as backend:
        pending = await running_slow_call(backend, 20)
        started = time.monotonic()
        await run_attached(backend, "backend = Toolbox()\nbackend.run()")
        with pytest.raises(bridge.BackendError, match=r"run\(\) replaced the backend"):
            await pending
        assert time.monotonic() - started < 5
        assert await backend.call("add", {"a": 2, "b": 3}) == 5


async def test_connection_closed_in_the_kernel_is_a_lost_backend(
    abridge: bridge.AsyncBridge,
) -> None:
    async with await abridge.spawn(TOOLBOX, timeout=30) as backend:
        exits: list[dict[str, Any]] = []
        backend.on("exit", exits.append)
        pending = await running_slow_call(backend, 20)
        await run_attached(
            backend,
            "import comm\n"
            "for c in list(comm.get_comm_manager().comms.values()):\n"
            "    if c.target_name == 'kernel-bridge.backend':\n"
            "        c.close()",
        )
        with pytest.raises(bridge.BackendLost, match="closed the backend's connection"):
            await asyncio.wait_for(pending, 5)
        assert not backend.alive and backend.kernel.alive
        assert exits and exits[0]["restarting"] is False and exits[0]["code"] is None
        with pytest.raises(bridge.BackendLost):
            await backend.call("add", {"a": 1})
        await backend.restart()  # a fresh kernel, the script run again
        assert backend.alive and await backend.call("add", {"a": 1}) == 1


async def test_terminate_during_a_restart_closes_what_waited_for_it(
    abridge: bridge.AsyncBridge,
) -> None:
    """A call waiting for a restart, and the restart itself, end as BridgeClosed when the
    backend is terminated meanwhile: terminate() cancels the restart, not its waiters."""
    backend = await abridge.spawn(TOOLBOX, timeout=30)
    restarting = asyncio.ensure_future(backend.restart())
    await asyncio.sleep(0)  # the restart task is made at restart()'s first step
    assert not backend.alive  # restarting: a call waits for it
    waiting = asyncio.ensure_future(backend.call("add", {"a": 1}))
    await asyncio.sleep(0)  # the call reaches its wait for the restart
    await backend.terminate()
    for pending, during in ((restarting, "restart"), (waiting, "terminated")):
        with pytest.raises(bridge.BridgeClosed, match=during):
            await pending
    assert backend.terminated and not backend.alive
