"""Contexts: sessions over HTTP. A context is an AsyncSession the service keeps under an id.

Each has a kernel of its own (a Jupyter Server kernel, listed at ``/api/kernels``), a name
(reserved by the service from the moment it is asked for), a lock that runs its calls one at a
time and an owner lock that runs its restarts and its deletion one at a time; the service
(service.py) creates, restarts, culls and deletes them, all in one place.
"""

from __future__ import annotations

import asyncio
import datetime
import time
import uuid

from bridge import AsyncSession, BridgeClosed

from . import models as m


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


class HostedContext:
    """A session and what the service keeps beside it: id, name, times, its call lock."""

    def __init__(
        self, session: AsyncSession, *, name: str | None, timeout: float | None, cwd: str | None
    ) -> None:
        self.id = uuid.uuid4().hex
        self.name = name or f"context-{self.id[:8]}"
        self.session = session
        self.timeout = timeout  # the default of its calls, if the request gave one
        self.cwd = cwd
        self.created = _now()
        self.last_activity = self.created
        self._idle_since = time.monotonic()
        self.calls = 0  # running or waiting: a context with calls is never idle
        self.lock = asyncio.Lock()  # its calls, one at a time
        # Its owner: restarts and its deletion, one at a time (a deletion waits for a restart
        # under way, never cuts it in half); calls made during a restart wait for its kernel.
        self.owner = asyncio.Lock()
        self.deleted = False
        self.session_id: str | None = None  # its Jupyter Server session, what JupyterLab lists

    @property
    def session_name(self) -> str:
        return f"contexts/{self.name}"

    def touch(self) -> None:
        self.last_activity = _now()
        self._idle_since = time.monotonic()

    def idle_for(self) -> float:
        """Seconds since its last call ended (0 while one runs)."""
        return 0.0 if self.calls else time.monotonic() - self._idle_since

    def info(self) -> m.ContextInfo:
        try:
            kernel_id = self.session.kernel_id
        except BridgeClosed:  # closed, or between kernels (a restart that failed)
            kernel_id = ""
        return m.ContextInfo(
            id=self.id,
            name=self.name,
            kernel_id=kernel_id,
            created=self.created,
            last_activity=self.last_activity,
            alive=self.session.alive,
            busy=self.calls > 0,
            cwd=self.cwd,
            session_id=self.session_id,
        )
