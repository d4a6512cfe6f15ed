"""The fork-server provisioner: forked kernels, when it falls back, its server's life, its use
as a plain jupyter_client provisioner. The fault tests run on both launch paths (``launch``)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes.util
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from calls import running_execute
from jupyter_client import BlockingKernelClient, find_connection_file
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from procs import alive, cmdline

import bridge
from bridge.core.kernel import Kernel
from bridge.transports.local import forkserver
from bridge.transports.local.factory import bridge_kernel_spec
from bridge.transports.local.provisioner import (
    FORK_NAME,
    WATCHED_NAME,
    ForkProvisioner,
    WatchedProvisioner,
)
from bridge.transports.local.watchdog import start_time

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def forked() -> AsyncIterator[bridge.AsyncBridge]:
    async with bridge.AsyncBridge(pool_size=2, timeout=30) as b:
        yield b


def _server_pid(kernel: Kernel) -> int:
    with open(f"/proc/{kernel.pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _watched_since_launch(b: bridge.AsyncBridge, kernel: Kernel) -> bool:
    """The watchdog knows the kernel's group, with its leader's start time: the provisioner's
    launch hook registered it (a kernel registered afterwards has no start time)."""
    return (
        kernel.pid is not None
        and kernel.transport.pgid == kernel.pid
        and kernel.transport.group_started is not None
        and kernel.transport.group_started == start_time(kernel.pid)
        and kernel.transport.pgid in b.pool.factory.reaper._groups
    )


async def _ready(b: bridge.AsyncBridge, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while b.status().idle < b.pool.size:
        assert time.monotonic() < deadline, "the pool did not refill"
        await asyncio.sleep(0.02)


async def _ready_server(b: bridge.AsyncBridge) -> forkserver.ForkServer:
    """The bridge's fork server once it has finished importing (on a loaded machine a pool
    kernel asked for earlier may have been launched the ordinary way meanwhile)."""
    factory = b.pool.factory
    server, reason = forkserver.server_for(factory.python, factory.kernel_env())
    assert server is not None, reason
    await asyncio.wait_for(asyncio.wrap_future(server.ready), 60)
    return server


async def test_kernels_are_forked_from_one_server(forked: bridge.AsyncBridge) -> None:
    await _ready(forked)
    kernels = forked.pool.kernels
    provisioners = [k.transport.manager.provisioner for k in kernels]
    assert all(isinstance(p, ForkProvisioner) and p.forked for p in provisioners)
    parents = {_server_pid(k) for k in kernels}
    assert len(parents) == 1 and os.getpid() not in parents  # children of the fork server
    for k in kernels:  # a session and process group of its own, as jupyter_client gives
        assert k.pid is not None and os.getpgid(k.pid) == k.pid == k.transport.pgid
        assert _watched_since_launch(forked, k)
    seen = await asyncio.gather(
        *(
            forked.execute(
                "import os, random, sys\n"
                "return [os.getpid(), random.random(), os.getcwd(), sys.argv[0],"
                " os.environ['JPY_PARENT_PID']]"
            )
            for _ in range(6)
        )
    )
    values = [r.value for r in seen]
    assert len({v[1] for v in values}) == len(values)  # random state reseeded per kernel
    assert {v[2] for v in values} == {os.getcwd()}
    assert all(v[4] == str(next(iter(parents))) for v in values)


async def test_exit_code_and_signal_reach_kernel_died(forked: bridge.AsyncBridge) -> None:
    await _ready(forked)
    with pytest.raises(bridge.KernelDied) as info:
        await forked.execute("import os\nos._exit(7)")
    assert info.value.exit_code == 7 and info.value.signal is None
    await _ready(forked)
    async with forked.session() as s:
        pid = (await s.evaluate("__import__('os').getpid()")).value
        pending = await running_execute(s, 60)  # killed mid-call
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(bridge.KernelDied) as info:
            await pending
        assert info.value.signal == signal.SIGKILL


async def test_a_killed_kernel_is_replaced_by_a_forked_one(forked: bridge.AsyncBridge) -> None:
    await _ready(forked)
    victim = forked.pool.kernels[0]
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    await _ready(forked)
    replacement = [k for k in forked.pool.kernels if k is not victim]
    assert all(k.transport.manager.provisioner.forked for k in replacement)


async def test_a_dead_fork_server_takes_its_kernels_and_is_replaced() -> None:
    async with bridge.AsyncBridge(pool_size=1, timeout=30) as b:
        kernel = b.pool.kernels[0]
        server = _server_pid(kernel)
        os.kill(server, signal.SIGKILL)
        # Its kernel follows (ipykernel's parent poller, within a second or so); the pool
        # starts a replacement from a new fork server.
        deadline = time.monotonic() + 15
        while kernel.alive:
            assert time.monotonic() < deadline, "the kernel outlived its fork server"
            await asyncio.sleep(0.05)
        assert kernel.exit_status is not None
        await _ready(b)
        fresh = b.pool.kernels[0]
        assert fresh.transport.manager.provisioner.forked and _server_pid(fresh) != server
        assert (await b.evaluate("6 * 7")).value == 42


async def test_start_up_variables_fall_back_to_an_ordinary_launch(
    forked: bridge.AsyncBridge, caplog: pytest.LogCaptureFixture
) -> None:
    """The interpreter's one fork server runs with a default start-up (*forked*'s; were none
    running, the first bridge to ask would start it with its own, and fork from it)."""
    await _ready_server(forked)
    caplog.set_level(logging.DEBUG, logger="bridge.kernel")
    async with bridge.AsyncBridge(pool_size=1, env={"PYTHONHASHSEED": "123"}) as b:
        kernel = b.pool.kernels[0]
        assert not kernel.transport.manager.provisioner.forked
        assert kernel.pid is not None and _server_pid(kernel) == os.getpid()
        assert _watched_since_launch(b, kernel)  # the fallback is the watched launch
        assert (await b.evaluate("__import__('os').environ['PYTHONHASHSEED']")).value == "123"
        assert (await b.evaluate("__import__('sys').flags.hash_randomization")).value == 1
    assert "ordinary launch: PYTHONHASHSEED differ" in caplog.text


async def test_a_python_path_that_shadows_a_preloaded_module_falls_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="bridge.kernel")
    # The standard library's pdb and a mark (ipykernel needs pdb to start).
    (tmp_path / "pdb.py").write_text(
        "import os, sysconfig\n"
        "_real = os.path.join(sysconfig.get_paths()['stdlib'], 'pdb.py')\n"
        "exec(compile(open(_real).read(), _real, 'exec'))\n"
        "SHADOW = True\n"
    )
    async with bridge.AsyncBridge(pool_size=1, python_paths=[tmp_path]) as b:
        assert not b.pool.kernels[0].transport.manager.provisioner.forked
        assert (await b.evaluate("__import__('pdb').SHADOW")).value is True
    assert "would shadow the preloaded pdb" in caplog.text


async def test_the_kernel_spec_names_the_provisioner_of_its_launch_path() -> None:
    def named(fork_server: bool) -> str:
        spec = bridge_kernel_spec(sys.executable, fork_server=fork_server)
        return str(spec.metadata["kernel_provisioner"]["provisioner_name"])

    assert (named(True), named(False)) == (FORK_NAME, WATCHED_NAME)
    assert issubclass(ForkProvisioner, WatchedProvisioner)  # one launch hook, both paths


async def test_without_the_fork_server_kernels_are_launched_and_watched() -> None:
    async with bridge.AsyncBridge(pool_size=1, fork_server=False) as b:
        kernel = b.pool.kernels[0]
        provisioner = kernel.transport.manager.provisioner
        assert type(provisioner) is WatchedProvisioner
        assert kernel.pid is not None and _server_pid(kernel) == os.getpid()
        assert _watched_since_launch(b, kernel)


async def test_no_process_is_left_once_the_bridges_are_closed() -> None:
    async with bridge.AsyncBridge(pool_size=1) as b:
        server = _server_pid(b.pool.kernels[0])
    deadline = time.monotonic() + 5
    while alive(server) and forkserver._holders == 0:
        assert time.monotonic() < deadline, "the fork server outlived the last bridge"
        await asyncio.sleep(0.05)


async def test_a_plain_jupyter_kernelspec_can_use_it(tmp_path: Path) -> None:
    """What docs/kernels.md tells `jupyter kernelspec` users: a stock ipykernel spec plus
    ``metadata.kernel_provisioner``, driven by jupyter_client alone."""
    spec_dir = tmp_path / "kernels" / "python3-fork"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (forked)",
        "language": "python",
        "metadata": {"kernel_provisioner": {"provisioner_name": FORK_NAME}},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    forkserver.hold()  # so that release() below ends the server this test starts
    try:
        km = AsyncKernelManager(
            kernel_name="python3-fork",
            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")]),
        )
        await km.start_kernel(cwd=str(tmp_path))
        try:
            assert isinstance(km.provisioner, ForkProvisioner) and km.provisioner.forked
            kc = km.client()
            kc.start_channels()
            try:
                await kc.wait_for_ready(timeout=30)
                outputs: list[dict[str, object]] = []
                reply = await kc.execute_interactive(
                    "import os; print(os.getcwd())",
                    output_hook=lambda msg: outputs.append(msg["content"]),
                    timeout=30,
                )
                assert reply["content"]["status"] == "ok"
                assert {"name": "stdout", "text": f"{tmp_path}\n"} in outputs
                await km.interrupt_kernel()  # SIGINT to its group: an idle kernel shrugs
                assert await km.is_alive()
                await km.restart_kernel(now=True)
                assert km.provisioner.forked and await km.is_alive()
            finally:
                kc.stop_channels()
        finally:
            await km.shutdown_kernel(now=True)
        assert not await km.is_alive()
    finally:
        forkserver.release()


async def test_a_stopped_fork_server_is_killed_after_one_timeout_and_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One unanswered request marks the server dead: killed (it can never fork late, onto the
    ports of the launch that fell back) and replaced at the next start, not waited on again."""
    monkeypatch.setattr(forkserver, "REPLY_WAIT", 1.0)
    async with bridge.AsyncBridge(pool_size=1, timeout=30) as b:
        factory = b.pool.factory
        old = (await _ready_server(b)).process.pid
        os.kill(old, signal.SIGSTOP)
        try:
            fallback = await factory.start()
            assert not fallback.transport.manager.provisioner.forked
            deadline = time.monotonic() + 10
            while alive(old):
                assert time.monotonic() < deadline, "the stopped fork server was not killed"
                await asyncio.sleep(0.05)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(old, signal.SIGCONT)
        replacement = await _ready_server(b)  # the next start's: a new server
        assert replacement.process.pid != old and not replacement.dead
        fresh = await factory.start()
        try:
            assert fresh.transport.manager.provisioner.forked and _server_pid(fresh) != old
            assert (await fallback.execute("return 6 * 7", timeout=30)).value == 42
        finally:
            await factory.stop(fallback, now=True)
            await factory.stop(fresh, now=True)


async def test_exec_time_environment_falls_back_to_an_ordinary_launch(
    forked: bridge.AsyncBridge,
) -> None:
    """LD_PRELOAD acts at exec, which a fork skips: such a kernel is launched the ordinary way,
    and the library is loaded (it is not in a kernel without it)."""
    library = ctypes.util.find_library("anl")
    assert library is not None
    maps = "return open('/proc/self/maps').read()"
    assert library not in (await forked.execute(maps)).value
    async with forked.session(env={"LD_PRELOAD": library}) as s:
        assert library in (await s.execute(maps)).value
        assert not s.kernel.transport.manager.provisioner.forked


async def test_a_forked_kernel_shows_its_own_command_line(forked: bridge.AsyncBridge) -> None:
    """`ps` says it is a kernel and names its connection file, as for a launched kernel; the
    file is what `jupyter console --existing` finds and connects with."""
    await _ready_server(forked)
    kernel = await forked.pool.factory.start()
    try:
        assert kernel.transport.manager.provisioner.forked and kernel.pid is not None
        _shows_its_command_line(kernel)
    finally:
        await forked.pool.factory.stop(kernel)


def _shows_its_command_line(kernel: Kernel) -> None:
    assert kernel.pid is not None
    shown = cmdline(kernel.pid)
    assert shown == f"{sys.executable} -m bridge_runtime.launch -f {kernel.connection_file}"
    assert "-m bridge_runtime.forkserver" in cmdline(_server_pid(kernel))
    found = find_connection_file(os.path.basename(shown.split(" -f ")[1]))
    client = BlockingKernelClient(connection_file=found)
    client.load_connection_file()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=30)
        reply = client.execute_interactive("import os; print(os.getpid())", timeout=30)
        assert reply["content"]["status"] == "ok"
    finally:
        client.stop_channels()
