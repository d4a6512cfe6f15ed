"""Echo backend: the smallest useful backend, and the one the benchmark calls.

    echo(data)        -> {"echo": data, "timestamp": <seconds since the epoch>}
    greet(name)       -> {"message": "Hello, <name>!", "mode": $MODE or "default"}
    increment()       -> {"count": <the counter after adding one>}
    get_count()       -> {"count": <the counter>}

Runs under kernel-bridge (``bridge.AsyncBridge().spawn(...)``) and, unchanged, as a plain
subprocess speaking newline JSON on stdin/stdout (``python echo_backend.py``).
"""

import os
import time

from bridge_runtime import PythonBridge


class EchoBackend(PythonBridge):
    def __init__(self):
        super().__init__()
        self.counter = 0
        self.mode = os.environ.get("MODE", "default")

    def echo(self, data):
        """Return *data* as it came, with the time it was echoed."""
        return {"echo": data, "timestamp": time.time()}

    def greet(self, name: str):
        """Greet *name*; says which MODE the backend runs in."""
        return {"message": f"Hello, {name}!", "mode": self.mode}

    def increment(self):
        """Add one to the counter and return it."""
        self.counter += 1
        return {"count": self.counter}

    def get_count(self):
        """The counter, unchanged."""
        return {"count": self.counter}


if __name__ == "__main__":
    backend = EchoBackend()
    backend.run()
