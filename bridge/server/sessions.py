"""The service's kernels as Jupyter Server sessions, so that JupyterLab lists them by name.

Every backend (``backends/echo_backend.py``) and every context (``contexts/<name>``) is one
session of type ``console`` on its own kernel, in the server's sessions API
(``/api/sessions``): JupyterLab's *Running Terminals and Kernels* panel shows it under its
name, and clicking it opens a console attached to the live kernel. The pool's kernels get no
session: they serve one-off calls and are no one's to look into.

A session ends when what it names ends, but never by ``SessionManager.delete_session()``:
that shuts the kernel down through the server, and the kernel is its owner's to stop (with its
process group, its watchdog, its gateway). Only the session's row goes, as Jupyter Server
itself removes the session of a kernel that died (``SessionManager.row_to_model``).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("bridge.server")

SESSION_TYPE = "console"  # JupyterLab opens a console for it, attached to the kernel


class Sessions:
    """Sessions for the kernels the service runs for someone, on Jupyter Server's manager
    (the service layer's ``SessionRegistry``). With no session manager, every method does
    nothing.

    >>> sessions = Sessions(serverapp.session_manager)  # doctest: +SKIP
    >>> sid = await sessions.register(backend.kernel_id, "backends/echo_backend.py")
    >>> await sessions.unregister(sid)
    """

    def __init__(self, session_manager: Any = None) -> None:
        self.manager = session_manager

    async def register(self, kernel_id: str, name: str) -> str | None:
        """Make *kernel_id* a session called *name*; returns its id (None without a server).

        The session's path (how JupyterLab finds it when it opens its console) is *name*,
        made unique with a `` (2)``, `` (3)``... suffix when taken.
        """
        manager = self.manager
        if manager is None:
            return None
        base = name
        path = base
        n = 1
        while await manager.session_exists(path):
            n += 1
            path = f"{base} ({n})"
        # create_session() starts a kernel for an id the server does not know: never that.
        # The check and the call are in one step of the loop, nothing runs between them.
        if kernel_id not in manager.kernel_manager:
            log.warning("no session for %s: the server does not list kernel %s", name, kernel_id)
            return None
        model = await manager.create_session(
            path=path, name=name, type=SESSION_TYPE, kernel_id=kernel_id
        )
        session_id = str(model["id"])
        log.debug("session %s: %s on kernel %s", session_id, name, kernel_id)
        return session_id

    async def unregister(self, session_id: str | None) -> None:
        """End the session *session_id* (None, or one already gone: nothing to do); the
        kernel is left alone, for its owner to stop."""
        if self.manager is None or session_id is None:
            return
        self.manager.cursor.execute("DELETE FROM session WHERE session_id=?", (session_id,))
