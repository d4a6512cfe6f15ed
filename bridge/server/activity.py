"""Jupyter Server's activity tracking of the bridge's kernels, fed by the bridge's own reader.

Jupyter Server watches every kernel it starts (``MappingKernelManager.start_watching_activity``):
a second IOPub subscription per kernel that deserializes every message again, dates included,
to keep ``last_activity`` and ``execution_state`` (``/api/kernels``, JupyterLab's busy
indicator, the idle culler). The bridge already reads each of its kernels' IOPub, so for its
kernels that watcher is stopped and the same records are kept from the bridge's reader
(``AsyncBridge(on_kernel_activity=...)``), with Jupyter Server's own rules: any message moves
``last_activity`` (to the millisecond) unless it is of an untracked type answering an
untracked request while the kernel is not busy; a status message sets ``execution_state``
when its request is tracked (a bridge call's ``comm_msg``, any client's ``execute_request``),
and ends ``starting``.

>>> activity = Activity(serverapp.kernel_manager)   # doctest: +SKIP
>>> Service(..., on_kernel_activity=activity)       # doctest: +SKIP
"""

from __future__ import annotations

import time
import weakref
from datetime import UTC, datetime
from typing import Any

STAMP_EVERY = 0.001  # seconds: last_activity is kept to the millisecond, not to the message


class Activity:
    """``on_kernel_activity`` for a bridge on Jupyter Server's MappingKernelManager."""

    def __init__(self, kernel_manager: Any) -> None:
        self.kernel_manager = kernel_manager
        # kernel id -> its KernelManager; weak, so a kernel shut down leaves no entry behind
        self._kernels: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
        # When each kernel's last_activity was last set (monotonic): the messages of one call
        # come within a millisecond, and each set is a traitlets validation and notification.
        self._stamped: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    def __call__(
        self, kernel_id: str, msg_type: str, parent_type: str | None, state: str | None
    ) -> None:
        kernel = self._kernels.get(kernel_id)
        if kernel is None:
            if kernel_id not in self.kernel_manager:
                return  # not (or no longer) the server's
            kernel = self._kernels[kernel_id] = self.kernel_manager.get_kernel(kernel_id)
        if getattr(kernel, "_activity_stream", None) is not None:
            # The server's watcher, started with the kernel (and again by a restart through
            # /api/kernels): this reader hears the same messages already.
            self.kernel_manager.stop_watching_activity(kernel_id)
        manager = self.kernel_manager
        track = manager.track_message_type
        if track(msg_type) or track(parent_type) or kernel.execution_state == "busy":
            now = time.monotonic()
            if now - self._stamped.get(kernel, -STAMP_EVERY) >= STAMP_EVERY:
                self._stamped[kernel] = now
                manager.last_kernel_activity = kernel.last_activity = datetime.now(UTC)
        if state is not None:
            if track(parent_type):
                kernel.execution_state = state
            elif kernel.execution_state == "starting" and state != "starting":
                kernel.execution_state = "idle"
