"""/openapi.json: the OpenAPI 3.1 document, generated from the route table (dispatch.ROUTES)
and the models (models.py); nothing in it is written twice.

``python -m bridge.service > openapi.json`` writes it without a server (the TypeScript
client's types are generated from it: ``make ts-types``).
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from bridge._version import __version__

from . import models as m
from .errors import STATUS, ErrorType

if TYPE_CHECKING:
    from .dispatch import Operation, Route

REF = "#/components/schemas/{name}"

# Shapes the routes do not name but clients need: the event streams' and the failures'.
_EXTRA_MODELS: tuple[Any, ...] = (
    m.Failure,
    m.ExecutionEvents,
    m.BackendEvents,
    m.CallEvents,
    m.StreamEnd,
    m.BinaryValue,
    m.PythonError,
)

_WHY = {
    ErrorType.BAD_REQUEST: "malformed JSON, a wrong type, a missing or unknown field "
    "(`field` names it)",
    ErrorType.UNAUTHORIZED: "no token, or a wrong one",
    ErrorType.FORBIDDEN: "a path outside the service's root or a context's working folder "
    "(or through a symlink), a disallowed Host, or installs turned off",
    ErrorType.NOT_FOUND: "no such backend, context, file or folder",
    ErrorType.METHOD_NOT_ALLOWED: "the route does not take this method (Allow lists those it does)",
    ErrorType.CONFLICT: "a context of that name exists, or an install would change the "
    "service's own dependencies (`conflicts`)",
    ErrorType.TOO_LARGE: "the request body is larger than the service's limit (a file: "
    "max_file_bytes, or the context's uploads past max_context_bytes)",
    ErrorType.LIMIT_REACHED: "as many backends or contexts as the service allows run already",
    ErrorType.PYTHON_ERROR: "the script raised (`exception`)",
    ErrorType.TIMEOUT: "the code ran past its timeout and was interrupted",
    ErrorType.KERNEL_DIED: "the kernel died during the call or before it",
    ErrorType.KERNEL_START_FAILED: "no kernel could be started",
    ErrorType.OVERLOADED: "no kernel became free in time: retry later",
    ErrorType.SHUTTING_DOWN: "the service, or the context of the call, is closing",
    ErrorType.UNAVAILABLE: "the kernel could not be reached",
    ErrorType.INTERNAL: "a bug: the server's log has the details",
}

# Every route can answer these (auth.py, a method the route does not take).
_ALWAYS = (ErrorType.UNAUTHORIZED, ErrorType.METHOD_NOT_ALLOWED)

EVENTS = (
    "With 'Accept: text/event-stream' the answer is Server-Sent Events, one per output as the "
    "kernel makes it (components.schemas.ExecutionEvents, by event name): 'stdout' and "
    "'stderr', 'display', 'result', 'error', and last 'end' with the whole answer the route "
    "gives without streaming (a Failure, such as a timeout, if the call failed after the "
    "stream opened). The stream opens at the first output (or after 15 s of silence); a "
    "failure before that is the plain JSON answer with its status. Closing the connection "
    "interrupts the code."
)

ITEMS = (
    "With 'Accept: text/event-stream' a generator method's items stream as Server-Sent "
    "Events (components.schemas.CallEvents): one 'item' per item as the method yields it, "
    "then 'end' (StreamEnd, or the failure). Closing the connection closes the generator."
)

MULTIPART = (
    "With 'Accept: multipart/mixed', an answer whose value holds bytes or NumPy arrays is a "
    "multipart/mixed body: this JSON first, its BinaryValues naming the parts after it, one "
    "application/octet-stream part per value, each with its Content-Length (docs/http.md)."
)
# Answers and requests whose values may hold bytes or arrays (BinaryValue): their routes take
# and give multipart/mixed too.
_BINARY = (m.CallAnswer, m.ExecuteAnswer, m.CallRequest, m.ExecuteRequest)
_MULTIPART_SCHEMA = {"schema": {"type": "string", "format": "binary"}}

# What a created backend's id leads to (OpenAPI links: clients and stateful testers follow
# them). Not the event stream, which stays open for as long as the backend lives.
_BACKEND_LINKS = {
    name: {
        "operationId": operation,
        "parameters": {"backend_id": "$response.body#/id"},
        "description": description,
    }
    for name, operation, description in (
        ("GetBackend", "getBackend", "The backend just created."),
        ("CallBackend", "callBackend", "Call one of its methods."),
        ("DeleteBackend", "deleteBackend", "Stop it."),
    )
}


_OCTETS = {"type": "string", "format": "binary"}
_FILE_PATH = (
    "A file's path, relative to the context's working folder; its slashes are kept (an "
    "absolute path, '..' or a symlink on the way is 403)."
)


def _ref(model: Any) -> dict[str, Any]:
    return {"$ref": REF.format(name=model.__name__)}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _answer_schema(answer: Any) -> dict[str, Any]:
    if isinstance(answer, type) and issubclass(answer, msgspec.Struct):
        return _ref(answer)
    return {"type": "object"}


def _failures(operation: Operation) -> dict[str, Any]:
    by_status: dict[int, list[ErrorType]] = {}
    for kind in (*_ALWAYS, *operation.failures):
        if kind not in by_status.setdefault(STATUS[kind], []):
            by_status[STATUS[kind]].append(kind)
    return {
        str(status): {
            "description": "; ".join(f"{kind.value}: {_WHY[kind]}" for kind in kinds) + ".",
            "content": _json(_ref(m.Failure)),
        }
        for status, kinds in sorted(by_status.items())
    }


def _parameters(route: Route, operation: Operation) -> list[dict[str, Any]]:
    found = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
            "description": _FILE_PATH
            if name == "path"
            else f"The id POST /{name.split('_')[0]}s gave.",
        }
        for name in route.parameters
    ]
    for query in operation.query:
        schema: dict[str, Any] = {"type": "string"}
        if query.pattern:
            schema["pattern"] = query.pattern
        found.append(
            {
                "name": query.name,
                "in": "query",
                "required": False,
                "schema": schema,
                "description": query.description,
            }
        )
    return found


def _operation(route: Route, operation: Operation) -> dict[str, Any]:
    responses = _failures(operation)
    success: dict[str, Any]
    if operation.events is not None:
        success = {
            "description": "The event stream (components.schemas."
            f"{operation.events.__name__}, by event name).",
            "content": {
                "text/event-stream": {
                    "schema": {"type": "string", "x-events": _ref(operation.events)}
                }
            },
        }
    elif operation.raw_answer:
        success = {
            "description": "The file's bytes, with Content-Length, and a Content-Type from its "
            "name (application/octet-stream if none fits).",
            "content": {"application/octet-stream": {"schema": _OCTETS}},
        }
    else:
        success = {
            "description": "Done.",
            "content": _json(_answer_schema(operation.answer)),
        }
        if operation.streams:
            success["description"] = "Done (success tells whether the code raised). " + EVENTS
            success["content"]["text/event-stream"] = {
                "schema": {"type": "string", "x-events": _ref(m.ExecutionEvents)}
            }
        if operation.items:
            success["description"] += " " + ITEMS
            success["content"]["text/event-stream"] = {
                "schema": {"type": "string", "x-events": _ref(m.CallEvents)}
            }
        if operation.answer in _BINARY:
            success["description"] += " " + MULTIPART
            success["content"]["multipart/mixed"] = _MULTIPART_SCHEMA
    responses[str(operation.status)] = success
    if route.path == "/backends" and operation.status == 201:
        success["links"] = _BACKEND_LINKS
    op: dict[str, Any] = {
        "summary": operation.summary,
        "responses": dict(sorted(responses.items())),
    }
    if operation.operation_id:
        op["operationId"] = operation.operation_id
    if operation.raw_body:
        op["requestBody"] = {
            "required": True,
            "description": "The file's bytes (any content type), streamed.",
            "content": {"application/octet-stream": {"schema": _OCTETS}},
        }
    elif operation.body is not None:
        op["requestBody"] = {
            "required": not operation.body_optional,
            "content": _json(_ref(operation.body)),
        }
        if operation.body in _BINARY:  # the JSON part first, then one part per BinaryValue
            op["requestBody"]["content"]["multipart/mixed"] = _MULTIPART_SCHEMA
    parameters = _parameters(route, operation)
    if parameters:
        op["parameters"] = parameters
    return op


def _models(routes: Sequence[Route]) -> list[Any]:
    found: dict[str, Any] = {}
    for route in routes:
        for operation in route.methods.values():
            for model in (operation.body, operation.answer):
                if isinstance(model, type) and issubclass(model, msgspec.Struct):
                    found[model.__name__] = model
    for model in _EXTRA_MODELS:
        found[model.__name__] = model
    return [found[name] for name in sorted(found)]


@functools.cache
def components(routes: tuple[Route, ...]) -> dict[str, Any]:
    """The JSON Schemas of every model of *routes*, as OpenAPI components."""
    models = _models(routes)
    _, schemas = msgspec.json.schema_components(models, ref_template=REF)
    for model in models:
        extra = getattr(model, "schema_extra", None)
        if extra:
            schemas[model.__name__].update(extra)
    _open_objects(schemas)
    return dict(sorted(schemas.items()))


def _open_objects(schema: Any) -> None:
    """Say ``additionalProperties: true`` of every object schema that lists no properties (a
    ``dict[str, Any]``: a MIME bundle, inputs, params), which JSON Schema means already but
    TypeScript generators read as an empty object."""
    if isinstance(schema, dict):
        if (
            schema.get("type") == "object"
            and "properties" not in schema
            and "additionalProperties" not in schema
        ):
            schema["additionalProperties"] = True
        for value in schema.values():
            _open_objects(value)
    elif isinstance(schema, list):
        for value in schema:
            _open_objects(value)


@functools.cache
def paths(routes: tuple[Route, ...]) -> dict[str, Any]:
    return {
        route.path: {
            method.lower(): _operation(route, operation)
            for method, operation in route.methods.items()
        }
        for route in routes
    }


def document(routes: tuple[Route, ...], host: str = "127.0.0.1") -> dict[str, Any]:
    """The OpenAPI 3.1 document of *routes* (the service's: ``dispatch.document``)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kernel-bridge",
            "version": __version__,
            "description": "Run Python in managed IPython kernels. Every route needs the "
            "server's token: 'Authorization: token <token>' (or 'Bearer <token>'), or "
            "?token=<token>. Failures share one shape, Failure: {success: false, error, "
            "error_type, status}. A Python error (the code raised) is 200 with success false "
            "and the exception as {ename, evalue, traceback}, on every route.",
        },
        "servers": [{"url": f"http://{host}"}],
        "security": [{"token": []}, {"bearer": []}, {"query": []}],
        "components": {
            "securitySchemes": {
                "token": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "'token <token>'",
                },
                "bearer": {"type": "http", "scheme": "bearer"},
                "query": {"type": "apiKey", "in": "query", "name": "token"},
            },
            "schemas": copy.deepcopy(components(routes)),
        },
        "paths": copy.deepcopy(paths(routes)),
    }


def dumps(document: dict[str, Any]) -> str:
    """The document as the committed file has it (stable: TypeScript types come from it)."""
    return json.dumps(document, indent=2, sort_keys=True) + "\n"
