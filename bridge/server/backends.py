"""Backends the service runs for its hosts: the script's file, the methods, the event log,
the Jupyter Server session that shows it in JupyterLab.

Each backend's events go into a log of the last EVENT_LOG events, numbered; an event stream
(``GET /backends/{id}/events``) reads from it. A stream replays what no stream has read yet,
as the host API replays events to their first handler, or, when an EventSource reconnects
with ``Last-Event-ID``, everything after that id that is still kept.

Each backend is the session ``backends/<name>`` on its kernel (sessions.py) from its start to
its end; a kernel that dies takes its session along, and a restarted one gets a new session.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from bridge import AsyncBackend

from .sessions import Sessions

log = logging.getLogger("bridge.server")

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

    def __init__(
        self,
        backend: AsyncBackend,
        script_dir: str,
        methods: list[str],
        *,
        sessions: Sessions | None = None,
    ) -> None:
        self.id = uuid.uuid4().hex
        self.backend = backend
        self.script_dir = script_dir
        self.methods = methods
        self.sessions = sessions or Sessions()
        self.session_id: str | None = None
        self._session_tasks: set[asyncio.Future[None]] = set()
        self._ending = False
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

    @property
    def name(self) -> str:
        return self.backend.name

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "session_id": self.session_id,
            "kernel_id": self.backend.kernel_id,
            "methods": self.methods,
            "alive": self.backend.alive,
        }

    # -- events ----------------------------------------------------------------------------------

    def _on_event(self, event: str, data: Any) -> None:
        if event == "exit" and not self.backend.kernel.alive:
            self._in_background(self._end_session())  # a restart, if any, opens a new one
        elif event == "restart" and isinstance(data, dict) and data.get("ok"):
            self._in_background(self.open_session())
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

    # -- the session -----------------------------------------------------------------------------

    async def open_session(self) -> None:
        """Show the backend's (current) kernel in JupyterLab as ``backends/<name>``."""
        await self._end_session()
        if self._ending or self.backend.terminated or not self.backend.kernel.alive:
            return
        try:
            self.session_id = await self.sessions.register(
                self.backend.kernel_id, f"backends/{self.name}"
            )
        except Exception:  # the backend works; only JupyterLab's listing lacks it
            log.exception("no Jupyter Server session for backend %s", self.id)

    async def _end_session(self) -> None:
        session_id, self.session_id = self.session_id, None
        await self.sessions.unregister(session_id)

    def _in_background(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._session_tasks.add(task)
        task.add_done_callback(self._session_tasks.discard)

    # -- end -------------------------------------------------------------------------------------

    async def terminate(self) -> None:
        self._unsubscribe()
        # The session goes first: JupyterLab never lists a kernel on its way out.
        self._ending = True
        try:
            await asyncio.gather(*self._session_tasks, return_exceptions=True)
            await self._end_session()
        except Exception:  # the kernel must go all the same
            log.exception("could not end the session of backend %s", self.id)
        try:
            await self.backend.terminate()
        finally:
            for queue in self._streams:
                queue.put_nowait(END)
            self._streams.clear()
            with contextlib.suppress(OSError):
                shutil.rmtree(self.script_dir)
