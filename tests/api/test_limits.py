"""Kernel limits: a kernel that runs into one gets a clear answer naming it, others go on."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

import bridge

RLIMITS = (
    "import resource as r\n"
    "return {n: list(r.getrlimit(getattr(r, 'RLIMIT_' + n)))"
    " for n in ('DATA', 'CPU', 'NPROC', 'NOFILE', 'FSIZE')}"
)
MB = 1024 * 1024


@pytest_asyncio.fixture(scope="module", params=["fork", "local"])
async def lbridge(request: pytest.FixtureRequest) -> AsyncIterator[bridge.AsyncBridge]:
    """A bridge with limits of its own, on each launch path (no warm kernels: sessions start
    theirs)."""
    limits = {"memory_mb": 1024, "open_files": 512, "file_size_mb": 64}
    fork = request.param == "fork"
    async with bridge.AsyncBridge(pool_size=0, fork_server=fork, limits=limits) as b:
        yield b


@pytest.mark.asyncio
async def test_limits_are_in_force_in_the_kernel_on_both_launch_paths(
    lbridge: bridge.AsyncBridge,
) -> None:
    async with lbridge.session() as s:
        bridge_wide = (await s.execute(RLIMITS)).value
    async with lbridge.session(limits={"memory_mb": 256, "cpu_seconds": 30}) as s:
        own = (await s.execute(RLIMITS)).value
    assert bridge_wide["DATA"] == [1024 * MB, 1024 * MB]
    assert bridge_wide["NOFILE"] == [512, 512]
    assert bridge_wide["FSIZE"] == [64 * MB, 64 * MB]
    assert bridge_wide["NPROC"] == [4096, 4096]  # a default the bridge's limits kept
    assert bridge_wide["CPU"] == [-1, -1]
    assert own["DATA"] == [256 * MB, 256 * MB]
    assert own["CPU"] == [30, 31]  # SIGXCPU at 30 s, SIGKILL a second later
    assert own["NOFILE"] == [512, 512]


@pytest.mark.asyncio
async def test_limits_looser_than_the_bridges_or_unknown_are_refused(
    lbridge: bridge.AsyncBridge,
) -> None:
    with pytest.raises(bridge.InvalidRequest, match=r"limits\.memory_mb may not exceed .* 1024"):
        lbridge.session(limits={"memory_mb": 2048})
    with pytest.raises(bridge.InvalidRequest, match=r"limits\.open_files may not exceed"):
        lbridge.session(limits={"open_files": None})
    with pytest.raises(bridge.InvalidRequest, match=r"limits\.memory: unknown limit"):
        lbridge.session(limits={"memory": 100})
    with pytest.raises(bridge.InvalidRequest, match=r"limits\.memory_mb must be .* >= 192"):
        bridge.AsyncBridge(limits={"memory_mb": 10})


@pytest.mark.asyncio
async def test_a_256_mb_context_allocating_1_gb_gets_memory_error_and_others_answer(
    abridge: bridge.AsyncBridge,
) -> None:
    async with abridge.session() as other, abridge.session(limits={"memory_mb": 256}) as small:
        r = await small.execute("x = 41\nblob = bytearray(1 << 30)")
        assert not r.success
        assert r.error is not None and r.error.ename == "MemoryError"
        assert (await small.evaluate("x + 1")).value == 42  # the kernel and its state live on
        assert (await other.evaluate("6 * 7")).value == 42
        assert (await abridge.evaluate("1 + 1")).value == 2


@pytest.mark.asyncio
async def test_a_spin_loop_past_its_cpu_seconds_dies_naming_the_limit_and_others_answer(
    abridge: bridge.AsyncBridge,
) -> None:
    async with abridge.session() as other, abridge.session(limits={"cpu_seconds": 2}) as spin:
        spinning = asyncio.ensure_future(spin.execute("while True:\n    pass", timeout=60))
        answers = [(await other.evaluate(f"{n} * 2")).value for n in range(5)]
        with pytest.raises(bridge.KernelDied) as caught:
            await spinning
        assert caught.value.reason == "cpu limit 2 s"
        assert "cpu limit 2 s" in str(caught.value)
        assert caught.value.signal in (9, 24)  # SIGXCPU, or SIGKILL at the hard limit
        assert not spin.alive
        assert answers == [0, 2, 4, 6, 8]
        assert (await other.evaluate("'still here'")).value == "still here"
    assert abridge.status().ready == 2


# A fork bomb: every process forks until the kernel's user is out of processes, then holds its
# slot; the kernel's own process raises. It refuses to start unless RLIMIT_NPROC binds here.
BOMB = """
import os, resource, time
assert os.geteuid() != 0 and resource.getrlimit(resource.RLIMIT_NPROC)[0] == LIMIT, "unbounded"
top = os.getpid()
while True:
    try:
        pid = os.fork()
    except OSError:
        if os.getpid() == top:
            raise
        time.sleep(300)
        os._exit(0)
"""

# The host: two sessions, one with a process limit running the bomb, the other answering.
HOST = """
import asyncio, json, os, sys, bridge
LIMIT = int(sys.argv[1])

def tasks_of_user():
    count = 0
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and os.stat(f"/proc/{pid}").st_uid == os.getuid():
                count += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            pass
    return count

async def main():
    async with bridge.AsyncBridge(pool_size=0) as b:
        async with b.session() as other, b.session(limits={"processes": LIMIT}) as bomb:
            r = await bomb.execute(sys.stdin.read(), inputs={"LIMIT": LIMIT}, timeout=60)
            held = tasks_of_user()
            answer = (await other.evaluate("6 * 7")).value
            after = (await bomb.evaluate("1 + 1")).value
        print(json.dumps({"ename": r.error and r.error.ename, "evalue": r.error and r.error.evalue,
                          "held": held, "answer": answer, "after": after}))

asyncio.run(main())
"""


def test_a_fork_bomb_stops_at_its_process_limit_and_another_context_answers() -> None:
    """RLIMIT_NPROC counts the processes of a user and exempts root: as root, the host runs
    as a user of its own (setpriv), as a service that bounds processes must."""
    limit = 96
    command = [sys.executable, "-c", HOST, str(limit)]
    env = dict(os.environ)
    home = tempfile.mkdtemp(prefix="kb-limits-")
    try:
        if os.geteuid() == 0:
            uid = 40000 + os.getpid() % 20000  # no other process has it: the count is ours
            os.chown(home, uid, uid)
            # It may read what root reads (the interpreter may live under /root) and nothing
            # more: RLIMIT_NPROC exempts only root, CAP_SYS_RESOURCE and CAP_SYS_ADMIN.
            user = [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
            caps = ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
            command = ["setpriv", *user, *caps, *command]
            env.update(HOME=home, JUPYTER_RUNTIME_DIR=os.path.join(home, "runtime"))
        done = subprocess.run(
            command, input=BOMB, capture_output=True, text=True, env=env, cwd=home, timeout=120
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["ename"] == "BlockingIOError", seen  # fork() failed: EAGAIN
    assert limit - 10 <= seen["held"] <= limit, seen  # the bomb filled the limit, no more
    assert seen["answer"] == 42 and seen["after"] == 2


@pytest.mark.asyncio
async def test_a_pool_kernel_past_its_limit_is_replaced() -> None:
    async with bridge.AsyncBridge(pool_size=1, limits={"cpu_seconds": 2}) as b:
        with pytest.raises(bridge.KernelDied) as caught:
            await b.execute("while True:\n    pass", timeout=60)
        assert caught.value.reason == "cpu limit 2 s"
        assert (await b.evaluate("6 * 7")).value == 42  # on the replacement


SPINNER = """
from bridge_runtime import PythonBridge


class Spinner(PythonBridge):
    def spin(self):
        while True:
            pass

    def ping(self):
        return "pong"


Spinner().run()
"""


@pytest.mark.asyncio
async def test_a_backend_past_its_limit_reports_it_dead_naming_the_limit(
    abridge: bridge.AsyncBridge, tmp_path: Path
) -> None:
    script = tmp_path / "spinner.py"
    script.write_text(SPINNER)
    exits: list[dict[str, object]] = []
    backend = await abridge.spawn(script, limits={"cpu_seconds": 2})
    try:
        backend.on("exit", exits.append)
        assert await backend.call("ping") == "pong"
        with pytest.raises(bridge.KernelDied) as caught:
            await backend.call("spin", timeout=60)
        assert caught.value.reason == "cpu limit 2 s"
        with pytest.raises(bridge.KernelDied, match="cpu limit 2 s"):
            await backend.call("ping")
        assert exits and exits[0]["reason"] == "cpu limit 2 s"
        assert (await abridge.evaluate("1 + 1")).value == 2
    finally:
        await backend.terminate()
