"""What a call gives back (ExecutionResult) and how IOPub messages become it (OutputCollector)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridge.core import wire
from bridge.core.errors import ExecutionError

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
DEFAULT_MAX_OUTPUT = 10_000_000

log = logging.getLogger("bridge.kernel")

OutputListener = Callable[[dict[str, Any]], None]


def strip_ansi(text: str) -> str:
    """Remove terminal colour codes: ``strip_ansi("\\x1b[31mred\\x1b[0m") == "red"``."""
    return _ANSI.sub("", text)


@dataclass(frozen=True)
class ErrorInfo:
    """A Python error raised by executed code; ``traceback`` is plain text without colour."""

    ename: str
    evalue: str
    traceback: str

    @classmethod
    def from_content(cls, content: dict[str, Any]) -> ErrorInfo:
        ename = str(content.get("ename", "Error"))
        evalue = str(content.get("evalue", ""))
        lines = content.get("traceback") or []
        text = strip_ansi("\n".join(str(line) for line in lines))
        return cls(ename=ename, evalue=evalue, traceback=text or f"{ename}: {evalue}")

    def __str__(self) -> str:
        return self.traceback


@dataclass
class ExecutionResult:
    """The outcome of one execute, evaluate or execute_file.

    >>> r = bridge.Bridge().execute("print('hi')\\nreturn 6 * 7")   # doctest: +SKIP
    >>> (r.success, r.value, r.stdout)                              # doctest: +SKIP
    (True, 42, 'hi\\n')
    """

    success: bool
    value: Any = None
    data: dict[str, Any] = field(default_factory=dict)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    stdout: str = ""
    stderr: str = ""
    error: ErrorInfo | None = None
    duration_ms: float = 0.0
    variables: dict[str, Any] | None = None
    attestations: list[dict[str, Any]] = field(default_factory=list)
    truncated: bool = False
    code: str = field(default="", repr=False)

    def raise_for_error(self) -> ExecutionResult:
        """Raise ``bridge.ExecutionError`` if the code failed; return self otherwise."""
        if not self.success:
            raise ExecutionError(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of the HTTP service: ``success, stdout, stderr, result, error, ...``."""
        return {
            "success": self.success,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "result": self.value,
            "error": None if self.error is None else self.error.traceback,
            "duration_ms": self.duration_ms,
            "outputs": self.outputs,
            "variables": self.variables,
            "attestations": self.attestations,
            "truncated": self.truncated,
        }


def _size(data: Any) -> int:
    if isinstance(data, str):
        return len(data)
    if isinstance(data, dict):
        return sum(len(str(k)) + _size(v) for k, v in data.items())
    return len(json.dumps(data, default=str))


def _output_size(content: dict[str, Any]) -> int:
    """What a display or result costs against the cap: its data and its metadata."""
    return _size(content.get("data") or {}) + _size(content.get("metadata") or {})


class OutputCollector:
    """Builds nbformat v4 outputs from the IOPub messages of one request, in arrival order.

    Consecutive stream messages of one name merge into one output (as notebook front ends show
    them); ``clear_output`` and ``update_display_data`` behave as in nbclient. Everything a call
    sends back counts against *max_output* characters: streams, display data and metadata,
    display updates, results shown by the displayhook, attestations, captured variables. Past
    it, output is dropped after a marker and ``truncated`` is set; the value (the last result,
    whether it came on IOPub or in the reply) and the error are always kept.

    *on_output* hears each output as it is added, in order: a stream output per chunk of text
    (``{"output_type": "stream", "name", "text": chunk}``; the result merges the chunks), the
    others whole. It sees what the result keeps (nothing past the cap but the marker; a result
    superseded by a later one is heard, and then dropped from the result if it does not fit),
    and never ``update_display_data`` or ``clear_output``, which change outputs already heard.
    """

    def __init__(
        self, *, max_output: int = DEFAULT_MAX_OUTPUT, on_output: OutputListener | None = None
    ) -> None:
        self.max_output = max_output
        self.on_output = on_output
        self.size = 0
        self.truncated = False
        self.outputs: list[dict[str, Any]] = []
        self._chunks: dict[int, list[str]] = {}  # id(stream output) -> its text pieces
        self._streams: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._display_ids: dict[str, list[dict[str, Any]]] = {}
        self._clear_pending = False
        self._value_output: dict[str, Any] | None = None  # the last result's output
        self.value_data: dict[str, Any] | None = None
        self.binary: tuple[Any] | None = None  # (the value,) when it holds bytes or arrays
        self.variables: dict[str, Any] | None = None
        self.attestations: list[dict[str, Any]] = []

    # -- intake --------------------------------------------------------------------------------

    def add(self, msg_type: str, content: dict[str, Any]) -> None:
        handler = getattr(self, f"_on_{msg_type}", None)
        if handler is not None:
            handler(content)

    def _admit(self, size: int) -> int:
        """How much of *size* characters still fits under the cap (all of it, or what is left)."""
        if self.truncated:
            return 0
        room = self.max_output - self.size
        taken = min(size, max(room, 0))
        self.size += taken
        return taken

    def _cut(self, stream: str) -> None:
        self.truncated = True
        marker = f"\n[kernel-bridge: output truncated at {self.max_output} characters]\n"
        self._append_stream(stream, marker)

    def _flush_clear(self) -> None:
        if self._clear_pending:
            self._clear_pending = False
            self._clear()

    def _clear(self) -> None:
        self._value_output = None
        self.outputs.clear()
        self._chunks.clear()
        self._display_ids.clear()

    def _emit(self, output: dict[str, Any]) -> None:
        if self.on_output is not None:
            try:
                self.on_output(output)
            except Exception:  # a listener's bug must not cost the call its output
                log.exception("an on_output callback failed")

    def _append_stream(self, name: str, text: str) -> None:
        self._streams.setdefault(name, []).append(text)
        last = self.outputs[-1] if self.outputs else None
        if last is not None and last["output_type"] == "stream" and last["name"] == name:
            self._chunks[id(last)].append(text)
        else:
            output: dict[str, Any] = {"output_type": "stream", "name": name, "text": ""}
            self.outputs.append(output)
            self._chunks[id(output)] = [text]
        self._emit({"output_type": "stream", "name": name, "text": text})

    def _on_stream(self, content: dict[str, Any]) -> None:
        self._flush_clear()
        name, text = str(content.get("name", "stdout")), str(content.get("text", ""))
        if self.truncated:
            return
        taken = self._admit(len(text))
        if taken:
            self._append_stream(name, text[:taken])
        if taken < len(text):
            self._cut(name)

    def _fits(self, size: int) -> bool:
        """Admit *size* characters whole, or cut (once) and say no."""
        if self.truncated:
            return False
        if self._admit(size) < size:
            self._cut("stderr")
            return False
        return True

    def _on_display_data(self, content: dict[str, Any]) -> None:
        self._flush_clear()
        if not self._fits(_output_size(content)):  # a display is kept whole or not at all
            return
        output = {
            "output_type": "display_data",
            "data": content.get("data") or {},
            "metadata": content.get("metadata") or {},
        }
        self.outputs.append(output)
        self._emit(dict(output))
        display_id = (content.get("transient") or {}).get("display_id")
        if display_id:
            self._display_ids.setdefault(display_id, []).append(output)

    def _on_update_display_data(self, content: dict[str, Any]) -> None:
        display_id = (content.get("transient") or {}).get("display_id")
        new = _output_size(content)
        for output in self._display_ids.get(display_id or "", []):
            grows = new - _output_size(output)
            if grows > 0 and not self._fits(grows):
                return  # the display keeps what it showed before
            if grows < 0:
                self.size += grows
            output["data"] = content.get("data") or {}
            output["metadata"] = content.get("metadata") or {}

    def _on_execute_result(self, content: dict[str, Any]) -> None:
        """The last result is the value: kept whatever the limit. One shown before it (a
        displayhook call) is ordinary output from then on, and counts."""
        self._flush_clear()
        previous = self._value_output
        if previous is not None and not self._fits(_output_size(previous)):
            for i in range(len(self.outputs) - 1, -1, -1):
                if self.outputs[i] is previous:
                    del self.outputs[i]
                    break
        data = content.get("data") or {}
        self.value_data = data
        self._value_output = {
            "output_type": "execute_result",
            "data": data,
            "metadata": content.get("metadata") or {},
            "execution_count": content.get("execution_count"),
        }
        self.outputs.append(self._value_output)
        self._emit(dict(self._value_output))

    def _on_error(self, content: dict[str, Any]) -> None:
        self._flush_clear()
        output = {
            "output_type": "error",
            "ename": content.get("ename", ""),
            "evalue": content.get("evalue", ""),
            "traceback": list(content.get("traceback") or []),
        }
        self.outputs.append(output)
        self._emit(dict(output))

    def _on_clear_output(self, content: dict[str, Any]) -> None:
        if content.get("wait"):
            self._clear_pending = True
        else:
            self._clear()

    def set_binary(self, value: Any, buffers: list[Any]) -> None:
        """The value itself, when it holds bytes or NumPy arrays (sent beside its MIME bundle,
        whose text/plain repr stays the value if it cannot be read here: no NumPy, say)."""
        try:
            self.binary = (wire.codec.decode(value, buffers),)
        except (TypeError, ValueError):
            self.binary = None

    def add_record(self, data: dict[str, Any]) -> dict[str, Any] | None:
        """File a record the kernel-side runtime sent on the bridge comm; return an attestation."""
        kind = data.get("kind")
        if kind == wire.ATTESTATION and isinstance(data.get("record"), dict):
            # The host's on_attest hook sees every record; the result keeps those that fit.
            if self._fits(_size(data["record"])):
                self.attestations.append(data["record"])
            return dict(data["record"])
        if kind == wire.VARIABLES and isinstance(data.get("variables"), dict):
            variables = data["variables"]
            self.variables = variables if self._fits(_size(variables)) else {}
        return None

    # -- result --------------------------------------------------------------------------------

    def stream_text(self, name: str) -> str:
        return "".join(self._streams.get(name, ()))

    def result(
        self,
        *,
        code: str,
        reply: dict[str, Any] | None,
        duration_ms: float,
        capture_variables: bool = False,
    ) -> ExecutionResult:
        for output in self.outputs:
            chunks = self._chunks.get(id(output))
            if chunks is not None:
                output["text"] = "".join(chunks)
        content = reply or {}
        success = content.get("status") == "ok"
        error = None
        if not success:
            if content.get("status") == "error":
                error = ErrorInfo.from_content(content)
            else:
                error = ErrorInfo("KernelError", str(content.get("status", "no reply")), "")
        value: Any = None
        data = self.value_data or {}
        if self.binary is not None:
            value = self.binary[0]
        elif "application/json" in data:
            value = data["application/json"]
        elif "text/plain" in data:
            value = data["text/plain"]
        return ExecutionResult(
            success=success,
            value=value,
            data=data,
            outputs=self.outputs,
            stdout=self.stream_text("stdout"),
            stderr=self.stream_text("stderr"),
            error=error,
            duration_ms=round(duration_ms, 3),
            variables=(self.variables if self.variables is not None else {})
            if capture_variables
            else None,
            attestations=self.attestations,
            truncated=self.truncated,
            code=code,
        )
