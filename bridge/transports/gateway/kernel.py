"""GatewayKernel: the core ``Kernel`` (router, execute loop, comms, timeouts, death), whose
transport is a gateway's websocket instead of local ZeroMQ sockets."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from bridge.core.errors import ExecutionTimeout, ExitStatus, KernelDied, KernelStartError
from bridge.core.kernel import Kernel
from bridge.transports.gateway.channels import Channels, RemoteManager
from bridge.transports.gateway.errors import websocket_closed
from bridge.transports.gateway.loader import runtime_loader
from bridge.transports.gateway.rest import REQUEST_TIMEOUT, Gateway

log = logging.getLogger("bridge.gateway")

_RATE_LIMITED = ("IOPub message rate exceeded", "IOPub data rate exceeded")


class GatewayKernel(Kernel):
    """A kernel the gateway runs; the same ``Kernel``, over the gateway's websocket."""

    client: Channels

    def __init__(self, *, gateway: Gateway, kernel_id: str, startup_timeout: float) -> None:
        super().__init__(
            manager=RemoteManager(gateway, kernel_id),
            kernel_manager=gateway,
            kernel_id=kernel_id,
            context=None,
            pgid=None,
        )
        self.gateway = gateway
        self.startup_timeout = startup_timeout
        self.reason = ""  # why it is gone, as the gateway showed it
        self._warned_rate = False

    @property
    def name(self) -> str:
        return f"kernel {self.kernel_id[:8]} on {self.gateway.url}"

    async def _open_channels(self) -> list[asyncio.Task[None]]:
        await self.client.connect(self.name, self.startup_timeout)
        return [asyncio.create_task(self._read_websocket())]

    async def _read_websocket(self) -> None:
        while True:
            try:
                item = await self.client.recv()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a broken frame: drop it, go on
                log.warning("%s: dropped an unreadable message: %s", self.name, exc)
                continue
            if item is None:
                self.lost(self.client.closed_because())
                return
            channel, msg = item
            try:
                if channel == "shell":
                    self._on_shell(msg)
                elif channel == "iopub" and not self._gateway_event(msg):
                    self._on_iopub(msg)
            except Exception:
                log.exception("%s: error while handling %s", self.name, msg.get("msg_type"))

    def _gateway_event(self, msg: dict[str, Any]) -> bool:
        """Notice what the gateway says of the kernel itself: it died and was restarted, or
        someone else shut it down. Either way its state is gone, so it is dead to us."""
        msg_type = msg["header"].get("msg_type")
        if msg_type == "status" and not msg["parent_header"]:
            state = msg["content"].get("execution_state")
            if state in ("restarting", "autorestarting", "dead"):
                self.lost(f"the gateway reports it {state} (it died; its state is gone)")
                return True
        elif msg_type == "shutdown_reply":
            self.lost("it was shut down on the gateway")
            return True
        elif msg_type == "stream" and msg["content"].get("text", "").startswith(_RATE_LIMITED):
            # Jupyter Server's IOPub rate limit (on by default in Kernel Gateway) drops output
            # and says so on stderr: the call's output is incomplete, so it is marked truncated.
            call = self._calls.get(msg["parent_header"].get("msg_id", ""))
            if call is not None:
                call.collector.truncated = True
            if not self._warned_rate:
                self._warned_rate = True
                log.warning(
                    "%s: the gateway dropped output over its IOPub rate limit; start it with "
                    "--ZMQChannelsWebsocketConnection.limit_rate=False",
                    self.name,
                )
        return False

    def _send(self, msg: dict[str, Any], buffers: list[Any] | None = None) -> None:
        def closed() -> KernelDied:
            self.lost(self.client.closed_because())
            return self._died_error()

        with websocket_closed(closed):
            write = self.client.send("shell", msg, buffers)
        write.add_done_callback(_retrieve)

    async def _prepare(self) -> None:
        """Load the kernel-bridge runtime into the remote kernel from sources sent with the code."""
        try:
            result = await self.execute(runtime_loader(), timeout=REQUEST_TIMEOUT)
        except ExecutionTimeout:
            raise KernelStartError(
                f"{self.name}: loading the kernel-bridge runtime timed out"
            ) from None
        if not result.success and result.error is not None:
            raise KernelStartError(
                f"{self.name}: could not load the kernel-bridge runtime: "
                f"{result.error.ename}: {result.error.evalue}\n{result.error.traceback}"
            )

    def lost(self, reason: str) -> None:
        """The kernel is gone for *reason*: fail its calls now."""
        if self.alive:
            self.reason = reason
            self._died(ExitStatus())

    async def kill(self) -> None:
        """Delete the kernel on the gateway (which kills it), without waiting for the gateway."""
        if not self.alive:
            return
        self.closing = True
        self.lost("deleted on the gateway")
        task = asyncio.ensure_future(self.gateway.shutdown_kernel(self.kernel_id))
        task.add_done_callback(_retrieve)

    def _died_error(self, call: Any = None) -> KernelDied:
        error = super()._died_error(call)
        if not self.reason or self.closing:
            return error
        return KernelDied(f"{error}: {self.reason}", status=error.status, result=error.result)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # a failed write shows as a closed websocket; no noise here
