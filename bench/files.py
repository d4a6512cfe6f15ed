"""Benchmark: files in and out of a session's kernel, against the disk itself, in one run.

    .venv/bin/python bench/files.py [--mb 200]

(a) the disk: writing the file in 1 MiB pieces and reading it back in this process (what a
    direct path beside a local kernel could do at best);
(b) AsyncSession.upload of a local file and download to a local file, through the kernel's
    channels in 1 MiB chunks (what every kernel gets, a gateway's too);
and how much the host's RSS grew meanwhile (a streamed transfer holds a window of chunks,
not the file). Figures are the best of three, and their ratio to (a).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import bridge


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def disk(source: Path, target: Path) -> tuple[float, float]:
    t = time.perf_counter()
    with open(source, "rb") as f, open(target, "wb") as out:
        while chunk := f.read(1 << 20):
            out.write(chunk)
    written = time.perf_counter() - t
    t = time.perf_counter()
    with open(target, "rb") as f:
        while f.read(1 << 20):
            pass
    return written, time.perf_counter() - t


def prepare(source: Path, work: Path, mb: int) -> None:
    with open(source, "wb") as f:
        for _ in range(mb):
            f.write(os.urandom(1 << 20))
    work.mkdir()


async def main(mb: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = folder / "source.bin"
        work = folder / "work"
        prepare(source, work, mb)
        base = [disk(source, folder / "copy.bin") for _ in range(3)]
        disk_up, disk_down = min(b[0] for b in base), min(b[1] for b in base)
        ups: list[float] = []
        downs: list[float] = []
        grown = 0.0
        async with (
            bridge.AsyncBridge(pool_size=0, gateway_url="") as b,
            b.session(cwd=work) as s,
        ):
            for _ in range(3):
                before = rss_mb()
                t = time.perf_counter()
                await s.upload(source, "big.bin")
                ups.append(time.perf_counter() - t)
                t = time.perf_counter()
                await s.download("big.bin", folder / "back.bin")
                downs.append(time.perf_counter() - t)
                grown = max(grown, rss_mb() - before)
        up, down = min(ups), min(downs)
        print(f"{mb} MB, best of 3")
        print(f"(a) disk      write {mb / disk_up:7.0f} MB/s   read {mb / disk_down:7.0f} MB/s")
        print(
            f"(b) kernel   upload {mb / up:7.0f} MB/s ({up / disk_up:.1f}x the disk's time)   "
            f"download {mb / down:7.0f} MB/s ({down / disk_down:.1f}x)"
        )
        print(f"host RSS grew by at most {grown:.0f} MB during a {mb} MB upload and download")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=200)
    asyncio.run(main(parser.parse_args().mb))
