"""The JSON shapes of the HTTP service: one definition serves validation and /openapi.json.

Request bodies are checked against these schemas by ``validate`` (the small subset of JSON
Schema they use), so the document a host reads and the checks the service makes cannot drift.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 64  # nesting levels a request body may have; deeper is refused, never recursed into
MAX_TIMEOUT = 86_400.0  # a day: anything longer is a mistake, not a timeout

ERROR_TYPES = [
    "python_error",
    "timeout",
    "kernel_died",
    "bad_request",
    "not_found",
    "unauthorized",
    "forbidden",
    "too_large",
    "conflict",
    "busy",
    "internal",
]

Schema = dict[str, Any]


class SchemaError(ValueError):
    """A request body does not fit its schema; the message names the field and the problem."""


# -- parsing ---------------------------------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise SchemaError(f"{name} is not valid JSON (numbers must be finite)")


def parse_json(body: bytes) -> Any:
    """The JSON value of a request body, or SchemaError saying what is wrong with it."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SchemaError(f"the body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    if not text.strip():
        raise SchemaError("the body is empty: send a JSON object")
    _check_depth(text)
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"the body is not JSON: {exc.msg} (line {exc.lineno})") from None
    except RecursionError:  # cannot happen after _check_depth, but never let it become a 500
        raise SchemaError(f"the body is nested more than {MAX_DEPTH} levels deep") from None
    if "\\ud" in text.lower():
        # A lone surrogate ("\\ud800") is valid JSON but no text: it cannot reach a kernel.
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise SchemaError(
                "the body holds a lone surrogate (\\ud800-\\udfff): not text"
            ) from None
    return value


def _check_depth(text: str) -> None:
    """Refuse JSON nested past MAX_DEPTH before parsing it (brackets inside strings skipped)."""
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise SchemaError(f"the body is nested more than {MAX_DEPTH} levels deep")
        elif char in "]}":
            depth -= 1


# -- validation ------------------------------------------------------------------------------

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    for name in ("boolean", "integer", "number", "string", "array", "object"):
        if isinstance(value, _TYPES[name]):
            return name
    return type(value).__name__


def validate(value: Any, schema: Schema, where: str = "body") -> None:
    """Raise SchemaError if *value* does not fit *schema* (the keywords used in this module)."""
    if value is None:
        if schema.get("nullable"):
            return
        if "type" in schema:
            raise SchemaError(f"{where} must be {_article(schema['type'])}, got null")
    kind = schema.get("type")
    if kind is not None:
        ok = isinstance(value, _TYPES[kind]) and not (
            kind in ("integer", "number") and isinstance(value, bool)
        )
        if not ok:
            raise SchemaError(f"{where} must be {_article(kind)}, got {_type_name(value)}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            raise SchemaError(f"{where} must not be empty")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise SchemaError(f"{where} is longer than {schema['maxLength']} characters")
        if "pattern" in schema and re.search(schema["pattern"], value) is None:
            raise SchemaError(
                schema.get("x-pattern-message", f"{where} does not match {schema['pattern']!r}")
            )
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        _check_number(value, schema, where)
    if isinstance(value, dict):
        _check_object(value, schema, where)
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise SchemaError(f"{where} has more than {schema['maxItems']} items")
        items = schema.get("items")
        if items is not None:
            for i, item in enumerate(value):
                validate(item, items, f"{where}[{i}]")
    if "oneOf" in schema:
        matches = 0
        for sub in schema["oneOf"]:
            try:
                validate(value, sub, where)
            except SchemaError:
                continue
            matches += 1
        if matches != 1:
            raise SchemaError(schema.get("x-oneOf-message", f"{where} fits none of its forms"))


def _article(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _check_number(value: float, schema: Schema, where: str) -> None:
    if not math.isfinite(value):
        raise SchemaError(f"{where} must be finite")
    low = schema.get("minimum")
    if low is not None:
        if schema.get("exclusiveMinimum") and value <= low:
            raise SchemaError(f"{where} must be greater than {low:g}, got {value!r}")
        if value < low:
            raise SchemaError(f"{where} must be at least {low:g}, got {value!r}")
    high = schema.get("maximum")
    if high is not None and value > high:
        raise SchemaError(f"{where} must be at most {high:g}, got {value!r}")


def _check_object(value: dict[str, Any], schema: Schema, where: str) -> None:
    properties = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in value:
            raise SchemaError(f"{where}: missing field {name!r}")
    extra = schema.get("additionalProperties", True)
    names = schema.get("propertyNames")
    for name, item in value.items():
        field = f"{name}" if where == "body" else f"{where}.{name}"
        if names is not None:
            validate(name, names, f"{where}: the name {name!r}")
        if name in properties:
            validate(item, properties[name], field)
        elif extra is False:
            known = ", ".join(sorted(properties)) or "none"
            raise SchemaError(f"{where}: unknown field {name!r} (known fields: {known})")
        elif isinstance(extra, dict):
            validate(item, extra, field)


# -- the shapes --------------------------------------------------------------------------------

_TIMEOUT: Schema = {
    "type": "number",
    "minimum": 0,
    "exclusiveMinimum": True,
    "maximum": MAX_TIMEOUT,
    "description": "Seconds before the code is interrupted (and its kernel replaced if it "
    "ignores the interrupt); the answer is then 504 timeout.",
}
_CODE: Schema = {"type": "string", "description": "Python source; a top-level `return X` gives X."}

EXECUTE_REQUEST: Schema = {
    "type": "object",
    "properties": {
        "content": _CODE,
        "code": {**_CODE, "description": "The same as `content` (the older field name)."},
        "timeout_secs": {**_TIMEOUT, "default": 30},
        "capture_variables": {"type": "boolean", "default": False},
        "inputs": {
            "type": "object",
            "additionalProperties": True,
            "description": "Globals for the code: Python names mapped to JSON values.",
        },
    },
    "additionalProperties": False,
    "oneOf": [{"required": ["content"]}, {"required": ["code"]}],
    "x-oneOf-message": "give the code in exactly one of the fields 'content' or 'code'",
}

EVALUATE_REQUEST: Schema = {
    "type": "object",
    "properties": {
        "expr": {"type": "string", "description": "One Python expression."},
        "timeout_secs": _TIMEOUT,
    },
    "required": ["expr"],
    "additionalProperties": False,
}

EXECUTE_FILE_REQUEST: Schema = {
    "type": "object",
    "properties": {
        "path": {
            "type": "string",
            "minLength": 1,
            "description": "A script inside the service's root folder, relative to it or absolute.",
        },
        "timeout_secs": _TIMEOUT,
        "capture_variables": {"type": "boolean", "default": False},
    },
    "required": ["path"],
    "additionalProperties": False,
}

# What a process environment can hold: names non-empty without '=' or NUL, values without NUL
# (lone surrogates are refused by the bridge's own check, naming env too).
ENV: Schema = {
    "type": "object",
    "propertyNames": {"type": "string", "minLength": 1, "pattern": "^[^=\u0000]+$"},
    "additionalProperties": {"type": "string", "pattern": "^[^\u0000]*$"},
}

BACKEND_REQUEST: Schema = {
    "type": "object",
    "properties": {
        "script": {
            "type": "string",
            "description": "Python source defining the backend class (see the backends guide).",
        },
        "name": {
            "type": "string",
            "minLength": 1,
            "maxLength": 255,
            "description": "What people see it as: its JupyterLab session is backends/<name>. "
            "Clients send the script's file name; the default is the backend's class name.",
        },
        "env": {**ENV, "description": "Extra environment variables for the backend's kernel."},
        "timeout_secs": {
            **_TIMEOUT,
            "description": "Seconds the script gets to start, and the default for its calls.",
        },
        "restart": {
            "type": "boolean",
            "default": False,
            "description": "Bring a dead kernel back with the script run again.",
        },
    },
    "required": ["script"],
    "additionalProperties": False,
}

CALL_REQUEST: Schema = {
    "type": "object",
    "properties": {
        "cmd": {"type": "string", "minLength": 1, "description": "The method to call."},
        "params": {
            "type": "object",
            "additionalProperties": True,
            "description": "Keyword arguments of the method.",
        },
        "timeout_secs": _TIMEOUT,
    },
    "required": ["cmd"],
    "additionalProperties": False,
}

_OUTPUT: Schema = {
    "type": "object",
    "description": "An nbformat v4 output (stream, display_data, execute_result or error).",
    "properties": {"output_type": {"type": "string"}},
    "required": ["output_type"],
}

EXECUTION_RESULT: Schema = {
    "type": "object",
    "properties": {
        "success": {"type": "boolean"},
        "stdout": {"type": "string"},
        "stderr": {"type": "string"},
        "result": {"nullable": True, "description": "The value (JSON if it has a JSON form)."},
        "error": {"type": "string", "nullable": True, "description": "The traceback."},
        "error_type": {"type": "string", "nullable": True, "enum": ["python_error", None]},
        "duration_ms": {"type": "number"},
        "outputs": {"type": "array", "items": _OUTPUT},
        "variables": {"type": "object", "nullable": True},
        "attestations": {"type": "array", "items": {"type": "object"}},
        "truncated": {"type": "boolean"},
    },
    "required": [
        "success",
        "stdout",
        "stderr",
        "result",
        "error",
        "duration_ms",
        "outputs",
        "attestations",
        "truncated",
    ],
}

ERROR: Schema = {
    "type": "object",
    "description": "Every failure has this shape; a call that ran out of time or lost its "
    "kernel also carries the output made so far (stdout, stderr, outputs).",
    "properties": {
        "success": {"type": "boolean", "enum": [False]},
        "error": {"type": "string"},
        "error_type": {"type": "string", "enum": ERROR_TYPES},
        "status": {"type": "integer"},
        "stdout": {"type": "string"},
        "stderr": {"type": "string"},
        "outputs": {"type": "array", "items": _OUTPUT},
        "restarted": {"type": "boolean"},
        "traceback": {"type": "string", "description": "A backend script's traceback."},
        "conflicts": {
            "type": "array",
            "items": {"type": "string"},
            "description": "With 409 conflict: the service's own distributions an install "
            "would have changed.",
        },
    },
    "required": ["success", "error", "error_type", "status"],
}

VERSION: Schema = {
    "type": "object",
    "properties": {
        "python_version": {"type": "string", "description": "The kernels' Python version."},
        "plugin_version": {"type": "string", "description": "kernel-bridge's version."},
        "kernel_python": {"type": "string", "description": "The interpreter of the kernels."},
        "server_python_version": {"type": "string"},
        "jupyter_server_version": {"type": "string"},
    },
    "required": ["python_version", "plugin_version"],
}

MODULES: Schema = {
    "type": "object",
    "properties": {"modules": {"type": "object", "additionalProperties": {"type": "boolean"}}},
    "required": ["modules"],
}

HEALTH: Schema = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["ok"]},
        "version": {"type": "string"},
        "pool_size": {"type": "integer"},
        "kernels": {"type": "integer", "description": "Live kernels of the pool."},
        "backends": {"type": "integer"},
        "contexts": {"type": "integer"},
    },
    "required": ["status", "version", "pool_size", "kernels", "backends"],
}

BACKEND: Schema = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string", "description": "The name it was given, or its class name."},
        "session_id": {
            "type": "string",
            "nullable": True,
            "description": "Its Jupyter Server session (/api/sessions), named backends/<name>: "
            "JupyterLab lists it there and opens a console on its kernel.",
        },
        "kernel_id": {"type": "string", "description": "The kernel, as /api/kernels lists it."},
        "methods": {"type": "array", "items": {"type": "string"}},
        "alive": {"type": "boolean"},
        "state": {
            "type": "string",
            "enum": ["alive", "restarting", "lost", "dead"],
            "description": "lost: the kernel lives but closed the backend's connection; "
            "dead: its kernel exited and was cleaned up (listed until deleted).",
        },
    },
    "required": ["id", "name", "session_id", "kernel_id", "methods", "alive", "state"],
}

BACKEND_LIST: Schema = {
    "type": "object",
    "properties": {"backends": {"type": "array", "items": BACKEND}},
    "required": ["backends"],
}

BACKEND_DELETED: Schema = {
    "type": "object",
    "properties": {"id": {"type": "string"}, "deleted": {"type": "boolean"}},
    "required": ["id", "deleted"],
}

CALL_RESULT: Schema = {
    "type": "object",
    "properties": {
        "success": {"type": "boolean"},
        "result": {"nullable": True},
        "error": {"type": "string", "nullable": True},
        "error_type": {"type": "string", "nullable": True, "enum": ["python_error", None]},
        "duration_ms": {"type": "number"},
        "ename": {"type": "string", "description": "On a failure: the exception's class."},
        "evalue": {"type": "string", "description": "On a failure: the exception's message."},
        "traceback": {"type": "string", "description": "On a failure: the traceback, as text."},
    },
    "required": ["success", "result", "error", "duration_ms"],
}

PACKAGES_INSTALL_REQUEST: Schema = {
    "type": "object",
    "properties": {
        "packages": {
            "type": "array",
            "items": {"type": "string", "minLength": 1, "maxLength": 200},
            "maxItems": 50,
            "description": "Requirements (`name`, `name[extra]>=1.2`) or local wheels, sdists "
            "or project folders inside the service's root (`./dist/x-1.0-py3-none-any.whl`): "
            "no URLs, no options.",
        },
        "package": {
            "type": "string",
            "minLength": 1,
            "maxLength": 200,
            "description": "One requirement (the older form, as QNTX's plugin took it).",
        },
        "upgrade": {"type": "boolean", "default": False},
        "timeout_secs": {**_TIMEOUT, "default": 300},
    },
    "additionalProperties": False,
    "oneOf": [{"required": ["packages"]}, {"required": ["package"]}],
    "x-oneOf-message": "give the packages in exactly one of the fields 'packages' (a list) "
    "or 'package' (one requirement)",
}

PACKAGES_INSTALLED: Schema = {
    "type": "object",
    "properties": {
        "success": {"type": "boolean"},
        "installed": {"type": "array", "items": {"type": "string"}},
        "installer": {"type": "string", "enum": ["uv", "pip"]},
        "stdout": {"type": "string"},
        "stderr": {"type": "string"},
        "duration_ms": {"type": "number"},
    },
    "required": ["success", "installed", "installer", "stdout", "stderr", "duration_ms"],
}

MODULE_CHECK_REQUEST: Schema = {
    "type": "object",
    "properties": {"module": {"type": "string", "minLength": 1}},
    "required": ["module"],
    "additionalProperties": False,
}

MODULE_CHECK: Schema = {
    "type": "object",
    "properties": {"module": {"type": "string"}, "available": {"type": "boolean"}},
    "required": ["module", "available"],
}

MODULES_REQUEST: Schema = {
    "type": "object",
    "properties": {
        "modules": {"type": "array", "items": {"type": "string"}, "maxItems": 100},
    },
    "additionalProperties": False,
}

CONTEXT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

CONTEXT_REQUEST: Schema = {
    "type": "object",
    "properties": {
        "name": {
            "type": "string",
            "pattern": CONTEXT_NAME_PATTERN,
            "x-pattern-message": "name must be 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            "description": "A name unique among the service's contexts "
            "(default: context-<first 8 characters of the id>).",
        },
        "env": {**ENV, "description": "Extra environment variables for the context's kernel."},
        "cwd": {
            "type": "string",
            "minLength": 1,
            "description": "The kernel's working folder: inside the service's root, relative "
            "to it or absolute (default: the service's own working folder).",
        },
        "timeout_secs": {
            **_TIMEOUT,
            "description": "Seconds the kernel gets to start, and the default timeout of the "
            "context's calls (default: the service's).",
        },
    },
    "additionalProperties": False,
}

CONTEXT: Schema = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "kernel_id": {
            "type": "string",
            "description": "Its kernel, as /api/kernels lists it (a new one after a restart).",
        },
        "created": {"type": "string", "description": "ISO 8601, UTC."},
        "last_activity": {"type": "string", "description": "When its last call ended."},
        "alive": {
            "type": "boolean",
            "description": "False once its kernel died: calls answer 503 kernel_died until "
            "POST /contexts/{id}/restart.",
        },
        "busy": {"type": "boolean", "description": "A call is running or waiting."},
        "cwd": {"type": "string", "nullable": True},
        "session_id": {
            "type": "string",
            "nullable": True,
            "description": "Its Jupyter Server session, contexts/<name>, which JupyterLab's "
            "Running panel lists (null with no session manager, as under the QNTX plugin).",
        },
    },
    "required": ["id", "name", "kernel_id", "created"],
}

CONTEXT_LIST: Schema = {
    "type": "object",
    "properties": {"contexts": {"type": "array", "items": CONTEXT}},
    "required": ["contexts"],
}

CONTEXT_DELETED: Schema = BACKEND_DELETED

EMPTY_REQUEST: Schema = {"type": "object", "properties": {}, "additionalProperties": False}
