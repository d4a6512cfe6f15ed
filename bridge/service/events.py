"""The events of the streams, once for every transport: HTTP's Server-Sent Events and the QNTX
plugin's websocket frames carry the same names and the same data (models.ExecutionEvents,
models.BackendEvents).
"""

from __future__ import annotations

from typing import Any

from .errors import bad_request

# The event each nbformat output type is streamed as (docs/http.md, "Output as it happens").
_EVENTS = {"display_data": "display", "execute_result": "result", "error": "error"}


def output_event(output: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(event name, data) of one output: stdout/stderr ``{"text"}``; display, result and
    error the nbformat output itself."""
    kind = output.get("output_type", "")
    if kind == "stream":
        name = "stderr" if output.get("name") == "stderr" else "stdout"
        return name, {"text": output.get("text", "")}
    return _EVENTS.get(kind, kind), output


def event_id(text: str | None) -> int | None:
    """A Last-Event-ID as a number; 400 for anything but a short run of digits."""
    if text is None:
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise bad_request(
            "Last-Event-ID must be an event number (at most 18 digits)", field="last_event_id"
        )
    return int(text)
