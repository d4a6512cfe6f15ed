"""``on_output=``: a caller's callback hears each output of a call as the kernel makes it.

The kernel's reader hands each output to the relay as it arrives. A plain callback runs there
and then (it must not block); an async one is awaited by a task of the relay's own, one at a
time in arrival order, so a slow callback never holds up the reader. The call returns once
every callback is done. A callback that raises is logged; the call goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from bridge.core.validate import check_callable

log = logging.getLogger("bridge.api")

OutputCallback = Callable[[dict[str, Any]], Any]  # returns None, or an awaitable


class OutputRelay:
    """Feeds one call's outputs to *callback*; ``drain()`` once the call is over."""

    def __init__(self, callback: OutputCallback) -> None:
        check_callable(callback, "on_output")
        self._callback = callback
        self._queue: asyncio.Queue[Awaitable[Any] | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def __call__(self, output: dict[str, Any]) -> None:
        """The kernel's listener: one nbformat output (a stream output per chunk)."""
        if self._closed:
            return  # output after the call ended (a cancelled call winding down)
        try:
            outcome = self._callback(output)
        except Exception:
            log.exception("an on_output callback failed")
            return
        if inspect.isawaitable(outcome):
            if self._queue is None:
                self._queue = asyncio.Queue()
                self._task = asyncio.ensure_future(self._await_in_order(self._queue))
            self._queue.put_nowait(outcome)

    async def _await_in_order(self, queue: asyncio.Queue[Awaitable[Any] | None]) -> None:
        while True:
            item = await queue.get()
            if item is None:
                return
            try:
                await item
            except Exception:
                log.exception("an on_output callback failed")

    async def drain(self) -> None:
        """Stop taking outputs and wait until every callback queued so far is done."""
        self._closed = True
        if self._queue is not None and self._task is not None:
            self._queue.put_nowait(None)
            await asyncio.shield(self._task)

    def cancel(self) -> None:
        """The call was cancelled: drop what is still queued (its coroutines closed unrun)."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        while self._queue is not None and not self._queue.empty():
            item = self._queue.get_nowait()
            if inspect.iscoroutine(item):
                item.close()


async def relayed(
    callback: OutputCallback | None,
    run: Callable[[Callable[[dict[str, Any]], None] | None], Awaitable[Any]],
) -> Any:
    """``await run(listener)`` with *callback* behind the listener; every callback done on
    return or on a bridge error, dropped on cancellation."""
    if callback is None:
        return await run(None)
    relay = OutputRelay(callback)
    try:
        outcome = await run(relay)
    except asyncio.CancelledError:
        relay.cancel()
        raise
    except BaseException:
        with contextlib.suppress(Exception):
            await relay.drain()
        raise
    await relay.drain()
    return outcome
