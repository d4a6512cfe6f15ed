"""Benchmark: what the HTTP service adds to a call, against the floor of an HTTP round trip.

    .venv/bin/python bench/http_service.py [--calls 600] [--block 10]

Three processes, as a host sees them:
(a) ``AsyncBridge.execute("return 1+1")`` in this process, warm pool of 2: the baseline;
(b) ``POST /execute {"content": "return 1+1"}`` to a ``kernel-bridge serve --pool-size 2``
    process, from a keep-alive ``http.client`` connection: (b) - (a) is what the service adds;
(f) the same POST, same client, to a bare tornado handler in a process of its own
    (bench/http_floor.py) that checks the token, parses the body and answers a fixed JSON of
    the size of (b)'s answer: the floor of an HTTP round trip from this client.
The target is (b) - (a) <= 2x (f) (moonshot 1.3x). The three alternate in blocks of BLOCK calls
so the load of a shared machine hits them alike; figures are p50 of CALLS calls each.
Beside the wall times, the CPU each path costs per call in the process that serves it (this
process for (a), the service's for (b), the floor's for (f); from the scheduler's run time of
every thread, /proc/PID/task/*/schedstat), which a loaded machine disturbs far less.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from timing import pct

import bridge

HERE = Path(__file__).resolve().parent
KERNEL_BRIDGE = str(Path(sys.executable).with_name("kernel-bridge"))
BODY = json.dumps({"content": "return 1+1"}).encode()


class Client:
    """One keep-alive ``http.client`` connection posting BODY to /execute."""

    def __init__(self, port: int, token: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port)
        self.headers = {"Authorization": f"token {token}", "Content-Type": "application/json"}

    def post(self) -> bytes:
        self.conn.request("POST", "/execute", BODY, self.headers)
        response = self.conn.getresponse()
        data = response.read()
        assert response.status == 200, (response.status, data)
        return data


def cpu_seconds(pid: int) -> float:
    """Run time of every thread of *pid* so far (the scheduler's, in ns), in seconds."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError):
            pass  # a thread that ended meanwhile
    return total / 1e9


def start(cmd: list[str], env: dict[str, str], ready: Callable[[str], str | None]) -> Any:
    """Start *cmd* with a stdin pipe (its end stops it); return (process, what *ready* found
    in the first stdout line it accepts)."""
    process = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True
    )
    assert process.stdout is not None
    for line in process.stdout:
        found = ready(line)
        if found:
            return process, found
    sys.exit(f"{cmd[0]} exited before it was ready (status {process.wait()})")


def serve(token: str) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "JUPYTER_TOKEN": token}
    cmd = [KERNEL_BRIDGE, "serve", "--port", "0", "--pool-size", "2"]
    cmd += ["--log-level", "warning", "--watch-stdin"]

    def ready(line: str) -> str | None:
        return line.split("serving at ")[1].strip() if "serving at " in line else None

    process, url = start(cmd, env, ready)
    return process, int(url.rstrip("/").rsplit(":", 1)[1])


def floor(token: str, size: int) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "FLOOR_TOKEN": token}
    cmd = [sys.executable, str(HERE / "http_floor.py"), str(size)]
    process, port = start(
        cmd, env, lambda line: line.split()[1] if line.startswith("port") else None
    )
    return process, int(port)


async def measure(calls: int, block: int) -> dict[str, list[float]]:
    token = secrets.token_hex(16)
    service, service_port = serve(token)
    floor_process = None
    try:
        http_service = Client(service_port, token)
        size = len(http_service.post())
        assert json.loads(http_service.post())["result"] == 2
        floor_process, floor_port = floor(token, size)
        http_floor = Client(floor_port, token)
        assert len(http_floor.post()) == size
        async with bridge.AsyncBridge(pool_size=2) as b:

            async def api() -> None:
                assert (await b.execute("return 1+1")).value == 2

            async def post() -> None:
                http_service.post()

            async def bare() -> None:
                http_floor.post()

            variants = {"api": api, "service": post, "floor": bare}
            server = {"api": os.getpid(), "service": service.pid, "floor": floor_process.pid}
            samples: dict[str, list[float]] = {name: [] for name in variants}
            cpu = dict.fromkeys(variants, 0.0)
            for fn in variants.values():  # warm-up
                for _ in range(block):
                    await fn()
            while len(samples["floor"]) < calls:
                for name, fn in variants.items():
                    used = cpu_seconds(server[name])
                    for _ in range(min(block, calls - len(samples[name]))):
                        t = time.perf_counter()
                        await fn()
                        samples[name].append(time.perf_counter() - t)
                    cpu[name] += cpu_seconds(server[name]) - used
        samples["size"] = [float(size)]
        samples.update({f"cpu_{name}": [cpu[name] / calls] for name in variants})
        return samples
    finally:
        for process in (service, floor_process):
            if process is not None:
                assert process.stdin is not None
                process.stdin.close()  # --watch-stdin / the floor: stop
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=600, help="calls per variant")
    parser.add_argument("--block", type=int, default=10, help="calls per block, interleaved")
    args = parser.parse_args()
    s = asyncio.run(measure(args.calls, args.block))
    load = os.getloadavg()[0]
    print(
        f"kernel-bridge {bridge.__version__}, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cores, load average {load:.1f}, pool of 2, {args.calls} calls each, "
        f"answer {int(s['size'][0])} bytes"
    )
    print(f"{'':58} {'p50 ms':>8} {'p90 ms':>8}")
    rows = [
        ("(a) AsyncBridge.execute, in this process", "api"),
        ("(b) POST /execute to `kernel-bridge serve`, http.client", "service"),
        ("(f) the same POST to a bare tornado handler (the floor)", "floor"),
    ]
    for name, key in rows:
        print(f"{name:58} {pct(s[key], 0.5):8.3f} {pct(s[key], 0.9):8.3f}")
    a, b, f = (statistics.median(s[k]) * 1000 for k in ("api", "service", "floor"))
    print(
        f"the service adds b - a = {b - a:.3f} ms per call; floor f = {f:.3f} ms; "
        f"(b - a) / f = {(b - a) / f:.2f} (target <= 2, moonshot <= 1.3)"
    )
    ca, cb, cf = (s[f"cpu_{k}"][0] * 1000 for k in ("api", "service", "floor"))
    print(
        f"CPU per call in the serving process: (a) {ca:.3f} ms, (b) {cb:.3f} ms, (f) {cf:.3f} ms; "
        f"b - a = {cb - ca:.3f} ms, (b - a) / f = {(cb - ca) / cf:.2f}"
    )


if __name__ == "__main__":
    main()
