"""Generator methods as streams, host side: ``async for item in backend.stream("count")``.

A backend method that yields (``def`` or ``async def``) sends its items as it makes them. The
host asks for them with a window: the kernel advances the generator only while fewer than
``window`` items (and ``window_bytes`` bytes) are sent and not yet taken by the consumer, and
the consumer's ``__anext__`` acknowledges what it took. So a slow consumer holds the generator
back, and neither side buffers more than the window. Closing the stream (``aclose()``, leaving
``async with``, ``break`` once the stream object is dropped, or cancelling the task that reads
it) closes the generator in the kernel, so its ``finally`` runs.
"""

from __future__ import annotations

import asyncio
import collections
from types import TracebackType
from typing import TYPE_CHECKING, Any

from bridge.core.errors import BridgeError, CallTimeout

if TYPE_CHECKING:
    from bridge.backends.backend import AsyncBackend

DEFAULT_WINDOW = 128  # items the kernel may send ahead of the consumer
DEFAULT_WINDOW_BYTES = 8 << 20  # ... and bytes (one item may always be in flight)
CLOSE_WAIT = 5.0  # aclose() waits at most this long for the generator's finally to have run


class StreamChannel:
    """Where one stream's items land on the bridge's loop; at most the window of them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.items: collections.deque[Any] = collections.deque()
        self.received = 0
        self.wake = asyncio.Event()
        # The kernel's last word: the count of items sent, None once closed early, or the
        # error that ended it (also the kernel's death or the backend's end).
        self.end: asyncio.Future[int | None] = loop.create_future()
        self.end.add_done_callback(self._ended)

    def put(self, item: Any) -> None:
        self.items.append(item)
        self.received += 1
        self.wake.set()

    def _ended(self, future: asyncio.Future[int | None]) -> None:
        if not future.cancelled():
            future.exception()  # retrieved: a stream closed early never reads it
        self.wake.set()


class AsyncBackendStream:
    """The items of a generator method, as they are produced; made by ``AsyncBackend.stream``.

    >>> async for n in backend.stream("count", {"n": 5}):       # doctest: +SKIP
    ...     print(n)

    ``timeout`` is the longest wait for the next item (``CallTimeout``, and the generator is
    closed); an exception in the method ends the stream with ``BackendError``; the kernel's
    death with ``KernelDied``. Items may be binary (bytes, NumPy arrays), as in ``call()``.
    """

    def __init__(
        self,
        backend: AsyncBackend,
        method: str,
        params: Any,
        buffers: list[Any],
        *,
        timeout: float,
        window: int,
        window_bytes: int,
    ) -> None:
        self.method = method
        self._backend = backend
        self._request = (params, buffers)
        self._timeout = timeout
        self._window = (window, window_bytes)
        self._state = "new"  # new -> open -> done | closed
        self._rid = 0
        self._channel: StreamChannel | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._taken = 0
        self._acked = 0

    def __repr__(self) -> str:
        return f"<AsyncBackendStream {self.method}() {self._state}>"

    def __aiter__(self) -> AsyncBackendStream:
        return self

    async def __aenter__(self) -> AsyncBackendStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def __anext__(self) -> Any:
        if self._state == "new":
            await self._open()
        channel = self._channel
        if self._state != "open" or channel is None:
            raise StopAsyncIteration
        while True:
            if channel.items:
                return self._take(channel)
            if channel.end.done():
                return self._finish(channel)
            channel.wake.clear()
            try:
                async with asyncio.timeout(self._timeout):
                    await channel.wake.wait()
            except TimeoutError:
                self._abandon()
                raise CallTimeout(
                    f"{self._backend._label}: {self.method}() gave no item within "
                    f"{self._timeout:g} s; the stream is closed",
                    method=self.method,
                    timeout=self._timeout,
                ) from None
            except asyncio.CancelledError:
                self._abandon()
                raise

    async def aclose(self) -> None:
        """Close the generator in the kernel and wait (up to 5 s) until its finally has run.
        Idempotent; items not yet taken are dropped."""
        if self._state == "new":
            self._state = "closed"
        channel = self._channel
        if self._state != "open" or channel is None:
            return
        self._state = "closed"
        if not channel.end.done():
            self._backend._drop_stream(self._rid, cancel=True, keep_end=True)
            try:
                async with asyncio.timeout(min(self._timeout, CLOSE_WAIT)):
                    await asyncio.shield(channel.end)
            except (TimeoutError, BridgeError):
                pass  # closed as far as the host is concerned; the kernel said no more
        self._backend._drop_stream(self._rid, cancel=False)

    def __del__(self) -> None:
        # ``break`` out of ``async for`` leaves the stream to be dropped: close it then, so
        # the generator does not wait for the window forever.
        if self._state != "open" or self._loop is None or self._loop.is_closed():
            return
        backend, rid = self._backend, self._rid
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        try:
            if running is self._loop:
                backend._drop_stream(rid, cancel=True)
            else:
                self._loop.call_soon_threadsafe(backend._drop_stream, rid, True)
        except RuntimeError:
            pass  # the loop closed meanwhile: so did the backend

    # -- inside --

    async def _open(self) -> None:
        self._state = "open"
        try:
            self._rid, self._channel = await self._backend._start_stream(
                self.method, *self._request, timeout=self._timeout, window=self._window
            )
        except BaseException:
            self._state = "done"
            raise
        self._request = ({}, [])  # the kernel has them; do not keep a large argument alive
        self._loop = asyncio.get_running_loop()

    def _take(self, channel: StreamChannel) -> Any:
        item = channel.items.popleft()
        self._taken += 1
        # Acknowledge in batches: half a window taken, or the consumer has caught up.
        if not channel.end.done() and (
            self._taken - self._acked >= max(1, self._window[0] // 2) or not channel.items
        ):
            self._acked = self._taken
            self._backend._ack_stream(self._rid, self._taken)
        return item

    def _finish(self, channel: StreamChannel) -> Any:
        self._state = "done"
        self._backend._drop_stream(self._rid, cancel=False)
        error = channel.end.exception()
        if error is not None:
            raise error
        count = channel.end.result()
        if count is not None and count != channel.received:
            raise BridgeError(
                f"{self._backend._label}: {self.method}() sent {count} items, "
                f"{channel.received} arrived"
            )
        raise StopAsyncIteration

    def _abandon(self) -> None:
        if self._state == "open":
            self._state = "closed"
            self._backend._drop_stream(self._rid, cancel=True)

    async def take(self) -> list[Any]:
        """The next item and every one already here ([] at the end): one trip for a reader that
        takes them in batches (the blocking iterator, the HTTP stream)."""
        try:
            batch = [await self.__anext__()]
        except StopAsyncIteration:
            return []
        channel = self._channel
        while channel is not None and channel.items:
            batch.append(self._take(channel))
        return batch
