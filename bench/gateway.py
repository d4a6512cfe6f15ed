"""Benchmark: the same bridge with local kernels and with kernels on a Kernel Gateway, one run.

    .venv/bin/python bench/gateway.py [--calls 300]

Starts a Jupyter Kernel Gateway on 127.0.0.1 with a token (as the tests do), then measures:
(a) AsyncBridge.execute("return 1+1") on a local kernel (pool_size 1), the baseline;
(b) the same call on a gateway kernel: websocket to the gateway, ZeroMQ from there;
(c) a batch of 8 concurrent executes over a pool of 2, local against gateway;
(d) backend.call("echo") on the echo example backend, local against gateway;
(a) and (b), like the two sides of (c) and (d), run interleaved: load from elsewhere hits both;
and what each gateway kernel costs: the host's memory per kernel (its websocket and state), the
gateway's memory per kernel, an idle kernel's own. Figures are medians and ratios of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))  # tests/gateways.py

from execute import pct, rss_mb, timed
from gateways import GatewayProcess

import bridge

ECHO = Path(__file__).resolve().parent.parent / "kernels" / "examples" / "echo_backend.py"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process *pid* so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def paired(
    local: bridge.AsyncBridge, remote: bridge.AsyncBridge, n: int, concurrent: int
) -> tuple[list[float], list[float]]:
    """Time *n* rounds of *concurrent* trivial executes on each bridge, interleaved (and in
    alternating order) so that load from elsewhere on the machine weighs on both alike."""

    def round_of(b: bridge.AsyncBridge) -> Callable[[], Awaitable[object]]:
        async def one() -> None:
            results = await asyncio.gather(*(b.execute("return 1+1") for _ in range(concurrent)))
            assert all(r.value == 2 for r in results), results

        return one

    return await interleaved(round_of(local), round_of(remote), n)


async def interleaved(
    on_local: Callable[[], Awaitable[object]], on_remote: Callable[[], Awaitable[object]], n: int
) -> tuple[list[float], list[float]]:
    """Time *n* of each, one of one then one of the other, the order alternating."""
    await timed(on_local, 20)  # warm-up
    await timed(on_remote, 20)
    a: list[float] = []
    b: list[float] = []
    for i in range(n):
        if i % 2:
            a += await timed(on_local, 1)
            b += await timed(on_remote, 1)
        else:
            b += await timed(on_remote, 1)
            a += await timed(on_local, 1)
    return a, b


async def paired_calls(
    local: bridge.AsyncBackend, remote: bridge.AsyncBackend, n: int
) -> tuple[list[float], list[float]]:
    """backend.call("echo") on each, interleaved like paired()."""

    def call(backend: bridge.AsyncBackend) -> Callable[[], Awaitable[object]]:
        async def one() -> None:
            assert (await backend.call("echo", {"data": "ping"}))["echo"] == "ping"

        return one

    return await interleaved(call(local), call(remote), n)


async def main(calls: int) -> None:
    gateway = await asyncio.to_thread(GatewayProcess("kernel_gateway").start)
    assert gateway.proc is not None
    remote = {"gateway_url": gateway.url, "gateway_token": gateway.token}
    try:
        async with (
            bridge.AsyncBridge(pool_size=1, gateway_url="") as lb,
            bridge.AsyncBridge(pool_size=1, **remote) as rb,  # type: ignore[arg-type]
        ):
            cpu0 = cpu_seconds(gateway.proc.pid)
            local, over = await paired(lb, rb, calls, 1)
            gw_cpu_ms = (cpu_seconds(gateway.proc.pid) - cpu0) / calls * 1000
        async with (
            bridge.AsyncBridge(pool_size=2, gateway_url="") as lb,
            bridge.AsyncBridge(pool_size=2, **remote) as rb,  # type: ignore[arg-type]
        ):
            local8, over8 = await paired(lb, rb, calls // 5, 8)

        echo = ECHO
        async with (
            bridge.AsyncBridge(pool_size=0, gateway_url="") as lb,
            bridge.AsyncBridge(pool_size=0, **remote) as rb,  # type: ignore[arg-type]
            await lb.spawn(echo) as local_echo,
            await rb.spawn(echo) as remote_echo,
        ):
            local_calls, remote_calls = await paired_calls(local_echo, remote_echo, calls)

        n = 8  # memory per kernel: a pool of n idle gateway kernels against none
        host0, gw0 = rss_mb(os.getpid()), rss_mb(gateway.proc.pid)
        async with bridge.AsyncBridge(pool_size=n, **remote) as b:  # type: ignore[arg-type]
            await asyncio.gather(*(b.execute("return 1") for _ in range(n)))
            await asyncio.sleep(1)
            host_per = (rss_mb(os.getpid()) - host0) / n
            gw_per = (rss_mb(gateway.proc.pid) - gw0) / n
            kernel_rss = statistics.median(rss_mb(p) for p in gateway.kernel_processes())
    finally:
        await asyncio.to_thread(gateway.stop)

    a, b50 = statistics.median(local) * 1000, statistics.median(over) * 1000
    c_local, c_over = statistics.median(local8) * 1000, statistics.median(over8) * 1000
    print(f"trivial execute, {calls} calls after warm-up   p50 ms   p99 ms")
    print(f"  (a) local kernel                        {a:7.2f}  {pct(local, 0.99):7.2f}")
    print(f"  (b) Kernel Gateway kernel (loopback)    {b50:7.2f}  {pct(over, 0.99):7.2f}")
    print(f"  b/a = {b50 / a:.2f}   (target <= 2.0)")
    print(f"  the gateway's CPU per execute (every message relayed): {gw_cpu_ms:.2f} ms")
    print("8 concurrent executes over a pool of 2            p50 ms per batch")
    print(f"  local {c_local:.2f}   gateway {c_over:.2f}   gateway/local = {c_over / c_local:.2f}")
    e_local, e_over = statistics.median(local_calls) * 1000, statistics.median(remote_calls) * 1000
    print("backend.call('echo') on the echo example                 p50 ms")
    print(f"  local {e_local:.2f}   gateway {e_over:.2f}   gateway/local = {e_over / e_local:.2f}")
    print(f"memory per gateway kernel, {n} idle kernels:")
    print(f"  host (bridge side) {host_per:.2f} MB   gateway process {gw_per:.2f} MB   ", end="")
    print(f"kernel process {kernel_rss:.1f} MB (ipykernel, idle, the runtime loaded)")
    print(f"(load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    asyncio.run(main(parser.parse_args().calls))
