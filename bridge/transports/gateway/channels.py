"""A gateway kernel's websocket: every channel over one connection, the token in the upgrade.

Frames use Jupyter Server's ``v1.kernel.websocket.jupyter.org`` protocol when the gateway
offers it (the gateway relays the kernel's frames without parsing them), else the legacy JSON
one; the (de)serializers are Jupyter Server's.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from bridge.core.errors import InvalidRequest
from bridge.transports.gateway.errors import websocket_errors
from bridge.transports.gateway.rest import Gateway

WS_PROTOCOL = "v1.kernel.websocket.jupyter.org"
PING_INTERVAL = 2.5  # websocket pings: a silently dropped connection is seen within 2 of them
MAX_MESSAGE = 1 << 30  # the largest message we accept from the gateway
# The largest the gateway accepts from us: tornado's default websocket_max_message_size, which
# neither Kernel Gateway nor Enterprise Gateway lets one configure. Past it the gateway would
# drop the connection, and with it every call on the kernel: refuse the one message instead.
GATEWAY_MAX_MESSAGE = 10 * 1024 * 1024
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def _frames() -> Any:
    """Jupyter Server's websocket frame (de)serializers (untyped, hence Any)."""
    from jupyter_server.services.kernels.connection import base

    return base


class Channels:
    """The kernel's websocket: every channel over one connection, the token in the upgrade."""

    def __init__(self, gateway: Gateway, kernel_id: str, session: Any) -> None:
        self.gateway = gateway
        self.kernel_id = kernel_id
        # The gateway signs for the kernel (it alone has the key); the session makes headers
        # and reads messages. No signing, set here: a Session made without a key warns.
        self.session = session
        self.session.auth = None
        self.ws: Any = None
        self.v1 = True

    @property
    def endpoint(self) -> str:
        """The websocket's URL without the query (what error messages name)."""
        url = self.gateway.kernel_url(self.kernel_id, "/channels")
        return f"ws{url[len('http') :]}"

    @property
    def url(self) -> str:
        # session_id: the gateway files its replay buffer under our session, as for JupyterLab's
        return f"{self.endpoint}?session_id={quote(self.session.session)}"

    async def connect(self, name: str, timeout: float) -> None:
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect

        request = HTTPRequest(
            self.url,
            headers=self.gateway.headers,
            connect_timeout=min(timeout, 10.0),
            request_timeout=timeout,
            follow_redirects=False,  # the token goes nowhere but to the gateway
        )
        what = f"connecting to {name}"
        with websocket_errors(self.gateway.url, self.endpoint, what):
            self.ws = await websocket_connect(
                request,
                subprotocols=[WS_PROTOCOL],
                max_message_size=MAX_MESSAGE,
                ping_interval=PING_INTERVAL,
                ping_timeout=PING_INTERVAL,
            )
        self.v1 = self.ws.selected_subprotocol == WS_PROTOCOL
        self.ws.protocol.set_nodelay(True)  # our requests go out at once
        self._quickack()

    def send(self, channel: str, msg: dict[str, Any], buffers: Sequence[Any] | None) -> Any:
        """Queue *msg* on the websocket; returns tornado's write future."""
        frames = _frames()
        pack = self.session.pack
        blobs = [b if isinstance(b, bytes) else bytes(b) for b in buffers or ()]
        data: bytes | str
        if self.v1:
            parts = [pack(msg["header"]), pack(msg["parent_header"])]
            parts += [pack(msg["metadata"]), pack(msg["content"]), *blobs]
            data = frames.serialize_msg_to_ws_v1(parts, channel)
        elif blobs:
            data = frames.serialize_binary_message({**msg, "channel": channel, "buffers": blobs})
        else:
            data = pack({**msg, "channel": channel}).decode("utf-8")
        if len(data) > GATEWAY_MAX_MESSAGE:
            raise InvalidRequest(
                f"a {msg['header']['msg_type']} of {len(data):,} bytes is over the "
                f"{GATEWAY_MAX_MESSAGE:,} bytes a gateway's websocket accepts"
            )
        return self.ws.write_message(data, binary=not isinstance(data, str))

    async def recv(self) -> tuple[str, dict[str, Any]] | None:
        """The next (channel, message), or None once the websocket has closed."""
        frames = _frames()
        data = await self.ws.read_message()
        if data is None:
            return None
        self._quickack()
        if self.v1:
            channel, parts = frames.deserialize_msg_from_ws_v1(data)
            return channel, self.session.deserialize([b"", *parts])
        if isinstance(data, bytes):
            msg = frames.deserialize_binary_message(data)
        else:
            msg = json.loads(data)
        msg.setdefault("buffers", [])
        msg.setdefault("msg_id", msg["header"].get("msg_id"))
        msg.setdefault("msg_type", msg["header"].get("msg_type"))
        return str(msg.pop("channel", "")), msg

    def _quickack(self) -> None:
        """Acknowledge what arrived at once. The gateway's websocket leaves Nagle's algorithm
        on, so each of a reply's messages after the first waits for our ACK of the one before,
        and Linux delays an ACK by up to 40 ms: 45 ms per trivial execute instead of 8. Quick-ACK
        mode ends by itself, hence once per message (Linux only; a cheap setsockopt)."""
        if _QUICKACK is not None:
            with contextlib.suppress(AttributeError, OSError):
                self.ws.protocol.stream.socket.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)

    def closed_because(self) -> str:
        code = getattr(self.ws, "close_code", None)
        reason = getattr(self.ws, "close_reason", None)
        if code is None:
            return "the gateway's websocket closed"
        return f"the gateway's websocket closed (code {code}{f': {reason}' if reason else ''})"

    def stop_channels(self) -> None:
        if self.ws is not None:
            self.ws.close()
