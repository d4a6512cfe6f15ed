"""Backends the service runs for its hosts: the script's file, the methods, the event log.

Each backend's events go into a log of the last EVENT_LOG events, numbered; an event stream
(``GET /backends/{id}/events``) reads from it. A stream replays what no stream has read yet,
as the host API replays events to their first handler, or, when an EventSource reconnects
with ``Last-Event-ID``, everything after that id that is still kept.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from bridge import AsyncBackend

EVENT_LOG = 1000  # events kept per backend for streams that open later
END = None  # what a stream's queue receives when the backend is gone


def to_json(value: Any) -> Any:
    """A backend's value as JSON: binary parts (bytes, arrays) as base64 placeholders."""
    try:
        return AsyncBackend.to_json(value)
    except (TypeError, ValueError):
        return repr(value)


class HostedBackend:
    """A backend and what the service keeps beside it."""

    def __init__(self, backend: AsyncBackend, script_dir: str, methods: list[str]) -> None:
        self.id = uuid.uuid4().hex
        self.backend = backend
        self.script_dir = script_dir
        self.methods = methods
        self._log: collections.deque[tuple[int, str]] = collections.deque(maxlen=EVENT_LOG)
        self._seq = 0
        self._read_upto = 0  # the last event a stream has been given
        self._streams: set[asyncio.Queue[tuple[int, str] | None]] = set()
        self._unsubscribe = backend.on_any(self._on_event)

    @staticmethod
    def write_script(source: str) -> tuple[str, str]:
        """(folder, path) of a private copy of *source*, so tracebacks name a file."""
        folder = tempfile.mkdtemp(prefix="kernel-bridge-backend-")
        path = Path(folder) / "backend.py"
        path.write_text(source, encoding="utf-8")
        return folder, str(path)

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kernel_id": self.backend.kernel_id,
            "methods": self.methods,
            "alive": self.backend.alive,
        }

    # -- events ----------------------------------------------------------------------------------

    def _on_event(self, event: str, data: Any) -> None:
        self._seq += 1
        item = (self._seq, json.dumps({"type": event, "data": to_json(data)}))
        self._log.append(item)
        for queue in self._streams:
            queue.put_nowait(item)
        if self._streams:
            self._read_upto = self._seq

    def subscribe(self, last_event_id: int | None) -> asyncio.Queue[tuple[int, str] | None]:
        """A queue of (id, JSON) events for one stream, starting with the replay."""
        queue: asyncio.Queue[tuple[int, str] | None] = asyncio.Queue()
        after = self._read_upto if last_event_id is None else last_event_id
        for item in self._log:
            if item[0] > after:
                queue.put_nowait(item)
        self._read_upto = self._seq
        self._streams.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[tuple[int, str] | None]) -> None:
        self._streams.discard(queue)

    # -- end -------------------------------------------------------------------------------------

    async def terminate(self) -> None:
        self._unsubscribe()
        try:
            await self.backend.terminate()
        finally:
            for queue in self._streams:
                queue.put_nowait(END)
            self._streams.clear()
            with contextlib.suppress(OSError):
                shutil.rmtree(self.script_dir)
