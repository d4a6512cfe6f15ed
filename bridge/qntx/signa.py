"""The plugin's operations as QNTX signa (ADR-039), made from the service's OpenAPI document.

QNTX serves each sigil a plugin declares in ``InitializeResponse.signa`` as an HTTP endpoint
and an MCP tool, under ``/api/python/``, answered by HandleHTTP. Nothing is written here a
second time: every sigil is one operation of the OpenAPI document (the one contract), its
``does`` the summary, ``takes`` the path and query parameters and the body's fields, ``gives``
the success answer's fields. This module only chooses which operations are sigils and how
they group into signa.

Not sigils: the QNTX-compatible aliases (``/uv/*``, ``/pip/*``, answered as
``/packages/install`` and ``/modules``), ``/openapi.json``, and the backends' event stream,
which is a socket's job (HandleWebSocket), as ADR-039 keeps sockets out of sigils.
"""

from __future__ import annotations

from typing import Any

from .protocol import sigil_pb

MOUNT = "/api/python"  # where QNTX's core mounts the plugin's HTTP routes

# signum -> (description, tags, [(sigil name, method, path)])
SIGNA: dict[str, tuple[str, list[str], list[tuple[str, str, str]]]] = {
    "python": (
        "Run Python in a warm kernel of the pool: a fresh namespace for each call.",
        ["python", "execute", "code"],
        [
            ("execute", "POST", "/execute"),
            ("evaluate", "POST", "/evaluate"),
            ("execute-file", "POST", "/execute-file"),
        ],
    ),
    "contexts": (
        "Python sessions whose state lives from call to call, each in a kernel of its own.",
        ["python", "session", "state"],
        [
            ("list", "GET", "/contexts"),
            ("create", "POST", "/contexts"),
            ("read", "GET", "/contexts/{context_id}"),
            ("delete", "DELETE", "/contexts/{context_id}"),
            ("restart", "POST", "/contexts/{context_id}/restart"),
            ("execute", "POST", "/contexts/{context_id}/execute"),
            ("evaluate", "POST", "/contexts/{context_id}/evaluate"),
            ("execute-file", "POST", "/contexts/{context_id}/execute-file"),
        ],
    ),
    "packages": (
        "The kernels' Python packages: which modules import, and installing more.",
        ["python", "packages", "install"],
        [
            ("modules", "GET", "/modules"),
            ("install", "POST", "/packages/install"),
        ],
    ),
    "version": (
        "The versions of the kernels' Python and of kernel-bridge.",
        ["python", "version"],
        [("read", "GET", "/version")],
    ),
    "backends": (
        "Long-lived Python objects: a class of methods in a kernel of its own, called by name.",
        ["python", "backend", "rpc"],
        [
            ("list", "GET", "/backends"),
            ("create", "POST", "/backends"),
            ("read", "GET", "/backends/{backend_id}"),
            ("delete", "DELETE", "/backends/{backend_id}"),
            ("call", "POST", "/backends/{backend_id}/call"),
        ],
    ),
}


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """*schema* with a ``$ref`` (to ``#/components/schemas/...``) followed."""
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _unwrap(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional field's schema (``anyOf: [X, {"type": "null"}]``) as X."""
    options = [o for o in schema.get("anyOf", ()) if o.get("type") != "null"]
    return options[0] if len(options) == 1 else schema


def _kind(schema: dict[str, Any]) -> str:
    """A Param's kind: "" text, "count" a whole number (sigil.proto); JSON types past those."""
    kind = schema.get("type", "")
    if kind == "string":
        return ""
    if kind == "integer" and schema.get("minimum", -1) >= 0:
        return "count"
    return str(kind or "json")


def _param(name: str, schema: dict[str, Any], says: str, required: bool) -> Any:
    return sigil_pb.Param(
        name=name,
        says=says or str(schema.get("description", "")),
        required=required,
        one_of=[str(v) for v in schema.get("enum", [])],
        kind=_kind(schema),
    )


def _takes(document: dict[str, Any], operation: dict[str, Any]) -> list[Any]:
    takes = [
        _param(p["name"], p.get("schema", {}), p.get("description", ""), p.get("required", False))
        for p in operation.get("parameters", [])
    ]
    body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
    shape = _resolve(document, body.get("schema", {}))
    required = set(shape.get("required", []))
    for name, field in shape.get("properties", {}).items():
        takes.append(_param(name, _unwrap(_resolve(document, field)), "", name in required))
    return takes


def _gives(document: dict[str, Any], operation: dict[str, Any]) -> list[Any]:
    for status, answer in sorted(operation.get("responses", {}).items()):
        schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
        if not status.startswith("2") or schema.get("$ref", "").endswith("/Failure"):
            continue  # POST /backends answers a Python error as 200 Failure, a start as 201
        fields = []
        for name, field in _resolve(document, schema).get("properties", {}).items():
            field = _unwrap(field)
            says = field.get("description") or _resolve(document, field).get("description")
            # Field.message names a proto message; these are JSON Schemas: not named there.
            fields.append(sigil_pb.Field(name=name, says=str(says or "")))
        return fields
    return []


def signa(document: dict[str, Any], mount: str = MOUNT) -> list[Any]:
    """The Signum messages of SIGNA, each sigil filled in from *document* (OpenAPI 3)."""
    paths = document["paths"]
    made = []
    for name, (description, tags, sigils) in SIGNA.items():
        signum = sigil_pb.Signum(name=name, description=description, tags=tags)
        for sigil_name, method, path in sigils:
            operation = paths[path][method.lower()]  # a KeyError here is a stale table
            signum.sigils.append(
                sigil_pb.Sigil(
                    name=sigil_name,
                    does=str(operation.get("summary", "")),
                    takes=_takes(document, operation),
                    gives=_gives(document, operation),
                    http=sigil_pb.Endpoint(method=method, path=mount + path),
                )
            )
        made.append(signum)
    return made
