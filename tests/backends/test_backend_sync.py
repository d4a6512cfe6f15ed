"""The blocking Backend: the same calls, handlers on a thread of the backend's own."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest
from paths import TOOLBOX

import bridge


def test_blocking_bridge_spawns_calls_and_runs_handlers_on_a_thread() -> None:
    with bridge.Bridge(pool_size=0) as b, b.spawn(TOOLBOX, timeout=30) as backend:
        assert backend.call("add", {"a": 1, "b": 2}) == 3
        assert "spin" in backend.methods()
        threads: list[str] = []
        values: list[Any] = []
        done = threading.Event()

        def handler(data: Any) -> None:
            threads.append(threading.current_thread().name)
            values.append(data)
            if data == 9:
                # A handler may call the backend: it runs on a thread of its own.
                values.append(backend.call("add", {"a": 100}))
                done.set()

        undo = backend.on("n", handler)
        backend.call("emit", {"type": "n", "count": 10})
        assert done.wait(10)
        assert values == [*range(10), 100]
        assert set(threads) == {"kernel-bridge-backend-events"}
        undo()
        with pytest.raises(bridge.CallTimeout):
            backend.call("spin", {"seconds": 10}, timeout=0.3)
        assert backend.alive and backend.kernel_id
        assert backend.name == "toolbox.py"  # the script's file name, as people see it
        pid = backend.async_backend.info["pid"]
    assert not backend.alive
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_name_is_what_people_see_and_is_checked() -> None:
    with bridge.Bridge(pool_size=0) as b:
        with b.spawn(TOOLBOX, timeout=30, name="tools") as backend:
            assert backend.name == "tools"
            assert "backend tools" in repr(backend)
        for bad in ("", "two\nlines", "x" * 256, 5):
            with pytest.raises(bridge.InvalidRequest, match="name"):
                b.spawn(TOOLBOX, name=bad)  # type: ignore[arg-type]
