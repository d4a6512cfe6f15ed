// Streamed executions (issue 11: Accept: text/event-stream on /execute and the context and
// file routes): callbacks fire while the code still runs. These pass once the service has it.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { KernelBridge, PythonError, PythonTimeoutError } from "../src/index.js";
import { startBridge } from "./helpers.js";

const T = { timeout: 60_000 };

describe("streaming", () => {
  let bridge: KernelBridge;
  before(async () => {
    bridge = await startBridge();
  });
  after(async () => {
    await bridge?.close();
  });

  test("stdout arrives while the code runs, not at its end", T, async () => {
    const arrivals: { text: string; at: number }[] = [];
    const started = Date.now();
    const execution = await bridge.python.run(
      "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.7)\nreturn 'done'",
      { onStdout: (text) => arrivals.push({ text, at: Date.now() - started }) },
    );
    const ended = Date.now() - started;
    assert.equal(execution.value, "done");
    assert.equal(arrivals.map((a) => a.text).join(""), "0\n1\n2\n");
    assert.ok((arrivals[0]?.at ?? ended) < ended - 1000, `first stdout at ${arrivals[0]?.at} ms, end at ${ended} ms`);
  });

  test("display, stderr and result events, then the whole answer", T, async () => {
    const kinds: string[] = [];
    const execution = await bridge.python.run(
      "import sys\nfrom IPython.display import Markdown, display\ndisplay(Markdown('# hi'))\nprint('e', file=sys.stderr)\nreturn 7",
      {
        onDisplay: (output) => kinds.push(`display:${Object.keys(output.data).sort().join(",")}`),
        onStderr: (text) => kinds.push(`stderr:${text}`),
        onResult: (output) => kinds.push(`result:${output.data["text/plain"]}`),
      },
    );
    assert.deepEqual(kinds, ["display:text/markdown,text/plain", "stderr:e\n", "result:7"]);
    assert.equal(execution.value, 7);
    assert.equal(execution.outputs.length, 3);
  });

  test("onError hears the exception, streamed or not, before run() resolves with it", T, async () => {
    for (const live of [true, false]) {
      const seen: string[] = [];
      const errors: PythonError[] = [];
      const execution = await bridge.python.run("print('before')\n1 / 0", {
        ...(live ? { onStdout: (t: string) => seen.push(t) } : {}),
        onError: (error) => errors.push(error),
      });
      assert.equal(errors.length, 1, `live: ${live}`);
      assert.ok(errors[0] instanceof PythonError);
      assert.equal(errors[0].pythonType, "ZeroDivisionError");
      assert.equal(errors[0], execution.error); // the same error, not a copy
      assert.deepEqual(seen, live ? ["before\n"] : []);
    }
    const none: PythonError[] = [];
    await bridge.python.run("return 1", { onError: (e) => none.push(e), onStdout: () => {} });
    assert.deepEqual(none, []);
  });

  test("a streamed call past its timeout rejects with PythonTimeoutError, with the output so far", T, async () => {
    const seen: string[] = [];
    const error = await bridge.python
      .run("print('working', flush=True)\nimport time\ntime.sleep(30)", { timeout: 1500, onStdout: (t) => seen.push(t) })
      .then(() => assert.fail("no timeout"), (e: unknown) => e);
    assert.ok(error instanceof PythonTimeoutError, String(error));
    assert.deepEqual(seen, ["working\n"]);
  });

  test("a context streams too", T, async () => {
    const context = await bridge.python.context();
    try {
      const seen: string[] = [];
      const started = Date.now();
      await context.run("import time\nprint('a', flush=True)\ntime.sleep(1)\nprint('b')", {
        onStdout: (t) => seen.push(`${t.trim()}@${Date.now() - started < 800 ? "early" : "late"}`),
      });
      assert.deepEqual(seen, ["a@early", "b@late"]);
    } finally {
      await context.close();
    }
  });
});
