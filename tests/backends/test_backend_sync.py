"""The blocking Backend: the same calls, plain handlers in a worker thread, in order."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest
from paths import TOOLBOX

import bridge


def test_blocking_bridge_spawns_calls_and_runs_handlers_in_a_worker_thread_in_order() -> None:
    with bridge.Bridge(pool_size=0) as b, b.spawn(TOOLBOX, timeout=30) as backend:
        assert backend.call("add", {"a": 1, "b": 2}) == 3
        assert "spin" in backend.methods()
        threads: list[threading.Thread] = []
        values: list[Any] = []
        done = threading.Event()

        def handler(data: Any) -> None:
            threads.append(threading.current_thread())
            values.append(data)
            if data == 9:
                # A handler may call the backend: it runs in a worker thread.
                values.append(backend.call("add", {"a": 100}))
                done.set()

        undo = backend.on("n", handler)
        backend.call("emit", {"type": "n", "count": 10})
        assert done.wait(10)
        assert values == [*range(10), 100]
        loop_thread = b.call(_current_thread)
        assert not {threading.main_thread(), loop_thread} & set(threads)
        undo()
        with pytest.raises(bridge.CallTimeout):
            backend.call("spin", {"seconds": 10}, timeout=0.3)
        assert backend.alive and backend.kernel_id
        assert backend.name == "toolbox.py"  # the script's file name, as people see it
        pid = backend.async_backend.info["pid"]
    assert not backend.alive and backend.terminated
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_blocking_backend_is_a_portal_with_the_async_api_checks() -> None:
    with bridge.Bridge(pool_size=0) as b, b.spawn(TOOLBOX, timeout=30) as backend:
        # The check and the error are the async API's, not the blocking layer's own.
        with pytest.raises(bridge.InvalidRequest, match="the handler must be callable"):
            backend.on("n", "not callable")  # type: ignore[arg-type]
        with pytest.raises(bridge.InvalidRequest, match="the handler must be callable"):
            backend.async_backend.on("n", "not callable")  # type: ignore[arg-type]
        seen: list[tuple[str, Any]] = []
        done = threading.Event()

        def every(event: str, data: Any) -> None:
            seen.append((event, data))
            if event == "m" and data == 2:
                done.set()

        undo = backend.on_any(every)
        backend.call("emit", {"type": "m", "count": 3})
        assert done.wait(10)
        assert [d for e, d in seen if e == "m"] == [0, 1, 2]
        undo()


def test_blocking_bridge_submits_several_calls_at_once_and_reports_its_pool() -> None:
    with bridge.Bridge(pool_size=2) as b:
        futures = [b.submit(b.async_bridge.evaluate, f"{n} ** 2") for n in range(4)]
        assert [f.result(timeout=30).value for f in futures] == [0, 1, 4, 9]
        status = b.status()
        assert status.size == 2 and status.ready == 2 and status.busy == 0
        assert b.kernel_info["language_info"]["name"] == "python"
        with b.session() as s:
            assert s.kernel_info["language_info"]["name"] == "python"
            assert s.alive and not s.busy
        assert not s.alive
    # A bridge never started closes through the async API too, and refuses calls after.
    never = bridge.Bridge(pool_size=0)
    never.close()
    with pytest.raises(bridge.BridgeClosed):
        never.execute("1")


def test_backend_values_have_a_json_form_for_hosts_that_speak_json() -> None:
    assert bridge.AsyncBackend.to_json({"a": b"\x00\x01", "n": [1, 2]}) == {
        "a": {"__bridge_buffer__": None, "kind": "bytes", "base64": "AAE="},
        "n": [1, 2],
    }


def test_a_name_is_what_people_see_and_is_checked() -> None:
    with bridge.Bridge(pool_size=0) as b:
        with b.spawn(TOOLBOX, timeout=30, name="tools") as backend:
            assert backend.name == "tools"
            assert "backend tools" in repr(backend)
        for bad in ("", "two\nlines", "x" * 256, 5):
            with pytest.raises(bridge.InvalidRequest, match="name"):
                b.spawn(TOOLBOX, name=bad)  # type: ignore[arg-type]


def test_blocking_stream_iterates_and_closing_runs_the_finally() -> None:
    with bridge.Bridge(pool_size=0) as b, b.spawn(TOOLBOX, timeout=30) as backend:
        assert list(backend.stream("count", {"n": 1000})) == list(range(1000))
        assert list(backend.stream("acount", {"n": 3})) == [0, 1, 2]
        for item in backend.stream("count", {"n": 1_000_000}):
            if item == 2:
                break  # the dropped iterator closes the generator before the next call runs
        assert backend.call("count_state")["finally"] is True
        with backend.stream("acount", {"n": 1_000_000}) as items:
            assert next(items) == 0
        assert backend.call("count_state")["finally"] is True
        with pytest.raises(bridge.BackendError, match="failed at 1"):
            list(backend.stream("count", {"n": 3, "fail_at": 1}))


async def _current_thread() -> threading.Thread:
    return threading.current_thread()
