"""Every JSON route once, for every transport: the HTTP service and QNTX's HandleHTTP tunnel.

A ``Route`` is a path (OpenAPI's form, ``/contexts/{context_id}/execute``) and, for each
method it takes, an ``Operation``: its request model (the body, decoded and validated in one
pass), its answer model, the error types it can fail with, and the Service method that
answers it. The tornado handlers (bridge/server/handlers.py) are made from this table, the
OpenAPI document (openapi.py) is generated from it, and ``respond`` answers it for a transport
that hands over a whole request at once (bridge.qntx's gRPC ``HandleHTTP``), so a path gets
the same status and the same body whichever way it comes in.

Declaring a route: add an ``Operation`` (a summary, ``run``, ``body``, ``answer``,
``failures``) under its path in ``ROUTES``; its handler, its OpenAPI entry and the TypeScript
types follow.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
import urllib.parse
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec

from bridge import Encoded

from . import metrics, openapi
from . import models as m
from .errors import ApiError, ErrorType, bad_request, internal, not_found, to_api_error
from .files import FileStream
from .service import DEFAULT_MODULES, Service

log = logging.getLogger("bridge.server")

B = TypeVar("B", bound=m.Request)


@dataclass(frozen=True)
class Request:
    """What an operation reads of a request: path arguments, query, body, host."""

    args: tuple[str, ...] = ()
    query: Mapping[str, str] = field(default_factory=dict)  # the last value of each name
    body: bytes = b""
    size: int = 0  # bytes the client sent (the body may have been dropped past the limit)
    host: str = "127.0.0.1"
    # A streamed answer's listener (HTTP's text/event-stream): each output as it is made.
    on_output: Callable[[dict[str, Any]], None] | None = None
    # The parts after the JSON of a multipart/mixed body: the bytes its BinaryValues name.
    buffers: tuple[Any, ...] = ()
    # A raw body streamed in (HTTP's upload), instead of *body*, and its declared length.
    chunks: AsyncIterable[bytes] | None = None
    length: int | None = None


@dataclass
class Answer:
    """A response: status, body (an answer model, or plain JSON values), extra headers."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        if isinstance(self.body, bytes):  # a file's bytes (a download answered whole)
            return self.body
        return m.encode(self.body)

    def data(self) -> dict[str, Any]:
        """The body as plain JSON values (for a transport that reads fields of it)."""
        value = msgspec.to_builtins(m.inline(self.body), enc_hook=str)
        assert isinstance(value, dict)
        return value


def failure_body(error: ApiError) -> m.Failure:
    """The one failure shape of *error*."""
    return m.Failure(
        success=False,
        error=error.message,
        error_type=error.error_type,
        status=error.status,
        **error.extra,
    )


def failure(error: ApiError, allow: str = "") -> Answer:
    headers = {}
    if error.status == 405 and allow:
        headers["Allow"] = allow
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Token realm="kernel-bridge"'
    if "retry_after" in error.extra:  # overloaded: HTTP says when, in whole seconds
        headers["Retry-After"] = str(math.ceil(error.extra["retry_after"]))
    return Answer(error.status, failure_body(error), headers)


def too_large(service: Service) -> ApiError:
    return ApiError(
        ErrorType.TOO_LARGE, f"the request body is larger than {service.max_body_size} bytes"
    )


def read_body(service: Service, request: Request, model: type[B]) -> B:
    """The request's body as a *model*, validated."""
    if request.size > service.max_body_size:
        raise too_large(service)
    if not request.body.strip():
        raise bad_request("the body is empty: send a JSON object", field="body")
    body = m.decode(model, request.body)
    if request.buffers or Encoded.PLACEHOLDER.encode() in request.body:
        check_parts(body, len(request.buffers))
    return body


def check_parts(body: Any, count: int, where: str = "") -> None:
    """Every BinaryValue of *body* names one of the *count* parts the request carries (or is
    inline): else 400 naming the field."""
    if isinstance(body, msgspec.Struct):
        for name in body.__struct_fields__:
            check_parts(getattr(body, name), count, name)
    elif isinstance(body, dict):
        part = body.get(Encoded.PLACEHOLDER, ...)
        if part is ... or part is None:
            for key, item in body.items():
                check_parts(item, count, f"{where}.{key}" if where else str(key))
        elif isinstance(part, bool) or not isinstance(part, int) or not 0 <= part < count:
            raise bad_request(
                f"{where}: a binary value names part {part!r}, but the body has {count} after "
                "its JSON (send multipart/mixed, or the bytes inline as base64)",
                field=where or "body",
            )
    elif isinstance(body, list):
        for item in body:
            check_parts(item, count, where)


def optional_body(service: Service, request: Request, model: type[B]) -> B | None:
    """For a body a client may leave out (a GET with a JSON body, as QNTX's clients send
    one; POST /contexts): None when empty."""
    if request.size == 0 or not request.body.strip():
        return None
    return read_body(service, request, model)


# -- the operations --------------------------------------------------------------------------


def _context(request: Request) -> str | None:
    """The context a call runs in (``/contexts/{context_id}/...``), or None: a pool kernel."""
    return request.args[0] if request.args else None


async def _execute(service: Service, request: Request, body: m.ExecuteRequest) -> Any:
    if request.buffers and body.inputs:  # the kernel reads them from JSON: inline, as base64
        body.inputs = Encoded(body.inputs, list(request.buffers)).inline()
    return await service.execute(body, context=_context(request), on_output=request.on_output)


async def _evaluate(service: Service, request: Request, body: m.EvaluateRequest) -> Any:
    return await service.evaluate(body, context=_context(request), on_output=request.on_output)


async def _execute_file(service: Service, request: Request, body: m.ExecuteFileRequest) -> Any:
    return await service.execute_file(body, context=_context(request), on_output=request.on_output)


async def _version(service: Service, request: Request, body: None) -> Any:
    return await service.version()


async def _health(service: Service, request: Request, body: None) -> Any:
    return await service.health()


async def _modules(service: Service, request: Request, body: m.ModulesRequest | None) -> Any:
    text = request.query.get("names")
    if text is not None:
        names = [name.strip() for name in text.split(",") if name.strip()]
        if not names:
            raise bad_request(
                "names is empty: give module names separated by commas", field="names"
            )
        return await service.modules(names)
    if body is not None and body.modules is not None:
        return await service.modules(body.modules)
    return await service.modules(list(DEFAULT_MODULES))


async def _module_check(
    service: Service, request: Request, body: m.ModuleCheckRequest | None
) -> Any:
    """QNTX's /uv/check: ``{"module": name}`` in the body (or ?module=) -> available."""
    name = request.query.get("module")
    if name is None:
        if body is None:
            raise bad_request(
                'give the module: a body {"module": name}, or ?module=name', field="module"
            )
        name = body.module
    found = await service.modules([name])
    return m.ModuleCheckAnswer(module=name, available=found.modules[name])


async def _install(service: Service, request: Request, body: m.InstallRequest) -> Any:
    return await service.install_packages(body)


async def _openapi(service: Service, request: Request, body: None) -> Any:
    return document(request.host)


async def _list_backends(service: Service, request: Request, body: None) -> Any:
    return await service.list_backends()


async def _create_backend(service: Service, request: Request, body: m.BackendRequest) -> Any:
    return await service.create_backend(body)


async def _backend_info(service: Service, request: Request, body: None) -> Any:
    return await service.backend_info(request.args[0])


async def _delete_backend(service: Service, request: Request, body: None) -> Any:
    return await service.delete_backend(request.args[0])


async def _call(service: Service, request: Request, body: m.CallRequest) -> Any:
    return await service.call(request.args[0], body, request.buffers)


async def _call_items(service: Service, request: Request, body: m.CallRequest) -> Any:
    return service.stream_call(request.args[0], body, request.buffers)


async def _events(service: Service, request: Request, body: None) -> Any:
    raise not_found("a backend's events stream over HTTP only (GET /backends/{id}/events)")


async def _list_contexts(service: Service, request: Request, body: None) -> Any:
    return await service.list_contexts()


async def _create_context(service: Service, request: Request, body: m.ContextRequest | None) -> Any:
    return await service.create_context(body or m.ContextRequest())


async def _context_info(service: Service, request: Request, body: None) -> Any:
    return await service.context_info(request.args[0])


async def _delete_context(service: Service, request: Request, body: None) -> Any:
    return await service.delete_context(request.args[0])


async def _restart_context(service: Service, request: Request, body: m.EmptyRequest | None) -> Any:
    return await service.restart_context(request.args[0])


async def _whole(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def _upload_file(service: Service, request: Request, body: None) -> Any:
    if request.chunks is not None:  # streamed in (HTTP): its Content-Length if it had one
        return await service.upload_file(
            request.args[0], request.args[1], request.chunks, size=request.length
        )
    return await service.upload_file(
        request.args[0], request.args[1], _whole(request.body), size=len(request.body)
    )


async def _download_file(service: Service, request: Request, body: None) -> Any:
    return await service.download_file(request.args[0], request.args[1])


async def _list_files(service: Service, request: Request, body: None) -> Any:
    return await service.list_files(request.args[0], request.query.get("path", ""))


async def _remove_file(service: Service, request: Request, body: None) -> Any:
    return await service.remove_file(request.args[0], request.args[1])


# -- the table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """A query parameter an operation reads."""

    name: str
    description: str
    pattern: str | None = None


@dataclass(frozen=True)
class Operation:
    """One method of a route: what it reads, what it answers, how it can fail."""

    summary: str
    run: Callable[[Service, Request, Any], Awaitable[Any]]
    answer: Any  # the model of its success (openapi.py documents it)
    body: type[m.Request] | None = None
    body_optional: bool = False  # the body may be left out (or a GET may carry one)
    status: int = 200  # of a success
    failures: tuple[ErrorType, ...] = ()
    # Runs code: over HTTP, `Accept: text/event-stream` streams its outputs (handlers.py).
    streams: bool = False
    # Over HTTP, `Accept: text/event-stream` streams the items of a generator method: this
    # gives its AsyncBackendStream (handlers.py writes them as they come).
    items: Callable[[Service, Request, Any], Awaitable[Any]] | None = None
    # Only an event stream over HTTP (models.BackendEvents), never a JSON answer.
    events: Any = None
    query: tuple[Query, ...] = ()
    operation_id: str | None = None
    # A file's bytes, not JSON: the body (streamed in over HTTP) or the answer (a FileStream,
    # streamed out over HTTP, read whole by respond()).
    raw_body: bool = False
    raw_answer: bool = False

    def in_context(self) -> Operation:
        """The same operation run in a context (``/contexts/{context_id}/...``)."""
        return dataclasses.replace(
            self,
            summary=f"{self.summary}, in the context (its state kept from call to call)",
            failures=(*self.failures, ErrorType.NOT_FOUND),
        )

    async def __call__(self, service: Service, request: Request) -> Any:
        """Decode the request's body (if the operation takes one) and run."""
        return await self.run(service, request, self._body(service, request))

    async def open_items(self, service: Service, request: Request) -> Any:
        """Decode the request's body and open the stream of items (``items`` operations)."""
        assert self.items is not None
        return await self.items(service, request, self._body(service, request))

    def _body(self, service: Service, request: Request) -> Any:
        if self.body is None:
            return None
        read = optional_body if self.body_optional else read_body
        return read(service, request, self.body)


@dataclass(frozen=True, eq=False)  # hashed by identity: openapi.py caches per table
class Route:
    path: str  # OpenAPI's form: /backends/{backend_id}
    methods: Mapping[str, Operation]

    @property
    def pattern(self) -> str:
        """The path as a regular expression; its groups are the path arguments (``{path}``,
        a file's path in a context's folder, takes slashes)."""
        return re.sub(r"\{[a-z_]+\}", "([^/]+)", self.path.replace("{path}", "(.+)"))

    @property
    def parameters(self) -> list[str]:
        return re.findall(r"\{([a-z_]+)\}", self.path)

    def allow(self) -> str:
        return ", ".join(m for m in ("GET", "POST", "PUT", "DELETE") if m in self.methods)


# What may go wrong once a call waits for a kernel, or runs on one.
KERNEL = (
    ErrorType.OVERLOADED,
    ErrorType.KERNEL_START_FAILED,
    ErrorType.KERNEL_DIED,
    ErrorType.SHUTTING_DOWN,
    ErrorType.UNAVAILABLE,
    ErrorType.TIMEOUT,
)
BODY = (ErrorType.BAD_REQUEST, ErrorType.TOO_LARGE)
RUN = (*BODY, *KERNEL)
FILE = (ErrorType.FORBIDDEN, ErrorType.NOT_FOUND)
# A context's files: the transfer waits for its kernel, which may die or be busy too long.
FILES = (
    *FILE,
    ErrorType.TIMEOUT,
    ErrorType.KERNEL_DIED,
    ErrorType.SHUTTING_DOWN,
    ErrorType.UNAVAILABLE,
)

EXECUTE = Operation(
    "Run code in a fresh namespace on a pool kernel",
    _execute,
    m.ExecuteAnswer,
    body=m.ExecuteRequest,
    failures=RUN,
    streams=True,
)
EVALUATE = Operation(
    "The value of one expression",
    _evaluate,
    m.ExecuteAnswer,
    body=m.EvaluateRequest,
    failures=RUN,
    streams=True,
)
EXECUTE_FILE = Operation(
    "Run a script inside the service's root folder",
    _execute_file,
    m.ExecuteAnswer,
    body=m.ExecuteFileRequest,
    failures=(*RUN, *FILE),
    streams=True,
)
INSTALL = Operation(
    "Install packages into the kernels' Python: uv when it is on PATH, pip otherwise; "
    "running kernels can import them at once. Refused on a gateway (400), when turned off "
    "(403), and when it would change the service's own dependencies while the kernels share "
    "its environment (409)",
    _install,
    m.InstallAnswer,
    body=m.InstallRequest,
    failures=(*RUN, ErrorType.FORBIDDEN, ErrorType.CONFLICT),
)
CHECK = Operation(
    "Whether the kernels can import one module (QNTX's path): ?module=NAME or a JSON body "
    '{"module": NAME}',
    _module_check,
    m.ModuleCheckAnswer,
    body=m.ModuleCheckRequest,
    body_optional=True,
    failures=(*BODY, *KERNEL),
    query=(Query("module", "The module's name (or send it in the body)."),),
)

ROUTES: tuple[Route, ...] = (
    Route("/execute", {"POST": EXECUTE}),
    Route("/evaluate", {"POST": EVALUATE}),
    Route("/execute-file", {"POST": EXECUTE_FILE}),
    Route(
        "/version",
        {
            "GET": Operation(
                "Versions of the kernels' Python and of kernel-bridge",
                _version,
                m.VersionAnswer,
                failures=KERNEL,
            )
        },
    ),
    Route(
        "/modules",
        {
            "GET": Operation(
                "Which modules the kernels can import",
                _modules,
                m.ModulesAnswer,
                body=m.ModulesRequest,
                body_optional=True,
                failures=(*BODY, *KERNEL),
                query=(
                    Query(
                        "names",
                        f"Module names separated by commas (default: {','.join(DEFAULT_MODULES)}).",
                    ),
                ),
            )
        },
    ),
    Route(
        "/health",
        {
            "GET": Operation(
                "Whether the service is up, with its pool, backends and contexts",
                _health,
                m.HealthAnswer,
                failures=KERNEL,
            )
        },
    ),
    Route("/packages/install", {"POST": INSTALL}),
    # The paths QNTX's own Python plugin answered: uv when it is there, pip otherwise.
    Route("/uv/install", {"POST": INSTALL}),
    Route("/pip/install", {"POST": INSTALL}),
    Route("/uv/check", {"GET": CHECK}),
    Route("/pip/check", {"GET": CHECK}),
    Route(
        "/openapi.json",
        {"GET": Operation("This document", _openapi, dict[str, Any])},
    ),
    Route(
        "/backends",
        {
            "GET": Operation(
                "The service's backends (alive or not)", _list_backends, m.BackendList
            ),
            "POST": Operation(
                "Start a backend: a script of methods in a kernel of its own, listed by "
                "/api/kernels, and by /api/sessions as backends/<name> (JupyterLab opens a "
                "console on it). A script that raises is a python_error (200)",
                _create_backend,
                m.BackendInfo,
                body=m.BackendRequest,
                status=201,
                failures=(*RUN, ErrorType.LIMIT_REACHED, ErrorType.PYTHON_ERROR),
            ),
        },
    ),
    Route(
        "/backends/{backend_id}",
        {
            "GET": Operation(
                "One backend",
                _backend_info,
                m.BackendInfo,
                failures=(ErrorType.NOT_FOUND,),
                operation_id="getBackend",
            ),
            "DELETE": Operation(
                "Stop a backend and its kernel",
                _delete_backend,
                m.Deleted,
                failures=(ErrorType.NOT_FOUND,),
                operation_id="deleteBackend",
            ),
        },
    ),
    Route(
        "/backends/{backend_id}/call",
        {
            "POST": Operation(
                "Call a method of the backend (success tells whether it raised)",
                _call,
                m.CallAnswer,
                body=m.CallRequest,
                failures=(*RUN, ErrorType.NOT_FOUND),
                operation_id="callBackend",
                items=_call_items,
            )
        },
    ),
    Route(
        "/backends/{backend_id}/events",
        {
            "GET": Operation(
                'The backend\'s events as Server-Sent Events: one \'data: {"type", "data"}\' '
                "per event, 'id:' its number; events no stream has read yet come first (or "
                "those after Last-Event-ID)",
                _events,
                None,
                failures=(ErrorType.BAD_REQUEST, ErrorType.NOT_FOUND),
                events=m.BackendEvents,
                query=(
                    Query(
                        "last_event_id",
                        "Resume after this event (as the Last-Event-ID header).",
                        pattern="^[0-9]{1,18}$",
                    ),
                ),
            )
        },
    ),
    Route(
        "/contexts",
        {
            "GET": Operation(
                "The service's contexts (alive or not)", _list_contexts, m.ContextList
            ),
            "POST": Operation(
                "Start a context: a kernel of its own whose state lasts from call to call "
                "(variables, imports, the working folder), listed by /api/kernels",
                _create_context,
                m.ContextInfo,
                body=m.ContextRequest,
                body_optional=True,
                status=201,
                failures=(*RUN, *FILE, ErrorType.CONFLICT, ErrorType.LIMIT_REACHED),
            ),
        },
    ),
    Route(
        "/contexts/{context_id}",
        {
            "GET": Operation(
                "One context", _context_info, m.ContextInfo, failures=(ErrorType.NOT_FOUND,)
            ),
            "DELETE": Operation(
                "Stop a context and its kernel",
                _delete_context,
                m.Deleted,
                failures=(ErrorType.NOT_FOUND,),
            ),
        },
    ),
    Route(
        "/contexts/{context_id}/restart",
        {
            "POST": Operation(
                "Give the context a fresh kernel (same id, name, env and cwd): its state is "
                "cleared, and a context whose kernel died works again",
                _restart_context,
                m.ContextInfo,
                body=m.EmptyRequest,
                body_optional=True,
                failures=(*RUN, ErrorType.NOT_FOUND),
            )
        },
    ),
    Route(
        "/contexts/{context_id}/files",
        {
            "GET": Operation(
                "What a folder of the context's working folder holds (?path=, default the "
                "working folder), by name; symlinks listed, never followed",
                _list_files,
                m.FileList,
                failures=(*FILES, ErrorType.BAD_REQUEST),
                query=(Query("path", "The folder, relative to the working folder."),),
                operation_id="listFiles",
            ),
        },
    ),
    Route(
        "/contexts/{context_id}/files/{path}",
        {
            "GET": Operation(
                "Download a file of the context's working folder: its bytes, streamed through "
                "the kernel, with Content-Length and a Content-Type from its name",
                _download_file,
                None,
                failures=(*FILES, ErrorType.BAD_REQUEST, ErrorType.TOO_LARGE),
                raw_answer=True,
                operation_id="downloadFile",
            ),
            "PUT": Operation(
                "Upload a file into the context's working folder (the raw body, streamed "
                "through the kernel; folders on the way are made): it appears whole or not at "
                "all. 413 past max_file_bytes, or past max_context_bytes with the context's "
                "other uploads",
                _upload_file,
                m.FileInfo,
                status=201,
                failures=(*FILES, ErrorType.BAD_REQUEST, ErrorType.TOO_LARGE),
                raw_body=True,
                operation_id="uploadFile",
            ),
            "DELETE": Operation(
                "Remove a file, an empty folder or a symlink (the link itself) of the "
                "context's working folder",
                _remove_file,
                m.FileRemoved,
                failures=(*FILES, ErrorType.BAD_REQUEST),
                operation_id="removeFile",
            ),
        },
    ),
    Route("/contexts/{context_id}/execute", {"POST": EXECUTE.in_context()}),
    Route("/contexts/{context_id}/evaluate", {"POST": EVALUATE.in_context()}),
    Route("/contexts/{context_id}/execute-file", {"POST": EXECUTE_FILE.in_context()}),
)


def document(host: str = "127.0.0.1") -> dict[str, Any]:
    """The service's OpenAPI document (openapi.py), generated from ROUTES and the models."""
    return openapi.document(ROUTES, host)


_COMPILED = [(re.compile(route.pattern + r"\Z"), route) for route in ROUTES]


async def outcome(work: Awaitable[Any], status: int = 200, *, route: str = "") -> Answer:
    """Await *work*: its body with *status*, or the answer for the error it raised; counted
    in the metrics under *route* (``POST /execute``) if given."""
    started = time.perf_counter()
    try:
        answer = Answer(status, await work)
    except Exception as exc:
        known = to_api_error(exc)
        if known is None:
            log.exception("a request failed")
            known = internal()
        answer = failure(known)
    if route:
        metrics.observe(route, answer, started)
    return answer


def parse_query(text: str) -> dict[str, str]:
    """A query string's names and (last) values, percent-decoded as UTF-8."""
    try:
        pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise bad_request("the query string is not UTF-8", field="query") from None
    return dict(pairs)


async def respond(
    service: Service,
    method: str,
    target: str,
    body: bytes = b"",
    *,
    host: str = "127.0.0.1",
    max_answer: int | None = None,
) -> Answer:
    """Answer one whole request: *target* is the path with its query string. A downloaded
    file is read whole into the answer: one larger than *max_answer* bytes (what the
    transport can carry) is 413 instead, and not read."""
    path, _, query_text = target.partition("?")
    path = path or "/"
    for regex, route in _COMPILED:
        match = regex.match(path)
        if match is None:
            continue
        operation = route.methods.get(method.upper())
        if operation is None:
            error = ApiError(ErrorType.METHOD_NOT_ALLOWED, "Method Not Allowed")
            return failure(error, route.allow())
        try:
            query = parse_query(query_text)
        except ApiError as error:
            return failure(error)
        request = Request(match.groups(), query, body, len(body), host)
        label = f"{method.upper()} {route.path}"
        answer = await outcome(operation(service, request), operation.status, route=label)
        if isinstance(answer.body, FileStream):  # a download, answered whole here
            stream = answer.body
            if max_answer is not None and stream.size > max_answer:
                await stream.aclose()
                return failure(
                    ApiError(
                        ErrorType.TOO_LARGE,
                        f"{stream.info.path} is {stream.size} bytes, more than the "
                        f"{max_answer} bytes an answer can carry here",
                    )
                )
            answer = await outcome(stream.read(), answer.status)
            if answer.status < 400:
                answer.headers["Content-Type"] = stream.media_type
        return answer
    return failure(not_found(f"no route {method.upper()} {path}"))
