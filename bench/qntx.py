"""Benchmark: QNTX's plugin against the HTTP service, for a call and for a streamed first frame.

    .venv/bin/python bench/qntx.py [--calls 300] [--streams 100]

Both run as QNTX and a host would run them, as processes of their own with one warm kernel
each: `qntx-python-plugin --port N` (Initialize'd, as QNTX's core does), and
`kernel-bridge serve`. From this process, the same body {"content": "return 1+1"} goes
(a) as POST /execute from a minimal keep-alive HTTP/1.1 client, about what a Go host spends,
(b) as HandleHTTP(POST /execute) on one gRPC channel, as QNTX's core tunnels it;
sequentially, alternating in blocks so drift hits both alike. Prints p50/p90 of each and the
ratio of the p50s (target: at most 1.2).

Then the time to the first streamed frame of the same code (it prints, flushes, sleeps 20 ms,
ends): (a) as POST /execute with ``Accept: text/event-stream`` from the same raw client, until
the first event's ``data:`` line; (b) as a ``run`` frame on one HandleWebSocket stream, as
QNTX's core proxies a browser's websocket, until the first frame of that run. Same blocks,
same statistics.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from rawhttp import RawClient
from timing import interleaved, interleaved_values, pct

from bridge.qntx.protocol import domain_pb, domain_rpc

BIN = Path(sys.executable).parent
BODY = json.dumps({"content": "return 1+1"}).encode()
STREAMED = {"content": "import time\nprint('first', flush=True)\ntime.sleep(0.02)"}
WS = domain_pb.WebSocketMessage


def start_service(token: str) -> tuple[subprocess.Popen[bytes], int, Any]:
    out = tempfile.NamedTemporaryFile(prefix="kb-bench-", suffix=".out")  # noqa: SIM115
    cmd = [str(BIN / "kernel-bridge"), "serve", "--port", "0", "--pool-size", "1"]
    proc = subprocess.Popen([*cmd, "--token", token], stdout=out, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        text = Path(out.name).read_text()
        match = re.search(r"serving at http://[^:]+:(\d+)/", text)
        if match and "Ctrl-C" in text:
            return proc, int(match.group(1)), out
        if proc.poll() is not None:
            raise SystemExit(f"kernel-bridge serve exited:\n{text}")
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("kernel-bridge serve did not start")


def start_plugin() -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(BIN / "qntx-python-plugin"), "--port", str(port), "--log-level", "warn"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("QNTX_PLUGIN_PORT="):
        proc.kill()
        raise SystemExit(f"the plugin did not announce its port: {line!r}")
    return proc, int(line.split("=", 1)[1])


async def first_frames(raw: RawClient, stub: Any, calls: int) -> Any:
    """(HTTP SSE, HandleWebSocket) seconds to the first streamed frame of STREAMED."""
    body = json.dumps(STREAMED).encode()
    socket_call = stub.HandleWebSocket()
    await socket_call.write(WS(type=WS.CONNECT))
    refs = iter(range(10**9))

    async def over_sse() -> float:
        return await raw.first_event("/execute", body)

    async def over_websocket() -> float:
        ref = str(next(refs))
        frame = {"ref": ref, "op": "run", "path": "/execute", "body": STREAMED}
        started = time.perf_counter()
        await socket_call.write(WS(type=WS.DATA, data=json.dumps(frame).encode()))
        first = 0.0
        while True:
            reply = json.loads((await socket_call.read()).data)
            assert reply["ref"] == ref, reply
            if not first:
                first = time.perf_counter() - started
                assert reply["event"] == "stdout", reply
            if reply["event"] == "end":
                assert reply["data"]["success"] is True, reply
                return first

    try:
        return await interleaved_values(over_sse, over_websocket, calls, block=25)
    finally:
        await socket_call.done_writing()


async def measure(http_port: int, token: str, plugin_port: int, calls: int, streams: int) -> Any:
    raw = RawClient(http_port, token)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plugin_port}") as channel:
        stub = domain_rpc.DomainPluginServiceStub(channel)
        await stub.Initialize(domain_pb.InitializeRequest(config={"pool_size": "1"}), timeout=120)
        request = domain_pb.HTTPRequest(method="POST", path="/execute", body=BODY)

        async def over_http() -> None:
            assert (await raw.post("/execute", BODY))["result"] == 2

        async def over_grpc() -> None:
            reply = await stub.HandleHTTP(request, timeout=30)
            assert reply.status_code == 200 and json.loads(reply.body)["result"] == 2

        try:
            timed = await interleaved(over_http, over_grpc, calls)
            return timed, await first_frames(raw, stub, streams)
        finally:
            raw.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300, help="sequential calls per transport")
    parser.add_argument("--streams", type=int, default=100, help="streamed calls per transport")
    args = parser.parse_args()
    token = secrets.token_hex(16)
    service, http_port, out = start_service(token)
    plugin, plugin_port = start_plugin()
    try:
        (http, tunnel), (sse, websocket) = asyncio.run(
            measure(http_port, token, plugin_port, args.calls, args.streams)
        )
    finally:
        for proc in (plugin, service):
            proc.terminate()
            proc.wait(30)
        out.close()
    print(f"QNTX plugin vs HTTP service, POST /execute 'return 1+1', {args.calls} calls each")
    print(f"  {'transport':<34} {'p50 ms':>8} {'p90 ms':>8}")
    print(f"  {'HTTP /execute (raw keep-alive)':<34} {pct(http, 0.5):8.2f} {pct(http, 0.9):8.2f}")
    print(f"  {'gRPC HandleHTTP /execute':<34} {pct(tunnel, 0.5):8.2f} {pct(tunnel, 0.9):8.2f}")
    ratio = pct(tunnel, 0.5) / pct(http, 0.5)
    print(f"  ratio of p50s (HandleHTTP / HTTP): {ratio:.2f}x (target <= 1.2x)")
    print(f"First streamed frame of a printing call, {args.streams} calls each")
    print(f"  {'transport':<34} {'p50 ms':>8} {'p90 ms':>8}")
    print(f"  {'HTTP SSE /execute (raw keep-alive)':<34} {pct(sse, 0.5):8.2f} {pct(sse, 0.9):8.2f}")
    print(
        f"  {'gRPC HandleWebSocket run':<34} {pct(websocket, 0.5):8.2f} {pct(websocket, 0.9):8.2f}"
    )
    ratio = pct(websocket, 0.5) / pct(sse, 0.5)
    print(f"  ratio of p50s (HandleWebSocket / SSE): {ratio:.2f}x")


if __name__ == "__main__":
    main()
