"""A backend that misbehaves on purpose, for the tests (as jupyter_client's tests use small
kernels that misbehave): slow, stuck, crashing, printing, logging methods.

CONCURRENT=1 in its environment makes it a concurrent backend.
"""

import asyncio
import ctypes
import logging
import os
import signal
import sys
import threading
import time

from bridge_runtime import PythonBridge

logging.basicConfig(level=logging.INFO, format="%(levelname)s:%(name)s:%(message)s")
log = logging.getLogger("toolbox")


class Toolbox(PythonBridge):
    concurrent = os.environ.get("CONCURRENT") == "1"

    def __init__(self):
        super().__init__()
        self.counter = 0
        self.order = []
        self.spinning = False
        self.interrupted = 0
        self.cancelled = 0

    def add(self, a: int, b: int = 0):
        """a + b"""
        return a + b

    def record(self, tag, seconds: float = 0.0):
        """Note *tag* at start and end; sleep *seconds* between."""
        self.order.append(f"start {tag}")
        time.sleep(seconds)
        self.order.append(f"end {tag}")
        return tag

    def take_order(self):
        order, self.order = self.order, []
        return order

    def state(self):
        return {
            "counter": self.counter,
            "spinning": self.spinning,
            "interrupted": self.interrupted,
            "cancelled": self.cancelled,
            "running": self._running,
            "thread": threading.current_thread().name,
        }

    def slow(self, seconds: float, value=None, announce: bool = False):
        """Sleep (in C: deaf to interrupts until it returns), then give back *value*; with
        *announce*, send a "started" event first (what a test waits on)."""
        self.counter += 1
        if announce:
            self.send_event("started", seconds)
        time.sleep(seconds)
        return value

    def spin(self, seconds: float):
        """A Python loop: an interrupt stops it at once."""
        self.spinning = True
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                time.sleep(0.005)
        except BaseException:
            self.interrupted += 1
            raise
        finally:
            self.spinning = False
        return "finished"

    async def atwice(self, x):
        await asyncio.sleep(0)
        return x * 2

    async def aslow(self, seconds: float):
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return "finished"

    async def block_loop(self, seconds: float):
        """Hold the kernel's event loop (and so its shell) without awaiting."""
        time.sleep(seconds)  # noqa: ASYNC251 - blocking on purpose
        return "unblocked"

    def fail(self, message: str):
        raise ValueError(message)

    def describe(self, value):
        """What the kernel received: type, and for arrays dtype and shape."""
        out = {"type": type(value).__name__}
        if type(value).__name__ == "ndarray":
            out.update(dtype=str(value.dtype), shape=list(value.shape), sum=float(value.sum()))
        elif isinstance(value, (bytes, bytearray)):
            out.update(length=len(value))
        return out

    def numpy_loaded(self):
        return "numpy" in sys.modules

    def give_back(self, value):
        return value

    def unsendable(self):
        return {"a": {1, 2}}

    def emit(self, type: str, count: int, start: int = 0):
        """Send *count* events of *type* (data: 0, 1, ...), from this call's thread."""
        for i in range(start, start + count):
            self.send_event(type, i)
        return count

    def emit_from_thread(self, type: str, count: int):
        thread = threading.Thread(target=self.emit, args=(type, count))
        thread.start()
        thread.join()
        return count

    def chatty(self, n: int):
        """Print and log while working; the result must be untouched."""
        for i in range(n):
            print(f"line {i}")
        print("to stderr", file=sys.stderr)
        log.info("logged %d lines", n)
        sys.stdout.write("no newline")
        return {"printed": n}

    def crash(self, how: str):
        if how == "exit":
            os._exit(3)
        if how == "segfault":
            ctypes.string_at(0)
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise ValueError(how)

    # -- generator methods: streams --

    def count(self, n: int, delay: float = 0.0, fail_at: int = -1, blob: int = 0):
        """Yield 0 .. n-1 (with *blob*: (i, bytes of that size)), *delay* s apart; raise
        at *fail_at*; an event "count_end" once all are yielded; the finally is noted."""
        self.count_finally = False
        self.produced = 0
        try:
            for i in range(n):
                if i == fail_at:
                    raise ValueError(f"failed at {i}")
                if delay and i:
                    time.sleep(delay)
                self.produced += 1
                yield (i, bytes([i % 256]) * blob) if blob else i
            self.send_event("count_end", n)
        finally:
            self.count_finally = True

    async def acount(self, n: int, delay: float = 0.0):
        """``count`` as an async generator."""
        self.count_finally = False
        self.produced = 0
        try:
            for i in range(n):
                if delay and i:
                    await asyncio.sleep(delay)
                self.produced += 1
                yield i
            self.send_event("count_end", n)
        finally:
            self.count_finally = True

    def arrays(self, n: int):
        """Yield float32 arrays [i, i, i] and then a non-contiguous int16 one."""
        import numpy as np

        for i in range(n):
            yield np.full(3, i, dtype="float32")
        yield np.arange(12, dtype="int16").reshape(3, 4)[:, ::2]

    def count_state(self):
        return {
            "finally": getattr(self, "count_finally", None),
            "produced": getattr(self, "produced", 0),
        }

    def _private(self):
        return "never callable"


if __name__ == "__main__":
    print("toolbox starting")
    backend = Toolbox()
    backend.send_event("started", {"pid": os.getpid()})
    backend.run()
