"""Kernels start, are configured, and end with everything they own; nothing outlives the host."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from procs import alive

import bridge


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def test_close_ends_kernels_their_children_and_connection_files(launch: dict[str, bool]) -> None:
    with bridge.Bridge(pool_size=2, **launch) as b:
        kernels = b.async_bridge.pool.kernels
        files = [k.connection_file for k in kernels]
        pids = [k.pid for k in kernels if k.pid is not None]
        for path in files:
            mode = stat.S_IMODE(os.stat(path).st_mode)
            assert mode == 0o600, oct(mode)
            with open(path) as f:
                assert json.load(f)["key"]
        with b.session() as s:
            child = s.evaluate(
                "__import__('subprocess').Popen(['sleep', '300']).pid", timeout=10
            ).value
            session_pid = s.evaluate("__import__('os').getpid()").value
            files.append(s.connection_file)
        assert isinstance(child, int)
        pids += [child, session_pid]
    assert _wait_gone(pids, 5) == []
    assert [f for f in files if os.path.exists(f)] == []


HOST = textwrap.dedent(
    """
    import asyncio, json, os, sys, time
    import bridge

    async def main():
        b = bridge.AsyncBridge(pool_size=1, fork_server=sys.argv[1] == "fork")
        await b.start()
        kernel = b.pool.kernels[0]
        r = await b.execute(
            "import subprocess\\nreturn subprocess.Popen(['sleep', '300']).pid"
        )
        report = {"kernel": kernel.pid, "child": r.value, "file": kernel.connection_file}
        async with b.session() as s:
            # The cell makes this file, then is busy in C (holding the GIL: no output would
            # get out) until killed; the host reports once the file is there.
            running = os.path.join(sys.argv[2], "running")
            busy = asyncio.ensure_future(s.execute(
                f"open({running!r}, 'w').close()\\nsum(range(10**12))", timeout=600
            ))
            deadline = time.monotonic() + 60
            while not os.path.exists(running):
                assert time.monotonic() < deadline, "the busy cell never ran"
                await asyncio.sleep(0.01)
            report["busy"] = s.kernel.pid
            report["busy_file"] = s.connection_file
            print(json.dumps(report), flush=True)
            await asyncio.sleep(600)

    asyncio.run(main())
    """
)


def test_kernels_and_children_die_with_a_sigkilled_host(
    launch: dict[str, bool], tmp_path: Path
) -> None:
    how = "fork" if launch["fork_server"] else "local"
    host = subprocess.Popen(
        [sys.executable, "-c", HOST, how, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert host.stdout is not None
        report = json.loads(host.stdout.readline())
        pids = [report["kernel"], report["child"], report["busy"]]
        assert all(alive(p) for p in pids)
        host.kill()  # SIGKILL: no cleanup of any kind in the host
        host.wait()
        assert _wait_gone(pids, 10) == [], "kernel processes outlived their host"
        deadline = time.monotonic() + 5
        files = [report["file"], report["busy_file"]]
        while any(os.path.exists(f) for f in files) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(os.path.exists(f) for f in files)
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()


def test_python_without_ipykernel_says_how_to_fix_it(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True
    )
    bare = tmp_path / "bare" / "bin" / "python"
    assert not bridge.has_python(bare)
    with (
        pytest.raises(bridge.KernelStartError) as info,
        bridge.Bridge(pool_size=1, python=bare, startup_timeout=30),
    ):
        pass
    message = str(info.value)
    assert "ipykernel" in message and f"{bare} -m pip install ipykernel" in message


def test_missing_interpreter_is_a_start_error() -> None:
    assert not bridge.has_python("/no/such/python")
    with (
        pytest.raises(bridge.KernelStartError, match="/no/such/python"),
        bridge.Bridge(pool_size=1, python="/no/such/python"),
    ):
        pass
    with pytest.raises(bridge.KernelStartError):
        bridge.python_version("/no/such/python")


def test_has_python_and_python_version() -> None:
    assert bridge.has_python(sys.executable)
    version = bridge.python_version(sys.executable)
    assert version == f"Python {sys.version.split()[0]}"


def test_python_paths_come_first_and_env_is_set(tmp_path: Path, launch: dict[str, bool]) -> None:
    (tmp_path / "colorsys.py").write_text("SHADOW = True\n")  # ahead of the standard library
    (tmp_path / "helper_mod.py").write_text("VALUE = 'from python_paths'\n")
    with bridge.Bridge(
        pool_size=1, python_paths=[tmp_path], env={"BRIDGE_TEST_VAR": "set"}, **launch
    ) as b:
        r = b.execute(
            "import sys, os, colorsys, helper_mod\n"
            "return [sys.path[0], colorsys.SHADOW, helper_mod.VALUE, os.environ['BRIDGE_TEST_VAR']]"
        )
        assert r.value == [str(tmp_path), True, "from python_paths", "set"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pool_size": -1}, "pool_size"),
        ({"env": {"A": 1}}, "env"),
        ({"python_paths": "/tmp"}, "python_paths"),
        ({"max_output": -5}, "max_output"),
        ({"timeout": -1}, "timeout"),
    ],
)
def test_bad_options_are_refused_early(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(bridge.InvalidRequest, match=message), bridge.Bridge(**kwargs):  # type: ignore[arg-type]
        pass


def test_closed_bridge_refuses_calls() -> None:
    b = bridge.Bridge(pool_size=1)
    with b:
        assert b.evaluate("1").value == 1
    with pytest.raises(bridge.BridgeClosed):
        b.execute("1")
    b.close()  # idempotent


@pytest.mark.parametrize(
    "command",
    [
        "import bridge",
        "import bridge.cli as c; c.main(['version'])",
    ],
)
def test_startup_stays_light(command: str) -> None:
    heavy = ["nbformat", "jupyter_server", "jupyter_client", "zmq", "IPython", "tornado"]
    code = f"{command}\nimport sys\nprint([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_exception_tree() -> None:
    for cls in (
        bridge.InvalidRequest,
        bridge.BridgeClosed,
        bridge.KernelStartError,
        bridge.KernelDied,
        bridge.ExecutionTimeout,
        bridge.ExecutionError,
        bridge.BackendLost,
    ):
        assert issubclass(cls, bridge.BridgeError)
    assert issubclass(bridge.ExecutionTimeout, TimeoutError)
    assert issubclass(bridge.InvalidRequest, ValueError)
    assert bridge.__all__ == sorted(bridge.__all__)


def test_kernel_interrupt_signal_reaches_only_the_kernel_group(launch: dict[str, bool]) -> None:
    # Kernels run in their own process group: a Ctrl-C in the host's terminal is not theirs.
    with bridge.Bridge(pool_size=1, **launch) as b:
        kernel = b.async_bridge.pool.kernels[0]
        assert kernel.pid is not None and kernel.transport.pgid == os.getpgid(kernel.pid)
        assert kernel.transport.pgid != os.getpgrp()
        b.call(kernel.interrupt)
        assert b.evaluate("'still fine'").value == "still fine"


def test_a_kernel_that_starts_too_slowly_is_a_start_error(tmp_path: Path) -> None:
    slow = tmp_path / "slow-python"
    slow.write_text(f'#!/bin/sh\nsleep 30\nexec "{sys.executable}" "$@"\n')
    slow.chmod(0o755)
    start = time.monotonic()
    with (
        pytest.raises(bridge.KernelStartError, match="did not answer within 2 s"),
        bridge.Bridge(pool_size=1, python=slow, startup_timeout=2),
    ):
        pass
    assert time.monotonic() - start < 10
