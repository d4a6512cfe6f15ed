"""Kernels that misbehave on purpose: hang, ignore interrupts, hold the GIL, die, flood output."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import kernels_below

import bridge

SWALLOWS_INTERRUPT = """
import time
print('started', flush=True)
while True:
    try:
        time.sleep(0.05)
    except KeyboardInterrupt:
        pass
"""


@pytest.fixture(scope="module")
def faulty(launch: dict[str, bool]) -> Iterator[bridge.Bridge]:
    """Its own pool: these tests kill kernels, which the shared pool's users should not feel.

    Once with forked kernels, once with kernels started as new interpreters (``launch``).
    """
    with bridge.Bridge(pool_size=2, timeout=30, **launch) as b:
        yield b


def _pids(b: bridge.Bridge) -> set[int]:
    return {pid for k in b.async_bridge.pool.kernels if (pid := k.pid) is not None and k.alive}


def _wait_full(b: bridge.Bridge) -> None:
    """Until the pool has all its kernels again (replacements start in the background)."""
    pool = b.async_bridge.pool
    deadline = time.monotonic() + 30
    while len([k for k in pool.kernels if k.alive]) < pool.size:
        assert time.monotonic() < deadline, "the pool did not refill"
        time.sleep(0.05)


def test_timeout_interrupts_and_keeps_the_kernel(faulty: bridge.Bridge) -> None:
    _wait_full(faulty)
    before = _pids(faulty)
    start = time.monotonic()
    with pytest.raises(bridge.ExecutionTimeout) as info:
        faulty.execute("import time\nprint('working', flush=True)\ntime.sleep(60)", timeout=1)
    elapsed = time.monotonic() - start
    assert elapsed < 1 + 2
    exc = info.value
    assert isinstance(exc, TimeoutError) and isinstance(exc, bridge.BridgeError)
    assert not exc.restarted and "interrupted" in str(exc)
    assert exc.timeout == 1 and exc.result.stdout == "working\n"
    assert exc.result.error is not None and exc.result.error.ename == "KeyboardInterrupt"
    assert faulty.evaluate("1 + 1").value == 2
    assert _pids(faulty) == before  # an interrupt was enough: no kernel was replaced


def test_timeout_kills_code_that_swallows_keyboard_interrupt(faulty: bridge.Bridge) -> None:
    start = time.monotonic()
    with pytest.raises(bridge.ExecutionTimeout) as info:
        faulty.execute(SWALLOWS_INTERRUPT, timeout=1)
    assert time.monotonic() - start < 1 + 2
    assert info.value.restarted and "killed" in str(info.value)
    assert info.value.result.stdout == "started\n"
    assert faulty.evaluate("2 + 2").value == 4


def test_timeout_kills_code_holding_the_gil_in_c(faulty: bridge.Bridge) -> None:
    start = time.monotonic()
    with pytest.raises(bridge.ExecutionTimeout) as info:
        faulty.execute("sum(range(10**11))", timeout=1)
    assert time.monotonic() - start < 1 + 2
    assert info.value.restarted
    assert faulty.evaluate("3 + 3").value == 6


@pytest.mark.parametrize(
    ("code", "exit_code", "sig"),
    [
        ("import os\nprint('last words')\nos._exit(7)", 7, None),
        ("import ctypes\nprint('last words')\nctypes.string_at(0)", None, signal.SIGSEGV),
        ("import os, signal\nprint('last words')\nos.kill(os.getpid(), signal.SIGKILL)", None, 9),
    ],
    ids=["exit", "segfault", "sigkill"],
)
def test_kernel_death_is_reported_with_status_and_output(
    faulty: bridge.Bridge, code: str, exit_code: int | None, sig: int | None
) -> None:
    start = time.monotonic()
    with pytest.raises(bridge.KernelDied) as info:
        faulty.execute(code, timeout=30)
    assert time.monotonic() - start < 5
    assert info.value.exit_code == exit_code and info.value.signal == sig
    assert info.value.result is not None and not info.value.result.success
    if sig is None:  # os._exit flushes first; a signal gives the kernel no chance to
        assert info.value.result.stdout == "last words\n"
    assert faulty.evaluate("'next call works'").value == "next call works"


def test_replacement_starts_in_the_background(faulty: bridge.Bridge) -> None:
    pool = faulty.async_bridge.pool
    _wait_full(faulty)
    survivors = _pids(faulty)
    with pytest.raises(bridge.KernelDied):
        faulty.execute("import os\nos._exit(1)")
    # The next calls go to the warm kernel that is still there, not to one being started.
    alive = {k.pid for k in pool.kernels if k.alive}
    assert alive and alive <= survivors
    pid = faulty.evaluate("__import__('os').getpid()").value
    assert pid in survivors
    _wait_full(faulty)


def test_idle_kernel_death_is_replaced(faulty: bridge.Bridge) -> None:
    import os

    pool = faulty.async_bridge.pool
    _wait_full(faulty)
    victim = next(k for k in pool.kernels if k.alive)
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while (victim in pool.kernels or len(pool.kernels) < 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert victim not in pool.kernels and all(k.alive for k in pool.kernels)
    for _ in range(4):
        assert faulty.evaluate("1").value == 1


def test_a_replacement_killed_while_starting_is_started_again(
    faulty: bridge.Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed replacement start is tried again in the background: the pool does not stay
    short until a call finds it so (and pays for a cold start)."""
    pool = faulty.async_bridge.pool
    caplog.set_level(logging.ERROR, logger="bridge.pool")
    for _ in range(5):  # a kill that lands after the start was done is a plain death
        _wait_full(faulty)
        known = set(kernels_below(os.getpid()))
        with faulty.session():  # takes a pool kernel: the pool starts a replacement
            deadline = time.monotonic() + 30
            while not (new := set(kernels_below(os.getpid())) - known - _taken_pids(faulty)):
                assert time.monotonic() < deadline, "no replacement was started"
                time.sleep(0.002)
            os.kill(new.pop(), signal.SIGKILL)
            _wait_full(faulty)  # no call asks for a kernel meanwhile
        if "could not start a replacement kernel" in caplog.text:
            break
    assert "could not start a replacement kernel (trying again in" in caplog.text
    assert all(k.alive for k in pool.kernels) and len(pool.kernels) == pool.size


def _taken_pids(b: bridge.Bridge) -> set[int]:
    return {k.pid for k in b.async_bridge.pool._taken if k.pid is not None}


def test_session_death_is_reported_until_restart(faulty: bridge.Bridge) -> None:
    with faulty.session() as s:
        s.execute("state = 'precious'")
        with pytest.raises(bridge.KernelDied):
            s.execute("import os\nos._exit(3)")
        for _ in range(2):  # never silently on a fresh kernel without the state
            with pytest.raises(bridge.KernelDied, match="restart"):
                s.evaluate("state")
        s.restart()
        r = s.evaluate("state")
        assert not r.success and r.error is not None and r.error.ename == "NameError"
        s.execute("state = 'new'")
        assert s.evaluate("state").value == "new"


def test_session_timeout_that_needed_a_kill_loses_the_session(faulty: bridge.Bridge) -> None:
    with faulty.session() as s:
        s.execute("x = 1")
        with pytest.raises(bridge.ExecutionTimeout) as info:
            s.execute(SWALLOWS_INTERRUPT, timeout=1)
        assert info.value.restarted
        with pytest.raises(bridge.KernelDied, match="timeout"):
            s.evaluate("x")


def test_session_timeout_with_interrupt_keeps_state(faulty: bridge.Bridge) -> None:
    with faulty.session() as s:
        s.execute("x = 1")
        with pytest.raises(bridge.ExecutionTimeout) as info:
            s.execute("import time\ntime.sleep(60)", timeout=1)
        assert not info.value.restarted
        assert s.evaluate("x").value == 1


def test_fifty_thousand_lines_all_arrive_in_order(faulty: bridge.Bridge) -> None:
    r = faulty.execute("for i in range(50_000):\n    print(i)", timeout=60)
    assert r.success and not r.truncated
    lines = r.stdout.splitlines()
    assert len(lines) == 50_000
    assert lines == [str(i) for i in range(50_000)]


def test_many_display_messages_are_not_dropped(faulty: bridge.Bridge) -> None:
    # One IOPub message each: well past ZeroMQ's default high-water mark of 1000.
    r = faulty.execute(
        "from IPython.display import display\nfor i in range(5000):\n    display(i)", timeout=60
    )
    assert r.success
    shown = [o["data"]["text/plain"] for o in r.outputs if o["output_type"] == "display_data"]
    assert shown == [str(i) for i in range(5000)]


def test_output_past_the_cap_is_cut_and_the_call_completes() -> None:
    with bridge.Bridge(pool_size=1, max_output=100_000) as b:
        r = b.execute("for i in range(100_000):\n    print('x' * 20)\nreturn 'done'", timeout=60)
        assert r.success and r.value == "done" and r.truncated
        assert "output truncated" in r.stdout
        assert 100_000 <= len(r.stdout) < 101_000
        assert b.execute("print('small')").truncated is False


# Each of these came back whole (up to 412 KB) with truncated false under max_output=1000.
EVERY_KIND_OF_OUTPUT = {
    "display metadata": (
        "from IPython.display import display\n"
        "display({'text/plain': 'x'}, raw=True, metadata={'big': 'm' * 100_000})"
    ),
    "display updates": (
        "from IPython.display import display, update_display\n"
        "display('small', display_id='d')\n"
        "for i in range(20):\n"
        "    update_display('u' * 20_000, display_id='d')"
    ),
    "displayhook results": ("import sys\nfor i in range(20):\n    sys.displayhook('r' * 20_000)"),
    "attestations": (
        "from bridge_runtime import attest\n"
        "for i in range(200):\n"
        "    attest(subjects=['s' * 1000], predicates=['p'], contexts=['c'])"
    ),
}


@pytest.mark.parametrize("kind", list(EVERY_KIND_OF_OUTPUT))
def test_max_output_limits_every_kind_of_output(kind: str) -> None:
    limit = 1000
    with bridge.Bridge(pool_size=1, max_output=limit) as b:
        r = b.execute(EVERY_KIND_OF_OUTPUT[kind] + "\nreturn 'the value'", timeout=60)
    assert r.success and r.truncated, kind
    assert r.value == "the value"  # the value stays
    sent_back = json.dumps([r.outputs, r.attestations, r.stdout, r.stderr])
    # The limit, the truncation marker and the value's own output: nothing more.
    assert len(sent_back) < limit + 2000, f"{kind}: {len(sent_back)} characters came back"


def test_the_traceback_stays_past_the_limit() -> None:
    with bridge.Bridge(pool_size=1, max_output=100) as b:
        r = b.execute("print('x' * 1000)\nraise ValueError('the reason')", timeout=60)
    assert not r.success and r.truncated
    assert r.error is not None and "ValueError: the reason" in r.error.traceback


# -- execute_file on the host: the opened file is what is read ------------------------------------


def test_execute_file_refuses_a_fifo_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "job.py"
    os.mkfifo(fifo)
    with bridge.Bridge(pool_size=1) as b:
        started = time.monotonic()
        with pytest.raises(bridge.ScriptRefused, match="not a regular file") as caught:
            b.execute_file(fifo)
        assert caught.value.reason == "bad_request" and time.monotonic() - started < 5
        big = tmp_path / "big.py"
        big.write_text("x = 1\n" * 1000)
        with pytest.raises(bridge.ScriptRefused, match="larger than 100 bytes"):
            b.execute_file(big, max_size=100)
        inside = tmp_path / "inside"
        inside.mkdir()
        (inside / "escape.py").symlink_to(big)
        with pytest.raises(bridge.ScriptRefused, match="outside") as caught:
            b.execute_file(inside / "escape.py", root=inside)
        assert caught.value.reason == "forbidden"
        (inside / "ok.py").write_text("return 42\n")
        assert b.execute_file(inside / "ok.py", root=inside).value == 42
