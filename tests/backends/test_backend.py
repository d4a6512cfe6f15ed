"""Persistent backends through the host API, on real kernels.

The kernels are shared by the tests of this module (isolation is not what they test): the
echo example, and the toolbox backend of tests/backends/ once serial and once concurrent.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from calls import running_slow_call
from jupyter_client.asynchronous import AsyncKernelClient
from paths import ROOT, TOOLBOX

import bridge

ECHO = ROOT / "kernels" / "examples" / "echo_backend.py"

pytestmark = pytest.mark.asyncio


local_only = pytest.mark.parametrize("backend_bridge", ["local"], indirect=True)


@pytest_asyncio.fixture(scope="module")
async def echo(backend_bridge: bridge.AsyncBridge) -> AsyncIterator[bridge.AsyncBackend]:
    async with await backend_bridge.spawn(ECHO, env={"MODE": "test"}, timeout=30.0) as backend:
        yield backend


# -- the echo example, as the issue shows it -----------------------------------------------------


async def test_echo_example_answers_as_its_docstring_says(echo: bridge.AsyncBackend) -> None:
    before = time.time()
    reply = await echo.call("echo", {"data": "Hello from the host"})
    assert reply["echo"] == "Hello from the host"
    assert before - 1 <= reply["timestamp"] <= time.time() + 1
    assert await echo.call("greet", {"name": "Alice"}, timeout=5.0) == {
        "message": "Hello, Alice!",
        "mode": "test",  # env reached the kernel
    }
    start = (await echo.call("get_count"))["count"]
    assert await echo.call("increment") == {"count": start + 1}
    assert await echo.call("get_count") == {"count": start + 1}


async def test_methods_lists_signatures_and_docs(echo: bridge.AsyncBackend) -> None:
    methods = await echo.methods()
    assert set(methods) == {"echo", "greet", "increment", "get_count"}
    assert methods["greet"]["signature"] == "(name: str)"
    assert methods["echo"]["signature"] == "(data)"
    assert methods["increment"]["doc"] == "Add one to the counter and return it."
    assert methods["echo"]["async"] is False


@local_only  # a gateway keeps the connection file to itself
async def test_identity_and_liveness(echo: bridge.AsyncBackend) -> None:
    assert echo.alive
    assert len(echo.kernel_id) == 36
    connection = Path(echo.connection_file)
    assert connection.is_absolute() and connection.is_file()  # noqa: ASYNC240
    assert echo.info["class"] == "EchoBackend" and echo.info["name"] == "backend"


# -- errors ------------------------------------------------------------------------------------


async def test_unknown_method_names_the_methods(toolbox: bridge.AsyncBackend) -> None:
    with pytest.raises(bridge.BackendError) as info:
        await toolbox.call("no_such_method")
    assert info.value.ename == "AttributeError"
    assert "no method 'no_such_method'" in info.value.evalue
    assert "add(a: int, b: int = 0)" in info.value.evalue  # what there is instead
    with pytest.raises(bridge.BackendError, match="no method '_private'"):
        await toolbox.call("_private")  # private methods are not the host's to call


async def test_wrong_parameters_name_the_signature(toolbox: bridge.AsyncBackend) -> None:
    with pytest.raises(bridge.BackendError) as info:
        await toolbox.call("add", {"a": 1, "c": 2})
    assert info.value.ename == "TypeError"
    assert info.value.evalue.startswith("add(a: int, b: int = 0): ")
    assert "'c'" in info.value.evalue
    with pytest.raises(bridge.BackendError, match=r"missing a required argument: 'a'"):
        await toolbox.call("add")
    assert await toolbox.call("add", {"a": 1, "b": 2}) == 3


async def test_exception_carries_ename_evalue_and_traceback(toolbox: bridge.AsyncBackend) -> None:
    with pytest.raises(bridge.BackendError) as info:
        await toolbox.call("fail", {"message": "broken on purpose"})
    error = info.value
    assert (error.ename, error.evalue, error.method) == ("ValueError", "broken on purpose", "fail")
    assert "Traceback (most recent call last)" in error.traceback
    assert "toolbox.py" in error.traceback and "raise ValueError(message)" in error.traceback
    assert "_backend.py" not in error.traceback  # the runtime's own frames are left out
    assert isinstance(error, bridge.BridgeError)


async def test_bad_requests_are_refused_on_the_host(toolbox: bridge.AsyncBackend) -> None:
    with pytest.raises(bridge.InvalidRequest, match="params must be a mapping"):
        await toolbox.call("add", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(bridge.InvalidRequest, match="cannot travel"):
        await toolbox.call("give_back", {"value": {1, 2}})
    with pytest.raises(bridge.InvalidRequest, match="NaN"):
        await toolbox.call("give_back", {"value": float("nan")})
    with pytest.raises(bridge.InvalidRequest, match="timeout"):
        await toolbox.call("add", {"a": 1}, timeout=-1)
    with pytest.raises(bridge.BackendError, match="cannot travel"):
        await toolbox.call("unsendable")  # a result that is no JSON: an error, not a hang
    assert await toolbox.call("add", {"a": 2}) == 2


# -- ordering and concurrency ---------------------------------------------------------------------


async def test_many_callers_each_get_their_own_reply(toolbox: bridge.AsyncBackend) -> None:
    values = list(range(200))
    replies = await asyncio.gather(*(toolbox.call("give_back", {"value": v}) for v in values))
    assert replies == values


async def test_calls_run_one_at_a_time_in_order(toolbox: bridge.AsyncBackend) -> None:
    await toolbox.call("take_order")
    tags = ["a", "b", "c", "d"]
    results = await asyncio.gather(
        *(toolbox.call("record", {"tag": t, "seconds": 0.05}) for t in tags)
    )
    assert results == tags
    order = await toolbox.call("take_order")
    assert order == [f"{kind} {t}" for t in tags for kind in ("start", "end")]


async def test_concurrent_backend_does_not_hold_fast_calls_behind_slow_ones(
    concurrent_toolbox: bridge.AsyncBackend,
) -> None:
    slow = await running_slow_call(concurrent_toolbox, 3, value="slow")
    started = time.monotonic()
    assert await concurrent_toolbox.call("add", {"a": 40, "b": 2}) == 42
    assert time.monotonic() - started < 2.0
    assert not slow.done()
    assert await slow == "slow"
    state = await concurrent_toolbox.call("state")
    assert state["thread"] == "bridge-backend-worker"


async def test_async_methods_run_on_the_kernel_loop(
    toolbox: bridge.AsyncBackend, concurrent_toolbox: bridge.AsyncBackend
) -> None:
    assert await toolbox.call("atwice", {"x": 21}) == 42
    assert await asyncio.gather(
        *(concurrent_toolbox.call("atwice", {"x": i}) for i in range(20))
    ) == [i * 2 for i in range(20)]


# -- timeouts ------------------------------------------------------------------------------------


async def test_timeout_raises_call_timeout_and_interrupts_the_method(
    toolbox: bridge.AsyncBackend,
) -> None:
    before = (await toolbox.call("state"))["interrupted"]
    started = time.monotonic()
    with pytest.raises(bridge.CallTimeout) as info:
        await toolbox.call("spin", {"seconds": 30}, timeout=0.5)
    assert time.monotonic() - started < 2
    assert isinstance(info.value, TimeoutError) and info.value.method == "spin"
    assert info.value.timeout == 0.5
    state = await toolbox.call("state")  # queued behind spin: it ran only once spin stopped
    assert state["interrupted"] == before + 1 and not state["spinning"]


async def test_async_method_past_its_timeout_is_cancelled(toolbox: bridge.AsyncBackend) -> None:
    before = (await toolbox.call("state"))["cancelled"]
    with pytest.raises(bridge.CallTimeout):
        await toolbox.call("aslow", {"seconds": 30}, timeout=0.3)
    for _ in range(50):
        if (await toolbox.call("state"))["cancelled"] == before + 1:
            break
        await asyncio.sleep(0.05)
    assert (await toolbox.call("state"))["cancelled"] == before + 1


async def test_call_stuck_in_c_does_not_hold_up_the_calls_behind_it(
    toolbox: bridge.AsyncBackend,
) -> None:
    # time.sleep in C cannot be interrupted: after a grace second its worker is left to
    # finish alone, a fresh one serves the calls behind it, and each gets its own value.
    with pytest.raises(bridge.CallTimeout):
        await toolbox.call("slow", {"seconds": 2.5, "value": "late"}, timeout=0.2)
    started = time.monotonic()
    assert await toolbox.call("give_back", {"value": "next"}, timeout=10) == "next"
    assert time.monotonic() - started < 2.0  # not after the stuck call's 2.5 s
    replies = []
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:  # spans the moment the stuck call ends
        replies.append(await toolbox.call("give_back", {"value": len(replies)}, timeout=5))
        await asyncio.sleep(0.05)
    assert replies == list(range(len(replies)))


async def test_late_reply_is_dropped_not_given_to_another_call(
    concurrent_toolbox: bridge.AsyncBackend, caplog: pytest.LogCaptureFixture
) -> None:
    # The method ends after its timeout while the kernel's shell is busy (an async method
    # blocks its loop), so the cancel comes too late and the reply does go out: the host
    # must drop it by its request id.
    backend = concurrent_toolbox
    late = await running_slow_call(backend, 0.6, value="late", timeout=0.3)
    blocker = asyncio.ensure_future(backend.call("block_loop", {"seconds": 1.5}))
    with caplog.at_level("DEBUG", logger="bridge.backend"):
        with pytest.raises(bridge.CallTimeout):
            await late
        others = [backend.call("give_back", {"value": i}, timeout=10) for i in range(5)]
        assert await asyncio.gather(*others) == list(range(5))
        assert await blocker == "unblocked"
    assert any("dropped a reply" in r.getMessage() for r in caplog.records)


# -- events --------------------------------------------------------------------------------------


async def test_events_reach_sync_and_async_handlers(toolbox: bridge.AsyncBackend) -> None:
    seen: list[Any] = []
    seen_async: list[Any] = []

    async def async_handler(data: Any) -> None:
        await asyncio.sleep(0)
        seen_async.append(data)

    undo = toolbox.on("tick", seen.append)
    undo_async = toolbox.on("tick", async_handler)
    assert await toolbox.call("emit_from_thread", {"type": "tick", "count": 300}) == 300
    for _ in range(100):
        if len(seen_async) == 300:
            break
        await asyncio.sleep(0.01)
    assert seen == list(range(300))  # in order, and all before the call's reply
    assert seen_async == list(range(300))
    undo()
    undo_async()
    await toolbox.call("emit", {"type": "tick", "count": 5})
    assert len(seen) == 300


async def test_events_before_a_handler_are_kept_for_it(toolbox: bridge.AsyncBackend) -> None:
    # "started" was sent by the script before run(), before the host had even connected.
    started: list[Any] = []
    toolbox.on("started", started.append)
    assert started and started[0]["pid"] == toolbox.info["pid"]

    await toolbox.call("emit", {"type": "early", "count": 1005})
    first: list[Any] = []
    second: list[Any] = []
    toolbox.on("early", first.append)
    toolbox.on("early", second.append)
    assert first == list(range(5, 1005))  # the last 1,000, to the first handler registered
    assert second == []


async def test_print_and_logging_reach_the_host_and_leave_the_result_alone(
    toolbox: bridge.AsyncBackend, caplog: pytest.LogCaptureFixture
) -> None:
    out: list[str] = []
    err: list[str] = []
    undo_out = toolbox.on("stdout", out.append)
    undo_err = toolbox.on("stderr", err.append)
    out.clear()  # the script's own start-up output, kept until now
    err.clear()
    with caplog.at_level("INFO", logger="bridge.backend"):
        assert await toolbox.call("chatty", {"n": 3}) == {"printed": 3}
    undo_out()
    undo_err()
    assert out == ["line 0\n", "line 1\n", "line 2\n", "no newline"]
    assert "to stderr\n" in err
    assert "INFO:toolbox:logged 3 lines\n" in err  # logging configured before run()
    assert any("line 1" in r.getMessage() for r in caplog.records)


async def test_script_start_up_output_is_an_event(backend_bridge: bridge.AsyncBridge) -> None:
    # A fresh backend: its first stdout event is what the script printed while starting.
    async with await backend_bridge.spawn(TOOLBOX) as backend:
        out: list[str] = []
        backend.on("stdout", out.append)
        assert out and out[0].startswith("toolbox starting")


# -- values --------------------------------------------------------------------------------------


async def test_binary_values_travel_as_buffers(toolbox: bridge.AsyncBackend) -> None:
    blob = bytes(range(256)) * 10
    assert await toolbox.call("give_back", {"value": blob}) == blob
    assert await toolbox.call("describe", {"value": memoryview(blob)}) == {
        "type": "bytes",
        "length": 2560,
    }
    assert await toolbox.call("numpy_loaded") is False  # bytes need no numpy in the kernel

    # 10 MB of float64 (a gateway's websocket takes messages up to 10 MiB: it fits there too)
    array = np.random.default_rng(1).random(1_250_000)
    described = await toolbox.call("describe", {"value": array})
    assert described["type"] == "ndarray" and described["dtype"] == "float64"
    assert described["shape"] == [1_250_000]
    back = await toolbox.call("give_back", {"value": {"array": array, "tag": "x"}}, timeout=30)
    assert back["tag"] == "x"
    assert isinstance(back["array"], np.ndarray) and np.array_equal(back["array"], array)
    back["array"][0] = -1  # an ordinary, writable array

    grid = np.arange(12, dtype=np.int32).reshape(3, 4)[:, ::2]  # not contiguous
    back = await toolbox.call("give_back", {"value": [grid, np.float32(1.5), np.int64(7)]})
    assert back[0].dtype == np.int32 and np.array_equal(back[0], grid)
    assert back[1:] == [1.5, 7]


async def test_base64_placeholders_in_params_arrive_as_bytes_and_arrays(
    toolbox: bridge.AsyncBackend,
) -> None:
    # The wire form a host without binary buffers sends (JSON over HTTP, say).
    data = np.arange(6, dtype="<f4")
    array = {
        "__bridge_buffer__": None,
        "kind": "ndarray",
        "dtype": "<f4",
        "shape": [2, 3],
        "base64": base64.b64encode(data.tobytes()).decode(),
    }
    described = await toolbox.call("describe", {"value": array})
    assert described == {"type": "ndarray", "dtype": "float32", "shape": [2, 3], "sum": 15.0}
    blob = {"__bridge_buffer__": None, "kind": "bytes", "base64": "AAEC"}
    assert await toolbox.call("give_back", {"value": [blob]}) == [b"\x00\x01\x02"]


@local_only  # through the connection file, which a gateway keeps to itself
async def test_inspection_is_not_blocked_by_a_long_call(toolbox: bridge.AsyncBackend) -> None:
    # A second client, as `jupyter console --existing FILE` would be, reads the live state
    # while a long call is running.
    await toolbox.call("slow", {"seconds": 0})  # counter moves
    long_call = await running_slow_call(toolbox, 3, value="done")
    client = AsyncKernelClient()
    client.load_connection_file(toolbox.connection_file)
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=10)
        results: list[Any] = []
        started = time.monotonic()
        reply = await client.execute_interactive(
            "backend.counter, backend.spinning, type(backend).__name__",
            output_hook=lambda msg: results.append(msg),
            timeout=10,
        )
        elapsed = time.monotonic() - started
    finally:
        client.stop_channels()
    assert reply["content"]["status"] == "ok"
    assert elapsed < 2.0 and not long_call.done()
    values = [m["content"]["data"]["text/plain"] for m in results if "data" in m["content"]]
    counter = (await toolbox.call("state", timeout=10))["counter"]
    assert values == [f"({counter}, False, 'Toolbox')"]
    assert await long_call == "done"
