"""A jupyter_client kernel provisioner that forks kernels from a pre-imported fork server.

Named ``kernel-bridge-fork`` (entry point group ``jupyter_client.kernel_provisioners``) and
chosen by a kernel spec's ``metadata.kernel_provisioner``, as the bridge's own spec does. It is
jupyter_client's LocalProvisioner in everything but the launch: connection files, ports,
restart, shutdown, interrupt (SIGINT to the kernel's process group) and kill stay
jupyter_client's. The launch asks the interpreter's fork server (``forkserver.py``) for a
child instead of starting a new interpreter, which skips importing IPython and ipykernel.

It falls back to the ordinary launch whenever a fork would not give the same kernel, and says
why in the ``bridge.kernel`` log at debug level: a kernel spec that is not Python, a command
that is not ``python -m module ...``, start-up variables (``PYTHON*``, the locale) other than
the fork server's, a PYTHONPATH that would shadow a module the server has imported, launch
options a fork cannot honour, no kernel manager (a provisioner driven from elsewhere, as a
gateway's), or an interpreter whose fork server cannot start (no ipykernel there).

Usable without the rest of kernel-bridge: see docs/kernels.md (a ``jupyter kernelspec``).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.local_provisioner import LocalProvisioner

from bridge.transports.local import forkserver
from bridge.transports.local.forkserver import ForkedProcess, ForkServerError

log = forkserver.log

NAME = "kernel-bridge-fork"
# Launch options a forked child honours (env, cwd, stdout/stderr); any other means Popen.
_FORKABLE = frozenset({"env", "cwd", "stdout", "stderr", "kernel_id", "extra_arguments"})


def _fd(stream: Any) -> int | None:
    if stream is None:
        return None
    if isinstance(stream, int):
        return stream if stream >= 0 else None
    try:
        return int(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None


class ForkProvisioner(LocalProvisioner):  # type: ignore[misc]
    """LocalProvisioner whose kernels are forked from a per-interpreter fork server.

    ``process``, ``pid`` and ``pgid`` mean what they mean on LocalProvisioner, whichever way
    the kernel was launched; ``forked`` says which.
    """

    forked = False

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        process, reason = await self._fork(cmd, kwargs)
        if process is None:
            log.debug("kernel %s: ordinary launch: %s", (self.kernel_id or "?")[:8], reason)
            self.forked = False
            info: KernelConnectionInfo = await super().launch_kernel(cmd, **kwargs)
            return info
        self.forked = True
        self.process = process  # type: ignore[assignment]  # a Popen look-alike
        self.pid = process.pid
        self.pgid = process.pid  # the child calls setsid(): a group and session of its own
        self.cwd = kwargs.get("cwd") or pathlib.Path.cwd()
        log.debug("kernel %s: forked as pid %s", (self.kernel_id or "?")[:8], process.pid)
        return self.connection_info

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
