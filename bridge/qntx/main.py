"""``qntx-python-plugin``: the executable QNTX's core launches as its Python plugin.

    qntx-python-plugin --port 38700        # as QNTX starts it: the port, or the next free one
    qntx-python-plugin --address 127.0.0.1:9000

It binds (trying the next port, up to 10, when one is taken), prints ``QNTX_PLUGIN_PORT=N`` on
stdout and logs to stderr. SIGTERM or SIGINT shuts every kernel down, then the server.

Only the plugin's own user may call it (gate.py): a call from another local user's socket is
refused with PERMISSION_DENIED before it reaches any service, unless ``--allow-any-local-user``.
It listens on loopback only, unless ``--allow-non-loopback`` is given with another interface.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

import grpc
from grpc_reflection.v1alpha import reflection

import bridge

from . import gate, servicer
from .protocol import MAX_MESSAGE, SERVICE_NAMES, domain_rpc, python_rpc

log = logging.getLogger("bridge.qntx")

PORT_TRIES = 10
CLOSE_WITHIN = 2.5  # seconds the kernels get to shut down (QNTX kills the group after 3)

OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    # The core pings every 30 s, also with no call in flight: answer, never GOAWAY.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 1000),
    ("grpc.http2.max_ping_strikes", 0),
    # A port another process holds must fail to bind, so the next one is tried.
    ("grpc.so_reuseport", 0),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="qntx-python-plugin",
        description="kernel-bridge as QNTX's Python plugin (gRPC DomainPluginService).",
    )
    parser.add_argument("--port", type=int, default=9000, help="port to listen on (default 9000)")
    parser.add_argument(
        "--address", help="host:port to listen on, instead of 127.0.0.1:PORT (no retry)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface with --port (default 127.0.0.1)"
    )
    parser.add_argument(
        "--allow-any-local-user",
        action="store_true",
        help="answer every caller that reaches the port, not only the plugin's own user "
        "(any local user can then run code as this one)",
    )
    parser.add_argument(
        "--allow-non-loopback",
        action="store_true",
        help="let --host/--address name an interface other than loopback",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warn", "warning", "error"]
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {bridge.__version__}")
    return parser.parse_args(argv)


def bind_host(args: argparse.Namespace) -> str:
    """The host the plugin is asked to listen on."""
    if args.address:
        return str(args.address).rpartition(":")[0] if ":" in args.address else args.address
    return str(args.host)


def check_interface(args: argparse.Namespace) -> None:
    """Raise OSError for a non-loopback interface unless --allow-non-loopback was given."""
    host = bind_host(args)
    if args.address and args.address.startswith("unix:"):
        host = args.address
    elif gate.is_loopback(host):
        return
    if not args.allow_non_loopback:
        raise OSError(
            f"{host!r} is not a loopback interface: give --allow-non-loopback to listen there"
        )
    reach = (
        "every local user"
        if args.allow_any_local_user
        else "every host that can route to it; only the plugin's own local user is answered"
    )
    log.warning(
        "listening on %s, not on loopback: the port (which runs code) is open to %s",
        host,
        reach,
    )


def _bind(server: grpc.aio.Server, address: str) -> int:
    try:
        return int(server.add_insecure_port(address))
    except RuntimeError:
        return 0


def bind(server: grpc.aio.Server, args: argparse.Namespace) -> int:
    """Bind the server; the port it got. Raises OSError when it cannot."""
    if args.address:
        port = _bind(server, args.address)
        if not port:
            raise OSError(f"could not listen on {args.address}")
        return port
    host = f"[{args.host}]" if ":" in args.host else args.host
    for offset in range(PORT_TRIES if args.port else 1):
        port = _bind(server, f"{host}:{args.port + offset}")
        if port:
            return port
        log.warning("port %d is taken, trying %d", args.port + offset, args.port + offset + 1)
    raise OSError(f"no free port among {args.port}..{args.port + PORT_TRIES - 1} on {args.host}")


async def serve(args: argparse.Namespace) -> int:
    try:
        check_interface(args)
    except OSError as exc:
        log.error("%s", exc)
        return 1
    peers = None
    if args.allow_any_local_user:
        log.warning(
            "--allow-any-local-user: every local user who reaches the port can run code as uid %d",
            os.getuid(),
        )
    else:
        peers = gate.PeerGate()
    interceptors = [gate.PeerGateInterceptor(peers)] if peers is not None else []
    server = grpc.aio.server(options=OPTIONS, interceptors=interceptors)
    core = servicer.Core()
    domain_rpc.add_DomainPluginServiceServicer_to_server(servicer.DomainPlugin(core), server)
    python_rpc.add_PythonServiceServicer_to_server(servicer.PythonService(core), server)
    reflection.enable_server_reflection((*SERVICE_NAMES, reflection.SERVICE_NAME), server)
    try:
        port = bind(server, args)
    except OSError as exc:
        log.error("%s", exc)
        return 1
    if peers is not None:
        peers.port = port
    await server.start()
    print(f"QNTX_PLUGIN_PORT={port}", flush=True)
    log.info("kernel-bridge %s: QNTX plugin listening on port %d", bridge.__version__, port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    core.load()  # the service layer, now that the port is out
    await stop.wait()
    log.info("stopping: shutting every kernel down")
    try:
        await asyncio.wait_for(core.close(), CLOSE_WITHIN)
    except TimeoutError:
        log.error("the kernels did not all shut down within %.1f s", CLOSE_WITHIN)
    except Exception:
        log.exception("shutting the kernels down failed")
    await server.stop(grace=0.2)
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    level = "WARNING" if args.log_level == "warn" else args.log_level.upper()
    logging.basicConfig(
        stream=sys.stderr,
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
