"""bridge/core/callbacks.py: one callback sees its events one at a time, in order, whether it
is plain, returns a coroutine for some events, or raises; callbacks do not wait for each other."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bridge.core.callbacks import CallbackRunner

pytestmark = pytest.mark.asyncio


async def test_one_callback_sees_its_events_in_order_sync_async_or_failing() -> None:
    seen: list[Any] = []
    release = asyncio.Event()

    async def slow(n: int) -> None:
        await release.wait()
        seen.append(n)

    def callback(n: int) -> Any:
        if n == 3:
            raise ValueError("logged; the callback goes on")
        if n % 2:
            return slow(n)  # an awaitable for odd events: the next ones wait behind it
        seen.append(n)
        return None

    runner = CallbackRunner(callback, "test callback")
    for n in range(6):
        runner(n)
    assert seen == [0]  # 1 is pending; 2..5 queued behind it, none run out of turn
    release.set()
    await runner.drain()
    assert seen == [0, 1, 2, 4, 5]
    runner(6)  # after drain: the call is over, nothing more is taken
    assert seen == [0, 1, 2, 4, 5]


async def test_callbacks_do_not_wait_for_each_other_and_cancel_drops_the_queue() -> None:
    never, started = asyncio.Event(), asyncio.Event()
    blocked: list[int] = []
    free: list[int] = []

    async def stuck(n: int) -> None:
        blocked.append(n)
        started.set()
        await never.wait()

    slow, quick = CallbackRunner(stuck, "stuck"), CallbackRunner(free.append, "quick")
    for n in range(3):
        slow(n)
        quick(n)
    assert free == [0, 1, 2]
    await started.wait()
    slow.cancel()
    assert blocked == [0]  # 1 and 2 were dropped, their coroutines closed unrun
