"""A pool of warm kernels for one-off calls; replacements start in the background."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import math
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from bridge.core.errors import (
    BridgeClosed,
    ExitStatus,
    InvalidRequest,
    KernelStartError,
    Overloaded,
)
from bridge.core.kernel import Kernel
from bridge.core.limits import KernelLimits
from bridge.core.metrics import OVERLOADED, QUEUE_WAIT, watch_pool

log = logging.getLogger("bridge.pool")


class Factory(Protocol):
    """What the pool needs of a kernel factory: the local transport's KernelFactory or the
    gateway transport's GatewayFactory."""

    python: str
    kernels: set[Kernel]
    remote: bool  # kernels on another host: host paths and files mean nothing to them

    @property
    def python_paths(self) -> Sequence[str]: ...

    def kernel_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]: ...

    async def start(
        self,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        limits: KernelLimits | None = None,
    ) -> Kernel: ...

    async def stop(self, kernel: Kernel, *, now: bool = False) -> None: ...

    async def kernel_language(self, name: str) -> str | None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class PoolStatus:
    """How a bridge's kernels are doing: ``b.status().idle``.

    ``size`` warm kernels are wanted; ``idle`` wait for a call, ``busy`` run one, ``starting``
    are on their way (replacements included), ``sessions`` are kernels taken by sessions;
    ``waiting`` calls wait for a kernel, at most ``max_waiting``.
    """

    size: int
    idle: int
    busy: int
    starting: int
    sessions: int
    waiting: int = 0
    max_waiting: int = 0

    @property
    def ready(self) -> int:
        """Live pool kernels, idle or busy."""
        return self.idle + self.busy


RETRY_FIRST = 0.5  # seconds before a failed replacement start is tried again; doubled each
RETRY_MAX = 30.0  # time it fails again, up to this (a broken interpreter is not hammered)


def default_max_waiting(size: int) -> int:
    """Calls that may wait for a pool of *size*: 32 per kernel (a warm call takes a few ms,
    so a full queue drains within a second or so), at least 16."""
    return max(16, 32 * size)


class KernelPool:
    """Keeps *size* kernels started and ready, hands them out one call at a time.

    A kernel that died, was killed after a timeout, or was taken for a session is replaced by
    a kernel started in the background, so kernel start-up is never on the path of a call while
    a warm kernel is free.
    """

    def __init__(self, factory: Factory, size: int, *, max_waiting: int | None = None) -> None:
        self.factory = factory
        self.size = size
        # Calls beyond this many waiting are refused at once (Overloaded) instead of queueing
        # without bound: latency stays bounded by the queue and the host learns to back off.
        self.max_waiting = default_max_waiting(size) if max_waiting is None else max_waiting
        self._call_time = 0.01  # seconds a call holds a kernel, a moving average (Retry-After)
        watch_pool(self)
        self._free: collections.deque[Kernel] = collections.deque()
        self._busy: set[Kernel] = set()
        self._taken: set[Kernel] = set()  # given to sessions; not ours to reuse
        # Back from a cancelled call, winding it down: ours still, neither free nor busy. Not
        # counted, it would look missing to acquire(), which would start a surplus kernel.
        self._settling: set[Kernel] = set()
        self._waiters: collections.deque[asyncio.Future[Kernel]] = collections.deque()
        self._starting = 0
        self._start_error: BaseException | None = None
        # A replacement that failed to start (killed while starting, a machine too loaded to
        # start one in time) is tried again in the background, sooner the first time: a pool
        # left short would make the next call wait for a cold start.
        self._retry: asyncio.TimerHandle | None = None
        self._retry_delay = RETRY_FIRST
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def kernels(self) -> list[Kernel]:
        """Every kernel of the pool, free, busy or settling (not those taken by sessions)."""
        return [*self._free, *self._busy, *self._settling]

    def status(self) -> PoolStatus:
        return PoolStatus(
            size=self.size,
            idle=sum(1 for k in self._free if k.alive),
            busy=sum(1 for k in (*self._busy, *self._settling) if k.alive),
            starting=self._starting,
            sessions=sum(1 for k in self._taken if k.alive),
            waiting=self.waiting,
            max_waiting=self.max_waiting,
        )

    @property
    def waiting(self) -> int:
        """Calls waiting for a kernel now."""
        return sum(1 for f in self._waiters if not f.done())

    def record_call(self, seconds: float) -> None:
        """A call held a kernel for *seconds*: the estimate behind ``Retry-After``."""
        self._call_time += 0.1 * (seconds - self._call_time)

    def _overloaded(self) -> Overloaded:
        OVERLOADED.inc()
        waiting = self.waiting
        # How long until the queue has drained to half: at least a second (HTTP's unit).
        drain = (waiting / 2 + 1) * self._call_time / max(1, self.size)
        return Overloaded(
            f"all {self.size} pool kernels are busy and {waiting} calls wait already "
            f"(max_waiting={self.max_waiting}); try again later",
            retry_after=max(1.0, float(math.ceil(drain))),
        )

    async def start(self) -> None:
        """Start all kernels at once; if any fails, stop the others and raise its error."""
        results = await asyncio.gather(
            *(self.factory.start() for _ in range(self.size)), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        kernels = [r for r in results if isinstance(r, Kernel)]
        if errors:
            await asyncio.gather(*(self.factory.stop(k, now=True) for k in kernels))
            raise errors[0]
        for kernel in kernels:
            self._put(kernel)

    async def acquire(self) -> Kernel:
        """A free, live kernel, waiting for one if all are busy."""
        if self.size == 0:
            raise InvalidRequest("one-off calls need a pool: this bridge has pool_size=0")
        while True:
            if self._closed:
                raise BridgeClosed("the bridge is closed")
            while self._free:
                kernel = self._free.popleft()
                if kernel.alive:
                    self._busy.add(kernel)
                    return kernel
                self._discard(kernel)
            if len(self._busy) + len(self._settling) + self._starting < self.size:
                self._replace()  # after a failed start, try again now that someone needs one
            if self.waiting >= self.max_waiting:
                raise self._overloaded()
            loop = asyncio.get_running_loop()
            future: asyncio.Future[Kernel] = loop.create_future()
            self._waiters.append(future)
            asked = loop.time()
            try:
                kernel = await future  # busy already: _put() handed it over
                QUEUE_WAIT.observe(loop.time() - asked)
            except asyncio.CancelledError:
                if future.done() and not future.cancelled() and future.exception() is None:
                    handed = future.result()  # handed over just as we gave up: pass it on
                    self._busy.discard(handed)
                    self._put(handed)
                raise
            if kernel.alive:
                return kernel
            self._busy.discard(kernel)
            self._discard(kernel)

    def release(self, kernel: Kernel) -> None:
        """Give *kernel* back after a call; a dead or killed one is replaced instead."""
        self._busy.discard(kernel)
        if self._closed:
            return
        if not kernel.alive or kernel.closing:
            self._discard(kernel)
        elif kernel.settling:
            self._settling.add(kernel)
            self._spawn(self._settle_and_put(kernel))
        else:
            # Back at once: a kernel in none of free, busy or starting would look missing to
            # the next acquire(), which would start a surplus kernel to make up for it.
            self._put(kernel)

    async def take(
        self,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        limits: KernelLimits | None = None,
    ) -> Kernel:
        """A kernel for a session's own use; the pool starts another to stay warm.

        With *env*, *cwd* or *limits* (or no warm kernels at all), a kernel is started for the
        session with them instead; the pool closes it with the others all the same.
        """
        if self.size == 0 or env or cwd is not None or limits is not None:
            if self._closed:
                raise BridgeClosed("the bridge is closed")
            kernel = await self.factory.start(env=env, cwd=cwd, limits=limits)
            if self._closed:  # closed while it started: close() did not see it
                await self.factory.stop(kernel, now=True)
                raise BridgeClosed("the bridge was closed while the session's kernel started")
            self._taken.add(kernel)
            self._watch(kernel)
            return kernel
        kernel = await self.acquire()
        self._busy.discard(kernel)
        self._taken.add(kernel)
        self._watch(kernel)
        self._replace()
        return kernel

    async def retire(self, kernel: Kernel, *, wait: bool = True) -> None:
        """Shut down a kernel given out by take(); with ``wait=False`` in the background (the
        pool's close waits for it)."""
        self._taken.discard(kernel)
        if wait:
            await self.factory.stop(kernel)
        else:
            self._spawn(self.factory.stop(kernel))

    async def _settle_and_put(self, kernel: Kernel) -> None:
        try:
            await kernel.settle()  # a cancelled call may still be winding down
        finally:
            self._settling.discard(kernel)
        if kernel.alive and not kernel.closing and not self._closed:
            self._put(kernel)
        else:
            self._discard(kernel)

    def _watch(self, kernel: Kernel) -> None:
        if not getattr(kernel, "_pool_watch", False):
            kernel._pool_watch = True  # type: ignore[attr-defined]
            kernel.on_exit(functools.partial(self._on_exit, kernel))

    def _put(self, kernel: Kernel) -> None:
        self._watch(kernel)
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                # Busy from the hand-over on, not from when its waiter wakes: a kernel in
                # none of free, busy or starting meanwhile would look missing to the next
                # acquire(), which would start a surplus kernel (and the pool would grow).
                self._busy.add(kernel)
                future.set_result(kernel)
                return
        self._free.append(kernel)

    def _on_exit(self, kernel: Kernel, status: ExitStatus) -> None:
        if kernel in self._free:  # died while idle: replace it before anyone asks
            self._free.remove(kernel)
            self._discard(kernel)
        elif kernel in self._taken:
            # A session's kernel died: the session answers KernelDied until it is restarted
            # or closed, but what is left of the kernel (its kernel manager's entry, listed at
            # /api/kernels; its connection file, with the key) goes now.
            self._taken.discard(kernel)
            self._spawn(self.factory.stop(kernel, now=True))

    def _discard(self, kernel: Kernel) -> None:
        self._spawn(self.factory.stop(kernel, now=True))
        self._replace()

    def _replace(self) -> None:
        if self._closed:
            return
        self._starting += 1
        self._spawn(self._start_one())

    async def _start_one(self) -> None:
        try:
            kernel = await self.factory.start()
        except Exception as exc:
            self._start_error = exc
            log.error(
                "could not start a replacement kernel (trying again in %g s): %s",
                self._retry_delay,
                exc,
            )
            if not self._free and not self._busy and self._starting == 1:
                error = KernelStartError(f"no kernel available: {exc}")
                while self._waiters:
                    future = self._waiters.popleft()
                    if not future.done():
                        future.set_exception(error)
            self._retry_later()
            return
        finally:
            self._starting -= 1
        if self._closed:
            await self.factory.stop(kernel, now=True)
        else:
            self._start_error = None
            self._retry_delay = RETRY_FIRST
            self._put(kernel)

    def _retry_later(self) -> None:
        if self._closed or self._retry is not None:
            return
        delay, self._retry_delay = self._retry_delay, min(RETRY_MAX, self._retry_delay * 2)
        self._retry = asyncio.get_running_loop().call_later(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        # Short still? (a call may have started one meanwhile, see acquire())
        counted = len(self._free) + len(self._busy) + len(self._settling) + self._starting
        if not self._closed and counted < self.size:
            self._replace()

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop every kernel, the busy ones and the sessions' too; fail the waiters."""
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_exception(BridgeClosed("the bridge was closed"))
        kernels = [*self._free, *self._busy, *self._taken]
        self._free.clear()
        self._busy.clear()
        self._taken.clear()
        await asyncio.gather(
            *(self.factory.stop(k) for k in kernels), *self._tasks, return_exceptions=True
        )
        with contextlib.suppress(Exception):
            await self.factory.close()
