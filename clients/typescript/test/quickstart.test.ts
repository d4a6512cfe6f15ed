// The old Python Bridge README's quick start, ported with only `api.python` -> `bridge.python`,
// against a real service: availability, the three execute examples, the example backends
// (counter, streaming with on("data"), the ML backend with a fitted scikit-learn model),
// cleanup, timeouts, and the division-by-zero error with its traceback.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { KernelBridge, PythonError, PythonTimeoutError } from "../src/index.js";
import { FIXTURES, REPO, startBridge, waitFor } from "./helpers.js";

const T = { timeout: 60_000 };

describe("the old README's quick start", () => {
  let bridge: KernelBridge;
  before(async () => {
    process.chdir(REPO); // the scripts' paths are relative to the host's working folder
    bridge = await startBridge();
  });
  after(async () => {
    await bridge?.close();
  });

  test("1. check Python availability", T, async () => {
    const hasPython = await bridge.python?.hasPython();
    assert.equal(hasPython, true);
    const version = await bridge.python?.getPythonVersion();
    assert.match(version, /^Python 3\.\d+\.\d+$/);
  });

  test("2. execute Python code inline: the three examples", T, async () => {
    // Simple execution
    const simple = await bridge.python?.execute("return {'hello': 'world'}");
    assert.deepEqual(simple, { hello: "world" });

    // With imports
    const withImports = await bridge.python?.execute(`
import json
data = {"sum": 2 + 2, "items": [1, 2, 3]}
return json.dumps(data)
`);
    assert.equal(typeof withImports, "string");
    assert.deepEqual(JSON.parse(withImports), { sum: 4, items: [1, 2, 3] });

    // With parameters (via string interpolation)
    const value = 42;
    const withParams = await bridge.python?.execute(`
value = ${value}
return {"squared": value ** 2}
`);
    assert.deepEqual(withParams, { squared: 1764 });
  });

  test("3. spawn a persistent backend (the counter), call it, clean up", T, async () => {
    const backend = await bridge.python?.spawn("kernels/examples/echo_backend.py");

    const echo = await backend?.call("echo", { data: "Hello from Bun!" });
    assert.equal(echo.echo, "Hello from Bun!");
    assert.equal(typeof echo.timestamp, "number");
    assert.ok(Math.abs(echo.timestamp - Date.now() / 1000) < 60);

    const count = await backend?.call("get_count");
    assert.deepEqual(count, { count: 0 });

    await backend?.call("increment");
    const newCount = await backend?.call("get_count");
    assert.deepEqual(newCount, { count: 1 });

    // Cleanup
    await backend?.terminate();
    assert.equal(backend.alive, false);
  });

  test("4. handle async events: the streaming backend with on('data')", T, async () => {
    const backend = await bridge.python?.spawn("kernels/examples/streaming_backend.py");
    try {
      const received: { seq: number; value: number }[] = [];
      const five = new Promise<void>((resolve) => {
        backend?.on("data", (data) => {
          received.push(data);
          if (received.length === 5) resolve();
        });
      });
      assert.deepEqual(await backend?.call("start_streaming", { interval: 0.01 }), { streaming: true });
      await five;
      const stopped = await backend?.call("stop_streaming");
      assert.equal(stopped.streaming, false);
      assert.ok(stopped.sent >= 5);
      // The events come on their own stream, apart from the call's answer: wait for the last.
      assert.ok(await waitFor(() => received.length >= stopped.sent, 10_000), `${received.length} of ${stopped.sent}`);
      assert.deepEqual(
        received.map((d) => d.seq),
        [...Array(stopped.sent).keys()],
      );
      assert.ok(received.every((d) => typeof d.value === "number"));
    } finally {
      await backend?.terminate();
    }
  });

  test("5. the ML backend: a fitted scikit-learn model, loaded once, many predictions", T, async () => {
    // Fit and save the model (as a plugin's training step would), then serve it.
    const path = await bridge.python?.execute(`
import os, tempfile
import joblib, numpy as np
from sklearn.linear_model import LogisticRegression
rng = np.random.default_rng(0)
X = rng.normal(size=(80, 3))
y = (X[:, 0] + X[:, 1] > 0).astype(int)
path = os.path.join(tempfile.mkdtemp(), "model.joblib")
joblib.dump(LogisticRegression().fit(X, y), path)
return path
`);
    const backend = await bridge.python?.spawn("kernels/examples/ml_backend.py");
    try {
      assert.deepEqual(await backend?.call("info"), { loaded: false, model: null });
      const loaded = await backend?.call("load_model", { path });
      assert.deepEqual(loaded, { loaded: true, model: "LogisticRegression", n_features: 3 });
      const rows = [
        [2, 2, 0],
        [-2, -2, 0],
        [3, 1, 5],
      ];
      const { predictions } = await backend?.call("predict", { features: rows });
      assert.deepEqual(predictions, [1, 0, 1]);
      const proba = await backend?.call("predict_proba", { features: rows });
      assert.deepEqual(proba.classes, [0, 1]);
      for (const [i, row] of proba.probabilities.entries()) {
        assert.ok(Math.abs(row[0] + row[1] - 1) < 1e-9);
        assert.equal(row[1] > 0.5 ? 1 : 0, predictions[i]);
      }
    } finally {
      await backend?.terminate();
    }
  });

  test("6. cleanup: try/finally terminate, and spawning again gives a fresh backend", T, async () => {
    const backend = await bridge.python?.spawn("kernels/examples/echo_backend.py");
    try {
      await backend?.call("increment");
      assert.deepEqual(await backend?.call("get_count"), { count: 1 });
    } finally {
      await backend?.terminate();
    }
    const again = await bridge.python?.spawn("kernels/examples/echo_backend.py");
    assert.notEqual(again, backend);
    assert.deepEqual(await again?.call("get_count"), { count: 0 });
    await again?.terminate();
  });

  test("7. use timeouts: a call past its timeout is interrupted, the backend goes on", T, async () => {
    const backend = await bridge.python?.spawn(`${FIXTURES}/probe_backend.py`);
    try {
      // Short timeout for quick operations
      const started = Date.now();
      await assert.rejects(backend?.call("sleep", { seconds: 20 }, 1000), PythonTimeoutError);
      assert.ok(Date.now() - started < 10_000, `took ${Date.now() - started} ms`);
      // Long timeout for a longer operation
      assert.equal(await backend?.call("sleep", { seconds: 0.2 }, 60000), "slept");

      const t0 = Date.now();
      const err = await bridge.python?.execute("import time\ntime.sleep(30)", { timeout: 1000 }).then(
        () => assert.fail("no timeout"),
        (e: unknown) => e,
      );
      assert.ok(err instanceof PythonTimeoutError);
      assert.equal(err.status, 504);
      assert.ok(Date.now() - t0 < 15_000, `took ${Date.now() - t0} ms`);
      assert.equal(await bridge.python?.execute("return 1"), 1); // the pool still serves
    } finally {
      await backend?.terminate();
    }
  });

  test("8. error handling: division by zero, with the Python traceback", T, async () => {
    const backend = await bridge.python?.spawn(`${FIXTURES}/probe_backend.py`);
    try {
      try {
        await backend?.call("divide", { a: 10, b: 0 });
        assert.fail("no error");
      } catch (error) {
        assert.ok(error instanceof PythonError);
        assert.equal(error.message, "ZeroDivisionError: division by zero");
        assert.equal(error.pythonType, "ZeroDivisionError");
        assert.match(error.traceback, /^Traceback \(most recent call last\)/);
        assert.match(error.traceback, /return a \/ b/);
        assert.ok(error.stack?.includes(error.traceback.trimEnd()));
        assert.equal(error.result.success, false);
      }
      try {
        await bridge.python?.execute("x = 10\ny = 0\nreturn x / y");
        assert.fail("no error");
      } catch (error) {
        assert.ok(error instanceof PythonError);
        assert.equal(error.message, "ZeroDivisionError: division by zero");
        assert.equal(error.pythonType, "ZeroDivisionError");
        assert.match(error.traceback, /ZeroDivisionError/);
        assert.match(error.traceback, /x \/ y/);
        assert.doesNotMatch(error.traceback, /\x1b\[/); // no terminal colors
        assert.ok(error.stack?.includes("x / y"));
      }
    } finally {
      await backend?.terminate();
    }
  });
});
