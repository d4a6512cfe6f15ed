"""Calls a test knows to be running: it waits on their first output or "started" event, not a
sleep."""

from __future__ import annotations

import asyncio
from typing import Any

import bridge


async def running_slow_call(
    backend: bridge.AsyncBackend, seconds: float, *, timeout: float | None = None, **params: Any
) -> Any:
    """Start the toolbox's ``slow`` method (the call's *timeout* if given); return its future
    once the method runs."""
    started = asyncio.Event()
    # The script's own "started" ({"pid": ...}, sent at its start) may be kept for the first
    # handler of the type: only the method's announcement (its *seconds*) counts.
    undo = backend.on("started", lambda data: started.set() if data == seconds else None)
    try:
        call = asyncio.ensure_future(
            backend.call("slow", {"seconds": seconds, "announce": True, **params}, timeout=timeout)
        )
        async with asyncio.timeout(30):
            await started.wait()
    finally:
        undo()
    return call


async def running_execute(
    runner: bridge.AsyncBridge | bridge.AsyncSession, seconds: float = 30
) -> asyncio.Future[Any]:
    """A call that sleeps *seconds*, returned once its code runs (its first output is back)."""
    started = asyncio.Event()
    call = asyncio.ensure_future(
        runner.execute(
            f"import time\nprint('started', flush=True)\ntime.sleep({seconds})",
            on_output=lambda _output: started.set(),
        )
    )
    await asyncio.wait_for(started.wait(), 30)
    return call
