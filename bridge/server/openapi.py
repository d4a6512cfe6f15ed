"""/openapi.json: the OpenAPI 3 document of every route, built from the schemas the routes check."""

from __future__ import annotations

from typing import Any

from bridge._version import __version__

from . import schema

_FAILURES = {
    400: "Bad request: malformed JSON, a wrong type, a missing or unknown field.",
    401: "No token, or a wrong one.",
    403: "Refused: a path outside the service's root, a disallowed host or origin, or "
    "installs turned off (BridgeApp.allow_install).",
    404: "No such backend, context, file or folder, or no such route.",
    405: "The route does not take this method.",
    409: "Conflict: a context of that name exists, or an install would change the service's "
    "own dependencies (conflicts names them).",
    413: "The request body is larger than the service's limit.",
    429: "Too many live backends or contexts.",
    503: "The kernel died during the call or before it (a context answers kernel_died until "
    "it is restarted), or no kernel is free (busy).",
    504: "The code ran past its timeout and was interrupted (timeout).",
}


def _json(shape: schema.Schema) -> dict[str, Any]:
    return {"application/json": {"schema": shape}}


def _operation(
    summary: str,
    *,
    ok: tuple[int, str, schema.Schema] | None = None,
    body: schema.Schema | None = None,
    failures: tuple[int, ...] = (),
    parameters: list[dict[str, Any]] | None = None,
    stream: bool = False,
    events: bool = False,
    body_optional: bool = False,
) -> dict[str, Any]:
    status, text, shape = ok or (200, "", {})
    responses: dict[str, Any] = {}
    if stream:
        responses["200"] = {
            "description": text,
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    else:
        responses[str(status)] = {"description": text, "content": _json(shape)}
    if events:
        # The same route with `Accept: text/event-stream`: the outputs as they are made.
        responses[str(status)]["description"] += " " + EVENTS
        responses[str(status)]["content"]["text/event-stream"] = {"schema": {"type": "string"}}
    for code in sorted({401, 405, *failures}):
        responses[str(code)] = {
            "description": _FAILURES[code],
            "content": _json({"$ref": "#/components/schemas/Error"}),
        }
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if body is not None:
        op["requestBody"] = {"required": not body_optional, "content": _json(body)}
    if parameters:
        op["parameters"] = parameters
    return op


_BACKEND_ID = {
    "name": "backend_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "The id POST /backends gave.",
}

_RUN = (400, 413, 503, 504)

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


def _with_links(operation: dict[str, Any]) -> dict[str, Any]:
    operation["responses"]["201"]["links"] = _BACKEND_LINKS
    return operation


EVENTS = (
    "With 'Accept: text/event-stream' the answer is Server-Sent Events, one per output as the "
    "kernel makes it: 'stdout' and 'stderr' with data {\"text\": chunk}; 'display' with the "
    "nbformat display_data output {output_type, data (a MIME bundle), metadata}; 'result' "
    "with the execute_result output {output_type, data, metadata, execution_count}; 'error' "
    "with {output_type, ename, evalue, traceback (a list of lines)}; and last 'end' with the "
    "whole JSON answer the route gives without streaming (a failure body with status, such "
    "as a timeout, if the call failed after the stream opened). The stream opens at the first "
    "output (or after 15 s of silence); a failure before that is the plain JSON answer with "
    "its status. Closing the connection interrupts the code."
)

_CONTEXT_ID = {
    "name": "context_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "The id POST /contexts gave.",
}


def _install(summary: str) -> dict[str, Any]:
    return _operation(
        summary + ": uv when it is on PATH, pip otherwise; running kernels can import them "
        "at once. Refused on a gateway (400), when turned off (403), and when it would change "
        "the service's own dependencies while the kernels share its environment (409)",
        ok=(
            200,
            "The installer ran (success tells whether it installed them).",
            schema.PACKAGES_INSTALLED,
        ),
        body=schema.PACKAGES_INSTALL_REQUEST,
        failures=(*_RUN, 403, 409),
    )


def _check() -> dict[str, Any]:
    return _operation(
        "Whether the kernels can import one module (QNTX's path): the module comes as "
        '?module=NAME or as a JSON body {"module": NAME}',
        ok=(200, "Importable or not.", schema.MODULE_CHECK),
        failures=(400, 503, 504),
        parameters=[
            {
                "name": "module",
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": "The module's name (or send it in the body).",
            }
        ],
    )


def document(host: str = "127.0.0.1") -> dict[str, Any]:
    """The OpenAPI 3.0 document of the service."""
    paths: dict[str, dict[str, Any]] = {
        "/execute": {
            "post": _operation(
                "Run code in a fresh namespace on a pool kernel",
                ok=(
                    200,
                    "The code ran (success tells whether it raised).",
                    schema.EXECUTION_RESULT,
                ),
                body=schema.EXECUTE_REQUEST,
                failures=_RUN,
                events=True,
            )
        },
        "/evaluate": {
            "post": _operation(
                "The value of one expression",
                ok=(200, "The expression ran.", schema.EXECUTION_RESULT),
                body=schema.EVALUATE_REQUEST,
                failures=_RUN,
                events=True,
            )
        },
        "/execute-file": {
            "post": _operation(
                "Run a script inside the service's root folder",
                ok=(200, "The script ran.", schema.EXECUTION_RESULT),
                body=schema.EXECUTE_FILE_REQUEST,
                failures=(*_RUN, 403, 404),
                events=True,
            )
        },
        "/version": {
            "get": _operation(
                "Versions of the kernels' Python and of kernel-bridge",
                ok=(200, "Versions.", schema.VERSION),
                failures=(503,),
            )
        },
        "/modules": {
            "get": _operation(
                "Which modules the kernels can import",
                ok=(200, "Module name to importable.", schema.MODULES),
                failures=(400, 503, 504),
                parameters=[
                    {
                        "name": "names",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "Module names separated by commas "
                        "(default: numpy,pandas,requests,json,os,sys).",
                    }
                ],
            )
        },
        "/health": {
            "get": _operation(
                "Whether the service is up, with its pool and backends",
                ok=(200, "Up.", schema.HEALTH),
                failures=(503,),
            )
        },
        "/packages/install": {"post": _install("Install packages into the kernels' Python")},
        "/uv/install": {"post": _install("The same as /packages/install (QNTX's path)")},
        "/pip/install": {"post": _install("The same as /packages/install (QNTX's path)")},
        "/uv/check": {"get": _check()},
        "/pip/check": {"get": _check()},
        "/backends": {
            "get": _operation(
                "The service's backends",
                ok=(200, "Every backend, alive or not.", schema.BACKEND_LIST),
            ),
            "post": _with_links(
                _operation(
                    "Start a backend: a script of methods in a kernel of its own",
                    ok=(
                        201,
                        "Started; its kernel is listed by /api/kernels, and by /api/sessions as "
                        "the session backends/<name>, which JupyterLab opens a console on.",
                        schema.BACKEND,
                    ),
                    body=schema.BACKEND_REQUEST,
                    failures=(400, 413, 429, 503, 504),
                )
            ),
        },
        "/backends/{backend_id}": {
            "get": {
                "operationId": "getBackend",
                **_operation(
                    "One backend",
                    ok=(200, "The backend.", schema.BACKEND),
                    failures=(404,),
                    parameters=[_BACKEND_ID],
                ),
            },
            "delete": {
                "operationId": "deleteBackend",
                **_operation(
                    "Stop a backend and its kernel",
                    ok=(200, "Stopped.", schema.BACKEND_DELETED),
                    failures=(404,),
                    parameters=[_BACKEND_ID],
                ),
            },
        },
        "/backends/{backend_id}/call": {
            "post": {
                "operationId": "callBackend",
                **_operation(
                    "Call a method of the backend",
                    ok=(
                        200,
                        "The method ran (success tells whether it raised).",
                        schema.CALL_RESULT,
                    ),
                    body=schema.CALL_REQUEST,
                    failures=(400, 404, 413, 503, 504),
                    parameters=[_BACKEND_ID],
                ),
            }
        },
        "/backends/{backend_id}/events": {
            "get": _operation(
                "The backend's events as Server-Sent Events",
                ok=(
                    200,
                    "One 'data: {\"type\": ..., \"data\": ...}' per event, 'id:' its number; "
                    "events no stream has read yet come first (or those after Last-Event-ID).",
                    {},
                ),
                failures=(400, 404),
                parameters=[
                    _BACKEND_ID,
                    {
                        "name": "last_event_id",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                        "description": "Resume after this event (as the Last-Event-ID header).",
                    },
                ],
                stream=True,
            )
        },
        "/contexts": {
            "get": _operation(
                "The service's contexts",
                ok=(200, "Every context, alive or not.", schema.CONTEXT_LIST),
            ),
            "post": _operation(
                "Start a context: a kernel of its own whose state lasts from call to call "
                "(variables, imports, the working folder), listed by /api/kernels",
                ok=(201, "Started.", schema.CONTEXT),
                body=schema.CONTEXT_REQUEST,
                body_optional=True,
                failures=(400, 403, 404, 409, 413, 429, 503, 504),
            ),
        },
        "/contexts/{context_id}": {
            "get": _operation(
                "One context",
                ok=(200, "The context.", schema.CONTEXT),
                failures=(404,),
                parameters=[_CONTEXT_ID],
            ),
            "delete": _operation(
                "Stop a context and its kernel",
                ok=(200, "Stopped.", schema.CONTEXT_DELETED),
                failures=(404,),
                parameters=[_CONTEXT_ID],
            ),
        },
        "/contexts/{context_id}/restart": {
            "post": _operation(
                "Give the context a fresh kernel (same id, name, env and cwd): its state is "
                "cleared, and a context whose kernel died works again",
                ok=(200, "Restarted.", schema.CONTEXT),
                body=schema.EMPTY_REQUEST,
                body_optional=True,
                failures=(400, 404, 413, 503),
                parameters=[_CONTEXT_ID],
            ),
        },
        "/contexts/{context_id}/execute": {
            "post": _operation(
                "Run code in the context (as /execute, with its state kept)",
                ok=(200, "The code ran.", schema.EXECUTION_RESULT),
                body=schema.EXECUTE_REQUEST,
                failures=(*_RUN, 404),
                parameters=[_CONTEXT_ID],
                events=True,
            ),
        },
        "/contexts/{context_id}/evaluate": {
            "post": _operation(
                "The value of one expression in the context",
                ok=(200, "The expression ran.", schema.EXECUTION_RESULT),
                body=schema.EVALUATE_REQUEST,
                failures=(*_RUN, 404),
                parameters=[_CONTEXT_ID],
                events=True,
            ),
        },
        "/contexts/{context_id}/execute-file": {
            "post": _operation(
                "Run a script of the service's root folder in the context",
                ok=(200, "The script ran.", schema.EXECUTION_RESULT),
                body=schema.EXECUTE_FILE_REQUEST,
                failures=(*_RUN, 403, 404),
                parameters=[_CONTEXT_ID],
                events=True,
            ),
        },
        "/openapi.json": {
            "get": _operation(
                "This document", ok=(200, "The OpenAPI document.", {"type": "object"})
            )
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "kernel-bridge",
            "version": __version__,
            "description": "Run Python in managed IPython kernels. Every route needs the "
            "server's token: 'Authorization: token <token>' (or 'Bearer <token>'), or "
            "?token=<token>. Failures share one shape: {success: false, error, error_type, "
            "status}.",
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
            "schemas": {"Error": schema.ERROR},
        },
        "paths": paths,
    }
