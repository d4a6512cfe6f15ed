"""Timing helpers shared by the benchmarks that compare two paths in one run."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def _timed(fn: Callable[[], Awaitable[object]]) -> Callable[[], Awaitable[float]]:
    async def timed() -> float:
        t = time.perf_counter()
        await fn()
        return time.perf_counter() - t

    return timed


async def interleaved(
    a: Callable[[], Awaitable[object]], b: Callable[[], Awaitable[object]], n: int, block: int = 50
) -> tuple[list[float], list[float]]:
    """Time *a* and *b* n times each, in alternating blocks, so drift hits both alike."""
    return await interleaved_values(_timed(a), _timed(b), n, block)


async def interleaved_values(
    a: Callable[[], Awaitable[float]], b: Callable[[], Awaitable[float]], n: int, block: int = 50
) -> tuple[list[float], list[float]]:
    """As interleaved, for calls that measure themselves: the seconds each returns."""
    out: tuple[list[float], list[float]] = ([], [])
    for fn in (a, b):  # warm-up
        for _ in range(block):
            await fn()
    while len(out[0]) < n:
        for fn, samples in ((a, out[0]), (b, out[1])):
            for _ in range(min(block, n - len(samples))):
                samples.append(await fn())
    return out
