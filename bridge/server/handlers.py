"""The HTTP routes: parse and check a request, call the Service, write JSON.

Handlers are Jupyter Server ``APIHandler``s, so the server's token auth (``Authorization:
token T`` or ``Bearer T``, ``?token=T``), host and origin checks and request log apply to
every route. Every failure, the server's own included, is written in the one error shape.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from http.client import responses
from typing import Any

from jupyter_server.base.handlers import APIHandler
from tornado import web
from tornado.iostream import StreamClosedError

from . import schema
from .errors import ApiError, bad_request, to_api_error
from .service import DEFAULT_MODULES, Service

log = logging.getLogger("bridge.server")

_TORNADO_TYPES = {400: "bad_request", 404: "not_found", 405: "bad_request", 413: "too_large"}


def _internal() -> ApiError:
    # Only a bug gets here: the log has the traceback, the client never sees it.
    return ApiError(500, "internal", "internal error; the server's log has the details")


class BaseHandler(APIHandler):  # type: ignore[misc]
    """Token-checked JSON routes whose failures all have one shape."""

    service: Service

    def initialize(self, service: Service) -> None:  # type: ignore[override]
        self.service = service
        self._work: asyncio.Future[Any] | None = None
        self._gone = False

    async def prepare(self) -> None:  # type: ignore[override]
        await super().prepare()
        # Jupyter Server leaves a route open unless it says otherwise: ours never are.
        if not self.current_user:
            raise web.HTTPError(403)

    # -- answers -------------------------------------------------------------------------------

    def send(self, body: dict[str, Any], status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(body, default=str))

    def send_failure(self, error: ApiError) -> None:
        self.clear()
        if error.status == 405:
            self.set_header("Allow", ", ".join(self.methods()))
        if error.status == 401:
            self.set_header("WWW-Authenticate", 'Token realm="kernel-bridge"')
        self.send(error.body(), error.status)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Failures raised outside our code (auth, a wrong method, a bad URL) in our shape."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if status_code == 403 and not self.check_host():
            error = ApiError(
                403,
                "forbidden",
                f"the Host {self.request.host!r} is not allowed (ServerApp.allow_remote_access)",
            )
        elif status_code == 403 and not getattr(self, "_jupyter_current_user", None):
            error = ApiError(
                401,
                "unauthorized",
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
            kind = _TORNADO_TYPES.get(
                status_code, "forbidden" if status_code == 403 else "bad_request"
            )
            error = ApiError(status_code, kind, message)
        else:
            error = _internal()
        self.send_failure(error)

    @classmethod
    def methods(cls) -> list[str]:
        """The HTTP methods this route answers."""
        return [
            m
            for m in ("GET", "POST", "DELETE")
            if getattr(cls, m.lower()) is not getattr(web.RequestHandler, m.lower())
        ]

    async def answer(self, work: Awaitable[dict[str, Any]], status: int = 200) -> None:
        """Await *work* and write its result or its failure; a gone client cancels it."""
        self._work = asyncio.ensure_future(work)
        try:
            body = await self._work
        except asyncio.CancelledError:
            if self._gone:
                return  # the client went away; on_connection_close cancelled the work
            raise
        except Exception as exc:
            error = to_api_error(exc)
            if error is None:
                log.exception("%s %s failed", self.request.method, self.request.path)
                error = _internal()
            self.send_failure(error)
            return
        self.send(body, status)

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
            raise bad_request(f"query parameter {name!r} is not UTF-8") from None


@web.stream_request_body
class BodyHandler(BaseHandler):
    """A POST route with a JSON body, read as it streams in and refused past the size limit.

    Subclasses give the body's ``shape`` and ``run(request, *path_args)``.
    """

    shape: schema.Schema = {}
    created = 200  # the status of a success

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

    @web.authenticated
    async def post(self, *args: str) -> None:
        self.check_refused()
        await self.answer(self._post(*args), self.created)

    async def _post(self, *args: str) -> dict[str, Any]:
        return await self.run(self.body(), *args)

    def body(self) -> dict[str, Any]:
        """The request's JSON object, checked against the route's shape."""
        if self._too_large:
            raise ApiError(
                413,
                "too_large",
                f"the request body is larger than {self.service.max_body_size} bytes",
            )
        value = schema.parse_json(b"".join(self._chunks))
        if not isinstance(value, dict):
            raise bad_request("the body must be a JSON object")
        schema.validate(value, self.shape)
        return value

    async def run(self, req: dict[str, Any], *args: str) -> dict[str, Any]:
        raise NotImplementedError


class ExecuteHandler(BodyHandler):
    shape = schema.EXECUTE_REQUEST

    async def run(self, req: dict[str, Any], *args: str) -> dict[str, Any]:
        code = req["content"] if "content" in req else req["code"]
        return await self.service.execute(
            code,
            timeout=req.get("timeout_secs"),
            capture_variables=req.get("capture_variables", False),
            inputs=req.get("inputs"),
        )


class EvaluateHandler(BodyHandler):
    shape = schema.EVALUATE_REQUEST

    async def run(self, req: dict[str, Any], *args: str) -> dict[str, Any]:
        return await self.service.evaluate(req["expr"], timeout=req.get("timeout_secs"))


class ExecuteFileHandler(BodyHandler):
    shape = schema.EXECUTE_FILE_REQUEST

    async def run(self, req: dict[str, Any], *args: str) -> dict[str, Any]:
        return await self.service.execute_file(
            req["path"],
            timeout=req.get("timeout_secs"),
            capture_variables=req.get("capture_variables", False),
        )


class BackendsHandler(BodyHandler):
    shape = schema.BACKEND_REQUEST
    created = 201

    @web.authenticated
    async def get(self) -> None:
        self.check_refused()
        await self.answer(self.service.list_backends())

    async def run(self, req: dict[str, Any], *args: str) -> dict[str, Any]:
        return await self.service.create_backend(
            req["script"],
            env=req.get("env"),
            timeout=req.get("timeout_secs"),
            restart=req.get("restart", False),
        )


class BackendHandler(BaseHandler):
    @web.authenticated
    async def get(self, backend_id: str) -> None:
        await self.answer(self.service.backend_info(backend_id))

    @web.authenticated
    async def delete(self, backend_id: str) -> None:
        await self.answer(self.service.delete_backend(backend_id))


class CallHandler(BodyHandler):
    shape = schema.CALL_REQUEST

    async def run(self, req: dict[str, Any], *args: str) -> dict[str, Any]:
        (backend_id,) = args
        return await self.service.call(
            backend_id, req["cmd"], req.get("params"), req.get("timeout_secs")
        )


class EventsHandler(BaseHandler):
    """Server-Sent Events: one ``data: {"type", "data"}`` per event, ``id:`` its number."""

    KEEPALIVE = 15.0  # seconds between comments that keep proxies from closing the stream

    @web.authenticated
    async def get(self, backend_id: str) -> None:
        try:
            hosted = self.service.backend(backend_id)
            last = self.request.headers.get("Last-Event-ID") or self.query("last_event_id")
            if last is not None and not last.isdigit():
                raise bad_request("Last-Event-ID must be an event number")
        except ApiError as error:
            self.send_failure(error)
            return
        self._queue = hosted.subscribe(int(last) if last is not None else None)
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        try:
            self.write(": kernel-bridge events\n\n")
            await self.flush()
            while not self._gone:
                try:
                    item = await asyncio.wait_for(self._queue.get(), self.KEEPALIVE)
                except TimeoutError:
                    self.write(": keep-alive\n\n")
                    await self.flush()
                    continue
                if item is None:
                    self.write("event: end\ndata: {}\n\n")
                    break
                seq, data = item
                self.write(f"id: {seq}\ndata: {data}\n\n")
                await self.flush()
        except StreamClosedError:
            return
        finally:
            hosted.unsubscribe(self._queue)
        if not self._gone:
            self.finish(set_content_type="text/event-stream")

    def on_connection_close(self) -> None:
        super().on_connection_close()
        queue = getattr(self, "_queue", None)
        if queue is not None:
            queue.put_nowait(None)


class VersionHandler(BaseHandler):
    @web.authenticated
    async def get(self) -> None:
        await self.answer(self.service.version())


class HealthHandler(BaseHandler):
    @web.authenticated
    async def get(self) -> None:
        await self.answer(self.service.health())


class ModulesHandler(BaseHandler):
    @web.authenticated
    async def get(self) -> None:
        await self.answer(self.do_modules())

    async def do_modules(self) -> dict[str, Any]:
        text = self.query("names")
        if text is None:
            names = list(DEFAULT_MODULES)
        else:
            names = [name.strip() for name in text.split(",") if name.strip()]
            if not names:
                raise bad_request("names is empty: give module names separated by commas")
        return await self.service.modules(names)


class OpenAPIHandler(BaseHandler):
    @web.authenticated
    async def get(self) -> None:
        from .openapi import document

        self.send(document(self.request.host or "127.0.0.1"))


def routes(service: Service) -> list[tuple[str, type[BaseHandler], dict[str, Any]]]:
    """The service's routes, for ExtensionApp.handlers (the server adds its base_url)."""
    table: list[tuple[str, type[BaseHandler]]] = [
        (r"/execute", ExecuteHandler),
        (r"/evaluate", EvaluateHandler),
        (r"/execute-file", ExecuteFileHandler),
        (r"/version", VersionHandler),
        (r"/modules", ModulesHandler),
        (r"/health", HealthHandler),
        (r"/openapi.json", OpenAPIHandler),
        (r"/backends", BackendsHandler),
        (r"/backends/([^/]+)", BackendHandler),
        (r"/backends/([^/]+)/call", CallHandler),
        (r"/backends/([^/]+)/events", EventsHandler),
    ]
    return [(pattern, handler, {"service": service}) for pattern, handler in table]
