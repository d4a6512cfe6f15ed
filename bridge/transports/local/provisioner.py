"""The kernel provisioners of bridge kernels: jupyter_client's LocalProvisioner, plus a hook the
moment the kernel's process exists (so the watchdog knows it before anything else can fail),
plus, by default, kernels forked from a pre-imported fork server.

jupyter_client launches a kernel through the provisioner its kernel spec names
(``metadata.kernel_provisioner``; entry point group ``jupyter_client.kernel_provisioners``):

- ``kernel-bridge-local`` (WatchedProvisioner): LocalProvisioner's launch, then ``launched()``.
- ``kernel-bridge-fork`` (ForkProvisioner, a WatchedProvisioner, the bridge spec's default):
  asks the interpreter's fork server (``forkserver.py``) for a child instead of starting a new
  interpreter, which skips importing IPython and ipykernel, and calls ``launched()`` as soon as
  the fork returns the child's pid (the child is its own group: it called setsid()). It falls
  back to the watched ordinary launch whenever a fork would not give the same kernel, and says
  why in the ``bridge.kernel`` log at debug level: a kernel spec that is not Python, a command
  that is not ``python -m module ...``, start-up variables (``PYTHON*``, the locale) other than
  the fork server's, a PYTHONPATH that would shadow a module the server has imported, launch
  options a fork cannot honour, no kernel manager (a provisioner driven from elsewhere, as a
  gateway's), or an interpreter whose fork server cannot start (no ipykernel there).

Connection files, ports, restart, shutdown, interrupt (SIGINT to the kernel's process group)
and kill stay jupyter_client's on both. The factory that starts a kernel picks its id and says
what to do once it is launched with ``expect(kernel_id, hook)``; the provisioner calls the hook
with the kernel's process group, its leader's start time and its connection file, before
jupyter_client waits for the kernel to answer. A kernel of these specs started by someone else
(JupyterLab on the same server, a ``jupyter kernelspec``: docs/kernels.md) has no hook and runs
as with LocalProvisioner.

>>> expect(kernel_id, reaper.watch)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
from collections.abc import Callable
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.local_provisioner import LocalProvisioner

from bridge.core.wire import rlimits
from bridge.transports.local import forkserver
from bridge.transports.local.forkserver import ForkedProcess, ForkServerError
from bridge.transports.local.watchdog import start_time

log = forkserver.log

WATCHED_NAME = "kernel-bridge-local"
FORK_NAME = "kernel-bridge-fork"
# Launch options a forked child honours (env, cwd, stdout/stderr); any other means Popen.
_FORKABLE = frozenset({"env", "cwd", "stdout", "stderr", "kernel_id", "extra_arguments"})

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


def _fd(stream: Any) -> int | None:
    if stream is None:
        return None
    if isinstance(stream, int):
        return stream if stream >= 0 else None
    try:
        return int(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None


def apply_limits(process: Any, env: Any) -> None:
    """The kernel's limits (kernels/bridge_runtime/limits.py) on a process just launched,
    before it can have bound its ports: the fork path's child applies them to itself."""
    limits = rlimits.from_env(env)
    if not limits or process is None:
        return
    try:
        rlimits.apply(limits, process.pid)
    except OSError:
        process.kill()  # not a kernel without its limits
        raise


class WatchedProvisioner(LocalProvisioner):  # type: ignore[misc]
    """LocalProvisioner that reports each launch to ``launched()``."""

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        info: KernelConnectionInfo = await super().launch_kernel(cmd, **kwargs)
        self._report_launch()
        apply_limits(self.process, kwargs.get("env") or os.environ)
        return info

    def _report_launch(self) -> None:
        files = [str(self.parent.connection_file)] if self.parent is not None else []
        launched(self.kernel_id, self.pgid, self.pid, files)


class ForkProvisioner(WatchedProvisioner):
    """WatchedProvisioner whose kernels are forked from a per-interpreter fork server.

    ``process``, ``pid`` and ``pgid`` mean what they mean on LocalProvisioner, whichever way
    the kernel was launched; ``forked`` says which.
    """

    forked = False

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        process, reason = await self._fork(cmd, kwargs)
        if process is None:
            log.debug("kernel %s: ordinary launch: %s", (self.kernel_id or "?")[:8], reason)
            self.forked = False
            return await super().launch_kernel(cmd, **kwargs)  # watched: reports the launch
        self.forked = True
        self.process = process  # type: ignore[assignment]  # a Popen look-alike
        self.pid = process.pid
        self.pgid = process.pid  # the child called setsid() before the server answered
        self.cwd = kwargs.get("cwd") or pathlib.Path.cwd()
        self._report_launch()
        log.debug("kernel %s: forked as pid %s", (self.kernel_id or "?")[:8], process.pid)
        info: KernelConnectionInfo = self.connection_info
        return info

    async def _fork(
        self, cmd: list[str], kwargs: dict[str, Any]
    ) -> tuple[ForkedProcess | None, str]:
        language = (getattr(self.kernel_spec, "language", "") or "").lower()
        if not language.startswith("python"):
            return None, f"a {language or 'non-Python'} kernel spec"
        if self.parent is None:
            return None, "no kernel manager (a provisioner driven from elsewhere, as a gateway's)"
        if not hasattr(os, "fork") or not hasattr(os, "pidfd_open"):
            return None, f"no fork with pidfds on {sys.platform}"
        if len(cmd) < 3 or cmd[1] != "-m":
            return None, f"the command is not `python -m module`: {cmd[:3]}"
        extra = sorted(k for k, v in kwargs.items() if k not in _FORKABLE and v is not None)
        if extra:
            return None, f"launch options a fork cannot honour: {', '.join(extra)}"
        python = shutil.which(cmd[0]) or cmd[0]
        env: dict[str, str] = dict(kwargs.get("env") or os.environ)
        server, reason = forkserver.server_for(python, env)
        if server is None:
            return None, reason
        stdout, stderr = _fd(kwargs.get("stdout")), _fd(kwargs.get("stderr"))
        if stdout is None and stderr is None:  # Popen would inherit the host's
            stdout, stderr = _fd(sys.__stdout__), _fd(sys.__stderr__)
        stdout = stdout if stdout is not None else stderr
        stderr = stderr if stderr is not None else stdout
        try:
            outcome = await server.fork(
                [python, *cmd[1:]],
                env=env,
                cwd=str(kwargs.get("cwd") or os.getcwd()),
                stdout=stdout,
                stderr=stderr,
            )
        except ForkServerError as exc:
            if server.ready.done() and server.ready.exception() is not None:
                forkserver.mark_broken(server, str(exc))  # it cannot start: not again
            return None, str(exc)
        if isinstance(outcome, str):
            return None, outcome
        return outcome, ""

    async def wait(self) -> int | None:
        """Wait for the kernel to exit: at once for a forked one (its server says when)."""
        process = self.process
        if isinstance(process, ForkedProcess):
            code = await process.wait_async()
            self.process = None
            return code
        code_: int | None = await super().wait()
        return code_

    async def get_provisioner_info(self) -> dict[str, Any]:
        info: dict[str, Any] = await super().get_provisioner_info()
        info["forked"] = self.forked
        return info
