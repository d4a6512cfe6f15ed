"""User callbacks, run one way everywhere: ``on_output``, ``on_attest``, backend event handlers.

The rule, one for all of them:

- **One callback, one event at a time, in order.** Each callback (one ``on_output`` of one
  call, the bridge's ``on_attest`` within one call, one handler given to ``on()`` or
  ``on_any()``) sees its events in the order they arrived; its next event is handed over once
  it has returned and the coroutine it returned, if any, has finished. Different callbacks do
  not wait for each other: a slow handler delays only itself.
- **On the event loop.** A plain function is called on the bridge's loop as soon as its turn
  comes (at once when nothing of its own is queued), so it must not block; a coroutine function
  is awaited there. The blocking API (``Bridge``, ``Session``, ``Backend``) hands plain
  functions to a worker thread instead, in the same order, so they may block and call the
  blocking API.
- **A callback that raises is logged**, and it keeps receiving events.
- **A call's callbacks are done when the call returns** (``on_output``, ``on_attest``); a
  cancelled call drops what is still queued for them. The call lets its kernel go before they
  are done (``_AsyncCalls._submit`` in bridge/api/bridge.py), so a callback may call the
  bridge, or the session it belongs to, without waiting on itself. A backend's handlers go on
  for its life.

A queued event holds only what the kernel already sent, and what a call's output and a
backend's event stream keep is bounded upstream (``max_output``, the event backlog).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from bridge.core.validate import check_callable

log = logging.getLogger("bridge.callbacks")


class CallbackRunner:
    """Runs one callback under the rule above: ``runner(*args)`` hands it one event.

    >>> runner = CallbackRunner(print, "on_output")  # doctest: +SKIP
    >>> runner({"text": "hi"}); await runner.drain()  # doctest: +SKIP
    """

    def __init__(self, callback: Callable[..., Any], what: str) -> None:
        check_callable(callback, what)
        self.callback = callback
        self.what = what
        self._queue: collections.deque[Callable[[], Any] | Awaitable[Any]] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def __call__(self, *args: Any) -> None:
        """Hand the callback one event; never blocks, never raises."""
        if self._closed:
            return  # an event after the call ended (a cancelled call winding down)
        if self._task is not None:
            self._queue.append(functools.partial(self.callback, *args))  # its turn comes
            return
        try:
            outcome = self.callback(*args)
        except Exception:
            log.exception("%s failed", self.what)
            return
        if inspect.isawaitable(outcome):
            self._queue.append(outcome)
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            while self._queue:
                item = self._queue.popleft()
                try:
                    outcome = item() if callable(item) else item
                    if inspect.isawaitable(outcome):
                        await outcome
                except Exception:
                    log.exception("%s failed", self.what)
        finally:
            self._task = None

    async def drain(self) -> None:
        """Take no more events; return once every event handed over so far is handled."""
        self._closed = True
        task = self._task
        if task is not None:
            await asyncio.shield(task)

    def cancel(self) -> None:
        """Take no more events and drop those queued (their coroutines closed unrun)."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        while self._queue:
            item = self._queue.popleft()
            if inspect.iscoroutine(item):
                item.close()
