"""Benchmark: what the HTTP service adds to a call, against the Python API on the same pool.

    .venv/bin/python bench/http.py [--calls 300] [--requests 400]

The service runs in this process (Jupyter Server with the kernel-bridge extension, pool of 2)
and the figures come from one run on its one pool:
(a) AsyncBridge.execute("return 1+1") on the service's own bridge (the baseline);
(b) POST /execute {"content": "return 1+1"} with httpx over a kept-alive connection;
then requests per second with 1, 8 and 32 concurrent clients, HTTP against the Python API
at the same concurrency, and POST /backends/{id}/call against backend.call when the backends
host API is there. Client and server share this process's one event loop, so (b) includes the
client's own cost (httpx), as a host's round trip does.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on sys.path, where "http.py" would shadow
# the standard library's http package (which httpx and tornado import).
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import secrets  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Awaitable, Callable  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
from traitlets.config import Config  # noqa: E402

import bridge  # noqa: E402
from bridge._server import BridgeApp  # noqa: E402


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def interleaved(
    a: Callable[[], Awaitable[object]], b: Callable[[], Awaitable[object]], n: int, block: int = 50
) -> tuple[list[float], list[float]]:
    """Time *a* and *b* n times each, in alternating blocks, so drift hits both alike."""
    out: tuple[list[float], list[float]] = ([], [])
    for fn in (a, b):  # warm-up
        for _ in range(block):
            await fn()
    while len(out[0]) < n:
        for fn, samples in ((a, out[0]), (b, out[1])):
            for _ in range(min(block, n - len(samples))):
                t = time.perf_counter()
                await fn()
                samples.append(time.perf_counter() - t)
    return out


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


async def measure(app: Any, url: str, token: str, calls: int, requests: int) -> dict[str, Any]:
    service = app.service
    await service.wait_ready()
    b = service.bridge
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    headers = {"Authorization": f"token {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits) as http:

        async def api() -> None:
            r = await b.execute("return 1+1")
            assert r.value == 2

        async def post() -> None:
            r = await http.post("/execute", json={"content": "return 1+1"})
            assert r.json()["result"] == 2

        latency = await interleaved(api, post, calls)
        rates = {}
        for clients in (1, 8, 32):
            rates[clients] = (
                await rate(api, clients, requests),
                await rate(post, clients, requests),
            )
        backend = await measure_backends(b, http, calls)
    return {"latency": latency, "rates": rates, "backend": backend}


async def measure_backends(
    b: bridge.AsyncBridge, http: httpx.AsyncClient, calls: int
) -> tuple[list[float], list[float]] | None:
    if not hasattr(b, "spawn"):
        return None
    script = (
        "from bridge_runtime import PythonBridge\n\n"
        "class Echo(PythonBridge):\n"
        "    def echo(self, value):\n"
        "        return value\n"
    )
    r = await http.post("/backends", json={"script": script})
    r.raise_for_status()
    backend_id = r.json()["id"]
    try:
        backend = http_backend = None
        for candidate in getattr(b, "backends", []):
            if getattr(candidate, "id", None) == backend_id:
                backend = candidate
        if backend is None:
            return None

        async def direct() -> None:
            assert await backend.call("echo", {"value": 1}) == 1

        async def post() -> None:
            resp = await http.post(
                f"/backends/{backend_id}/call", json={"cmd": "echo", "params": {"value": 1}}
            )
            assert resp.json()["result"] == 1

        del http_backend
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
            url = f"http://127.0.0.1:{serverapp.port}"
            figures.update(await measure(app, url, token, args.calls, args.requests))
        finally:
            serverapp.stop()

    serverapp.io_loop.add_callback(run)
    serverapp.start()
    if not figures:
        sys.exit("the benchmark did not finish; see the log above")

    api, post = figures["latency"]
    print(
        f"kernel-bridge {bridge.__version__}, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cores, pool of 2"
    )
    print(f"{'':48} {'p50 ms':>8} {'p99 ms':>8}")
    print(f"{'(a) AsyncBridge.execute':48} {pct(api, 0.5):8.2f} {pct(api, 0.99):8.2f}")
    print(f"{'(b) POST /execute':48} {pct(post, 0.5):8.2f} {pct(post, 0.99):8.2f}")
    overhead = (statistics.median(post) - statistics.median(api)) * 1000
    print(
        f"HTTP overhead at p50 = {overhead:.2f} ms (target <= 1 ms), "
        f"b/a = {statistics.median(post) / statistics.median(api):.2f}"
    )
    print()
    print(f"{'requests/s':12} {'Python API':>11} {'HTTP':>8} {'HTTP/API':>9}")
    for clients, (api_rate, http_rate) in figures["rates"].items():
        print(
            f"{clients:>3} clients  {api_rate:11.0f} {http_rate:8.0f} {http_rate / api_rate:9.2f}"
        )
    backend = figures["backend"]
    print()
    if backend is None:
        print("backend calls: not measured (this build has no backends host API)")
    else:
        direct, over_http = backend
        print(f"{'(c) backend.call':48} {pct(direct, 0.5):8.2f} {pct(direct, 0.99):8.2f}")
        print(
            f"{'(d) POST /backends/{id}/call':48} {pct(over_http, 0.5):8.2f} "
            f"{pct(over_http, 0.99):8.2f}"
        )
        extra = (statistics.median(over_http) - statistics.median(direct)) * 1000
        print(f"HTTP overhead at p50 = {extra:.2f} ms")


if __name__ == "__main__":
    main()
