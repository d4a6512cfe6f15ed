"""Benchmark: the HTTP service and the Python API on one pool, in one process.

    .venv/bin/python bench/http_in_process.py [--calls 300] [--requests 400]

What a host pays per call across processes, against the floor of an HTTP round trip, is
bench/http_service.py's; this one keeps what needs both sides on one pool: requests per second
at 1, 8 and 32 clients, backend calls, and the first output of a streamed execute.

The service runs in this process (Jupyter Server with the kernel-bridge extension, pool of 2)
and every figure comes from one run on its one pool:
(a) AsyncBridge.execute("return 1+1") on the service's own bridge: the baseline;
(b) POST /execute {"content": "return 1+1"} from a minimal keep-alive HTTP/1.1 client, about
    what a Go or Node host spends on its side: (b) - (a) is the service's own overhead;
(c) the same POST with httpx, a Python host's usual client, whose own cost shows beside it;
then requests per second with 1, 8 and 32 concurrent clients, HTTP (b's client, one
connection each) against the Python API at the same concurrency; and backend calls,
POST /backends/{id}/call against backend.call on the same backend; and the first-output
latency of a streamed execute (`Accept: text/event-stream`, code that prints and then sleeps
SLEEP s): the time to its first `stdout` event against the time of the whole call, beside the
Python API's `on_output` on the same pool. Clients and server share this process's one event
loop; calls alternate in blocks so drift hits both sides alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from rawhttp import RawClient
from timing import interleaved, pct
from traitlets.config import Config

import bridge
from bridge.server import BridgeApp


async def rate(fn: Callable[[], Awaitable[object]], clients: int, requests: int) -> float:
    """Requests per second of *clients* workers sharing *requests* calls."""
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await fn()

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return requests / (time.perf_counter() - t)


async def measure(app: Any, port: int, token: str, calls: int, requests: int) -> dict[str, Any]:
    service = app.service
    await service.wait_ready()
    b = service.bridge
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"token {token}"}
    body = json.dumps({"content": "return 1+1"}).encode()
    raw = [RawClient(port, token) for _ in range(32)]
    async with httpx.AsyncClient(base_url=url, headers=headers) as http:

        async def api() -> None:
            r = await b.execute("return 1+1")
            assert r.value == 2

        async def post() -> None:
            assert (await raw[0].post("/execute", body))["result"] == 2

        async def post_httpx() -> None:
            r = await http.post("/execute", content=body)
            assert r.json()["result"] == 2

        latency = await interleaved(api, post, calls)
        with_httpx = await interleaved(api, post_httpx, calls)
        rates = {}
        for clients in (1, 8, 32):
            free = list(raw[:clients])  # one connection per concurrent client

            async def pooled(free: list[RawClient] = free) -> None:
                client = free.pop()
                try:
                    assert (await client.post("/execute", body))["result"] == 2
                finally:
                    free.append(client)

            rates[clients] = (
                await rate(api, clients, requests),
                await rate(pooled, clients, requests),
            )
        backend = await measure_backends(app, http, raw[0], calls)
        streamed = await measure_streaming(b, http, max(10, calls // 15))
    for client in raw:
        client.close()
    return {
        "latency": latency,
        "httpx": with_httpx,
        "rates": rates,
        "backend": backend,
        "streamed": streamed,
    }


SLEEP = 0.25
PRINT_THEN_SLEEP = f"import time\nprint('first', flush=True)\ntime.sleep({SLEEP})\nreturn 1"


async def measure_streaming(
    b: bridge.AsyncBridge, http: httpx.AsyncClient, n: int
) -> dict[str, list[float]]:
    """Time to the first output and to the end: streamed over HTTP, and with on_output."""
    out: dict[str, list[float]] = {"http_first": [], "http_end": [], "api_first": [], "api_end": []}
    body = {"content": PRINT_THEN_SLEEP}
    events = {"Accept": "text/event-stream"}
    for i in range(n + 2):  # the first two warm up
        t = time.perf_counter()
        first = end = 0.0
        async with http.stream("POST", "/execute", json=body, headers=events) as r:
            async for line in r.aiter_lines():
                if line == "event: stdout" and not first:
                    first = time.perf_counter() - t
                elif line == "event: end":
                    end = time.perf_counter() - t
        heard: list[float] = []
        t2 = time.perf_counter()
        await b.execute(
            PRINT_THEN_SLEEP, on_output=lambda o, h=heard: h.append(time.perf_counter())
        )
        api_end = time.perf_counter() - t2
        if i >= 2:
            out["http_first"].append(first)
            out["http_end"].append(end)
            out["api_first"].append(heard[0] - t2)
            out["api_end"].append(api_end)
    return out


async def measure_backends(
    app: Any, http: httpx.AsyncClient, client: RawClient, calls: int
) -> tuple[list[float], list[float]]:
    """backend.call("echo") against POST /backends/{id}/call, on one backend."""
    script = (Path(bridge.__file__).parent.parent / "kernels/examples/echo_backend.py").read_text()
    r = await http.post("/backends", json={"script": script})
    r.raise_for_status()
    backend_id = r.json()["id"]
    backend = app.service.backends[backend_id].backend
    try:

        async def direct() -> None:
            assert (await backend.call("echo", {"data": 1}))["echo"] == 1

        request = json.dumps({"cmd": "echo", "params": {"data": 1}}).encode()

        async def post() -> None:
            resp = await client.post(f"/backends/{backend_id}/call", request)
            assert resp["result"]["echo"] == 1

        return await interleaved(direct, post, calls)
    finally:
        await http.delete(f"/backends/{backend_id}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300, help="sequential calls per variant")
    parser.add_argument("--requests", type=int, default=400, help="calls per throughput figure")
    args = parser.parse_args()

    token = secrets.token_hex(16)
    config = Config()
    config.ServerApp.ip = "127.0.0.1"
    config.ServerApp.port = 0
    config.ServerApp.open_browser = False
    config.ServerApp.log_level = "WARN"
    config.ServerApp.allow_root = True
    config.ServerApp.allow_unauthenticated_access = False
    config.IdentityProvider.token = token
    config.BridgeApp.pool_size = 2
    serverapp = BridgeApp.initialize_server(argv=[], config=config)
    app = serverapp.extension_manager.extension_points[BridgeApp.name].app
    figures: dict[str, Any] = {}

    async def run() -> None:
        try:
            figures.update(await measure(app, serverapp.port, token, args.calls, args.requests))
        finally:
            serverapp.stop()

    serverapp.io_loop.add_callback(run)
    serverapp.start()
    if not figures:
        sys.exit("the benchmark did not finish; see the log above")

    api, post = figures["latency"]
    api2, post_httpx = figures["httpx"]
    print(
        f"kernel-bridge {bridge.__version__}, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cores, pool of 2"
    )
    print(f"{'':48} {'p50 ms':>8} {'p99 ms':>8}")
    rows = [
        ("(a) AsyncBridge.execute", api),
        ("(b) POST /execute, minimal keep-alive client", post),
        ("(c) POST /execute, httpx", post_httpx),
    ]
    for name, samples in rows:
        print(f"{name:48} {pct(samples, 0.5):8.2f} {pct(samples, 0.99):8.2f}")
    a50, b50 = statistics.median(api), statistics.median(post)
    c_over = (statistics.median(post_httpx) - statistics.median(api2)) * 1000
    overhead = (b50 - a50) * 1000
    print(f"HTTP overhead at p50: b-a = {overhead:.2f} ms (in one process), b/a = {b50 / a50:.2f}")
    print(f"                      c-a = {c_over:.2f} ms (with httpx's own cost)")
    print()
    print(f"{'requests/s':12} {'Python API':>11} {'HTTP':>8} {'HTTP/API':>9}")
    for clients, (api_rate, http_rate) in figures["rates"].items():
        print(
            f"{clients:>3} clients  {api_rate:11.0f} {http_rate:8.0f} {http_rate / api_rate:9.2f}"
        )
    direct, over_http = figures["backend"]
    print()
    print(f"{'(c) backend.call':48} {pct(direct, 0.5):8.2f} {pct(direct, 0.99):8.2f}")
    print(
        f"{'(d) POST /backends/{id}/call':48} {pct(over_http, 0.5):8.2f} "
        f"{pct(over_http, 0.99):8.2f}"
    )
    extra = (statistics.median(over_http) - statistics.median(direct)) * 1000
    print(f"HTTP overhead at p50 = {extra:.2f} ms")
    s = figures["streamed"]
    print()
    print(f"streamed execute: print, then sleep {SLEEP:g} s ({len(s['http_first'])} calls)")
    print(f"{'':48} {'p50 ms':>8} {'p99 ms':>8}")
    for name, key in (
        ("(e) HTTP: first stdout event", "http_first"),
        ("(e) HTTP: end event (the whole call)", "http_end"),
        ("(f) AsyncBridge on_output: first output", "api_first"),
        ("(f) AsyncBridge: the whole call", "api_end"),
    ):
        print(f"{name:48} {pct(s[key], 0.5):8.2f} {pct(s[key], 0.99):8.2f}")
    ratio = statistics.median(s["http_first"]) / statistics.median(s["http_end"])
    print(f"first output at {ratio:.1%} of the call's time over HTTP")


if __name__ == "__main__":
    main()
