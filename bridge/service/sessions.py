"""What the service needs of a front end's session listing: register a kernel under a name,
unregister it. The HTTP front end gives Jupyter Server's sessions (bridge/server/sessions.py),
so JupyterLab lists every backend and context; other front ends list nothing (``NoSessions``).
"""

from __future__ import annotations

from typing import Protocol


class SessionRegistry(Protocol):
    """Where the service's backends and contexts are listed by name."""

    async def register(self, kernel_id: str, name: str) -> str | None:
        """List *kernel_id* as *name*; the listing's id (None: not listed)."""
        ...

    async def unregister(self, session_id: str | None) -> None:
        """End the listing *session_id* (None or gone: nothing to do); never the kernel."""
        ...


class NoSessions:
    """A front end without a session listing (the QNTX plugin): every method does nothing."""

    async def register(self, kernel_id: str, name: str) -> str | None:
        return None

    async def unregister(self, session_id: str | None) -> None:
        return None
