"""The example backends of kernels/examples/ do what their docstrings say, driven by the host
API; and a backend script still runs unchanged as a plain stdin/stdout subprocess."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from paths import EXAMPLES
from sklearn.linear_model import LogisticRegression

import bridge
from bridge.core.wire import kernel_side_dir


@pytest.mark.asyncio
async def test_streaming_example_streams_until_stopped(abridge: bridge.AsyncBridge) -> None:
    async with await abridge.spawn(EXAMPLES / "streaming_backend.py") as backend:
        got: list[dict[str, Any]] = []
        five = asyncio.Event()

        def on_data(data: dict[str, Any]) -> None:
            got.append(data)
            if len(got) == 5:
                five.set()

        backend.on("data", on_data)
        assert await backend.call("start_streaming", {"interval": 0.01}) == {"streaming": True}
        await asyncio.wait_for(five.wait(), 10)
        stopped = await backend.call("stop_streaming")
        assert stopped["streaming"] is False and stopped["sent"] >= 5
        # stop_streaming stops the stream, not the backend: _running is still True. Its count
        # has not moved since the stop (the thread was joined), and this reply came after every
        # event sent before it (one ordered channel): nothing more came after the stop.
        status = await backend.call("status")
        assert status == {"streaming": False, "sent": stopped["sent"], "running": True}
        assert [d["seq"] for d in got] == list(range(stopped["sent"]))
        assert all(isinstance(d["value"], float) for d in got)

        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        backend.on("done", done.set_result)
        got.clear()
        await backend.call("start_streaming", {"interval": 0, "count": 2000})
        assert await asyncio.wait_for(done, 20) == {"sent": 2000}
        assert [d["seq"] for d in got] == list(range(2000))

        # The same values pulled as a stream: a generator method.
        assert [n async for n in backend.stream("count", {"n": 5})] == [0, 1, 2, 3, 4]


@pytest.mark.asyncio
async def test_ml_example_loads_a_joblib_model_and_predicts(
    abridge: bridge.AsyncBridge, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    model = LogisticRegression().fit(X, y)
    path = tmp_path / "model.joblib"
    joblib.dump(model, path)

    async with await abridge.spawn(EXAMPLES / "ml_backend.py") as backend:
        assert await backend.call("info") == {"loaded": False, "model": None}
        with pytest.raises(bridge.BackendError, match="no model loaded"):
            await backend.call("predict", {"features": [[0, 0, 0]]})
        loaded = await backend.call("load_model", {"path": str(path)})
        assert loaded == {"loaded": True, "model": "LogisticRegression", "n_features": 3}

        rows = X[:10]
        as_list = await backend.call("predict", {"features": rows.tolist()})
        assert as_list == {"predictions": model.predict(rows).tolist()}
        as_array = await backend.call("predict", {"features": rows})
        assert isinstance(as_array["predictions"], np.ndarray)
        assert np.array_equal(as_array["predictions"], model.predict(rows))
        proba = await backend.call("predict_proba", {"features": rows})
        assert proba["classes"] == [0, 1]
        assert np.allclose(proba["probabilities"], model.predict_proba(rows))


def test_backend_script_runs_unchanged_as_a_stdio_subprocess() -> None:
    # The older bridge's way: `python script.py`, one JSON request a line on stdin.
    requests = [
        {"id": 1, "method": "echo", "params": {"data": "Hello"}},
        {"id": 2, "method": "increment"},
        {"id": 3, "method": "greet", "params": {"name": "Alice"}},
        {"id": 4, "method": "nope"},
    ]
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "echo_backend.py")],
        input="".join(json.dumps(r) + "\n" for r in requests),
        capture_output=True,
        text=True,
        timeout=30,
        env={"PYTHONPATH": str(kernel_side_dir()), "MODE": "stdio"},
        check=True,
    )
    replies = {r["id"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert replies[1]["result"]["echo"] == "Hello"
    assert replies[2]["result"] == {"count": 1}
    assert replies[3]["result"] == {"message": "Hello, Alice!", "mode": "stdio"}
    assert replies[4]["error"]["ename"] == "AttributeError"


def test_stdio_backend_print_and_events_do_not_break_the_protocol(tmp_path: Path) -> None:
    script = tmp_path / "chatty.py"
    script.write_text(
        "from bridge_runtime import PythonBridge\n"
        "class Chatty(PythonBridge):\n"
        "    def work(self, blob):\n"
        "        print('working')\n"
        "        self.send_event('progress', {'half': True, 'blob': blob})\n"
        "        return len(blob)\n"
        "    async def later(self):\n"
        "        return 'async ok'\n"
        "if __name__ == '__main__':\n"
        "    Chatty().run()\n"
    )
    blob = {"__bridge_buffer__": None, "kind": "bytes", "base64": base64.b64encode(b"abc").decode()}
    lines = [
        json.dumps({"id": 1, "method": "work", "params": {"blob": blob}}),
        "not json",
        json.dumps({"id": 2, "method": "later"}),
    ]
    done = subprocess.run(
        [sys.executable, str(script)],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        env={"PYTHONPATH": str(kernel_side_dir())},
        check=True,
    )
    out = [json.loads(line) for line in done.stdout.splitlines()]
    bad = [m for m in out if m.get("id", 0) is None]  # answered at once, out of turn
    assert len(bad) == 1 and bad[0]["error"]["ename"] == "JSONDecodeError"
    assert [m for m in out if m not in bad] == [
        {"event": "stdout", "data": "working\n"},  # print() became an event
        {"event": "progress", "data": {"half": True, "blob": blob}},
        {"id": 1, "result": 3},
        {"id": 2, "result": "async ok"},
    ]
