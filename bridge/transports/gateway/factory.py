"""GatewayFactory: the KernelFactory of gateway mode. Starts kernels on a gateway, registers
them with Jupyter Server's gateway manager if there is one, and watches that they still exist."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from bridge.core.errors import BridgeError, InvalidRequest
from bridge.core.kernel import Kernel
from bridge.core.limits import KernelLimits
from bridge.core.metrics import KERNEL_STARTS
from bridge.core.validate import check_env, check_paths
from bridge.transports.gateway.rest import Gateway
from bridge.transports.gateway.transport import GatewayTransport

log = logging.getLogger("bridge.gateway")

POLL_INTERVAL = 2.0  # seconds between checks that the gateway still has our kernels


class GatewayFactory:
    """Starts kernels on a gateway and stops them; the KernelFactory of gateway mode."""

    def __init__(
        self,
        *,
        url: str,
        token: str = "",
        kernel_name: str | None = None,
        env: Mapping[str, str] | None = None,
        python_paths: Sequence[str | os.PathLike[str]] = (),
        startup_timeout: float = 60.0,
        kernel_manager: Any = None,
    ) -> None:
        self.gateway = Gateway(url, token)
        # Jupyter Server's GatewayMappingKernelManager, if any: our kernels are registered
        # there, so the server's /api/kernels lists them and JupyterLab can open them.
        self.kernel_manager = kernel_manager
        self.kernel_name = kernel_name
        self.env = check_env(env)
        self.python_paths = check_paths(python_paths, absolute=False)  # on the kernel's host
        self.remote = True
        self.startup_timeout = startup_timeout
        self.python = f"the {kernel_name or 'default'} kernel spec of {url}"
        self.kernels: set[Kernel] = set()
        self._poller: asyncio.Task[None] | None = None

    def kernel_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """What the kernel start request asks for; gateways pass on KERNEL_* names and those
        their operator allows (Kernel Gateway's env_whitelist, Enterprise Gateway's client_envs)."""
        env = {
            "KERNEL_USERNAME": getpass.getuser(),  # as Jupyter Server's gateway client sends
            "KERNEL_LAUNCH_TIMEOUT": str(int(self.startup_timeout)),  # Enterprise Gateway's
        }
        if self.python_paths:
            env["KERNEL_BRIDGE_PYTHON_PATHS"] = os.pathsep.join(self.python_paths)
        env.update(self.env)
        env.update(check_env(extra))
        return env

    async def start(
        self,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        limits: KernelLimits | None = None,
    ) -> Kernel:
        """Start a kernel on the gateway; return it once it answers and runs the runtime.

        *cwd* is ignored: the gateway decides where its kernels run. *limits* are refused:
        the gateway's operator bounds its kernels (docs/kernels.md#limits).
        """
        if limits is not None:
            raise InvalidRequest(
                "limits apply to local kernels; a gateway's kernels are bounded by its operator"
            )
        asked = time.monotonic()
        kernel_id = await self.gateway.start_kernel(
            self.kernel_name, self.kernel_env(env), self.startup_timeout
        )
        kernel = Kernel(GatewayTransport(gateway=self.gateway, kernel_id=kernel_id))
        self.kernels.add(kernel)
        try:
            await kernel.connect(self.startup_timeout)
        except BaseException:
            await self.stop(kernel, now=True)
            raise
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll())
        if self.kernel_manager is not None:
            await self._show(kernel)
        KERNEL_STARTS.labels("gateway").observe(time.monotonic() - asked)
        log.debug("started %s", kernel.name)
        return kernel

    async def _show(self, kernel: Kernel) -> None:
        """Register *kernel* with the server, as Jupyter Server adopts a kernel the gateway
        already runs (``start_kernel(kernel_id=...)`` asks the gateway for it, starts nothing)."""
        try:
            await self.kernel_manager.start_kernel(kernel_id=kernel.kernel_id)
        except Exception as exc:  # the kernel works; only the server's listing lacks it
            log.warning("Jupyter Server will not list %s: %s", kernel.name, exc)

    async def stop(self, kernel: Kernel, *, now: bool = False) -> None:
        """Delete *kernel* on the gateway and close its websocket."""
        self.kernels.discard(kernel)
        if self.kernel_manager is not None:
            self.kernel_manager.remove_kernel(kernel.kernel_id)
        await kernel.shutdown(now=now)

    async def kernel_language(self, name: str) -> str | None:
        """The language of the gateway's kernel spec *name* (``GET /api/kernelspecs/NAME``);
        None if the gateway has none by that name."""
        return await self.gateway.kernel_language(name)

    async def _poll(self) -> None:
        """The backstop for deaths the websocket does not show (a kernel deleted or culled
        by force, lost with its node): ask the gateway which of our kernels it still has."""
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            live = {k.kernel_id: k for k in self.kernels if k.alive and not k.closing}
            if not live:
                continue
            try:
                gone = await self.gateway.missing(set(live))
            except BridgeError as exc:
                log.debug("liveness check failed: %s", exc)
                continue
            for kernel_id in gone:
                transport = live[kernel_id].transport
                if isinstance(transport, GatewayTransport):
                    transport.lost("the gateway no longer has it")

    async def close(self) -> None:
        """Stop every kernel this factory started; delete any the gateway still has."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(BaseException):
                await self._poller
        await asyncio.gather(*(self.stop(k) for k in list(self.kernels)), return_exceptions=True)
        await self.gateway.close()
