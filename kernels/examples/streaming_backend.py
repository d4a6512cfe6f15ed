"""Streaming backend: events pushed from a thread until the host says stop.

start_streaming(interval=0.1, count=None) -> {"streaming": True}
    starts a thread that sends a "data" event every *interval* seconds:
    {"seq": 0, 1, 2, ..., "value": <a float>, "timestamp": ...}; after *count* events
    (if given) it stops by itself and sends a "done" event {"sent": <count>}.
stop_streaming() -> {"streaming": False, "sent": <events sent>}
    stops the stream (not the backend: it keeps serving calls).
status() -> {"streaming": bool, "sent": int, "running": bool}
count(n=5, interval=0.0) -> yields 0 .. n-1, *interval* seconds apart
    a generator method: the host reads it as a stream (``backend.stream("count", {"n": 5})``),
    item by item as they are yielded; closing the stream early closes the generator.
"""

import math
import threading
import time

from bridge_runtime import PythonBridge


class StreamingBackend(PythonBridge):
    def __init__(self):
        super().__init__()
        self._streaming = False
        self._thread = None
        self.sent = 0

    def start_streaming(self, interval: float = 0.1, count: int | None = None):
        """Send a "data" event every *interval* seconds (*count* of them, or until stopped)."""
        if self._streaming:
            return {"streaming": True}
        self._streaming = True
        self.sent = 0
        self._thread = threading.Thread(target=self._stream, args=(interval, count), daemon=True)
        self._thread.start()
        return {"streaming": True}

    def stop_streaming(self):
        """Stop the stream; the backend keeps running."""
        self._streaming = False
        if self._thread is not None:
            self._thread.join(timeout=5)
        return {"streaming": False, "sent": self.sent}

    def status(self):
        """Whether a stream runs, how many events it sent, whether the backend runs."""
        return {"streaming": self._streaming, "sent": self.sent, "running": self._running}

    def count(self, n: int = 5, interval: float = 0.0):
        """Yield 0 .. n-1, *interval* seconds apart (a stream for the host)."""
        for i in range(n):
            if interval and i:
                time.sleep(interval)
            yield i

    def _stream(self, interval, count):
        while self._running and self._streaming and (count is None or self.sent < count):
            self.send_event(
                "data",
                {"seq": self.sent, "value": math.sin(self.sent / 10), "timestamp": time.time()},
            )
            self.sent += 1
            if interval > 0:  # 0: as fast as it can (time.sleep(0) would still yield the CPU)
                time.sleep(interval)
        if count is not None and self.sent >= count:
            self._streaming = False
            self.send_event("done", {"sent": self.sent})


if __name__ == "__main__":
    backend = StreamingBackend()
    backend.run()
