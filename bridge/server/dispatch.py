"""Every JSON route once, for both transports: the HTTP service and QNTX's HandleHTTP tunnel.

A route is a path pattern and, for each method it takes, an ``Operation``: how to read the
request (the body's schema, the query) and which Service method answers it. The tornado
handlers (handlers.py) are made from this table, and ``respond`` answers the same table for a
transport that hands over a whole request at once (bridge.qntx's gRPC ``HandleHTTP``), so a
path gets the same status code and the same body whichever way it comes in.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import schema
from .errors import ApiError, bad_request, not_found, to_api_error
from .service import DEFAULT_MODULES, Service

log = logging.getLogger("bridge.server")


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


@dataclass
class Answer:
    """A response: status, JSON body, extra headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        return encode(self.body)


def encode(body: dict[str, Any]) -> bytes:
    """A body as the service writes it."""
    return json.dumps(body, default=str).encode()


def internal() -> ApiError:
    # Only a bug gets here: the log has the traceback, the client never sees it.
    return ApiError(500, "internal", "internal error; the server's log has the details")


def failure(error: ApiError, allow: str = "") -> Answer:
    headers = {}
    if error.status == 405 and allow:
        headers["Allow"] = allow
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Token realm="kernel-bridge"'
    return Answer(error.status, error.body(), headers)


def too_large(service: Service) -> ApiError:
    return ApiError(
        413, "too_large", f"the request body is larger than {service.max_body_size} bytes"
    )


def read_body(service: Service, request: Request, shape: schema.Schema) -> dict[str, Any]:
    """The request's JSON object, checked against *shape*."""
    if request.size > service.max_body_size:
        raise too_large(service)
    value = schema.parse_json(request.body)
    if not isinstance(value, dict):
        raise bad_request("the body must be a JSON object")
    schema.validate(value, shape)
    return value


def optional_body(
    service: Service, request: Request, shape: schema.Schema
) -> dict[str, Any] | None:
    """For a GET that may carry a JSON body (as QNTX's clients send one): None when empty."""
    if request.size == 0 or not request.body.strip():
        return None
    return read_body(service, request, shape)


# -- the operations --------------------------------------------------------------------------


def _code(req: dict[str, Any]) -> str:
    return str(req["content"] if "content" in req else req["code"])


async def _execute(service: Service, request: Request) -> dict[str, Any]:
    req = read_body(service, request, schema.EXECUTE_REQUEST)
    return await service.execute(
        _code(req),
        timeout=req.get("timeout_secs"),
        capture_variables=req.get("capture_variables", False),
        inputs=req.get("inputs"),
        on_output=request.on_output,
    )


async def _evaluate(service: Service, request: Request) -> dict[str, Any]:
    req = read_body(service, request, schema.EVALUATE_REQUEST)
    return await service.evaluate(
        req["expr"], timeout=req.get("timeout_secs"), on_output=request.on_output
    )


async def _execute_file(service: Service, request: Request) -> dict[str, Any]:
    req = read_body(service, request, schema.EXECUTE_FILE_REQUEST)
    return await service.execute_file(
        req["path"],
        timeout=req.get("timeout_secs"),
        capture_variables=req.get("capture_variables", False),
        on_output=request.on_output,
    )


async def _version(service: Service, request: Request) -> dict[str, Any]:
    return await service.version()


async def _health(service: Service, request: Request) -> dict[str, Any]:
    return await service.health()


async def _modules(service: Service, request: Request) -> dict[str, Any]:
    text = request.query.get("names")
    if text is not None:
        names = [name.strip() for name in text.split(",") if name.strip()]
        if not names:
            raise bad_request("names is empty: give module names separated by commas")
        return await service.modules(names)
    req = optional_body(service, request, schema.MODULES_REQUEST)
    if req is not None and "modules" in req:
        return await service.modules(req["modules"])
    return await service.modules(list(DEFAULT_MODULES))


async def _module_check(service: Service, request: Request) -> dict[str, Any]:
    """QNTX's /uv/check: ``{"module": name}`` in the body (or ?module=) -> available."""
    name = request.query.get("module")
    if name is None:
        req = optional_body(service, request, schema.MODULE_CHECK_REQUEST)
        if req is None:
            raise bad_request('give the module: a body {"module": name}, or ?module=name')
        name = req["module"]
    found = await service.modules([name])
    return {"module": name, "available": found["modules"][name]}


async def _install(service: Service, request: Request) -> dict[str, Any]:
    req = read_body(service, request, schema.PACKAGES_INSTALL_REQUEST)
    names = req["packages"] if "packages" in req else [req["package"]]
    return await service.install_packages(
        names, upgrade=req.get("upgrade", False), timeout=req.get("timeout_secs")
    )


async def _openapi(service: Service, request: Request) -> dict[str, Any]:
    from .openapi import document

    return document(request.host)


async def _list_backends(service: Service, request: Request) -> dict[str, Any]:
    return await service.list_backends()


async def _create_backend(service: Service, request: Request) -> dict[str, Any]:
    req = read_body(service, request, schema.BACKEND_REQUEST)
    return await service.create_backend(
        req["script"],
        name=req.get("name"),
        env=req.get("env"),
        timeout=req.get("timeout_secs"),
        restart=req.get("restart", False),
    )


async def _backend_info(service: Service, request: Request) -> dict[str, Any]:
    return await service.backend_info(request.args[0])


async def _delete_backend(service: Service, request: Request) -> dict[str, Any]:
    return await service.delete_backend(request.args[0])


async def _call(service: Service, request: Request) -> dict[str, Any]:
    req = read_body(service, request, schema.CALL_REQUEST)
    return await service.call(
        request.args[0], req["cmd"], req.get("params"), req.get("timeout_secs")
    )


async def _list_contexts(service: Service, request: Request) -> dict[str, Any]:
    return await service.list_contexts()


async def _create_context(service: Service, request: Request) -> dict[str, Any]:
    req = optional_body(service, request, schema.CONTEXT_REQUEST) or {}
    return await service.create_context(
        name=req.get("name"),
        env=req.get("env"),
        cwd=req.get("cwd"),
        timeout=req.get("timeout_secs"),
    )


async def _context_info(service: Service, request: Request) -> dict[str, Any]:
    return await service.context_info(request.args[0])


async def _delete_context(service: Service, request: Request) -> dict[str, Any]:
    return await service.delete_context(request.args[0])


async def _restart_context(service: Service, request: Request) -> dict[str, Any]:
    optional_body(service, request, schema.EMPTY_REQUEST)
    return await service.restart_context(request.args[0])


async def _context_execute(service: Service, request: Request) -> dict[str, Any]:
    req = read_body(service, request, schema.EXECUTE_REQUEST)
    return await service.context_execute(
        request.args[0],
        _code(req),
        timeout=req.get("timeout_secs"),
        capture_variables=req.get("capture_variables", False),
        inputs=req.get("inputs"),
        on_output=request.on_output,
    )


async def _context_evaluate(service: Service, request: Request) -> dict[str, Any]:
    req = read_body(service, request, schema.EVALUATE_REQUEST)
    return await service.context_evaluate(
        request.args[0], req["expr"], timeout=req.get("timeout_secs"), on_output=request.on_output
    )


async def _context_execute_file(service: Service, request: Request) -> dict[str, Any]:
    req = read_body(service, request, schema.EXECUTE_FILE_REQUEST)
    return await service.context_execute_file(
        request.args[0],
        req["path"],
        timeout=req.get("timeout_secs"),
        capture_variables=req.get("capture_variables", False),
        on_output=request.on_output,
    )


@dataclass(frozen=True)
class Operation:
    run: Callable[[Service, Request], Awaitable[dict[str, Any]]]
    status: int = 200  # of a success
    # Runs code: over HTTP, `Accept: text/event-stream` streams its outputs (handlers.py).
    streams: bool = False


@dataclass(frozen=True)
class Route:
    pattern: str  # a regular expression; its groups are the path arguments
    methods: Mapping[str, Operation]

    def allow(self) -> str:
        return ", ".join(m for m in ("GET", "POST", "DELETE") if m in self.methods)


_BACKEND = r"/backends/([^/]+)"
_CONTEXT = r"/contexts/([^/]+)"

ROUTES: list[Route] = [
    Route(r"/execute", {"POST": Operation(_execute, streams=True)}),
    Route(r"/evaluate", {"POST": Operation(_evaluate, streams=True)}),
    Route(r"/execute-file", {"POST": Operation(_execute_file, streams=True)}),
    Route(r"/version", {"GET": Operation(_version)}),
    Route(r"/modules", {"GET": Operation(_modules)}),
    Route(r"/health", {"GET": Operation(_health)}),
    Route(r"/packages/install", {"POST": Operation(_install)}),
    # The paths QNTX's own Python plugin answered: uv when it is there, pip otherwise.
    Route(r"/uv/install", {"POST": Operation(_install)}),
    Route(r"/pip/install", {"POST": Operation(_install)}),
    Route(r"/uv/check", {"GET": Operation(_module_check)}),
    Route(r"/pip/check", {"GET": Operation(_module_check)}),
    Route(r"/openapi.json", {"GET": Operation(_openapi)}),
    Route(
        r"/backends",
        {"GET": Operation(_list_backends), "POST": Operation(_create_backend, 201)},
    ),
    Route(_BACKEND, {"GET": Operation(_backend_info), "DELETE": Operation(_delete_backend)}),
    Route(_BACKEND + r"/call", {"POST": Operation(_call)}),
    Route(
        r"/contexts",
        {"GET": Operation(_list_contexts), "POST": Operation(_create_context, 201)},
    ),
    Route(_CONTEXT, {"GET": Operation(_context_info), "DELETE": Operation(_delete_context)}),
    Route(_CONTEXT + r"/restart", {"POST": Operation(_restart_context)}),
    Route(_CONTEXT + r"/execute", {"POST": Operation(_context_execute, streams=True)}),
    Route(_CONTEXT + r"/evaluate", {"POST": Operation(_context_evaluate, streams=True)}),
    Route(_CONTEXT + r"/execute-file", {"POST": Operation(_context_execute_file, streams=True)}),
]

_COMPILED = [(re.compile(route.pattern + r"\Z"), route) for route in ROUTES]


async def outcome(work: Awaitable[dict[str, Any]], status: int = 200) -> Answer:
    """Await *work*: its body with *status*, or the answer for the error it raised."""
    try:
        return Answer(status, await work)
    except Exception as exc:
        known = to_api_error(exc)
        if known is None:
            log.exception("a request failed")
            known = internal()
        return failure(known)


def parse_query(text: str) -> dict[str, str]:
    """A query string's names and (last) values, percent-decoded as UTF-8."""
    try:
        pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise bad_request("the query string is not UTF-8") from None
    return dict(pairs)


async def respond(
    service: Service,
    method: str,
    target: str,
    body: bytes = b"",
    *,
    host: str = "127.0.0.1",
) -> Answer:
    """Answer one whole request: *target* is the path with its query string."""
    path, _, query_text = target.partition("?")
    path = path or "/"
    for regex, route in _COMPILED:
        match = regex.match(path)
        if match is None:
            continue
        operation = route.methods.get(method.upper())
        if operation is None:
            return failure(ApiError(405, "bad_request", "Method Not Allowed"), route.allow())
        try:
            query = parse_query(query_text)
        except ApiError as error:
            return failure(error)
        request = Request(match.groups(), query, body, len(body), host)
        return await outcome(operation.run(service, request), operation.status)
    return failure(not_found(f"no route {method.upper()} {path}"))
