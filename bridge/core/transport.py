"""How a ``Kernel`` reaches its kernel: the transport interface, written once for both kinds.

A transport carries Jupyter messages to and from one kernel and controls its process: send
on the shell channel, receive shell and IOPub, interrupt, kill, wait for the exit, shut down.
``Kernel`` (kernel.py) routes the messages and knows nothing else of where the kernel runs.
Two implementations: ``bridge.transports.local`` (ZeroMQ sockets, a jupyter_client manager
and provisioner, the process group) and ``bridge.transports.gateway`` (a gateway's websocket
and REST API). The core never imports them; a factory builds a transport and hands it to
``Kernel``.
"""

from __future__ import annotations

from typing import Any, Protocol

from bridge.core.errors import BridgeError, ExitStatus


class TransportClosed(BridgeError):
    """The transport can no longer reach its kernel (a closed websocket); ``str()`` says why.

    A transport raises it from ``send()``; the Kernel treats the kernel as dead from then on.
    """


class Receiver(Protocol):
    """Where a transport delivers what it receives: the Kernel."""

    @property
    def wants_status(self) -> bool:
        """Whether status messages matter now; a transport may drop them unread when not."""

    def deliver(self, channel: str, msg: dict[str, Any]) -> None:
        """One message of *channel* (``"shell"`` or ``"iopub"``), deserialized."""

    def output_dropped(self, parent_id: str) -> None:
        """Something between us and the kernel dropped output of the request *parent_id*."""


class Transport(Protocol):
    """One kernel's connection and process control. All methods run on the Kernel's loop.

    ``session`` makes the messages the Kernel sends (a jupyter_client ``Session`` of this
    client's own). ``connection_file`` is the file ``jupyter console --existing`` takes, ""
    where there is none here; ``pid`` the kernel's process on this host, None where it runs
    elsewhere. ``where`` is added to the kernel's name in messages (``"on http://..."``).
    ``bootstrap`` is code the Kernel runs once the kernel answers, before its first bridge call
    (a gateway's kernel loads the bridge runtime from it); "" when nothing is needed.
    """

    @property
    def kernel_id(self) -> str: ...

    @property
    def session(self) -> Any: ...

    @property
    def connection_file(self) -> str: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def where(self) -> str: ...

    @property
    def bootstrap(self) -> str: ...

    @property
    def reason(self) -> str:
        """Why the kernel is gone, where the transport knows more than its exit status."""

    def log_tail(self) -> str:
        """The end of the kernel's own output (what a C library said as it failed); "" where
        the transport has none."""

    async def connect(self, timeout: float) -> None:
        """Open the channels (within *timeout* seconds)."""

    def send(self, msg: dict[str, Any], buffers: list[Any] | None = None) -> None:
        """Queue *msg* on the shell channel; TransportClosed if the kernel is out of reach."""

    async def receive(self, receiver: Receiver) -> None:
        """Deliver every message that arrives to *receiver* until the channels close."""

    async def interrupt(self) -> None:
        """Interrupt what the kernel runs (SIGINT, or the gateway's interrupt)."""

    async def kill(self) -> None:
        """End the kernel now, without a graceful shutdown."""

    async def wait_for_exit(self) -> ExitStatus:
        """Return once the kernel has ended, with how it ended."""

    async def shutdown(self, *, now: bool) -> None:
        """Shut the kernel down (politely unless *now*); runs to its end even if the caller
        is cancelled."""

    def close(self) -> None:
        """Close the channels and remove the files the transport kept; the kernel is down."""
