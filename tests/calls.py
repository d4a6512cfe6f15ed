"""A backend call a test knows to be running: it waits on its "started" event, not a sleep."""

from __future__ import annotations

import asyncio
from typing import Any

import bridge


async def running_slow_call(backend: bridge.AsyncBackend, seconds: float, **params: Any) -> Any:
    """Start the toolbox's ``slow`` method; return its future once the method runs."""
    started = asyncio.Event()
    undo = backend.on("started", lambda _seconds: started.set())
    try:
        call = asyncio.ensure_future(
            backend.call("slow", {"seconds": seconds, "announce": True, **params})
        )
        async with asyncio.timeout(30):
            await started.wait()
    finally:
        undo()
    return call
