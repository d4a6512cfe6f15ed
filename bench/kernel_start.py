"""Benchmark: what a kernel start costs, forked from the fork server against a new interpreter.

    .venv/bin/python bench/kernel_start.py [--starts 20]

Times, on the same kernel spec (the bridge's), the time from a start request
(``MultiKernelManager.start_kernel``) to the kernel's ``kernel_info_reply``, and the CPU it
cost (the host, the kernel and, for forks, the fork server), for:
(a) jupyter_client's default LocalProvisioner: a new interpreter per kernel;
(b) the fork-server provisioner (``kernel-bridge-fork``), its server started beforehand.
Starts alternate between (a) and (b), one kernel at a time, each shut down before the next.
Then the recovery time: from a pool kernel's SIGKILL until the pool has a ready replacement.
Figures are medians and ratios of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time

from jupyter_client.multikernelmanager import AsyncMultiKernelManager

import bridge
from bridge.transports.local import forkserver
from bridge.transports.local.factory import (
    KERNEL_NAME,
    BridgeSpecManager,
    bridge_kernel_spec,
)

CLK = os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a live process has used, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def host_cpu() -> float:
    t = os.times()
    return t.user + t.system


async def one_start(
    mkm: AsyncMultiKernelManager, env: dict[str, str], context: object
) -> tuple[float, float]:
    """(wall, CPU) seconds of one start until kernel_info answers."""
    servers = [s.process.pid for s in forkserver._servers.values() if not s.dead]
    cpu0 = host_cpu() + sum(cpu_of(p) for p in servers)
    t0 = time.perf_counter()
    kernel_id = await mkm.start_kernel(kernel_name=KERNEL_NAME, env=env, cwd=os.getcwd())
    km = mkm.get_kernel(kernel_id)
    # The bridge's ZeroMQ context (reconnects every 10 ms, not 100): the same for both.
    kc = km.client(context=context)
    kc.start_channels()
    try:
        kc.kernel_info()
        reply = await kc.get_shell_msg(timeout=60)
        assert reply["msg_type"] == "kernel_info_reply"
        wall = time.perf_counter() - t0
        pid = km.provisioner.pid
        cpu = host_cpu() - cpu0 + cpu_of(pid) + sum(cpu_of(p) for p in servers)
    finally:
        kc.stop_channels()
        await mkm.shutdown_kernel(kernel_id, now=True)
    return wall, cpu


async def starts(n: int) -> dict[str, list[tuple[float, float]]]:
    python = sys.executable
    managers = {
        name: AsyncMultiKernelManager(
            kernel_spec_manager=BridgeSpecManager(bridge_kernel_spec(python, fork_server=fork))
        )
        for name, fork in (("local", False), ("fork", True))
    }
    # The bridge's kernel environment (its PYTHONPATH finds bridge_runtime).
    from bridge.transports.local.factory import KernelFactory

    factory = KernelFactory(fork_server=True)  # holds and starts the fork server
    env = factory.kernel_env()
    out: dict[str, list[tuple[float, float]]] = {"local": [], "fork": []}
    try:
        await one_start(
            managers["fork"], env, factory.context
        )  # the server has imported; warm both paths
        await one_start(managers["local"], env, factory.context)
        for _ in range(n):
            for name, mkm in managers.items():
                out[name].append(await one_start(mkm, env, factory.context))
    finally:
        await factory.close()
    return out


async def recovery(rounds: int) -> list[float]:
    """Seconds from a pool kernel's SIGKILL until the pool has a ready replacement."""
    out = []
    async with bridge.AsyncBridge(pool_size=1) as b:
        for _ in range(rounds):
            kernel = b.pool.kernels[0]
            assert kernel.pid is not None
            t0 = time.perf_counter()
            os.kill(kernel.pid, signal.SIGKILL)
            while True:
                ready = [k for k in b.pool.kernels if k.alive and k is not kernel]
                if ready:
                    break
                await asyncio.sleep(0.001)
            out.append(time.perf_counter() - t0)
            assert (await b.evaluate("1 + 1")).value == 2
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=20)
    args = parser.parse_args()
    results = asyncio.run(starts(args.starts))
    healed = asyncio.run(recovery(max(5, args.starts // 2)))
    print(
        f"kernel-bridge {bridge.__version__}, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'start -> kernel_info_reply, ' + str(args.starts) + ' starts each':58} "
        f"{'p50 ms':>8} {'p90 ms':>8} {'CPU ms':>8}"
    )
    med = {}
    for name, label in (
        ("local", "(a) LocalProvisioner: a new interpreter"),
        ("fork", "(b) fork-server provisioner"),
    ):
        walls = sorted(w for w, _ in results[name])
        cpus = [c for _, c in results[name]]
        med[name] = (statistics.median(walls), statistics.median(cpus))
        p90 = walls[min(len(walls) - 1, int(0.9 * len(walls)))]
        print(f"{label:58} {med[name][0] * 1000:8.1f} {p90 * 1000:8.1f} {med[name][1] * 1000:8.1f}")
    print()
    print(f"b/a wall = {med['fork'][0] / med['local'][0]:.3f}   (target <= 0.12)")
    print(f"b/a CPU  = {med['fork'][1] / med['local'][1]:.3f}   (target <= 0.1)")
    print(
        f"recovery, SIGKILL to a ready replacement (pool of 1, {len(healed)} kills): "
        f"p50 {statistics.median(healed) * 1000:.0f} ms, max {max(healed) * 1000:.0f} ms"
        "   (target <= 100 ms)"
    )


if __name__ == "__main__":
    main()
