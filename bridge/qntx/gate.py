"""Only the plugin's own user may call it: the owner of each caller's TCP socket, from /proc.

QNTX's core dials its plugins over loopback with no credential (teranos/QNTX
``plugin/grpc/dial.go``), and loopback does not separate users: any local user could connect
to the port and run code as the plugin's user. So every call is checked before it reaches a
service: the caller's end of the connection is a socket on this machine, listed in
``/proc/net/tcp`` (or ``tcp6``) with the uid that made it; a caller whose socket is not the
plugin's own user's, or cannot be found (another network namespace, another machine, a table
that cannot be read), is refused with PERMISSION_DENIED.

The answer is cached per connection: keyed by the caller's address and port, and kept only
while the plugin's own end of that connection (a file descriptor of this process, whose
socket inode was noted) is still the same socket. A connection that closes and another that
reuses its port, of any user, is looked up afresh.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc

log = logging.getLogger("bridge.qntx")

TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
MAX_CONNECTIONS = 1024  # cached verdicts; past it the stale ones go, then all

Address = tuple[str, int]


@dataclass(frozen=True)
class Socket:
    """One row of /proc/net/tcp{,6}."""

    local: Address
    remote: Address
    uid: int
    inode: int  # 0 for a socket no process holds any more (TIME_WAIT)


def _ip(value: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(value, ipaddress.IPv6Address) and value.ipv4_mapped is not None:
        return str(value.ipv4_mapped)  # a dual-stack socket's IPv4 peer
    return str(value)


def _hex_address(text: str) -> Address:
    """``0100007F:1F90`` -> ("127.0.0.1", 8080): each 32-bit word is in host byte order."""
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return _ip(ipaddress.ip_address(raw)), int(port, 16)


def parse_table(text: str) -> list[Socket]:
    """The sockets of one /proc/net/tcp{,6} table (its header line skipped)."""
    sockets = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        try:
            sockets.append(
                Socket(
                    _hex_address(fields[1]), _hex_address(fields[2]), int(fields[7]), int(fields[9])
                )
            )
        except ValueError:
            continue
    return sockets


def parse_peer(peer: str) -> Address | None:
    """gRPC's ``ipv4:127.0.0.1:5000`` / ``ipv6:[::1]:5000`` -> (address, port); None for
    anything else (a unix socket, an unknown form)."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    host, _, port = rest.rpartition(":")
    host = host.strip("[]").split("%")[0]
    try:
        return _ip(ipaddress.ip_address(host)), int(port)
    except ValueError:
        return None


def connection(sockets: Iterable[Socket], peer: Address, port: int) -> tuple[int, int] | None:
    """(uid of the caller's socket, inode of our end) of the connection from *peer* to our
    *port*; None unless both ends are found."""
    uid = ours = None
    for s in sockets:
        if not s.inode:
            continue
        if s.local == peer and s.remote[1] == port:
            uid = s.uid
        elif s.remote == peer and s.local[1] == port:
            ours = s.inode
    if uid is None or ours is None:
        return None
    return uid, ours


def _read_tables(paths: Iterable[str]) -> list[Socket]:
    sockets: list[Socket] = []
    for path in paths:
        try:
            with open(path) as f:
                sockets += parse_table(f.read())
        except OSError:
            continue  # no IPv6, say: the other table may still have it
    return sockets


def _fd_of(inode: int) -> int | None:
    """The descriptor of this process whose socket is *inode*."""
    target = f"socket:[{inode}]"
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == target:
                return int(name)
        except OSError:
            continue
    return None


def _still(fd: int, inode: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == f"socket:[{inode}]"
    except OSError:
        return False


@dataclass(frozen=True)
class Verdict:
    uid: int | None  # the caller's user; None: it could not be found
    fd: int  # our end of the connection, and its socket: the verdict holds while they do
    inode: int


class PeerGate:
    """Which callers may call: those whose socket belongs to *uid* (the plugin's own user)."""

    def __init__(self, uid: int | None = None, tables: Iterable[str] = TABLES) -> None:
        self.uid = os.getuid() if uid is None else uid
        self.tables = tuple(tables)
        self.port = 0  # the port the server listens on, once bound
        self._verdicts: dict[str, Verdict] = {}
        self.lookups = 0  # connections looked up in /proc (a figure for the tests)

    def _look_up(self, peer: str) -> Verdict | None:
        address = parse_peer(peer)
        if address is None:
            return None
        self.lookups += 1
        found = connection(_read_tables(self.tables), address, self.port)
        if found is None:
            return None
        uid, inode = found
        fd = _fd_of(inode)
        return Verdict(uid, fd if fd is not None else -1, inode)

    def _remember(self, peer: str, verdict: Verdict) -> None:
        if verdict.fd < 0:
            return  # our end not found: nothing to tie the verdict to, so it is not kept
        if len(self._verdicts) >= MAX_CONNECTIONS:
            for key, old in list(self._verdicts.items()):
                if not _still(old.fd, old.inode):
                    del self._verdicts[key]
            if len(self._verdicts) >= MAX_CONNECTIONS:
                self._verdicts.clear()
        self._verdicts[peer] = verdict

    async def caller(self, peer: str) -> tuple[int | None, bool]:
        """(the caller's uid or None, whether this connection was looked up just now)."""
        known = self._verdicts.get(peer)
        if known is not None and _still(known.fd, known.inode):
            return known.uid, False
        verdict = await asyncio.to_thread(self._look_up, peer)
        if verdict is None:
            return None, True
        self._remember(peer, verdict)
        return verdict.uid, True

    async def check(self, context: Any, method: str) -> None:
        """Abort the call with PERMISSION_DENIED unless it comes from the plugin's user."""
        peer = context.peer()
        uid, new = await self.caller(peer)
        if uid == self.uid:
            return
        who = "an unknown user" if uid is None else f"uid {uid}"
        # Logged once per connection; its further calls are refused quietly.
        (log.warning if new else log.debug)(
            "refused %s from %s (%s): this plugin answers only its own user (uid %d)",
            method,
            peer,
            who,
            self.uid,
        )
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            "this plugin answers only the local user it runs as"
            + ("" if uid is not None else ": the caller's user could not be determined"),
        )


def _guard(handler: Any, check: Callable[[Any], Any]) -> Any:
    """*handler* with *check(context)* run before its method, for each of gRPC's four kinds."""
    kinds = (
        ("unary_unary", grpc.unary_unary_rpc_method_handler),
        ("unary_stream", grpc.unary_stream_rpc_method_handler),
        ("stream_unary", grpc.stream_unary_rpc_method_handler),
        ("stream_stream", grpc.stream_stream_rpc_method_handler),
    )
    for kind, make in kinds:
        inner = getattr(handler, kind)
        if inner is None:
            continue
        if inspect.isasyncgenfunction(inner):

            async def streamed(request: Any, context: Any, inner: Any = inner) -> Any:
                await check(context)
                async for item in inner(request, context):
                    yield item

            behaviour: Any = streamed
        else:

            async def called(request: Any, context: Any, inner: Any = inner) -> Any:
                await check(context)
                return await inner(request, context)

            behaviour = called
        return make(
            behaviour,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


class PeerGateInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Every call, reflection's included, passes the gate before its method runs."""

    def __init__(self, gate: PeerGate) -> None:
        self.gate = gate

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        return _guard(handler, lambda context: self.gate.check(context, method))


def is_loopback(host: str) -> bool:
    """Whether *host* (an address or a name) means this machine's loopback interface only."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        pass
    import socket

    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos
    )
