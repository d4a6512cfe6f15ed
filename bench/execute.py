"""Benchmark: what a one-off execute costs, against driving a kernel by hand, in one run.

    .venv/bin/python bench/execute.py [--calls 300]

(a) raw jupyter_client: AsyncKernelClient.execute_interactive("1+1") on a warm stock ipykernel
    kernel (the floor: a kernel driven by hand);
(b) AsyncBridge.execute("return 1+1");
(c) the blocking Bridge.execute("return 1+1");
(d) a fresh `python -c` subprocess per call, the older bridges' way;
then the throughput of 200 concurrent executes with pool_size 2 against pool_size 1, and the
memory (RSS) of the host and of each idle kernel. Figures are medians and ratios of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

from jupyter_client.manager import AsyncKernelManager

import bridge


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def timed(fn: Callable[[], Awaitable[object]], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t)
    return out


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def raw_jupyter_client(calls: int) -> list[float]:
    km = AsyncKernelManager(kernel_name="python3")
    await km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)

        async def one() -> None:
            reply = await kc.execute_interactive("1+1", output_hook=lambda msg: None, timeout=30)
            assert reply["content"]["status"] == "ok"

        await timed(one, 50)  # warm-up
        return await timed(one, calls)
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)


async def bridge_async(calls: int) -> tuple[list[float], dict[str, float]]:
    async with bridge.AsyncBridge(pool_size=2) as b:

        async def one() -> None:
            r = await b.execute("return 1+1")
            assert r.value == 2

        await timed(one, 50)
        samples = await timed(one, calls)
        memory = {"host": rss_mb(os.getpid())}
        for i, k in enumerate(b.pool.kernels):
            if k.pid is not None:
                memory[f"kernel {i + 1}"] = rss_mb(k.pid)
        return samples, memory


def bridge_blocking(calls: int) -> list[float]:
    with bridge.Bridge(pool_size=2) as b:
        for _ in range(50):
            b.execute("return 1+1")
        out = []
        for _ in range(calls):
            t = time.perf_counter()
            b.execute("return 1+1")
            out.append(time.perf_counter() - t)
        return out


def subprocess_per_call(calls: int, python: str) -> list[float]:
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        done = subprocess.run([python, "-c", "print(1+1)"], capture_output=True)
        assert done.stdout == b"2\n"
        out.append(time.perf_counter() - t)
    return out


async def burst(b: bridge.AsyncBridge, n: int = 200) -> float:
    t = time.perf_counter()
    results = await asyncio.gather(*(b.execute("return 1+1") for _ in range(n)))
    elapsed = time.perf_counter() - t
    assert all(r.value == 2 for r in results)
    return n / elapsed


async def throughput(rounds: int = 3) -> tuple[float, float]:
    """Calls/s of 200 concurrent executes, pool 1 and pool 2: best of interleaved rounds."""
    async with bridge.AsyncBridge(pool_size=1) as one, bridge.AsyncBridge(pool_size=2) as two:
        for b in (one, two):
            await burst(b, 20)
        best = [0.0, 0.0]
        for _ in range(rounds):
            best[0] = max(best[0], await burst(one))
            best[1] = max(best[1], await burst(two))
        return best[0], best[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    n = args.calls

    a = asyncio.run(raw_jupyter_client(n))
    b, memory = asyncio.run(bridge_async(n))
    c = bridge_blocking(n)
    # The older bridge ran `python3 -c` as found on PATH (here possibly a pyenv shim); the
    # same with this interpreter's own path is shown beside it.
    python3 = shutil.which("python3") or sys.executable
    d = subprocess_per_call(max(30, n // 6), python3)
    d_direct = subprocess_per_call(max(30, n // 6), sys.executable)
    one, two = asyncio.run(throughput())

    rows = [
        ("(a) raw jupyter_client execute_interactive", a),
        ("(b) AsyncBridge.execute", b),
        ("(c) Bridge.execute (blocking)", c),
        (f"(d) {python3} -c per call", d),
        (f"    {sys.executable} -c per call", d_direct),
    ]
    print(
        f"kernel-bridge {bridge.__version__}, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cores"
    )
    print(f"{'':60} {'p50 ms':>8} {'p99 ms':>8}")
    for name, samples in rows:
        print(f"{name:60} {pct(samples, 0.5):8.2f} {pct(samples, 0.99):8.2f}")
    a50, b50, c50, d50 = (statistics.median(s) for s in (a, b, c, d))
    print()
    print(f"b/a  = {b50 / a50:5.2f}   (target <= 0.3)")
    print(f"c/a  = {c50 / a50:5.2f}   (target <= 1.2)")
    print(
        f"d/b  = {d50 / b50:5.2f}   (target >= 4.5; with this interpreter's own path: "
        f"{statistics.median(d_direct) / b50:.2f})"
    )
    print(
        f"throughput, 200 concurrent (best of 3): pool 1 {one:.0f}/s, pool 2 {two:.0f}/s, "
        f"2-vs-1 = {two / one:.2f}   (target >= 1.6)"
    )
    print("memory (RSS MB): " + ", ".join(f"{k} {v:.0f}" for k, v in memory.items()))


if __name__ == "__main__":
    main()
