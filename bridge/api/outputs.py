"""A call's callbacks: ``on_output=`` hears each output as the kernel makes it, the bridge's
``on_attest`` each record; both run by ``CallbackRunner`` (bridge/core/callbacks.py: one event
at a time per callback, in order, on the loop), and both are done when the call returns.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from bridge.core.callbacks import CallbackRunner

OutputCallback = Callable[[dict[str, Any]], Any]  # returns None, or an awaitable
AttestCallback = Callable[[dict[str, Any]], Any]
Listener = Callable[[dict[str, Any]], None]
T = TypeVar("T")


async def relayed(
    run: Callable[[Listener | None, Listener | None], Awaitable[T]],
    *,
    on_output: OutputCallback | None = None,
    on_attest: AttestCallback | None = None,
) -> T:
    """``await run(output_listener, attest_listener)`` with the callbacks behind the listeners:
    every callback done on return or on a bridge error, what is queued dropped on cancellation."""
    output = None if on_output is None else CallbackRunner(on_output, "on_output")
    attest = None if on_attest is None else CallbackRunner(on_attest, "on_attest")
    runners = [r for r in (output, attest) if r is not None]
    if not runners:
        return await run(None, None)
    try:
        outcome = await run(output, attest)
    except asyncio.CancelledError:
        for runner in runners:
            runner.cancel()
        raise
    except BaseException:
        for runner in runners:
            with contextlib.suppress(Exception):
                await runner.drain()
        raise
    for runner in runners:
        await runner.drain()
    return outcome
