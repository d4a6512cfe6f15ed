"""What a backend call costs, against the floor of its design and against the older bridge.

    .venv/bin/python bench/backend.py [--calls 50] [--rounds 30] [--events 50000]

In one run, interleaved round by round so that the machine's load hits all alike:
  (a) a raw jupyter_client comm round trip to an echo target registered by hand in a
      kernel-bridge kernel: the floor of calling over comms;
  (b) ``backend.call("echo", ...)`` on kernels/examples/echo_backend.py;
  (c) the same script as a persistent subprocess speaking newline JSON on stdin/stdout,
      the older bridge's way (``python echo_backend.py``);
then events per second from one backend (streaming_backend.py, a thread sending as fast as
it can) to one host handler, and a 10 MB NumPy array echoed as binary buffers against the
same numbers echoed as a JSON list.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from jupyter_client.manager import AsyncKernelManager

import bridge
from bridge.transports.local.factory import KERNEL_NAME, BridgeSpecManager, bridge_kernel_spec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "kernels" / "examples"

REGISTER_ECHO = """
import comm
def _bench_echo(c, msg):
    c.on_msg(lambda m: c.send(m["content"]["data"]))
comm.get_comm_manager().register_target("bench-echo", _bench_echo)
"""


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class RawComm:
    """(a): jupyter_client only: a kernel manager, a client, comm messages by hand."""

    async def start(self, env: dict[str, str]) -> None:
        spec = bridge_kernel_spec(sys.executable)
        self.km = AsyncKernelManager(
            kernel_name=KERNEL_NAME, kernel_spec_manager=BridgeSpecManager(spec)
        )
        # The kernel's own chatter (ipykernel's TCP warning) is not part of the figures.
        await self.km.start_kernel(env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = self.km.client()
        self.client.start_channels()
        await self.client.wait_for_ready(timeout=60)
        reply = await self.client.execute_interactive(REGISTER_ECHO, timeout=30)
        assert reply["content"]["status"] == "ok", reply
        self.comm_id = "bench-echo-comm"
        msg = self.client.session.msg(
            "comm_open", {"comm_id": self.comm_id, "target_name": "bench-echo", "data": {}}
        )
        self.client.shell_channel.send(msg)
        await self.roundtrip({"data": "warm-up"})

    async def roundtrip(self, data: dict) -> dict:
        msg = self.client.session.msg("comm_msg", {"comm_id": self.comm_id, "data": data})
        self.client.shell_channel.send(msg)
        while True:
            reply = await self.client.get_iopub_msg(timeout=10)
            if reply["msg_type"] == "comm_msg" and reply["content"]["comm_id"] == self.comm_id:
                return reply["content"]["data"]

    async def stop(self) -> None:
        self.client.stop_channels()
        await self.km.shutdown_kernel(now=True)


class Subprocess:
    """(c): the script as a subprocess, one JSON line each way."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / "echo_backend.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            bufsize=1,
        )
        self.ids = 0

    def roundtrip(self, data: dict) -> dict:
        self.ids += 1
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"id": self.ids, "method": "echo", "params": data}) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        assert reply["id"] == self.ids, reply
        return reply["result"]

    def stop(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


async def timed_async(fn, n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        await fn({"data": i})
        out.append((time.perf_counter() - t) * 1000)
    return out


def timed_sync(fn, n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn({"data": i})
        out.append((time.perf_counter() - t) * 1000)
    return out


async def events_per_second(b: bridge.AsyncBridge, count: int) -> float:
    async with await b.spawn(EXAMPLES / "streaming_backend.py") as backend:
        received = 0
        done = asyncio.Event()

        def on_data(data: dict) -> None:
            nonlocal received
            received += 1

        backend.on("data", on_data)
        backend.on("done", lambda data: done.set())
        t = time.perf_counter()
        await backend.call("start_streaming", {"interval": 0, "count": count})
        await asyncio.wait_for(done.wait(), 120)
        elapsed = time.perf_counter() - t
        assert received == count, (received, count)
        return count / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50, help="calls per round and kind")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--events", type=int, default=50_000)
    args = parser.parse_args()

    async with bridge.AsyncBridge(pool_size=0, timeout=120) as b:
        env = b.factory.kernel_env()
        raw = RawComm()
        await raw.start(env)
        sub = Subprocess(env)
        backend = await b.spawn(EXAMPLES / "echo_backend.py", timeout=120)
        try:
            call = lambda params: backend.call("echo", params)  # noqa: E731
            for fn in (raw.roundtrip, call):
                await timed_async(fn, 50)  # warm-up
            timed_sync(sub.roundtrip, 50)
            a: list[float] = []
            c_: list[float] = []
            b_: list[float] = []
            for _ in range(args.rounds):
                a += await timed_async(raw.roundtrip, args.calls)
                b_ += await timed_async(call, args.calls)
                c_ += timed_sync(sub.roundtrip, args.calls)

            # 10 MB of float64 (1.25 M numbers): binary buffers against a JSON list.
            array = np.random.default_rng(0).random(1_250_000)
            t = time.perf_counter()
            for _ in range(3):
                back = (await backend.call("echo", {"data": array}))["echo"]
            binary_s = (time.perf_counter() - t) / 3
            assert isinstance(back, np.ndarray) and np.array_equal(back, array)
            as_list = array.tolist()
            t = time.perf_counter()
            back_list = (await backend.call("echo", {"data": as_list}))["echo"]
            json_s = time.perf_counter() - t
            assert back_list == as_list
        finally:
            sub.stop()
            await raw.stop()
            await backend.terminate()
        rate = await events_per_second(b, args.events)

    p50 = {k: statistics.median(v) for k, v in (("a", a), ("b", b_), ("c", c_))}
    print(f"calls: {args.rounds} rounds x {args.calls} per kind, interleaved; times in ms")
    print(f"{'':44} {'p50':>7} {'p90':>7} {'p99':>7}")
    rows = (
        ("(a) raw jupyter_client comm round trip", a),
        ('(b) backend.call("echo")', b_),
        ("(c) subprocess, newline JSON on stdin/stdout", c_),
    )
    for name, v in rows:
        print(f"{name:44} {pct(v, 0.5):7.3f} {pct(v, 0.9):7.3f} {pct(v, 0.99):7.3f}")
    print(f"b/a at p50: {p50['b'] / p50['a']:.2f}   (target <= 1.3)")
    print(f"b/c at p50: {p50['b'] / p50['c']:.1f}   (the price of the Jupyter protocol)")
    print(f"events: {rate:,.0f} events/s from one backend to one handler   (target >= 10,000)")
    print(
        f"10 MB float64 array round trip: {binary_s * 1000:.1f} ms as binary buffers, "
        f"{json_s * 1000:.0f} ms as a JSON list: {json_s / binary_s:.0f}x   (target >= 10x)"
    )


if __name__ == "__main__":
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    asyncio.run(main())
