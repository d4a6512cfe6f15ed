"""The kernel provisioner of bridge kernels: jupyter_client's LocalProvisioner, plus a hook the
moment the kernel's process exists, so the watchdog knows it before anything else can fail.

jupyter_client launches a kernel through the provisioner its kernel spec names
(``metadata.kernel_provisioner``); bridge kernels name ``kernel-bridge-local`` (the entry point
in pyproject.toml). The factory that starts a kernel picks its id and says what to do once
it is launched with ``expect(kernel_id, hook)``; the provisioner calls the hook with the
kernel's process group, its leader's start time and its connection file right after
``launch_kernel``, before jupyter_client waits for the kernel to answer. A kernel of this spec
started by someone else (JupyterLab on the same server) has no hook and runs as with
LocalProvisioner.

>>> expect(kernel_id, reaper.watch)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jupyter_client.provisioning.local_provisioner import LocalProvisioner

from bridge.transports.local.watchdog import start_time

PROVISIONER_NAME = "kernel-bridge-local"

# (pgid, start time of the group's leader, files to remove with the kernel) -> None
LaunchHook = Callable[[int, "int | None", list[str]], None]

_hooks: dict[str, LaunchHook] = {}


def expect(kernel_id: str, hook: LaunchHook) -> None:
    """Call *hook* once the kernel *kernel_id* is launched (see the module's doc)."""
    _hooks[kernel_id] = hook


def unexpect(kernel_id: str) -> None:
    _hooks.pop(kernel_id, None)


def launched(kernel_id: str, pgid: int | None, pid: int | None, files: list[str]) -> None:
    """Tell the one who expects *kernel_id* that its process exists (for any provisioner)."""
    hook = _hooks.pop(kernel_id, None)
    if hook is not None and pgid is not None:
        hook(pgid, start_time(pid if pid is not None else pgid), files)


class WatchedProvisioner(LocalProvisioner):  # type: ignore[misc]
    """LocalProvisioner that reports each launch to ``launched()``."""

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
        info = await super().launch_kernel(cmd, **kwargs)
        files = [str(self.parent.connection_file)] if self.parent is not None else []
        launched(self.kernel_id, self.pgid, self.pid, files)
        return info
