"""Backends the service runs for its hosts: the script's file, the methods, the event log,
the Jupyter Server session that shows it in JupyterLab.

Each backend's events go into a log of the last EVENT_LOG events (and EVENT_LOG_BYTES at
most), numbered; an event stream (``GET /backends/{id}/events``) is a cursor into that log and
holds no copy of its own, so a client that stops reading costs the service nothing beyond the
log's bound. Events an open stream has not been sent yet stay past EVENT_LOG while the log
holds less than UNSENT_BYTES: one batch of the kernel's events can hold more than EVENT_LOG,
and a reader that keeps up must not lose them before its turn comes. A stream replays what no
stream has read yet, as the host API replays events to their first handler,
or, when an EventSource reconnects with ``Last-Event-ID``, everything after that id that is
still kept. A stream that falls so far behind that the log dropped events it had not sent
has *overflowed*: it says so and ends, and the client resumes from the kept history.

Each backend is the session ``backends/<name>`` on its kernel (sessions.py) from its start to
its end; a kernel that dies takes its session along, and a restarted one gets a new session.

A backend whose kernel died for good (no ``restart``, or its restarts failed) is cleaned up at
once: its session ended, its kernel shut down, its files removed, its slot freed; it stays
listed as dead until it is deleted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Literal

from bridge import AsyncBackend

from . import metrics
from . import models as m
from .sessions import NoSessions, SessionRegistry

log = logging.getLogger("bridge.server")

EVENT_LOG = 1000  # events kept per backend for streams that open later
EVENT_LOG_BYTES = 4 * 1024 * 1024  # and their JSON's size at most
UNSENT_BYTES = 1024 * 1024  # past EVENT_LOG, events an open stream was not sent, up to this


class EventStream:
    """One reader of a backend's event log: where it is, and a wake-up when there is more."""

    def __init__(self, cursor: int) -> None:
        self.cursor = cursor  # the last event id sent
        self.wake = asyncio.Event()
        self.ended = False  # the backend is gone: nothing more will come


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
        sessions: SessionRegistry | None = None,
    ) -> None:
        self.id = uuid.uuid4().hex
        self.backend = backend
        self.script_dir = script_dir
        self.methods = methods
        self.sessions: SessionRegistry = sessions or NoSessions()
        self.session_id: str | None = None
        self._session_tasks: set[asyncio.Future[None]] = set()
        self._ending = False
        self.dead = False  # its kernel died for good and was cleaned up; listed until deleted
        self._log: collections.deque[tuple[int, str]] = collections.deque()
        self._log_bytes = 0
        self._seq = 0
        self._read_upto = 0  # the last event a stream has been given
        self._streams: set[EventStream] = set()
        self._reaping: asyncio.Future[None] | None = None
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

    @property
    def gone(self) -> bool:
        """Dead, or being cleaned up because its kernel died for good."""
        return self.dead or self._reaping is not None

    @property
    def state(self) -> Literal["alive", "restarting", "lost", "dead"]:
        """alive, restarting, lost (its kernel lives but closed the connection), or dead."""
        if self.gone:
            return "dead"
        if self.backend.alive:
            return "alive"
        if self.backend.kernel.alive:
            return "lost"
        return "restarting" if self.backend.restart_on_exit else "dead"

    def info(self) -> m.BackendInfo:
        return m.BackendInfo(
            id=self.id,
            name=self.name,
            session_id=self.session_id,
            kernel_id=self.backend.kernel_id,
            methods=self.methods,
            alive=self.backend.alive and not self.gone,
            state=self.state,
        )

    # -- events ----------------------------------------------------------------------------------

    def _on_event(self, event: str, data: Any) -> None:
        if event == "exit" and not self.backend.kernel.alive:
            self._in_background(self._end_session())  # a restart, if any, opens a new one
        elif event == "restart" and isinstance(data, dict) and data.get("ok"):
            self._in_background(self.open_session())
        self._seq += 1
        metrics.EVENTS.inc()
        item = (self._seq, m.encode(m.BackendEvent(event, to_json(data))).decode())
        self._log.append(item)
        self._log_bytes += len(item[1])
        self._trim()
        for stream in self._streams:
            stream.wake.set()
        if self._streams:
            self._read_upto = self._seq
        if event == "exit" and not data.get("restarting") and not self.backend.kernel.alive:
            self._reap("its kernel died")
        elif event == "restart" and not data.get("ok"):
            self._reap("its restart failed")

    def _trim(self) -> None:
        """Drop the oldest events past EVENT_LOG_BYTES; past EVENT_LOG, those every open
        stream has been sent, and the others too once the log holds UNSENT_BYTES."""
        log = self._log
        while self._log_bytes > EVENT_LOG_BYTES and len(log) > 1:
            self._log_bytes -= len(log.popleft()[1])
        if len(log) <= EVENT_LOG:
            return
        sent = min((stream.cursor for stream in self._streams), default=self._seq)
        while len(log) > EVENT_LOG and (log[0][0] <= sent or self._log_bytes > UNSENT_BYTES):
            self._log_bytes -= len(log.popleft()[1])

    def subscribe(self, last_event_id: int | None) -> EventStream:
        """A cursor into the log for one stream; the replay starts after *last_event_id*."""
        after = self._read_upto if last_event_id is None else min(last_event_id, self._seq)
        oldest = self._log[0][0] if self._log else self._seq + 1
        stream = EventStream(max(after, oldest - 1))  # what was dropped before is not missed
        stream.ended = self.dead or self.backend.terminated
        self._read_upto = self._seq
        self._streams.add(stream)
        return stream

    def unsubscribe(self, stream: EventStream) -> None:
        self._streams.discard(stream)
        self._trim()

    def pending(self, stream: EventStream, limit: int) -> tuple[list[tuple[int, str]], bool]:
        """(events after the stream's cursor, up to *limit* bytes; whether it overflowed).

        A stream overflowed when the log dropped an event it had not sent."""
        stream.wake.clear()
        self._trim()  # what this stream was sent last time may go now
        if not self._log or stream.cursor >= self._seq:
            return [], False
        oldest = self._log[0][0]
        if stream.cursor + 1 < oldest:
            return [], True
        batch: list[tuple[int, str]] = []
        size = 0
        for item in itertools.islice(self._log, stream.cursor + 1 - oldest, None):
            batch.append(item)
            size += len(item[1])
            if size >= limit:
                stream.wake.set()  # more is waiting
                break
        return batch, False

    def missed(self, stream: EventStream) -> int:
        """Events the log dropped before *stream* was sent them."""
        return max(0, self._log[0][0] - stream.cursor - 1) if self._log else 0

    def overflowed(self, stream: EventStream) -> bool:
        """The log dropped an event *stream* had not sent."""
        return bool(self._log) and stream.cursor + 1 < self._log[0][0]

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

    def _reap(self, why: str) -> None:
        """Clean a backend whose kernel is gone for good up now, not at DELETE."""
        if self._reaping is None and not self.backend.terminated:
            log.info("backend %s is dead (%s): cleaning it up", self.id, why)
            self._reaping = asyncio.ensure_future(self._clean_up())

    async def _clean_up(self) -> None:
        try:
            await self._close()
        except Exception:
            log.exception("backend %s: cleaning up failed", self.id)
        self.dead = True

    async def _close(self) -> None:
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
            for stream in self._streams:
                stream.ended = True
                stream.wake.set()
            self._streams.clear()
            with contextlib.suppress(OSError):
                shutil.rmtree(self.script_dir)

    async def terminate(self) -> None:
        if self._reaping is not None:
            await asyncio.shield(self._reaping)
            return
        await self._close()
