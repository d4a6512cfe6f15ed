"""The watchdog under fire: killed first, a host killed mid-start, reused group ids, logs.

Each test kills something for real (the reaper, the host, a kernel) and then looks at /proc
and the file system for what is left, on both launch paths (the ``launch`` fixture): kernels
forked from the fork server and kernels started by jupyter_client's LocalProvisioner.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from procs import alive

import bridge
from bridge.transports.local.watchdog import Reaper, start_time


def _wait(condition: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _gone(pids: list[int], files: list[str], seconds: float = 10) -> None:
    _wait(lambda: not any(alive(p) for p in pids), seconds, "processes outlived their host")
    _wait(lambda: not any(os.path.exists(f) for f in files), 5, f"files were left: {files}")


def _run_host(
    code: str, launch: dict[str, bool]
) -> tuple[subprocess.Popen[str], dict[str, object]]:
    code = textwrap.dedent(code).replace("FORK_SERVER", repr(launch["fork_server"]))
    host = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert host.stdout is not None
    line = host.stdout.readline()
    assert line, "the host printed nothing"
    return host, json.loads(line)


def _kill(host: subprocess.Popen[str]) -> None:
    if host.poll() is None:
        host.kill()
    host.wait()


KILLED_REAPER_HOST = """
    import asyncio, json, sys, time
    import bridge

    async def main():
        b = bridge.AsyncBridge(pool_size=1, fork_server=FORK_SERVER)
        await b.start()
        kernel = b.pool.kernels[0]
        reaper = b.pool.factory.reaper
        r = await b.execute("import subprocess\\nreturn subprocess.Popen(['sleep', '300']).pid")
        forked = getattr(kernel.transport.manager.provisioner, "forked", False)
        print(json.dumps({"reaper": reaper.pid, "kernel": kernel.pid, "child": r.value,
                          "files": [kernel.connection_file, kernel.transport.log_path],
                          "forked": forked}), flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # the test killed the reaper
        first = reaper.pid
        deadline = time.monotonic() + 20
        while reaper.pid in (None, first) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        print(json.dumps({"reaper": reaper.pid, "restarts": reaper.restarts}), flush=True)
        await asyncio.sleep(600)

    asyncio.run(main())
"""


def test_a_killed_watchdog_is_restarted_and_still_cleans_up(launch: dict[str, bool]) -> None:
    host, report = _run_host(KILLED_REAPER_HOST, launch)
    try:
        assert report["forked"] is launch["fork_server"], report  # the path under test
        reaper = int(report["reaper"])  # type: ignore[call-overload]
        pids = [int(report["kernel"]), int(report["child"])]  # type: ignore[call-overload]
        files = list(report["files"])  # type: ignore[call-overload]
        assert all(alive(p) for p in pids) and all(os.path.exists(f) for f in files)
        os.kill(reaper, signal.SIGKILL)  # the watchdog goes first
        assert host.stdin is not None and host.stdout is not None
        host.stdin.write("go\n")
        host.stdin.flush()
        again = json.loads(host.stdout.readline())
        assert again["reaper"] not in (None, reaper) and again["restarts"] == 1
        host.kill()  # then the host, with no cleanup of any kind
        host.wait()
        _gone(pids, files)
    finally:
        _kill(host)


SLOW_START_HOST = """
    import asyncio, json, os
    from jupyter_client.ioloop import AsyncIOLoopKernelManager
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.multikernelmanager import AsyncMultiKernelManager
    from jupyter_core.paths import jupyter_runtime_dir
    import bridge

    class SlowToFinish(AsyncIOLoopKernelManager):
        # The process exists; jupyter_client (or a server on top of it) is still busy.
        async def _async_post_start_kernel(self, **kw):
            await super()._async_post_start_kernel(**kw)
            print(json.dumps({"kernel": self.provisioner.pid, "file": self.connection_file,
                              "forked": getattr(self.provisioner, "forked", False)}),
                  flush=True)
            await asyncio.sleep(600)

    async def main():
        manager = AsyncMultiKernelManager(
            kernel_manager_class="__main__.SlowToFinish",
            kernel_spec_manager=KernelSpecManager(),
            connection_dir=jupyter_runtime_dir(),
        )
        b = bridge.AsyncBridge(pool_size=1, kernel_manager=manager, fork_server=FORK_SERVER)
        await b.start()

    asyncio.run(main())
"""


def test_a_kernel_still_starting_when_the_host_dies_leaves_nothing(
    launch: dict[str, bool],
) -> None:
    host, report = _run_host(SLOW_START_HOST, launch)
    try:
        assert report["forked"] is launch["fork_server"], report
        kernel = int(report["kernel"])  # type: ignore[call-overload]
        file = str(report["file"])
        logs = _logs_of(kernel)
        assert alive(kernel) and os.path.exists(file) and logs
        host.kill()
        host.wait()
        _gone([kernel], [file, *logs])
    finally:
        _kill(host)


def _logs_of(pid: int) -> list[str]:
    """The kernel's log files: what its stdout and stderr are open on."""
    found = set()
    for fd in (1, 2):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if "kernel-bridge-" in target and target.endswith(".log"):
            found.add(target)
    return sorted(found)


def _own_group(seconds: int = 300) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", str(seconds)], start_new_session=True)


def test_the_watchdog_spares_a_group_whose_id_now_names_another_process() -> None:
    # A group registered with its leader's start time; the id now leads a process that
    # started at another time (a reused id): the watchdog must not touch it.
    stranger = _own_group()
    try:
        started = start_time(stranger.pid)
        assert started is not None
        reaper = Reaper()
        reaper.watch(stranger.pid, started - 1, [])
        process = reaper._proc
        reaper.close()  # as if the host died: it ends every group it still knows
        # close() waited for the reaper to exit, its work done (not killed at close's timeout):
        # whatever it signalled, it signalled before. The first fatal signal sent to a process
        # is the one it dies of, so ours (SIGKILL) names the stranger's end only if none came.
        assert process is not None and process.returncode == 0
        assert alive(stranger.pid), "the watchdog killed a group that was not ours"
        stranger.kill()
        assert stranger.wait(timeout=10) == -signal.SIGKILL, "the watchdog signalled a stranger"
        ours = _own_group()
        reaper = Reaper()
        reaper.watch(ours.pid, start_time(ours.pid), [])
        reaper.close()
        ours.wait(timeout=10)  # the same call with the right start time does end it
    finally:
        stranger.kill()
        stranger.wait()


def test_kill_group_checks_the_start_time() -> None:
    from bridge.transports.local.watchdog import kill_group

    stranger = _own_group()
    try:
        started = start_time(stranger.pid)
        assert started is not None
        kill_group(stranger.pid, signal.SIGKILL, started + 1)
        # A process dies of the first fatal signal sent to it (the kernel fixes the exit then,
        # in the sender's kill()): ending by SIGTERM proves the SIGKILL above was never sent.
        kill_group(stranger.pid, signal.SIGTERM, started)
        code = stranger.wait(timeout=10)
        assert code == -signal.SIGTERM, f"a group with another leader was killed ({code})"
    finally:
        if stranger.poll() is None:
            stranger.kill()
            stranger.wait()


@pytest.mark.asyncio
async def test_a_dead_kernels_group_is_forgotten_at_once_and_its_log_removed(
    launch: dict[str, bool],
) -> None:
    async with bridge.AsyncBridge(pool_size=1, **launch) as b:
        kernel = b.pool.kernels[0]
        reaper = b.pool.factory.reaper
        pgid, pid, log = kernel.transport.pgid, kernel.pid, kernel.transport.log_path
        assert pgid is not None and pid is not None and log and _exists(log)
        child = (
            await b.execute(
                "import subprocess\nreturn subprocess.Popen(['sleep', '300']).pid", timeout=30
            )
        ).value
        assert pgid in reaper._groups
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while kernel.alive or _exists(log):
            assert time.monotonic() < deadline, "the dead kernel was not cleaned up"
            await asyncio.sleep(0.05)
        assert kernel.transport.pgid is None and pgid not in reaper._groups
        deadline = time.monotonic() + 10
        while alive(child):
            assert time.monotonic() < deadline, "the dead kernel's child lives on"
            await asyncio.sleep(0.05)


def _exists(path: str) -> bool:
    return os.path.exists(path)


def test_logs_and_connection_files_go_with_their_kernels(
    tmp_path: Path, launch: dict[str, bool]
) -> None:
    with bridge.Bridge(pool_size=1, **launch) as b:
        kernel = b.async_bridge.pool.kernels[0]
        files = [kernel.connection_file, kernel.transport.log_path]
        assert all(f and os.path.exists(f) for f in files)
    assert not [f for f in files if f and os.path.exists(f)]
