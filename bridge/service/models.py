"""The service's contract: one msgspec Struct per request and per answer.

A request body is decoded and validated in one pass (``decode``): a bad field is a 400
``bad_request`` whose ``field`` names it. The OpenAPI document (openapi.py) takes its JSON
Schemas from these classes, and the TypeScript client's types are generated from that
document, so the three cannot drift. Optional request fields are ``UNSET`` when absent (never
``null`` unless the schema says so), so what the document allows is what the service takes.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from bridge import Encoded

from .errors import ErrorType, bad_request

MAX_TIMEOUT = 86_400.0  # a day: anything longer is a mistake, not a timeout
MAX_MODULES = 100
CONTEXT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

Timeout = Annotated[
    float,
    Meta(
        gt=0,
        le=MAX_TIMEOUT,
        description="Seconds before the code is interrupted (and its kernel replaced if it "
        "ignores the interrupt); the answer is then 504 timeout.",
    ),
]
# Of a backend or a context: its start, and the default of its calls.
StartTimeout = Annotated[
    float,
    Meta(
        gt=0,
        le=MAX_TIMEOUT,
        description="Seconds its kernel (and a backend's script) gets to start, and the "
        "default timeout of its calls (default: the service's).",
    ),
]
NonEmpty = Annotated[str, Meta(min_length=1)]
Requirement = Annotated[str, Meta(min_length=1, max_length=200)]
# What a process environment can hold: names non-empty without '=' or NUL, values without NUL.
Env = dict[
    Annotated[str, Meta(min_length=1, pattern="^[^=\u0000]+$")],
    Annotated[str, Meta(pattern="^[^\u0000]*$")],
]
KernelEnv = Annotated[Env, Meta(description="Extra environment variables for its kernel.")]
Code = Annotated[str, Meta(description="Python source; a top-level `return X` gives X.")]


class Request(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A request body: unknown fields are refused."""

    # Extra JSON Schema of the class (what msgspec cannot say: exactly one of two fields).
    schema_extra: ClassVar[dict[str, Any]] = {}


# -- requests ----------------------------------------------------------------------------------


class ExecuteRequest(Request):
    """``POST /execute`` (and a context's): run code."""

    content: Code | UnsetType = UNSET
    code: (
        Annotated[str, Meta(description="The same as `content` (the older name).")] | UnsetType
    ) = UNSET
    timeout_secs: Timeout | None = None
    capture_variables: bool = False
    inputs: (
        Annotated[
            dict[str, Any], Meta(description="Globals for the code: names mapped to JSON values.")
        ]
        | None
    ) = None

    schema_extra: ClassVar[dict[str, Any]] = {
        "oneOf": [{"required": ["content"]}, {"required": ["code"]}]
    }

    def __post_init__(self) -> None:
        if (self.content is UNSET) == (self.code is UNSET):
            raise ValueError("give the code in exactly one of the fields 'content' or 'code'")

    @property
    def source(self) -> str:
        return self.code if isinstance(self.code, str) else str(self.content)


class EvaluateRequest(Request):
    """``POST /evaluate`` (and a context's): the value of one expression."""

    expr: Annotated[str, Meta(description="One Python expression.")]
    timeout_secs: Timeout | None = None


class ExecuteFileRequest(Request):
    """``POST /execute-file`` (and a context's): run a script of the service's root."""

    path: Annotated[
        str,
        Meta(
            min_length=1,
            description="A script inside the service's root folder, relative to it or absolute.",
        ),
    ]
    timeout_secs: Timeout | None = None
    capture_variables: bool = False


MemoryMb = Annotated[
    int, Meta(ge=192, description="Megabytes of data segment (RLIMIT_DATA): heap, private maps.")
]
CpuSeconds = Annotated[int, Meta(ge=1, description="CPU seconds over the kernel's life.")]
Processes = Annotated[
    int, Meta(ge=16, description="Processes and threads of the kernel's user (RLIMIT_NPROC).")
]
OpenFiles = Annotated[int, Meta(ge=128, description="Open files (RLIMIT_NOFILE).")]
FileSizeMb = Annotated[int, Meta(ge=1, description="The largest file it may write, in MB.")]


class Limits(Request):
    """What one kernel may take (docs/kernels.md#limits): each at most the service's (a
    looser one, or null where the service has a limit, is a 400); left out: the service's."""

    memory_mb: MemoryMb | UnsetType | None = UNSET
    cpu_seconds: CpuSeconds | UnsetType | None = UNSET
    processes: Processes | UnsetType | None = UNSET
    open_files: OpenFiles | UnsetType | None = UNSET
    file_size_mb: FileSizeMb | UnsetType | None = UNSET


KernelLimitsField = Annotated[
    Limits, Meta(description="Limits for its kernel, tighter than the service's.")
]


def limits_of(limits: Limits | UnsetType | None) -> dict[str, int | None] | None:
    """The limits a request asked for, as ``AsyncBridge.session(limits=)`` takes them."""
    if limits is None or limits is UNSET:
        return None
    asked = msgspec.structs.asdict(limits)  # type: ignore[arg-type]
    return {k: v for k, v in asked.items() if v is not UNSET}


class BackendRequest(Request):
    """``POST /backends``: start a backend from its script."""

    script: Annotated[
        str, Meta(description="Python source defining the backend class (the backends guide).")
    ]
    name: (
        Annotated[
            str,
            Meta(
                min_length=1,
                max_length=255,
                description="What people see it as: its JupyterLab session is "
                "backends/<name> (default: the backend's class name).",
            ),
        ]
        | None
    ) = None
    env: KernelEnv | None = None
    timeout_secs: StartTimeout | None = None
    restart: Annotated[
        bool, Meta(description="Bring a dead kernel back with the script run again.")
    ] = False
    limits: KernelLimitsField | None = None


class CallRequest(Request):
    """``POST /backends/{id}/call``: call a method of the backend."""

    cmd: Annotated[str, Meta(min_length=1, description="The method to call.")]
    params: (
        Annotated[dict[str, Any], Meta(description="Keyword arguments of the method.")] | None
    ) = None
    timeout_secs: Timeout | None = None


class InstallRequest(Request):
    """``POST /packages/install`` (and QNTX's ``/uv/install``, ``/pip/install``)."""

    packages: (
        Annotated[
            list[Requirement],
            Meta(
                max_length=50,
                description="Requirements (`name`, `name[extra]>=1.2`) or local wheels, sdists "
                "or project folders inside the service's root: no URLs, no options.",
            ),
        ]
        | UnsetType
    ) = UNSET
    package: (
        Annotated[str, Meta(min_length=1, max_length=200, description="One requirement.")]
        | UnsetType
    ) = UNSET
    upgrade: bool = False
    timeout_secs: Timeout | None = None

    schema_extra: ClassVar[dict[str, Any]] = {
        "oneOf": [{"required": ["packages"]}, {"required": ["package"]}]
    }

    def __post_init__(self) -> None:
        if (self.packages is UNSET) == (self.package is UNSET):
            raise ValueError(
                "give the packages in exactly one of the fields 'packages' (a list) "
                "or 'package' (one requirement)"
            )

    @property
    def names(self) -> list[str]:
        return list(self.packages) if isinstance(self.packages, list) else [str(self.package)]


class ModulesRequest(Request):
    """``GET /modules`` with a body (as QNTX's clients send it)."""

    modules: Annotated[list[str], Meta(max_length=MAX_MODULES)] | None = None


class ModuleCheckRequest(Request):
    """``GET /uv/check`` with a body: ``{"module": name}``."""

    module: NonEmpty


class ContextRequest(Request):
    """``POST /contexts``: a kernel of its own whose state lasts from call to call."""

    name: (
        Annotated[
            str,
            Meta(
                pattern=CONTEXT_NAME_PATTERN,
                description="1 to 64 letters, digits, '.', '_' or '-', starting with a letter "
                "or digit, unique among the contexts (default: context-<8 characters of id>).",
            ),
        ]
        | None
    ) = None
    env: KernelEnv | None = None
    cwd: (
        Annotated[
            str,
            Meta(
                min_length=1,
                description="The kernel's working folder, inside the service's root.",
            ),
        ]
        | None
    ) = None
    timeout_secs: StartTimeout | None = None
    limits: KernelLimitsField | None = None


class EmptyRequest(Request):
    """A body that may be sent, empty (``POST /contexts/{id}/restart``)."""


# -- outputs and exceptions --------------------------------------------------------------------


class PythonError(Struct):
    """A Python exception, the same in every answer that carries one."""

    ename: Annotated[str, Meta(description="The exception's class, e.g. ZeroDivisionError.")]
    evalue: Annotated[str, Meta(description="The exception's message.")]
    traceback: Annotated[str, Meta(description="The traceback, as plain text.")]


class StreamOutput(Struct, tag_field="output_type", tag="stream"):
    """An nbformat v4 ``stream`` output: text written to stdout or stderr."""

    name: Literal["stdout", "stderr"]
    text: str


class DisplayDataOutput(Struct, tag_field="output_type", tag="display_data"):
    """An nbformat v4 ``display_data`` output (``display(...)``, a plot, HTML)."""

    data: Annotated[dict[str, Any], Meta(description="A MIME bundle: type to content.")]
    metadata: dict[str, Any]
    transient: dict[str, Any] | UnsetType = UNSET


class ExecuteResultOutput(Struct, tag_field="output_type", tag="execute_result"):
    """An nbformat v4 ``execute_result`` output: the value of the code."""

    data: Annotated[dict[str, Any], Meta(description="A MIME bundle: type to content.")]
    metadata: dict[str, Any]
    execution_count: int | None


class ErrorOutput(Struct, tag_field="output_type", tag="error"):
    """An nbformat v4 ``error`` output: the exception the code raised."""

    ename: str
    evalue: str
    traceback: Annotated[list[str], Meta(description="One entry per frame (ANSI colours).")]


Output = StreamOutput | DisplayDataOutput | ExecuteResultOutput | ErrorOutput


# -- answers -----------------------------------------------------------------------------------


class ExecuteAnswer(Struct):
    """What execute, evaluate and execute-file give (``success`` tells whether it raised)."""

    success: bool
    stdout: str
    stderr: str
    result: Annotated[
        Any,
        Meta(
            description="The value (JSON if it has a JSON form; bytes and NumPy arrays in it as "
            "BinaryValue placeholders)."
        ),
    ]
    error: Annotated[str | None, Meta(description="The traceback, if the code raised.")]
    error_type: Literal["python_error"] | None
    exception: PythonError | None
    duration_ms: float
    outputs: list[Output]
    attestations: list[dict[str, Any]]
    truncated: Annotated[bool, Meta(description="Output past the service's limit was dropped.")]
    variables: (
        Annotated[dict[str, Any], Meta(description="With capture_variables: the globals.")]
        | UnsetType
    ) = UNSET


class CallAnswer(Struct):
    """What a backend call gives (``success`` tells whether the method raised)."""

    success: bool
    result: Annotated[
        Any,
        Meta(
            description="The method's value, as JSON; bytes and NumPy arrays in it as "
            "BinaryValue placeholders."
        ),
    ]
    error: str | None
    error_type: Literal["python_error"] | None
    exception: PythonError | None
    duration_ms: float


class Failure(Struct):
    """Every failure answer. A timeout or a dead kernel also carries the output made before
    (stdout, stderr, outputs); a bad request the field it got wrong; a Python error at a
    backend's start the exception; a 409 on an install the conflicting distributions."""

    success: Literal[False]
    error: str
    error_type: ErrorType
    status: Annotated[int, Meta(description="The HTTP status, again.")]
    field: (
        Annotated[str, Meta(description="With bad_request: the field at fault, e.g. env.A.")]
        | UnsetType
    ) = UNSET
    exception: PythonError | UnsetType = UNSET
    restarted: (
        Annotated[bool, Meta(description="With timeout: whether the kernel was replaced.")]
        | UnsetType
    ) = UNSET
    stdout: str | UnsetType = UNSET
    stderr: str | UnsetType = UNSET
    outputs: list[Output] | UnsetType = UNSET
    conflicts: (
        Annotated[
            list[str],
            Meta(description="With conflict: the service's distributions an install would change."),
        ]
        | UnsetType
    ) = UNSET
    reason: (
        Annotated[
            str,
            Meta(
                description="With kernel_died: the limit the kernel ran into, e.g. cpu limit 10 s."
            ),
        ]
        | UnsetType
    ) = UNSET
    retry_after: (
        Annotated[
            float,
            Meta(description="With overloaded: seconds to wait before trying again (Retry-After)."),
        ]
        | UnsetType
    ) = UNSET


class VersionAnswer(Struct):
    python_version: Annotated[str, Meta(description="The kernels' Python version.")]
    plugin_version: Annotated[str, Meta(description="kernel-bridge's version.")]
    kernel_python: Annotated[str, Meta(description="The interpreter of the kernels.")]
    server_python_version: str
    jupyter_server_version: str


class ModulesAnswer(Struct):
    modules: Annotated[dict[str, bool], Meta(description="Module name to importable.")]


class ModuleCheckAnswer(Struct):
    module: str
    available: bool


class LimitsInForce(Struct):
    """What bounds each kernel here, and how (docs/kernels.md#limits)."""

    limits: Annotated[
        dict[str, int | None], Meta(description="The service's limits; null: not limited.")
    ]
    mechanism: Annotated[str, Meta(description="rlimit (or why none, on a gateway).")]
    cgroup_v2: (
        Annotated[
            str, Meta(description="Whether a cgroup v2 of each kernel's own is used, why not.")
        ]
        | UnsetType
    ) = UNSET
    processes: (
        Annotated[str, Meta(description="Whether the process limit binds here (root is exempt).")]
        | UnsetType
    ) = UNSET


class HealthAnswer(Struct):
    status: Literal["ok"]
    version: str
    pool_size: int
    kernels: Annotated[int, Meta(description="Live kernels of the pool.")]
    backends: int
    contexts: int
    waiting: Annotated[int, Meta(description="One-off calls waiting for a pool kernel now.")]
    max_waiting: Annotated[
        int, Meta(description="Calls that may wait; past it, 503 overloaded at once.")
    ]
    limits: LimitsInForce


class InstallAnswer(Struct):
    success: Annotated[bool, Meta(description="Whether the installer succeeded.")]
    installed: list[str]
    installer: Literal["uv", "pip"]
    stdout: str
    stderr: str
    duration_ms: float


class BackendInfo(Struct):
    id: str
    name: Annotated[str, Meta(description="The name it was given, or its class name.")]
    session_id: Annotated[
        str | None,
        Meta(description="Its Jupyter Server session, backends/<name>, which JupyterLab lists."),
    ]
    kernel_id: Annotated[str, Meta(description="The kernel, as /api/kernels lists it.")]
    methods: list[str]
    alive: bool
    state: Annotated[
        Literal["alive", "restarting", "lost", "dead"],
        Meta(
            description="lost: the kernel lives but closed the backend's connection; dead: its "
            "kernel exited and was cleaned up (listed until deleted)."
        ),
    ]


class BackendList(Struct):
    backends: list[BackendInfo]


class Deleted(Struct):
    id: str
    deleted: bool


class ContextInfo(Struct):
    id: str
    name: str
    kernel_id: Annotated[str, Meta(description="Its kernel (a new one after a restart).")]
    created: Annotated[str, Meta(description="ISO 8601, UTC.")]
    last_activity: Annotated[str, Meta(description="When its last call ended.")]
    alive: Annotated[
        bool,
        Meta(
            description="False once its kernel died: calls answer 503 kernel_died until a restart."
        ),
    ]
    busy: Annotated[bool, Meta(description="A call is running or waiting.")]
    cwd: str | None
    session_id: Annotated[
        str | None,
        Meta(description="Its Jupyter Server session, contexts/<name> (null without a server)."),
    ]


class ContextList(Struct):
    contexts: list[ContextInfo]


class BinaryValue(Struct, rename={"part": "__bridge_buffer__"}):
    """A bytes value or NumPy array where a value holds one (docs/http.md, "Binary values"):
    its bytes inline as base64 in JSON, or a part of a ``multipart/mixed`` body."""

    part: Annotated[
        Annotated[int, Meta(ge=0)] | None,
        Meta(
            description="The part of the multipart/mixed body that holds the bytes, 0 being "
            "the first after the JSON; null when they are inline in base64."
        ),
    ]
    kind: Literal["bytes", "ndarray"]
    dtype: (
        Annotated[str, Meta(description="An array's NumPy dtype.str: <f4, |u1, >i4, <c16.")]
        | UnsetType
    ) = UNSET
    shape: Annotated[list[int], Meta(description="An array's shape.")] | UnsetType = UNSET
    base64: (
        Annotated[str, Meta(description="The bytes (an array's elements in C order).")] | UnsetType
    ) = UNSET


class FileInfo(Struct):
    """A file or folder in a context's working folder."""

    name: str
    path: Annotated[str, Meta(description="Relative to the context's working folder.")]
    size: Annotated[int, Meta(ge=0, description="Bytes (0 but for files).")]
    kind: Annotated[
        Literal["file", "directory", "symlink", "other"],
        Meta(description="A symlink is listed, never followed."),
    ]
    modified: Annotated[str, Meta(description="ISO 8601, UTC.")]


class FileList(Struct):
    """``GET /contexts/{id}/files?path=``: a folder's entries, by name (at most 10,000)."""

    path: str
    entries: list[FileInfo]


class FileRemoved(Struct):
    path: str
    removed: bool


# -- the events of the streams (Server-Sent Events) --------------------------------------------


class TextEvent(Struct):
    """``stdout`` and ``stderr`` events of a streamed execution: a chunk of text."""

    text: str


class SkippedEvent(Struct):
    """``event: skipped``: outputs left out of this stream because its reader fell more than
    the stream's backlog (1 MiB of outputs) behind; the stream goes on, and ``end`` has every
    output all the same (up to max_output)."""

    outputs: Annotated[int, Meta(description="How many outputs were left out here.")]
    characters: Annotated[
        int, Meta(description="Their size: stream text, or the JSON of the others.")
    ]


class ExecutionEvents(Struct):
    """The events of a streamed execution (``Accept: text/event-stream``), by SSE event name."""

    stdout: TextEvent
    stderr: TextEvent
    display: DisplayDataOutput
    result: ExecuteResultOutput
    error: ErrorOutput
    skipped: SkippedEvent
    # ExecuteAnswer | Failure (msgspec unions only tagged Structs: said in JSON Schema here).
    end: Annotated[
        Any,
        Meta(
            description="The last event: the whole answer, as the route gives it unstreamed.",
            extra_json_schema={
                "anyOf": [
                    {"$ref": "#/components/schemas/ExecuteAnswer"},
                    {"$ref": "#/components/schemas/Failure"},
                ]
            },
        ),
    ]


class StreamEnd(Struct):
    """The ``end`` of a generator method's stream that ended well."""

    success: Literal[True]
    items: Annotated[int, Meta(description="How many items the method yielded.")]
    duration_ms: float


class CallEvents(Struct):
    """The events of a generator method's call streamed (``Accept: text/event-stream`` on
    ``POST /backends/{id}/call``), by SSE event name."""

    item: Annotated[
        Any,
        Meta(description="One item, as the method yielded it (binary values as BinaryValue)."),
    ]
    end: Annotated[
        Any,
        Meta(
            description="The last event: StreamEnd, or the failure (a CallAnswer of a method "
            "that raised, a Failure such as a timeout) if it failed after the stream opened.",
            extra_json_schema={
                "anyOf": [
                    {"$ref": "#/components/schemas/StreamEnd"},
                    {"$ref": "#/components/schemas/CallAnswer"},
                    {"$ref": "#/components/schemas/Failure"},
                ]
            },
        ),
    ]


class BackendEvent(Struct):
    """One event of ``GET /backends/{id}/events``: ``data: {"type", "data"}``, ``id:`` its
    number."""

    type: Annotated[str, Meta(description="send_event's name, or stdout, stderr, exit, restart.")]
    data: Any


class OverflowEvent(Struct):
    """``event: overflow``: the stream fell behind the kept log and ends; reconnect with
    ``Last-Event-ID``."""

    last_event_id: int


class BackendEvents(Struct):
    """The events of a backend's stream, by SSE event name (``message`` is the default)."""

    message: BackendEvent
    overflow: OverflowEvent
    end: Annotated[dict[str, Any], Meta(description="The backend is gone: {}.")]


# -- decoding ----------------------------------------------------------------------------------

R = TypeVar("R", bound=Request)


@cache
def _decoder(model: type[R]) -> msgspec.json.Decoder[R]:
    return msgspec.json.Decoder(model)


_AT = re.compile(r"^(.*?)(?: - at `(.*)`)?$", re.DOTALL)


def _where(path: str) -> str:
    """``$.env[...]`` -> ``env``; ``key`` in ``$.env`` -> ``env``."""
    if " in " in path:
        path = path.rpartition(" in ")[2].strip("`")
    return re.sub(r"\[.*?\]", "", path.removeprefix("$").lstrip(".")) or "body"


def _field_named(text: str) -> str | None:
    named = re.search(r"field `([^`]*)`", text)
    return named.group(1) if named else None


MAX_DEPTH = 64  # nesting levels a request body may have: JSON for a kernel, not a stack test
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


def _check_depth(body: bytes) -> None:
    """Refuse JSON nested past MAX_DEPTH (brackets inside strings skipped). Only a body with
    that many brackets at all is read byte by byte."""
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:
        return
    depth = 0
    in_string = escaped = False
    for char in body.decode("utf-8", "replace"):
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
                raise bad_request(
                    f"the body is nested more than {MAX_DEPTH} levels deep", field="body"
                )
        elif char in "]}":
            depth -= 1


def decode(model: type[R], body: bytes) -> R:
    """*body* as a *model*, validated; ``bad_request`` naming the field if it is not one."""
    _check_depth(body)
    try:
        decoded: R = _decoder(model).decode(body)
        return decoded
    except msgspec.ValidationError as exc:
        match = _AT.match(str(exc))
        assert match is not None
        text, at = match.group(1), match.group(2)
        where = _where(at) if at else None
        named = _field_named(text)
        if named is not None:  # a missing or unknown field
            where = f"{where}.{named}" if where and where != "body" else named
        raise bad_request(f"{where or 'body'}: {text}", field=where or "body") from None
    except msgspec.DecodeError as exc:
        why = str(exc)
        if _SURROGATE.search(body):  # valid JSON, but no text a kernel can take
            why = "a lone surrogate (\\ud800-\\udfff) is not text"
        raise bad_request(f"the body is not JSON: {why}", field="body") from None
    except RecursionError:
        raise bad_request("the body is nested too deeply", field="body") from None


# The service's JSON encoder: what JSON cannot hold is written as its ``str()``.
ENCODER = msgspec.json.Encoder(enc_hook=str)


def encode(body: Any) -> bytes:
    """An answer (a Struct, or plain JSON values) as the service writes it."""
    return ENCODER.encode(inline(body))


def inline(body: Any) -> Any:
    """*body* with a value that holds bytes or arrays (its ``result``, an ``Encoded``) in its
    JSON form: BinaryValue placeholders with the bytes in base64."""
    if isinstance(body, Encoded):
        return body.inline()
    result = getattr(body, "result", None)
    if isinstance(body, Struct) and isinstance(result, Encoded):
        return msgspec.structs.replace(body, result=result.inline())
    return body


def split(body: Any) -> tuple[Any, list[Any]]:
    """*body* with its binary value's placeholders naming parts, and the parts: a
    ``multipart/mixed`` answer's JSON and buffers (no buffers: it has no binary value)."""
    result = getattr(body, "result", None)
    if isinstance(body, Struct) and isinstance(result, Encoded):
        return msgspec.structs.replace(body, result=result.value), list(result.buffers)
    return body, []
