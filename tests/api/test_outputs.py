"""on_output: each output reaches the caller as the kernel makes it, in order, on every path."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import bridge

PRINT_SLEEP_PRINT = "import time\nprint('a', flush=True)\ntime.sleep(1)\nprint('b')\nreturn 'done'"


@pytest.mark.asyncio
async def test_the_first_output_arrives_while_the_code_still_runs(
    abridge: bridge.AsyncBridge,
) -> None:
    seen: list[tuple[float, dict[str, Any]]] = []
    started = time.monotonic()
    result = await abridge.execute(
        PRINT_SLEEP_PRINT, on_output=lambda o: seen.append((time.monotonic(), o))
    )
    ended = time.monotonic()
    assert result.success and result.value == "done"
    texts = [o.get("text") for _, o in seen if o["output_type"] == "stream"]
    assert texts == ["a\n", "b\n"]
    # 'a' came before the sleep, a second before the end; 'b' after it.
    assert seen[0][0] - started < ended - started - 0.8
    assert seen[-1][1]["output_type"] == "execute_result"
    assert seen[-1][1]["data"]["application/json"] == "done"


@pytest.mark.asyncio
async def test_every_kind_of_output_in_order_and_the_result_unchanged(
    abridge: bridge.AsyncBridge,
) -> None:
    seen: list[dict[str, Any]] = []
    code = (
        "import sys\n"
        "from IPython.display import HTML, display\n"
        "print('out', flush=True)\n"
        "print('err', file=sys.stderr, flush=True)\n"
        "display(HTML('<b>x</b>'))\n"
        "print('more', flush=True)\n"
        "print('again', flush=True)\n"
        "1 / 0\n"
    )
    result = await abridge.execute(code, on_output=seen.append)
    assert not result.success
    kinds = [(o["output_type"], o.get("name")) for o in seen]
    assert kinds == [
        ("stream", "stdout"),
        ("stream", "stderr"),
        ("display_data", None),
        ("stream", "stdout"),
        ("stream", "stdout"),
        ("error", None),
    ]
    assert seen[2]["data"]["text/html"] == "<b>x</b>"
    assert seen[-1]["ename"] == "ZeroDivisionError"
    assert isinstance(seen[-1]["traceback"], list)
    # The chunks were heard one by one; the result merges them as before.
    assert [o["output_type"] for o in result.outputs] == [
        "stream",
        "stream",
        "display_data",
        "stream",
        "error",
    ]
    assert result.outputs[3]["text"] == "more\nagain\n"


@pytest.mark.asyncio
async def test_async_callbacks_run_in_order_without_holding_up_the_call(
    abridge: bridge.AsyncBridge,
) -> None:
    done: list[str] = []

    async def slow(output: dict[str, Any]) -> None:
        # The first waits longest: arrival order must still be kept.
        await asyncio.sleep(0.01 if done else 0.3)
        done.append(output["text"])

    code = "for i in range(5):\n    print(i, flush=True)\n"
    result = await abridge.execute(code, on_output=slow)
    assert result.success
    # All awaited before the call returned, in order (however the kernel chunked the text).
    assert "".join(done) == "".join(f"{i}\n" for i in range(5))


@pytest.mark.asyncio
async def test_a_callback_that_raises_costs_nothing_but_a_log_line(
    abridge: bridge.AsyncBridge, caplog: pytest.LogCaptureFixture
) -> None:
    calls = []

    def broken(output: dict[str, Any]) -> None:
        calls.append(output)
        raise RuntimeError("callback bug")

    async def broken_async(output: dict[str, Any]) -> None:
        raise RuntimeError("async callback bug")

    with caplog.at_level(logging.ERROR, logger="bridge"):
        first = await abridge.execute(
            "print(1, flush=True)\nprint(2, flush=True)\nreturn 3", on_output=broken
        )
        second = await abridge.execute("print(1)\nreturn 3", on_output=broken_async)
    assert first.success and first.value == 3 and first.stdout == "1\n2\n"
    assert second.success and second.value == 3
    assert len(calls) == 3
    assert "callback bug" in caplog.text and "async callback bug" in caplog.text
    assert (await abridge.evaluate("1 + 1")).value == 2  # the kernel is fine


@pytest.mark.asyncio
async def test_sessions_evaluate_and_files_stream_too(
    abridge: bridge.AsyncBridge, tmp_path: Path
) -> None:
    script = tmp_path / "script.py"
    script.write_text("print('from the file')\n")
    heard: list[str] = []
    async with abridge.session() as s:
        await s.execute("x = 6", on_output=heard.append)  # no output: never called
        r = await s.execute("print(x)\nreturn x * 7", on_output=lambda o: heard.append(o))
        assert r.value == 42
        await s.evaluate("x * 2", on_output=lambda o: heard.append(o))
    await abridge.execute_file(script, on_output=lambda o: heard.append(o))
    assert [(o["output_type"], o.get("text")) for o in heard] == [  # type: ignore[union-attr]
        ("stream", "6\n"),
        ("execute_result", None),
        ("execute_result", None),
        ("stream", "from the file\n"),
    ]


@pytest.mark.asyncio
async def test_a_timeout_still_delivers_what_came_before_it(abridge: bridge.AsyncBridge) -> None:
    seen: list[dict[str, Any]] = []
    with pytest.raises(bridge.ExecutionTimeout) as info:
        await abridge.execute(
            "print('working', flush=True)\nimport time\ntime.sleep(30)",
            timeout=1.5,
            on_output=seen.append,
        )
    # The output before the timeout, then the interrupt's KeyboardInterrupt: as the result has.
    assert seen[0] == {"output_type": "stream", "name": "stdout", "text": "working\n"}
    assert [o.get("ename") for o in seen[1:]] == ["KeyboardInterrupt"]
    assert info.value.result.stdout == "working\n"
    assert len(info.value.result.outputs) == len(seen)


@pytest.mark.asyncio
async def test_on_output_must_be_callable(abridge: bridge.AsyncBridge) -> None:
    with pytest.raises(bridge.InvalidRequest, match="on_output"):
        await abridge.execute("1", on_output="print")  # type: ignore[arg-type]


def test_the_blocking_api_calls_plain_callbacks_in_a_worker_thread() -> None:
    threads: set[str] = set()
    seen: list[float] = []
    values: list[Any] = []  # what the callbacks' own calls answered (a raise there is logged)
    with bridge.Bridge(pool_size=1) as b:

        def callback(output: dict[str, Any]) -> None:
            threads.add(threading.current_thread().name)
            seen.append(time.monotonic())
            if output.get("text") == "a\n":
                # A worker thread, not the loop: the blocking API works from here, even with
                # the pool's one kernel still running the call this is a callback of.
                values.append(b.evaluate("2 + 2", timeout=10).value)
            elif output.get("text") == "1\n":
                values.append(s.evaluate("y + 1", timeout=10).value)  # the same session

        started = time.monotonic()
        result = b.execute(PRINT_SLEEP_PRINT, on_output=callback)
        ended = time.monotonic()
        with b.session() as s:
            s.execute("y = 1")
            r = s.execute("print(y)", on_output=callback)
    assert result.value == "done" and r.stdout == "1\n"
    assert values == [4, 2]
    assert len(seen) == 4  # a, b, the value, then the session's 1
    assert seen[0] - started < ended - started - 0.8
    assert threading.current_thread().name not in threads
    assert not any(name.startswith("kernel-bridge") for name in threads)  # not the loop thread
