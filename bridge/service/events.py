"""The events of the streams, once for every transport: HTTP's Server-Sent Events and the QNTX
plugin's websocket frames carry the same names and the same data (models.ExecutionEvents,
models.BackendEvents).
"""

from __future__ import annotations

import asyncio
import collections
import json
from typing import Any

from . import models as m
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


class OutputBacklog:
    """The outputs of one streamed call made and not yet sent: at most *limit* characters,
    whatever the reader does (the ``on_output`` of an HTTP event stream or a websocket run).

    An output that does not fit is left out of the stream and counted; once one is left out,
    so is everything until the writer next takes the backlog, which then ends with one
    ``skipped`` event (``{"outputs": n, "characters": c}``, models.SkippedEvent) after the
    outputs kept before it. The call's answer (the ``end`` event) has every output all the
    same, up to ``max_output``: a reader that stalls costs the service *limit*, not what the
    code prints. An output bigger than *limit* still goes when nothing waits before it.
    """

    LIMIT = 1024 * 1024
    OVERHEAD = 256  # characters counted per output on top of its own: its dict and strings

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self._items: collections.deque[dict[str, Any]] = collections.deque()
        self._size = 0
        self._skipped = 0
        self._skipped_characters = 0
        self._ready = asyncio.Event()

    def put(self, output: dict[str, Any]) -> None:
        """Keep *output* for the writer, or count it as skipped (never blocks)."""
        text = output.get("text") if output.get("output_type") == "stream" else None
        size = len(text) if isinstance(text, str) else _json_size(output)
        self._ready.set()
        if self._skipped or (self._items and self._size + self.OVERHEAD + size > self.limit):
            self._skipped += 1
            self._skipped_characters += size
            return
        self._items.append(output)
        self._size += self.OVERHEAD + size

    @property
    def pending(self) -> bool:
        return bool(self._items) or self._skipped > 0

    async def wait(self) -> None:
        """Until something is pending."""
        await self._ready.wait()

    def drain(self) -> list[tuple[str, Any]]:
        """The events to send now: the kept outputs, then ``skipped`` if any were left out."""
        events: list[tuple[str, Any]] = [output_event(output) for output in self._items]
        if self._skipped:
            skipped = m.SkippedEvent(self._skipped, self._skipped_characters)
            events.append(("skipped", skipped))
        self._items.clear()
        self._size = self._skipped = self._skipped_characters = 0
        self._ready.clear()
        return events


def _json_size(output: dict[str, Any]) -> int:
    try:
        return len(json.dumps(output, default=str))
    except (TypeError, ValueError):
        return 0
