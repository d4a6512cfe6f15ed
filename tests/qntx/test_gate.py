"""The plugin's peer gate, in this process: real sockets, the real /proc/net tables.

The plugin process itself, called as another user, is tested in test_plugin.py.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from bridge.qntx import gate


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield server
    server.close()


def _connect(server: socket.socket) -> tuple[socket.socket, socket.socket, str]:
    """(client, our end, the client as gRPC names a peer)."""
    client = socket.create_connection(server.getsockname())
    ours, _ = server.accept()
    host, port = client.getsockname()
    return client, ours, f"ipv4:{host}:{port}"


def test_peer_names_parse() -> None:
    assert gate.parse_peer("ipv4:127.0.0.1:5000") == ("127.0.0.1", 5000)
    assert gate.parse_peer("ipv6:[::1]:5000") == ("::1", 5000)
    assert gate.parse_peer("ipv6:[::ffff:127.0.0.1]:5000") == ("127.0.0.1", 5000)
    assert gate.parse_peer("unix:/tmp/socket") is None
    assert gate.parse_peer("ipv4:not-an-address:1") is None


def test_the_callers_uid_and_our_end_are_read_from_proc_net_tcp(
    listener: socket.socket,
) -> None:
    client, ours, peer = _connect(listener)
    with client, ours:
        address = gate.parse_peer(peer)
        assert address is not None
        sockets = gate._read_tables(gate.TABLES)
        found = gate.connection(sockets, address, listener.getsockname()[1])
        assert found is not None
        uid, inode = found
        assert uid == os.getuid()
        assert os.readlink(f"/proc/self/fd/{ours.fileno()}") == f"socket:[{inode}]"
        # Another port, or a peer that is not there: undetermined, never a guess.
        assert gate.connection(sockets, address, listener.getsockname()[1] + 1) is None
        assert gate.connection(sockets, ("127.0.0.2", 1), listener.getsockname()[1]) is None


@pytest.mark.asyncio
async def test_a_verdict_is_kept_per_connection_and_dropped_with_it(
    listener: socket.socket,
) -> None:
    checker = gate.PeerGate()
    checker.port = listener.getsockname()[1]
    client, ours, peer = _connect(listener)
    assert await checker.caller(peer) == (os.getuid(), True)
    assert await checker.caller(peer) == (os.getuid(), False)  # cached: no second lookup
    assert checker.lookups == 1
    ours.close()
    client.close()
    # Another connection takes our end's descriptor number, as a later caller of any user
    # could: the verdict was tied to the socket, not the number, and is looked up afresh,
    # which finds the old connection gone.
    other, theirs, _ = _connect(listener)
    with other, theirs:
        assert await checker.caller(peer) == (None, True)
        assert checker.lookups == 2


@pytest.mark.asyncio
async def test_an_unknown_caller_is_none_and_not_cached(listener: socket.socket) -> None:
    checker = gate.PeerGate(tables=["/nonexistent/tcp"])
    checker.port = listener.getsockname()[1]
    client, ours, peer = _connect(listener)
    with client, ours:
        assert await checker.caller(peer) == (None, True)
        assert await checker.caller(peer) == (None, True)
        assert await checker.caller("unix:/tmp/x") == (None, True)


def test_loopback_names() -> None:
    for host in ("127.0.0.1", "127.0.0.5", "::1", "[::1]", "localhost"):
        assert gate.is_loopback(host), host
    for host in ("0.0.0.0", "::", "[::]", "192.0.2.1", ""):
        assert not gate.is_loopback(host), host
