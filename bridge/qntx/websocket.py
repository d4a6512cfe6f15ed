"""HandleWebSocket: output and backend events reach QNTX as they happen.

QNTX's core proxies a browser's websocket (``/ws/python``) to this bidirectional stream: it
sends CONNECT, then each browser message as DATA (the query string of the websocket's URL as
the call's metadata), PING every so often (answered PONG, with its timestamp, also while a
call runs), and CLOSE when the browser goes; what the plugin sends as DATA reaches the
browser, CLOSE closes it. (ERROR, PING and PONG from the plugin stay in the core.)

Every DATA is one JSON object. A client sends requests, each with a ``ref`` of its choosing:

    {"ref": "r1", "op": "run", "path": "/execute", "body": {"content": "print(1)"}}
    {"ref": "s1", "op": "subscribe", "backend": "<id>", "last_event_id": 17}
    {"ref": "r1", "op": "cancel"}

``run`` takes any route that streams over HTTP (``/execute``, ``/evaluate``,
``/execute-file``, ``/contexts/{id}/execute`` ...) with the body that route takes.

The plugin answers with frames ``{"ref", "event", "data"}`` carrying the HTTP service's SSE
events, the same names and the same data (one definition: ``output_event``): ``stdout``,
``stderr``, ``display``, ``result``, ``error`` as the code makes them, then ``end`` with the
whole answer (a failure body with its status if it failed). A backend's events come as
``{"ref", "event": "message", "id": N, "data": {"type", "data"}}``, as the SSE stream's
``id:`` and ``data:``; ``overflow`` when the reader fell behind the backend's event log,
``end`` when the backend is gone. Every request ends with exactly one ``end`` (a refused
request too, with a failure body), or ``cancelled`` when the client cancelled it. A run
cancelled, or a stream closed or dropped while it runs, interrupts its code.

Connecting with ``?backend=<id>&last_event_id=N`` subscribes at once (ref: the backend id).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec

from bridge.service import dispatch
from bridge.service import models as m
from bridge.service.errors import (
    ApiError,
    ErrorType,
    bad_request,
    internal,
    not_found,
    to_api_error,
)
from bridge.service.events import event_id, output_event
from bridge.service.service import Service

from .protocol import domain_pb

log = logging.getLogger("bridge.qntx")

WS = domain_pb.WebSocketMessage
MAX_REQUESTS = 16  # requests one stream runs at once
OUTBOX = 256  # frames waiting for the stream to take them
BATCH = 256 * 1024  # bytes of backend events read from the log at once
KEEPALIVE = 15.0  # seconds between checks of a quiet subscription

_ROUTES = [(re.compile(route.pattern + r"\Z"), route) for route in dispatch.ROUTES]


def frame(ref: str | None, event: str, data: Any, **extra: Any) -> Any:
    body = {"ref": ref, "event": event, **extra, "data": data}
    return WS(type=WS.DATA, data=m.encode(body), timestamp=time.time_ns())


def streamed_operation(target: str) -> tuple[dispatch.Operation, dispatch.Request]:
    """The streaming operation a ``run`` names, and its request (no body yet)."""
    path, _, query = target.partition("?")
    for regex, route in _ROUTES:
        match = regex.match(path)
        if match is None:
            continue
        operation = route.methods.get("POST")
        if operation is None or not operation.streams:
            raise bad_request(f"{path} does not stream: run takes the routes that run code")
        return operation, dispatch.Request(match.groups(), dispatch.parse_query(query))
    raise not_found(f"no route POST {path}")


class Outbox:
    """Frames for the stream: data frames bounded (a writer waits), PONGs ahead of them."""

    def __init__(self) -> None:
        self._data: asyncio.Queue[Any] = asyncio.Queue(OUTBOX)
        self._control: collections.deque[Any] = collections.deque(maxlen=16)
        self._wake = asyncio.Event()
        self.closed = False

    async def put(self, message: Any) -> None:
        await self._data.put(message)
        self._wake.set()

    def control(self, message: Any) -> None:
        self._control.append(message)
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def get(self) -> Any | None:
        """The next frame; None once closed and empty."""
        while True:
            if self._control:
                return self._control.popleft()
            if not self._data.empty():
                return self._data.get_nowait()
            if self.closed:
                return None
            self._wake.clear()
            await self._wake.wait()


class Session:
    """One HandleWebSocket stream: its requests, each a task, and the frames they send."""

    def __init__(self, service: Callable[[], Awaitable[Service]]) -> None:
        self.service = service  # the plugin's Service, started if it is not running
        self.outbox = Outbox()
        self.tasks: dict[str, asyncio.Task[None]] = {}

    async def send(self, ref: str | None, event: str, data: Any, **extra: Any) -> None:
        await self.outbox.put(frame(ref, event, data, **extra))

    async def refuse(self, ref: str | None, error: ApiError) -> None:
        await self.send(ref, "end", dispatch.failure_body(error))

    # -- the stream ------------------------------------------------------------------------------

    async def serve(
        self, incoming: AsyncIterator[Any], metadata: dict[str, str]
    ) -> AsyncIterator[Any]:
        """The frames to send, while *incoming* is read; whatever ends it cancels the rest."""
        reader = asyncio.ensure_future(self._read(incoming, metadata))
        try:
            while (message := await self.outbox.get()) is not None:
                yield message
        finally:
            reader.cancel()
            await self.cancel_all()

    async def _read(self, incoming: AsyncIterator[Any], metadata: dict[str, str]) -> None:
        try:
            if "backend" in metadata:
                await self._request(
                    {
                        "ref": metadata["backend"],
                        "op": "subscribe",
                        "backend": metadata["backend"],
                        "last_event_id": metadata.get("last_event_id"),
                    }
                )
            async for message in incoming:
                if message.type == WS.PING:
                    self.outbox.control(WS(type=WS.PONG, timestamp=message.timestamp))
                elif message.type == WS.CLOSE:
                    break
                elif message.type == WS.DATA:
                    await self._data(message.data)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the stream broke (the core went away): end as on CLOSE
            log.debug("websocket stream ended: %r", exc)
        await self.cancel_all()
        self.outbox.close()

    async def _data(self, data: bytes) -> None:
        try:
            request = json.loads(data)
        except ValueError as exc:
            await self.refuse(None, bad_request(f"a frame is not JSON: {exc}"))
            return
        if not isinstance(request, dict):
            await self.refuse(None, bad_request("a frame must be a JSON object"))
            return
        await self._request(request)

    async def _request(self, request: dict[str, Any]) -> None:
        ref, op = request.get("ref"), request.get("op")
        if not isinstance(ref, str) or not ref:
            await self.refuse(None, bad_request("ref must be a non-empty string"))
            return
        if op == "cancel":
            await self.cancel(ref)
            return
        running = self.tasks.get(ref)
        if running is not None and not running.done():
            await self.refuse(ref, ApiError(ErrorType.CONFLICT, f"ref {ref!r} is running already"))
            return
        if sum(not t.done() for t in self.tasks.values()) >= MAX_REQUESTS:
            await self.refuse(
                ref,
                ApiError(
                    ErrorType.LIMIT_REACHED, f"{MAX_REQUESTS} requests run on this stream already"
                ),
            )
            return
        if op == "run":
            work = self._run(ref, request)
        elif op == "subscribe":
            work = self._subscribe(ref, request)
        else:
            await self.refuse(ref, bad_request("op must be run, subscribe or cancel"))
            return
        task = asyncio.ensure_future(work)
        self.tasks[ref] = task
        task.add_done_callback(self._forget(ref))

    def _forget(self, ref: str) -> Callable[[asyncio.Task[None]], None]:
        def forget(task: asyncio.Task[None]) -> None:
            if self.tasks.get(ref) is task:  # not a later request that took the ref again
                del self.tasks[ref]

        return forget

    async def cancel(self, ref: str) -> None:
        task = self.tasks.get(ref)
        if task is None or task.done():
            await self.refuse(ref, not_found(f"no request {ref!r} runs on this stream"))
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await self.send(ref, "cancelled", {})

    async def cancel_all(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- run: outputs as they are made -----------------------------------------------------------

    async def _run(self, ref: str, request: dict[str, Any]) -> None:
        try:
            target = request.get("path")
            if not isinstance(target, str):
                raise bad_request("path must be a string: the route to run, as /execute")
            operation, call = streamed_operation(target)
            service = await self.service()
        except Exception as exc:
            await self.refuse(ref, to_api_error(exc) or internal())
            return
        body = json.dumps(request.get("body"), default=str).encode()
        outputs: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        call = dataclasses.replace(call, body=body, size=len(body), on_output=outputs.put_nowait)
        work = asyncio.ensure_future(dispatch.outcome(operation(service, call), operation.status))
        try:
            while not work.done():
                waiting = asyncio.ensure_future(outputs.get())
                try:
                    await asyncio.wait({waiting, work}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiting.cancel()
                if waiting.done() and not waiting.cancelled():
                    await self.send(ref, *output_event(waiting.result()))
            while not outputs.empty():  # made before the call ended: they come before `end`
                await self.send(ref, *output_event(outputs.get_nowait()))
            await self.send(ref, "end", work.result().body)
        finally:
            if not work.done():
                work.cancel()  # a cancelled call interrupts its code and frees the kernel
                with contextlib.suppress(asyncio.CancelledError):
                    await work

    # -- subscribe: a backend's events, with resume ----------------------------------------------

    async def _subscribe(self, ref: str, request: dict[str, Any]) -> None:
        try:
            backend = request.get("backend")
            if not isinstance(backend, str):
                raise bad_request("backend must be a string: the id POST /backends gave")
            last = request.get("last_event_id")
            last_id = event_id(None if last is None else str(last))
            hosted = (await self.service()).backend(backend)
            stream = hosted.subscribe(last_id)
        except Exception as exc:
            await self.refuse(ref, to_api_error(exc) or internal())
            return
        try:
            while True:
                batch, overflowed = hosted.pending(stream, BATCH)
                for seq, data in batch:
                    await self.send(ref, "message", msgspec.Raw(data.encode()), id=seq)
                    stream.cursor = seq
                if overflowed or (batch and hosted.overflowed(stream)):
                    await self.send(ref, "overflow", {"last_event_id": stream.cursor})
                    await self.send(ref, "end", {})
                    return
                if batch:
                    continue
                if stream.ended:
                    await self.send(ref, "end", {})
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(KEEPALIVE):
                        await stream.wake.wait()
        finally:
            hosted.unsubscribe(stream)
