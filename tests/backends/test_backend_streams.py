"""Generator methods as streams: ``async for item in backend.stream(...)``, on real kernels.

Local kernels for all; through each kind of gateway too (its websocket carries the items and
the acknowledgements) for the breaking-out, binary and 10,000-item tests.

Two toolbox backends are shared by the module: a serial one (a call after a stream runs once
the stream's generator has finished or been closed, so its state is read without a race) and
a concurrent one (a call reads the generator's progress while it is suspended).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

import bridge

pytestmark = pytest.mark.asyncio


local_only = pytest.mark.parametrize("backend_bridge", ["local"], indirect=True)


@local_only
@pytest.mark.parametrize("method", ["count", "acount"])
async def test_items_arrive_as_they_are_yielded(toolbox: bridge.AsyncBackend, method: str) -> None:
    # Events and items travel in one ordered channel, and the method sends "count_end" after
    # its last yield: items taken before that event arrived were taken while it still ran.
    ended: list[int] = []
    undo = toolbox.on("count_end", ended.append)
    taken, ended_when_taken, times = [], [], []
    try:
        async for item in toolbox.stream(method, {"n": 5, "delay": 0.5}):
            times.append(time.monotonic())
            taken.append(item)
            ended_when_taken.append(bool(ended))
        await toolbox.call("add", {"a": 0})  # the event, if late, is in by now
    finally:
        undo()
    assert taken == [0, 1, 2, 3, 4] and ended == [5]
    assert ended_when_taken[:4] == [False] * 4  # the first well before the method ended
    # Spread out as they were made (4 gaps of 0.5 s), not delivered together at the end.
    assert times[-1] - times[0] >= 1.5


async def test_breaking_out_closes_the_generator_so_its_finally_runs(
    toolbox: bridge.AsyncBackend,
) -> None:
    async for item in toolbox.stream("count", {"n": 1_000_000}):
        if item == 1:
            break
    # The serial backend runs this call once the generator is closed.
    state = await toolbox.call("count_state")
    assert state["finally"] is True
    assert state["produced"] < 1_000_000

    async for item in toolbox.stream("acount", {"n": 1_000_000}):
        if item == 1:
            break
    state = await toolbox.call("count_state")
    assert state["finally"] is True and state["produced"] < 1_000_000


@local_only
async def test_aclose_waits_until_the_finally_has_run(
    concurrent_toolbox: bridge.AsyncBackend,
) -> None:
    for method in ("count", "acount"):
        async with concurrent_toolbox.stream(method, {"n": 1_000_000}) as items:
            assert await anext(items) == 0
            assert (await concurrent_toolbox.call("count_state"))["finally"] is False
        # A concurrent backend would answer at once: the flag is set because aclose waited.
        assert (await concurrent_toolbox.call("count_state"))["finally"] is True
        with pytest.raises(StopAsyncIteration):
            await anext(items)  # a closed stream gives no more


@local_only
async def test_cancelling_the_reader_closes_the_generator(toolbox: bridge.AsyncBackend) -> None:
    first = asyncio.Event()

    async def read() -> None:
        async for _ in toolbox.stream("acount", {"n": 1000, "delay": 0.05}):
            first.set()

    task = asyncio.ensure_future(read())
    await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await toolbox.call("count_state"))["finally"] is True


@local_only
async def test_the_kernel_stays_within_the_window(
    concurrent_toolbox: bridge.AsyncBackend,
) -> None:
    # Unbounded, the generator would have made thousands of items by the time the state call
    # is answered; with a window of 8 it has made at most the 1 taken + 8 in flight.
    async with concurrent_toolbox.stream("count", {"n": 100_000}, window=8) as items:
        assert await anext(items) == 0
        state = await concurrent_toolbox.call("count_state")
        assert state["finally"] is False and 1 <= state["produced"] <= 9
        rest = [await anext(items) for _ in range(50)]
        assert rest == list(range(1, 51))
        state = await concurrent_toolbox.call("count_state")
        assert state["produced"] <= 51 + 8


@pytest.mark.parametrize("method", ["count", "acount"])
async def test_ten_thousand_items_arrive_in_order_none_lost(
    toolbox: bridge.AsyncBackend, method: str
) -> None:
    items = [item async for item in toolbox.stream(method, {"n": 10_000})]
    assert items == list(range(10_000))


@local_only
async def test_an_exception_ends_the_stream_with_a_backend_error(
    toolbox: bridge.AsyncBackend,
) -> None:
    items = []
    with pytest.raises(bridge.BackendError) as info:
        async for item in toolbox.stream("count", {"n": 5, "fail_at": 3}):
            items.append(item)
    assert items == [0, 1, 2]  # every item before the failure, then the failure
    assert info.value.ename == "ValueError" and info.value.evalue == "failed at 3"
    assert "failed at" in info.value.traceback
    assert (await toolbox.call("count_state"))["finally"] is True


async def test_items_may_be_binary(toolbox: bridge.AsyncBackend) -> None:
    items = [item async for item in toolbox.stream("count", {"n": 3, "blob": 100_000})]
    assert [i for i, _ in items] == [0, 1, 2]
    assert all(blob == bytes([i]) * 100_000 for i, blob in items)
    arrays = [item async for item in toolbox.stream("arrays", {"n": 2})]
    assert [a.dtype for a in arrays] == [np.float32, np.float32, np.int16]
    assert np.array_equal(arrays[1], [1, 1, 1])
    assert np.array_equal(arrays[2], np.arange(12, dtype="int16").reshape(3, 4)[:, ::2])


@local_only
async def test_a_timeout_between_items_closes_the_stream(toolbox: bridge.AsyncBackend) -> None:
    items = toolbox.stream("acount", {"n": 3, "delay": 30}, timeout=0.5)
    assert await anext(items) == 0
    with pytest.raises(bridge.CallTimeout, match=r"acount\(\) gave no item within 0.5 s"):
        await anext(items)
    assert (await toolbox.call("count_state"))["finally"] is True


@local_only
async def test_call_gathers_a_generator_and_stream_refuses_a_plain_method(
    toolbox: bridge.AsyncBackend,
) -> None:
    assert await toolbox.call("count", {"n": 4}) == [0, 1, 2, 3]
    assert await toolbox.call("acount", {"n": 3}) == [0, 1, 2]
    with pytest.raises(bridge.BackendError, match="add\\(\\) is not a generator method"):
        async for _ in toolbox.stream("add", {"a": 1}):
            pass
    with pytest.raises(bridge.BackendError, match="atwice\\(\\) is not a generator method"):
        async for _ in toolbox.stream("atwice", {"x": 1}):
            pass
    with pytest.raises(bridge.InvalidRequest, match="window must be a positive int"):
        toolbox.stream("count", {"n": 1}, window=0)
    methods = await toolbox.methods()
    assert methods["count"]["stream"] is True and methods["count"]["async"] is False
    assert methods["acount"]["stream"] is True and methods["acount"]["async"] is True
    assert methods["add"]["stream"] is False
