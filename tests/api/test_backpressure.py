"""Backpressure: calls wait for a pool kernel in a bounded queue; beyond it, Overloaded at once."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

import bridge

HOLD = "import os, time\nwhile not os.path.exists(path):\n    time.sleep(0.01)\nreturn 'held'"


@pytest_asyncio.fixture(scope="module")
async def one() -> AsyncIterator[bridge.AsyncBridge]:
    async with bridge.AsyncBridge(pool_size=1, max_waiting=2, timeout=60) as b:
        yield b


async def _until(check: object, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the pool never reached the state waited for"
        await asyncio.sleep(0.005)


@pytest.mark.asyncio
async def test_a_full_queue_refuses_at_once_and_the_queued_calls_run(
    one: bridge.AsyncBridge,
) -> None:
    assert one.status().max_waiting == 2
    assert bridge.AsyncBridge().max_waiting is None  # the pool's default: 32 per kernel
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "go")
        held = asyncio.ensure_future(one.execute(HOLD, inputs={"path": path}))
        await _until(lambda: one.status().busy == 1)
        queued = [asyncio.ensure_future(one.evaluate(f"{n} + 1")) for n in range(2)]
        await _until(lambda: one.status().waiting == 2)
        with pytest.raises(bridge.Overloaded, match=r"max_waiting=2") as caught:
            await one.evaluate("'refused'")
        assert caught.value.retry_after >= 1
        await asyncio.to_thread(Path(path).touch)
        assert (await held).value == "held"
        assert [(await q).value for q in queued] == [1, 2]
    assert one.status().waiting == 0


@pytest.mark.asyncio
async def test_the_wait_for_a_kernel_counts_against_the_timeout(one: bridge.AsyncBridge) -> None:
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "go")
        held = asyncio.ensure_future(one.execute(HOLD, inputs={"path": path}))
        await _until(lambda: one.status().busy == 1)
        asked = loop.time()
        late = asyncio.ensure_future(one.execute("import time\ntime.sleep(1.5)", timeout=2))
        await _until(lambda: loop.time() - asked >= 1.0)  # it has waited half its timeout
        await asyncio.to_thread(Path(path).touch)
        await held
        with pytest.raises(bridge.ExecutionTimeout, match="interrupted"):
            await late  # 1.5 s of code in the 1 s left
        assert loop.time() - asked < 1.5 + 2  # not a full timeout after the wait


@pytest.mark.asyncio
async def test_a_sustained_burst_never_grows_the_pool(abridge: bridge.AsyncBridge) -> None:
    """Kernels handed to waiting calls count as busy from the hand-over: a call that comes
    meanwhile must not take the pool for short of a kernel and start a surplus one."""
    await _until(lambda: abridge.status().starting == 0)
    kernels = set(abridge.pool.kernels)

    async def worker() -> None:
        for _ in range(5):
            assert (await abridge.evaluate("1")).value == 1

    await asyncio.gather(*(worker() for _ in range(24)))
    assert set(abridge.pool.kernels) == kernels
    assert abridge.status().starting == 0 and abridge.status().ready == 2
