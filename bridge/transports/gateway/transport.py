"""The gateway transport: a kernel a gateway runs, reached over its websocket and REST API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from bridge.core.errors import ExitStatus
from bridge.core.transport import Receiver, TransportClosed
from bridge.transports.gateway.channels import Channels
from bridge.transports.gateway.errors import websocket_closed
from bridge.transports.gateway.loader import runtime_loader
from bridge.transports.gateway.rest import Gateway

log = logging.getLogger("bridge.gateway")

_RATE_LIMITED = ("IOPub message rate exceeded", "IOPub data rate exceeded")


class GatewayTransport:
    """One gateway kernel's websocket and REST calls: the ``Transport`` of ``GatewayFactory``.

    The kernel's process is the gateway's: it has no pid and no connection file here, and its
    end is what the gateway shows (the websocket closes, a status says it restarted, a poll
    finds it gone: see ``lost()``).
    """

    pid = None
    connection_file = ""  # the gateway keeps it to itself

    def __init__(self, *, gateway: Gateway, kernel_id: str) -> None:
        from jupyter_client.session import Session

        self.gateway = gateway
        self.kernel_id = kernel_id
        self.channels = Channels(gateway, kernel_id, Session())
        self.session = self.channels.session
        self.reason = ""  # why it is gone, as the gateway showed it
        self._exit: asyncio.Future[ExitStatus] = asyncio.get_running_loop().create_future()
        self._warned_rate = False

    @property
    def where(self) -> str:
        return f"on {self.gateway.url}"

    @property
    def name(self) -> str:
        return f"kernel {self.kernel_id[:8]} {self.where}"

    @property
    def bootstrap(self) -> str:
        """The runtime is not installed on the gateway's host: its sources go with this cell."""
        return runtime_loader()

    async def connect(self, timeout: float) -> None:
        await self.channels.connect(self.name, timeout)

    def send(self, msg: dict[str, Any], buffers: list[Any] | None = None) -> None:
        def closed() -> TransportClosed:
            self.lost(self.channels.closed_because())
            return TransportClosed(self.reason)

        with websocket_closed(closed):
            write = self.channels.send("shell", msg, buffers)
        write.add_done_callback(_retrieve)

    async def receive(self, receiver: Receiver) -> None:
        while True:
            try:
                item = await self.channels.recv()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a broken frame: drop it, go on
                log.warning("%s: dropped an unreadable message: %s", self.name, exc)
                continue
            if item is None:
                self.lost(self.channels.closed_because())
                return
            channel, msg = item
            try:
                if channel == "shell" or (
                    channel == "iopub" and not self._gateway_event(msg, receiver)
                ):
                    receiver.deliver(channel, msg)
            except Exception:
                log.exception("%s: error while handling %s", self.name, msg.get("msg_type"))

    def _gateway_event(self, msg: dict[str, Any], receiver: Receiver) -> bool:
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
            # and says so on stderr: the call's output is incomplete.
            receiver.output_dropped(msg["parent_header"].get("msg_id", ""))
            if not self._warned_rate:
                self._warned_rate = True
                log.warning(
                    "%s: the gateway dropped output over its IOPub rate limit; start it with "
                    "--ZMQChannelsWebsocketConnection.limit_rate=False",
                    self.name,
                )
        return False

    def log_tail(self) -> str:
        return ""  # the kernel's output stays on the gateway's host

    def lost(self, reason: str) -> None:
        """The kernel is gone for *reason*: its Kernel fails the calls now."""
        if not self._exit.done():
            self.reason = reason
            self._exit.set_result(ExitStatus())

    async def wait_for_exit(self) -> ExitStatus:
        return await asyncio.shield(self._exit)

    async def interrupt(self) -> None:
        await self.gateway.interrupt_kernel(self.kernel_id)

    async def kill(self) -> None:
        """Delete the kernel on the gateway (which kills it), without waiting for the gateway."""
        self.lost("deleted on the gateway")
        task = asyncio.ensure_future(self.gateway.shutdown_kernel(self.kernel_id))
        task.add_done_callback(_retrieve)

    async def shutdown(self, *, now: bool) -> None:
        if self.kernel_id in self.gateway:
            with contextlib.suppress(Exception):  # gone already, or the gateway is: it is over
                await asyncio.shield(self.gateway.shutdown_kernel(self.kernel_id, now=now))
        self.lost("shut down")

    def close(self) -> None:
        self.channels.stop_channels()


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # a failed write shows as a closed websocket; no noise here
