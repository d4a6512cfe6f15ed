"""The HTTP routes: the operations of the service layer's route table (bridge.service.dispatch
.ROUTES), over Jupyter Server's HTTP.

Handlers are Jupyter Server ``APIHandler``s authenticated on a lean path (auth.py): the
server's Host check and its identity provider's token logic (``Authorization: token T`` or
``Bearer T``, ``?token=T``), never a cookie, and no cookie set. Every failure, the server's
own included, is written in the one error shape.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable
from http.client import responses
from typing import Any

from jupyter_server.base.handlers import APIHandler
from tornado import web
from tornado.iostream import StreamClosedError

from bridge import AsyncBackendStream, BackendError, Encoded
from bridge.service import dispatch, metrics
from bridge.service import models as m
from bridge.service.backends import EventStream, HostedBackend
from bridge.service.errors import ApiError, ErrorType, bad_request, internal, to_api_error
from bridge.service.events import OutputBacklog, event_id
from bridge.service.service import Service, call_failure, since

from . import auth, multipart

log = logging.getLogger("bridge.server")

# The error types of tornado's and Jupyter Server's own failures, by status.
_TORNADO_TYPES = {
    400: ErrorType.BAD_REQUEST,
    403: ErrorType.FORBIDDEN,
    404: ErrorType.NOT_FOUND,
    405: ErrorType.METHOD_NOT_ALLOWED,
    409: ErrorType.CONFLICT,
    413: ErrorType.TOO_LARGE,
}


class RefusalLog:
    """Calls refused as overloaded, logged as a count, not a line each.

    Under a burst the service refuses hundreds of calls a second by design (503 with
    Retry-After); Jupyter Server would log each at error level with its headers, which costs
    the loop about as much as a call and floods the log. The first refusal of a burst is one
    warning; the rest are counted and said every *every* seconds while they go on. The exact
    numbers are in /metrics (``kernel_bridge_overloaded_total``).
    """

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self.count = 0
        self._timer: asyncio.TimerHandle | None = None

    def note(self, log: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        if self._timer is None:
            log.warning(
                "overloaded: refusing calls with 503 and Retry-After (every pool kernel is busy "
                "and max_waiting calls wait); refusals are counted every %g s while it lasts",
                self.every,
            )
            self._timer = asyncio.get_running_loop().call_later(self.every, self._say, log)
        else:
            self.count += 1

    def _say(self, log: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        self._timer = None
        if self.count:
            log.warning("overloaded: %d more calls refused in %g s", self.count, self.every)
            self.count = 0
            self._timer = asyncio.get_running_loop().call_later(self.every, self._say, log)


class BaseHandler(APIHandler):  # type: ignore[misc]
    """Token-checked JSON routes whose failures all have one shape."""

    service: Service

    def initialize(self, service: Service, refusals: RefusalLog) -> None:  # type: ignore[override]
        self.service = service
        self.refusals = refusals
        self._work: asyncio.Future[Any] | None = None
        self._gone = False
        self._overloaded = False

    async def prepare(self) -> None:  # type: ignore[override]
        # Not Jupyter Server's prepare(): token only, no cookie read or set (auth.py).
        await auth.authenticate(self)

    def _log(self) -> None:
        debug = self.log.isEnabledFor(logging.DEBUG)  # then every request is logged, as before
        if self._overloaded and not debug:
            auth.record_metrics(self)
            self.refusals.note(self.log)
        elif not auth.quiet_success(self):
            super()._log()

    # -- answers -------------------------------------------------------------------------------

    def send_answer(self, answer: dispatch.Answer) -> None:
        if answer.status >= 400:
            self.clear()
        self.set_status(answer.status)
        self._overloaded = answer.status == 503 and "Retry-After" in answer.headers
        for name, value in answer.headers.items():
            self.set_header(name, value)
        if answer.status < 400 and multipart.accepts(self.request.headers.get("Accept")):
            body, buffers = m.split(answer.body)
            if buffers:  # bytes and arrays as parts of their own, not base64 (multipart.py)
                chunks, content_type = multipart.encode(m.encode(body), buffers)
                for chunk in chunks:
                    self.write(bytes(chunk) if isinstance(chunk, memoryview) else chunk)
                self.finish(set_content_type=content_type)  # APIHandler's would be JSON
                return
        self.finish(answer.encode())

    def send_failure(self, error: ApiError) -> None:
        self.send_answer(dispatch.failure(error, ", ".join(self.methods())))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Failures raised outside our code (auth, a wrong method, a bad URL) in our shape."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if status_code == 403 and not auth.host_allowed(self):
            error = ApiError(
                ErrorType.FORBIDDEN,
                f"the Host {self.request.host!r} is not allowed (ServerApp.allow_remote_access)",
            )
        elif status_code == 403 and not getattr(self, "_jupyter_current_user", None):
            error = ApiError(
                ErrorType.UNAUTHORIZED,
                "a token is required: send 'Authorization: token <token>' "
                "(or 'Bearer <token>'), or add ?token=<token> to the URL",
            )
        elif isinstance(exc, web.HTTPError) and status_code < 500:
            message = exc.log_message or responses.get(status_code, "error")
            if exc.args:
                try:
                    message = message % exc.args
                except (TypeError, ValueError):
                    pass
            error = ApiError(_TORNADO_TYPES.get(status_code, ErrorType.BAD_REQUEST), message)
        else:
            error = internal()
        self.send_failure(error)

    @classmethod
    def methods(cls) -> list[str]:
        """The HTTP methods this route answers."""
        return [
            m
            for m in ("GET", "POST", "PUT", "DELETE")
            if getattr(cls, m.lower()) is not getattr(web.RequestHandler, m.lower())
        ]

    async def answer(self, work: Awaitable[Any], status: int = 200, *, route: str = "") -> None:
        """Await *work* and write its result or its failure; a gone client cancels it."""
        self._work = asyncio.ensure_future(dispatch.outcome(work, status, route=route))
        try:
            answer = await self._work
        except asyncio.CancelledError:
            if self._gone:
                return  # the client went away; on_connection_close cancelled the work
            raise
        self.send_answer(answer)

    def on_connection_close(self) -> None:
        self._gone = True
        if self._work is not None and not self._work.done():
            self._work.cancel()  # a cancelled call interrupts its code and frees the kernel

    # -- requests ------------------------------------------------------------------------------

    def query(self, name: str) -> str | None:
        values = self.request.query_arguments.get(name)
        if not values:
            return None
        try:
            return values[-1].decode("utf-8")
        except UnicodeDecodeError:
            raise bad_request(f"query parameter {name!r} is not UTF-8", field=name) from None


@web.stream_request_body
class BodyHandler(BaseHandler):
    """A route whose JSON body is read as it streams in and dropped past the size limit."""

    async def prepare(self) -> None:  # type: ignore[override]
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_large = False
        self._refused: web.HTTPError | None = None
        try:
            await super().prepare()
        except web.HTTPError as exc:
            # Refused (no token): answered once the body is in and dropped. An answer sent
            # while the client still sends makes the server close on unread data, and the
            # client would see a reset connection instead of its 401.
            self._refused = exc
            return
        # A body past the limit is still read (up to the server's own max_body_size,
        # ServerApp.max_body_size) and dropped, for the same reason: the client gets its 413.
        length = self.request.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.service.max_body_size:
            self._too_large = True

    def data_received(self, chunk: bytes) -> None:
        if self._refused is not None:
            return
        self._size += len(chunk)
        if self._size > self.service.max_body_size:
            self._too_large = True
            self._chunks.clear()
        elif not self._too_large:
            self._chunks.append(chunk)

    def check_refused(self) -> None:
        """Raise the refusal prepare() held back until the body was in."""
        if self._refused is not None:
            raise self._refused


class EventsHandler(BaseHandler):
    """Server-Sent Events: one ``data: {"type", "data"}`` per event, ``id:`` its number.

    The stream is a cursor into the backend's event log (backends.py) and keeps no copy: a
    client that reads too slowly gets ``event: overflow`` (with the last id it was sent) once
    the log has dropped an event it had not read, and the stream ends; it reconnects with
    ``Last-Event-ID`` and gets what the log still keeps.
    """

    KEEPALIVE = 15.0  # seconds between comments that keep proxies from closing the stream
    BATCH = 256 * 1024  # bytes of events written before waiting for the client to take them
    # Seconds a stalled client gets to take the end of an overflowed stream (what was unsent,
    # the overflow event, the last chunk) before it is disconnected: what it holds meanwhile is
    # bounded (BATCH and the socket's buffers), so this only frees the connection of a client
    # that is gone. Cutting a merely slow one (a loaded machine) mid-chunk left it unable to read
    # the overflow and resume.
    OVERFLOW_GRACE = 60.0

    @web.authenticated
    async def get(self, backend_id: str) -> None:
        try:
            hosted = self.service.backend(backend_id)
            last = event_id(
                self.request.headers.get("Last-Event-ID") or self.query("last_event_id")
            )
        except ApiError as error:
            self.send_failure(error)
            return
        self._stream = stream = hosted.subscribe(last)
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        overflow = False
        try:
            self.write(": kernel-bridge events\n\n")
            await self.flush()
            while not self._gone:
                batch, overflowed = hosted.pending(stream, self.BATCH)
                if batch:
                    for seq, data in batch:
                        self.write(f"id: {seq}\ndata: {data}\n\n")
                    stream.cursor = batch[-1][0]
                    metrics.EVENTS_SENT.inc(len(batch))
                    overflowed = not await self._flush_while_kept(hosted, stream)
                if overflowed:
                    metrics.EVENTS_DROPPED.inc(hosted.missed(stream))
                    body = m.encode(m.OverflowEvent(stream.cursor)).decode()
                    self.write(f"event: overflow\ndata: {body}\n\n")
                    overflow = True
                    break
                if batch or self._gone:
                    continue
                if stream.ended:
                    self.write("event: end\ndata: {}\n\n")
                    break
                try:
                    async with asyncio.timeout(self.KEEPALIVE):
                        await stream.wake.wait()
                except TimeoutError:
                    self.write(": keep-alive\n\n")
                    await self.flush()
        except StreamClosedError:
            return
        finally:
            hosted.unsubscribe(stream)  # the log keeps nothing for it from here on
        if overflow:
            await self._finish_or_drop()
        elif not self._gone:
            self.finish(set_content_type="text/event-stream")

    async def _flush_while_kept(self, hosted: HostedBackend, stream: EventStream) -> bool:
        """Flush; True once the client took it all, False if the log dropped events it had
        not read while it was taking it (the flush is then left pending)."""
        flushed = asyncio.ensure_future(self.flush())
        while not flushed.done():
            stream.wake.clear()
            woken = asyncio.ensure_future(stream.wake.wait())
            await asyncio.wait((flushed, woken), return_when=asyncio.FIRST_COMPLETED)
            woken.cancel()
            if not flushed.done() and (self._gone or hosted.overflowed(stream)):
                self._unflushed = flushed
                flushed.add_done_callback(_retrieved)
                return self._gone
        flushed.result()  # a closed connection raises StreamClosedError here
        stream.wake.set()  # look again: events may have come meanwhile
        return True

    async def _finish_or_drop(self) -> None:
        """End the response at once (the overflow event and the last chunk queue behind what is
        unsent), so that a client that reads on gets a whole response; one that takes none of
        it within OVERFLOW_GRACE is disconnected."""
        flushes = [getattr(self, "_unflushed", None), self.finish()]
        try:
            async with asyncio.timeout(self.OVERFLOW_GRACE):
                for flushed in flushes:
                    if flushed is not None:
                        await flushed
        except (TimeoutError, StreamClosedError):
            self._gone = True
            connection: Any = self.request.connection
            connection.close()  # HTTP1Connection: what is unsent is dropped

    def on_connection_close(self) -> None:
        super().on_connection_close()
        stream = getattr(self, "_stream", None)
        if stream is not None:
            stream.ended = True
            stream.wake.set()


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # a write to a closed connection: known, nothing to log


def wants_events(accept: str) -> bool:
    """Whether an Accept header asks for text/event-stream (and does not refuse it, q=0)."""
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        if media.lower() == "text/event-stream":
            return not any(p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00") for p in params)
    return False


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {m.encode(data).decode()}\n\n"


def _serve(method: str) -> Any:
    @web.authenticated  # type: ignore[untyped-decorator,unused-ignore]
    async def serve(self: RouteHandler, *args: str) -> None:
        self.check_refused()
        operation = self.route.methods[method]
        if operation.raw_body:
            await self.finish_upload()
            return
        try:
            request = self.dispatch_request(args)
        except ApiError as error:
            self.send_failure(error)
            return
        if operation.streams and wants_events(self.request.headers.get("Accept", "")):
            await self.stream(operation, request)
            return
        if operation.items and wants_events(self.request.headers.get("Accept", "")):
            await self.stream_items(operation, request)
            return
        if operation.raw_answer:
            await self.download(operation, request)
            return
        label = f"{method} {self.route.path}"
        await self.answer(operation(self.service, request), operation.status, route=label)

    serve.__name__ = method.lower()
    return serve


class RouteHandler(BodyHandler):
    """A route of the route table: the same operations QNTX's HandleHTTP answers."""

    route: dispatch.Route

    @classmethod
    def made_for(cls, route: dispatch.Route) -> type[RouteHandler]:
        attrs: dict[str, Any] = {"route": route}
        for method in route.methods:
            attrs[method.lower()] = _serve(method)
        name = "".join(part.capitalize() for part in re.findall(r"[a-z]+", route.pattern))
        return type(f"{name or 'Root'}Handler", (cls,), attrs)

    # -- files: raw bodies, streamed both ways ---------------------------------------------------

    UPLOAD_WINDOW = 8  # body chunks read ahead of the kernel (tornado's are 64 KiB at most)

    async def prepare(self) -> None:  # type: ignore[override]
        await super().prepare()
        self._feed: asyncio.Queue[bytes | None] | None = None
        operation = self.route.methods.get(self.request.method or "")
        if operation is None or not operation.raw_body or self._refused is not None:
            return
        # A file's bytes go to the kernel as they come, not into memory: the kernel applies
        # the file's own limit (max_file_bytes), so the JSON body limit does not hold here.
        # Past the file's limit, a refused body is still read and dropped (up to
        # max_body_size more), so the client gets its 413 rather than a reset connection.
        self._too_large = False
        connection: Any = self.request.connection
        connection.set_max_body_size(self.service.max_file_bytes + self.service.max_body_size)
        length = self.request.headers.get("Content-Length", "")
        self._feed = asyncio.Queue(self.UPLOAD_WINDOW)
        request = dispatch.Request(
            tuple(self.path_args),
            {},
            host=self.request.host or "127.0.0.1",
            chunks=_drain(self._feed),
            length=int(length) if length.isdigit() else None,
        )
        self._work = asyncio.ensure_future(
            dispatch.outcome(operation(self.service, request), operation.status)
        )

    async def data_received(self, chunk: bytes) -> None:  # type: ignore[override]
        feed, work = self._feed, self._work
        if feed is None or work is None:
            super().data_received(chunk)
            return
        if work.done():
            return  # refused or failed already: the rest of the body is dropped
        # Wait for room (the kernel takes chunks as it writes them): tornado reads no more
        # of the body meanwhile, so a fast client cannot fill the service's memory.
        put = asyncio.ensure_future(feed.put(chunk))
        await asyncio.wait((put, work), return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()

    async def finish_upload(self) -> None:
        """The body is in: end the feed and answer with the upload's outcome."""
        feed, work = self._feed, self._work
        assert feed is not None and work is not None
        if not work.done():
            put = asyncio.ensure_future(feed.put(None))
            await asyncio.wait((put, work), return_when=asyncio.FIRST_COMPLETED)
            if not put.done():
                put.cancel()
        try:
            answer = await work
        except asyncio.CancelledError:
            if self._gone:
                return  # the client went away: the upload was cancelled, its file dropped
            raise
        self.send_answer(answer)

    async def download(self, operation: dispatch.Operation, request: dispatch.Request) -> None:
        """Write a file as the kernel sends it: headers once its size is known, then each
        chunk once the client has taken the one before (at most a few in memory)."""
        try:
            stream = await operation(self.service, request)
        except Exception as exc:
            self.send_failure(to_api_error(exc) or internal())
            return
        try:
            self.set_status(200)
            self.set_header("Content-Type", stream.media_type)
            self.set_header("Content-Length", str(stream.size))
            async for chunk in stream:
                self.write(chunk)
                await self.flush()
            self.finish()
        except StreamClosedError:
            pass  # the client went away: the kernel is told to stop
        except Exception:
            # Headers are out: the client sees a body shorter than its Content-Length.
            log.exception("the download of %s broke off", stream.info.path)
            connection: Any = self.request.connection
            connection.close()
        finally:
            await stream.aclose()

    # -- streamed answers ----------------------------------------------------------------------

    KEEPALIVE = 15.0  # seconds without output before the stream opens anyway, or a comment

    async def stream(self, operation: dispatch.Operation, request: dispatch.Request) -> None:
        """Answer with Server-Sent Events: one per output as the kernel makes it, then ``end``
        with the whole answer the JSON route gives.

        The stream opens (200) at the first output, or after KEEPALIVE seconds without any:
        a failure found before that (a bad request, an unknown context, no free kernel, a
        timeout of silent code) is the JSON answer with its status, as without streaming;
        after it, ``end`` carries the failure body. A client that goes away cancels the call,
        which interrupts its code. A client that reads more slowly than the code prints costs
        at most OutputBacklog.LIMIT characters of unsent outputs: the rest is left out of the
        stream and said in a ``skipped`` event (``end`` has every output all the same).
        """
        outputs = OutputBacklog()
        request = dataclasses.replace(request, on_output=outputs.put)
        label = f"{self.request.method} {self.route.path}"
        self._work = work = asyncio.ensure_future(
            dispatch.outcome(operation(self.service, request), operation.status, route=label)
        )
        opened = False
        try:
            while not work.done():
                waiting = asyncio.ensure_future(outputs.wait())
                try:
                    await asyncio.wait(
                        {waiting, work}, timeout=self.KEEPALIVE, return_when="FIRST_COMPLETED"
                    )
                finally:
                    if not waiting.done():
                        waiting.cancel()
                if outputs.pending:
                    opened = self._open_events(opened)
                    for event in outputs.drain():
                        self.write(sse(*event))
                elif work.done():
                    break
                elif opened:
                    self.write(": keep-alive\n\n")
                else:
                    opened = self._open_events(opened)
                await self.flush()
            try:
                answer = work.result()
            except asyncio.CancelledError:
                return  # the client went away; on_connection_close cancelled the call
            if outputs.pending:  # made before the call ended: they come before `end`
                opened = self._open_events(opened)
                for event in outputs.drain():
                    self.write(sse(*event))
            if not opened:
                if answer.status >= 400:
                    self.send_answer(answer)
                    return
                opened = self._open_events(opened)
            self.write(sse("end", answer.body))
            self.finish(set_content_type="text/event-stream")
        except StreamClosedError:
            if not work.done():
                work.cancel()

    async def stream_items(self, operation: dispatch.Operation, request: dispatch.Request) -> None:
        """Answer a generator method's call with Server-Sent Events: ``item`` per item as the
        method yields it (binary values as base64 BinaryValues), then ``end``.

        Items are written as fast as the client reads them (each batch is flushed before the
        next is taken), and the kernel runs no more than the stream's window ahead: a slow
        client holds the generator back. As for a streamed execution, a failure before the
        stream opens (a bad request, an unknown backend or method, a method that is not a
        generator or raised at once) is the route's JSON answer; after, ``end`` carries it. A
        client that goes away closes the generator in the kernel (its ``finally`` runs).
        """
        self._work = work = asyncio.ensure_future(self._write_items(operation, request))
        try:
            await work
        except asyncio.CancelledError:
            if not self._gone:
                raise  # else the client went away; on_connection_close cancelled it
        except StreamClosedError:
            pass

    async def _write_items(self, operation: dispatch.Operation, request: dispatch.Request) -> None:
        started = time.perf_counter()
        opened = await dispatch.outcome(operation.open_items(self.service, request))
        if opened.status >= 400:
            self.send_answer(opened)
            return
        items: AsyncBackendStream = opened.body
        self._items_open = False
        count = 0
        end: Any
        async with items:
            try:
                while batch := await self._take(items):
                    self._items_open = self._open_events(self._items_open)
                    for item in batch:
                        self.write(sse("item", Encoded.of(item)))
                    count += len(batch)
                    await self.flush()  # the client's pace is the generator's
            except StreamClosedError:
                raise
            except BackendError as exc:  # the method raised: a call's answer, as unstreamed
                end = call_failure(exc, started)
                if not self._items_open:
                    self.send_answer(dispatch.Answer(200, end))
                    return
            except Exception as exc:
                error = to_api_error(exc)
                if error is None:
                    log.exception("a streamed call failed")
                    error = internal()
                if not self._items_open:
                    self.send_failure(error)
                    return
                end = dispatch.failure_body(error)
            else:
                end = m.StreamEnd(success=True, items=count, duration_ms=since(started))
        self._open_events(self._items_open)
        self.write(sse("end", end))
        self.finish(set_content_type="text/event-stream")

    async def _take(self, items: AsyncBackendStream) -> list[Any]:
        """The next batch of items; the stream opens with a comment after KEEPALIVE seconds of
        waiting (so a proxy keeps it), and one goes every KEEPALIVE seconds after."""
        taking = asyncio.ensure_future(items.take())
        try:
            while True:
                done, _ = await asyncio.wait({taking}, timeout=self.KEEPALIVE)
                if done:
                    return taking.result()
                self._items_open = self._open_events(self._items_open)
                self.write(": keep-alive\n\n")
                await self.flush()
        finally:
            if not taking.done():
                taking.cancel()  # the client went away: the stream closes the generator

    def _open_events(self, opened: bool) -> bool:
        if not opened:
            self.set_status(200)
            self.set_header("Content-Type", "text/event-stream")
            self.set_header("Cache-Control", "no-cache")
            self.set_header("X-Accel-Buffering", "no")
        return True

    def dispatch_request(self, args: tuple[str, ...]) -> dispatch.Request:
        query = {}
        for name in self.request.query_arguments:
            value = self.query(name)
            if value is not None:
                query[name] = value
        size = self._size
        if self._too_large:  # dropped: the Content-Length said so, or the bytes did
            size = max(size, self.service.max_body_size + 1)
        body = b"" if self._too_large else b"".join(self._chunks)
        buffers: tuple[Any, ...] = ()
        content_type = self.request.headers.get("Content-Type")
        if body and multipart.is_multipart(content_type):
            try:
                body, parts = multipart.decode(body, content_type or "")
            except multipart.MultipartError as exc:
                raise bad_request(str(exc), field="body") from None
            buffers = tuple(parts)
        host = self.request.host or "127.0.0.1"
        return dispatch.Request(args, query, body, size, host, buffers=buffers)


async def _drain(feed: asyncio.Queue[bytes | None]) -> AsyncIterator[bytes]:
    """An upload's body as the handler hands it over; None ends it."""
    while (chunk := await feed.get()) is not None:
        yield chunk


def routes(service: Service) -> list[tuple[str, type[BaseHandler], dict[str, Any]]]:
    """The service's routes, for ExtensionApp.handlers (the server adds its base_url): a
    backend's event stream is EventsHandler, every other route a RouteHandler."""
    table: list[tuple[str, type[BaseHandler]]] = [
        (
            route.pattern,
            EventsHandler
            if any(op.events for op in route.methods.values())
            else RouteHandler.made_for(route),
        )
        for route in dispatch.ROUTES
    ]
    refusals = RefusalLog()
    return [
        (pattern, handler, {"service": service, "refusals": refusals}) for pattern, handler in table
    ]
