"""Load: `kernel-bridge serve` with a pool of 2 under wrk, a mixed soak, and 100 backends alive.

    .venv/bin/python bench/load.py [--duration 60] [--concurrency 2,16,64,256]
    .venv/bin/python bench/load.py --soak 600          # the soak only
    .venv/bin/python bench/load.py --backends 100      # 100 backends alive only

(`make bench` runs the table with 10 s per level; `make stress` the issue's durations: 60 s per
level, a 10-minute soak and 100 backends.) The table: trivial `POST /execute` by wrk (a Lua
script, bench/load.lua) with 2 threads at each concurrency: calls per second, p50/p99/max
latency, answers by status, failed connections, and the CPU each part used per second of the
run (the service, its kernels, wrk), which says what bounds the figure. The soak: clients at a
steady rate doing executes, a context each created, used and deleted, backend calls, an
event stream per backend and one stalled reader; the service's RSS, open descriptors and
kernels at its start and end, and connection files left after the service stopped. 100
backends: the service's RSS and the time of one backend call with 1 backend alive and with 100.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
KERNEL_BRIDGE = str(Path(sys.executable).with_name("kernel-bridge"))
ECHO = (HERE.parent / "kernels" / "examples" / "echo_backend.py").read_text()
TICKS = os.sysconf("SC_CLK_TCK")


class Service:
    """`kernel-bridge serve --port 0 --pool-size 2 ...` in a process of its own."""

    def __init__(self, *args: str) -> None:
        self.token = secrets.token_hex(16)
        self.runtime = tempfile.mkdtemp(prefix="kb-load-runtime-")
        env = {**os.environ, "JUPYTER_TOKEN": self.token, "JUPYTER_RUNTIME_DIR": self.runtime}
        self.out = tempfile.NamedTemporaryFile(prefix="kb-load-", suffix=".out")  # noqa: SIM115
        cmd = [KERNEL_BRIDGE, "serve", "--port", "0", "--pool-size", "2", *args]
        self.process = subprocess.Popen(cmd, stdout=self.out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            text = Path(self.out.name).read_text()
            match = re.search(r"serving at (\S+)", text)
            if match and "Ctrl-C" in text:
                self.url = match.group(1).rstrip("/")
                return
            if self.process.poll() is not None:
                raise RuntimeError(text)
            time.sleep(0.1)
        raise RuntimeError("the service did not start")

    def client(self) -> httpx.AsyncClient:
        headers = {"Authorization": f"token {self.token}"}
        limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=120, limits=limits)

    def kernel_pids(self) -> list[int]:
        """The kernels this service started: its descendants that run the bridge's kernel
        launcher. (Not by environment: a kernel forked by the fork server keeps the server's
        /proc/PID/environ, whatever it sets in os.environ.)"""
        parents: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        found = []
        for pid in parents:
            ancestor = parents.get(pid)
            while ancestor is not None and ancestor != self.process.pid:
                ancestor = parents.get(ancestor)
            if ancestor is None:
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"bridge_runtime.launch" in cmd:
                found.append(pid)
        return found

    def rss_mb(self) -> float:
        return _status(self.process.pid, "VmRSS") / 1024

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def connection_files(self) -> list[str]:
        return [p for p in os.listdir(self.runtime) if p.endswith(".json")]

    def stop(self) -> None:
        """Ctrl-C; killed (and said) if it has not stopped after 60 s."""
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            pid = self.process.pid
            print(f"the service did not stop within 60 s of SIGINT: killed (pid {pid})")
            self.process.kill()
            self.process.wait()
        self.out.close()


def _status(pid: int, key: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"{key}:\s+(\d+)", text)
    return int(match.group(1)) if match else 0


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def wrk(service: Service, concurrency: int, seconds: int) -> dict[str, Any]:
    body = json.dumps({"content": "return 1"})
    env = {**os.environ, "KB_BODY": body, "KB_TOKEN": service.token}
    threads = str(min(2, concurrency))
    cmd = ["wrk", "-t", threads, "-c", str(concurrency), "-d", f"{seconds}s", "--timeout", "60s"]
    cmd += ["-s", str(HERE / "load.lua"), f"{service.url}/execute"]
    kernels = service.kernel_pids()
    before = (cpu_seconds([service.process.pid]), cpu_seconds(kernels), _children_cpu())
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    after = (cpu_seconds([service.process.pid]), cpu_seconds(kernels), _children_cpu())
    line = next(x for x in out.splitlines() if x.startswith("result "))
    found: dict[str, Any] = json.loads(line[len("result ") :])
    span = found["seconds"]
    found["cpu"] = {
        part: round((a - b) / span, 2)
        for part, a, b in zip(("service", "kernels", "wrk"), after, before, strict=True)
    }
    found["rate"] = found["statuses"].get("200", 0) / span  # calls answered, not refusals
    return found


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One level's rounds as one row: counts and CPU summed, p50 the median, p99/max the worst."""
    span = sum(r["seconds"] for r in runs)
    statuses: dict[str, int] = {}
    for r in runs:
        for k, v in r["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    merged = {k: sum(r[k] for r in runs) for k in ("requests", "seconds")}
    for k in ("connect_errors", "read_errors", "write_errors", "timeouts"):
        merged[k] = sum(r[k] for r in runs)
    merged.update(
        rate=statuses.get("200", 0) / span,
        refused=statuses.get("503", 0) / span,
        p50_ms=statistics.median(r["p50_ms"] for r in runs),
        p99_ms=max(r["p99_ms"] for r in runs),
        max_ms=max(r["max_ms"] for r in runs),
        statuses=statuses,
        cpu={
            part: round(sum(r["cpu"][part] * r["seconds"] for r in runs) / span, 2)
            for part in ("service", "kernels", "wrk")
        },
    )
    return merged


def table(levels: list[int], seconds: int, rounds: int) -> None:
    """Each level for *seconds*, in *rounds* interleaved slices (2, 16, 64, 256, 2, 16, ...),
    so that the machine's drift (other load) falls on every level alike."""
    service = Service("--BridgeApp.max_contexts=64")
    runs: dict[int, list[dict[str, Any]]] = {c: [] for c in levels}
    try:
        wrk(service, 2, 2)  # warm: the first calls start nothing, but fill caches
        for _ in range(rounds):
            for c in levels:
                runs[c].append(wrk(service, c, max(1, seconds // rounds)))
    finally:
        service.stop()
    rows = [(c, merge(runs[c])) for c in levels]
    best = max(r["rate"] for _, r in rows)
    print(
        f"\nPOST /execute {{'content': 'return 1'}}, pool of 2, wrk -t2, {seconds} s per level "
        f"in {rounds} interleaved rounds"
    )
    print(
        "| connections | calls/s (200) | x best | 503/s | p50 ms | p99 ms | max ms "
        "| answers by status | failed connections | CPU/s: service, kernels, wrk |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c, r in rows:
        failed = r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"]
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
        cpu = r["cpu"]
        print(
            f"| {c} | {r['rate']:.0f} | {r['rate'] / best:.2f} | {r['refused']:.0f} "
            f"| {r['p50_ms']:.1f} "
            f"| {r['p99_ms']:.1f} | {r['max_ms']:.0f} | {statuses} | {failed} "
            f"| {cpu['service']}, {cpu['kernels']}, {cpu['wrk']} |"
        )


async def _backend(client: httpx.AsyncClient, name: str) -> str:
    r = await client.post("/backends", json={"script": ECHO, "name": name})
    r.raise_for_status()
    return str(r.json()["id"])


async def _call_times(client: httpx.AsyncClient, backend: str, n: int) -> float:
    times = []
    for i in range(n):
        t = time.perf_counter()
        r = await client.post(
            f"/backends/{backend}/call", json={"cmd": "echo", "params": {"data": i}}
        )
        r.raise_for_status()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


async def _idle_cpu(service: Service, seconds: float = 3.0) -> tuple[float, float]:
    """CPU per second the service and its kernels use while no call comes."""
    kernels = service.kernel_pids()
    before = cpu_seconds([service.process.pid]), cpu_seconds(kernels)
    await asyncio.sleep(seconds)
    after = cpu_seconds([service.process.pid]), cpu_seconds(kernels)
    return (after[0] - before[0]) / seconds, (after[1] - before[1]) / seconds


async def many_backends(count: int) -> None:
    service = Service(f"--BridgeApp.max_backends={count + 4}")
    try:
        async with service.client() as client:
            first = await _backend(client, "b0")
            await _call_times(client, first, 50)  # warm
            one = await _call_times(client, first, 200)
            rss_one = service.rss_mb()
            idle_one = await _idle_cpu(service)
            t = time.perf_counter()
            for i in range(1, count):
                await _backend(client, f"b{i}")
            spawned = time.perf_counter() - t
            await _call_times(client, first, 50)  # warm again
            many = await _call_times(client, first, 200)
            rss_many = service.rss_mb()
            idle_many = await _idle_cpu(service)
            kernels = len(service.kernel_pids())
    finally:
        service.stop()
    print(f"\n{count} backends alive (echo_backend.py), pool of 2; {kernels} kernels")
    print("| backends alive | service RSS MB | one call p50 ms | idle CPU/s: service, kernels |")
    print("|---|---|---|---|")
    print(f"| 1 | {rss_one:.0f} | {one:.2f} | {idle_one[0]:.3f}, {idle_one[1]:.3f} |")
    print(
        f"| {count} | {rss_many:.0f} | {many:.2f} ({many / one:.2f}x) "
        f"| {idle_many[0]:.3f}, {idle_many[1]:.3f} |"
    )
    print(f"({count - 1} spawned one after another in {spawned:.1f} s)")


async def soak(seconds: int, clients: int = 8, rate: float = 40.0) -> None:
    """Mixed traffic at about *rate* operations a second for *seconds*."""
    service = Service("--BridgeApp.max_contexts=64")
    samples: list[tuple[float, float, int, int]] = []
    failures: dict[str, int] = {}
    done = 0
    peak = 0
    try:
        async with service.client() as client:
            backends = [await _backend(client, f"soak{i}") for i in range(2)]
            streams = [
                asyncio.ensure_future(_read_events(service, b, stall=(i == 0)))
                for i, b in enumerate(backends)
            ]
            start = time.monotonic()
            end = start + seconds

            def sample() -> None:
                kernels = len(service.kernel_pids())
                samples.append((time.monotonic() - start, service.rss_mb(), service.fds(), kernels))

            async def worker(n: int) -> None:
                nonlocal done
                step = 0
                while time.monotonic() < end:
                    began = time.monotonic()
                    kind = ("execute", "context", "backend")[step % 3]
                    try:
                        await _operation(client, kind, backends[step % 2], n)
                    except Exception as exc:  # counted, shown at the end
                        key = f"{kind}: {type(exc).__name__}: {str(exc)[:80]}"
                        failures[key] = failures.get(key, 0) + 1
                    done += 1
                    step += 1
                    await asyncio.sleep(max(0, clients / rate - (time.monotonic() - began)))

            async def sampler() -> None:
                while time.monotonic() < end:
                    sample()
                    await asyncio.sleep(max(1.0, seconds / 20))

            await asyncio.sleep(2)  # the pool's replacements settle after the backends started
            sample()
            await asyncio.gather(sampler(), *(worker(n) for n in range(clients)))
            # Traffic stopped: the last contexts' kernels may still be shutting down.
            settle = time.monotonic() + 15
            while len(service.kernel_pids()) > samples[1][3] and time.monotonic() < settle:
                await asyncio.sleep(0.2)
            sample()
            peak = max(x[3] for x in samples)
            for task in streams:
                task.cancel()
    finally:
        service.stop()
    left = service.connection_files()
    shutil.rmtree(service.runtime, ignore_errors=True)
    first, last = samples[1], samples[-1]
    print(f"\nsoak: {seconds} s, {clients} clients, {done} operations ({done / seconds:.0f}/s)")
    print("| | service RSS MB | open fds | kernels |")
    print("|---|---|---|---|")
    print(f"| start | {first[1]:.0f} | {first[2]} | {first[3]} |")
    print(f"| end | {last[1]:.0f} | {last[2]} | {last[3]} |")
    rss, fds, kernels = last[1] - first[1], last[2] - first[2], last[3] - first[3]
    print(f"| growth | {rss:+.1f} | {fds:+d} | {kernels:+d} |")
    print(f"(kernels at most {peak} during the run; the end is sampled once traffic stopped)")
    print(f"connection files left after the service stopped: {len(left)}; failures: {failures}")


async def _operation(client: httpx.AsyncClient, kind: str, backend: str, n: int) -> None:
    if kind == "execute":
        r = await client.post("/execute", json={"content": f"print({n}); return {n}"})
        r.raise_for_status()
    elif kind == "context":
        r = await client.post("/contexts", json={})
        r.raise_for_status()
        cid = r.json()["id"]
        try:
            r = await client.post(f"/contexts/{cid}/execute", json={"content": "x = 1\nreturn x"})
            r.raise_for_status()
        finally:
            await client.delete(f"/contexts/{cid}")
    else:
        r = await client.post(
            f"/backends/{backend}/call", json={"cmd": "echo", "params": {"data": n}}
        )
        r.raise_for_status()


async def _read_events(service: Service, backend: str, *, stall: bool) -> None:
    """An event stream: read it, or (*stall*) open it and never read again."""
    async with service.client() as client, client.stream("GET", f"/backends/{backend}/events") as r:
        if stall:
            await asyncio.Event().wait()
        async for _ in r.aiter_lines():
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per level")
    parser.add_argument("--concurrency", default="2,16,64,256")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved slices per level")
    parser.add_argument("--soak", type=int, default=0, help="seconds of soak (0: none)")
    parser.add_argument("--backends", type=int, default=0, help="backends alive (0: none)")
    parser.add_argument("--all", action="store_true", help="the table, then soak and backends")
    args = parser.parse_args()
    if not (args.soak or args.backends) or args.all:
        table([int(c) for c in args.concurrency.split(",")], args.duration, args.rounds)
    if args.soak:
        asyncio.run(soak(args.soak))
    if args.backends:
        asyncio.run(many_backends(args.backends))


if __name__ == "__main__":
    main()
