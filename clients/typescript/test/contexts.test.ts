// Contexts (issue 11's routes: POST /contexts, /contexts/{id}/execute|evaluate|execute-file,
// /restart, DELETE): these pass once the service has them.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { BridgeHTTPError, KernelBridge, PythonError } from "../src/index.js";
import { REPO, startBridge } from "./helpers.js";

const T = { timeout: 60_000 };

describe("contexts", () => {
  let bridge: KernelBridge;
  before(async () => {
    bridge = await startBridge({ root: REPO });
  });
  after(async () => {
    await bridge?.close();
  });

  test("state lasts across calls, restart clears it, close ends it", T, async () => {
    const context = await bridge.python.context({ name: "ts-test", env: { CTX_MODE: "on" } });
    assert.equal(context.name, "ts-test");
    assert.match(context.kernelId, /^[0-9a-f-]{36}$/);
    await context.execute("counter = 41\nimport os");
    assert.equal(await context.execute("counter += 1\nreturn counter"), 42);
    assert.equal(await context.evaluate("counter"), 42);
    assert.equal(await context.evaluate("os.environ['CTX_MODE']"), "on");
    const execution = await context.run("print(counter)\nreturn counter * 2");
    assert.equal(execution.stdout, "42\n");
    assert.equal(execution.value, 84);
    await assert.rejects(context.execute("undefined_name"), (e: unknown) => e instanceof PythonError && e.pythonType === "NameError");
    assert.equal((await context.describe()).id, context.id);
    await context.restart();
    await assert.rejects(context.evaluate("counter"), (e: unknown) => e instanceof PythonError && e.pythonType === "NameError");
    await context.close();
    await context.close(); // idempotent
    await assert.rejects(
      bridge.python.context({ name: "x", cwd: "/nonexistent-folder-here" }).then((c) => c.close().then(() => c)),
      BridgeHTTPError,
    );
  });

  test("two contexts do not share state; the one-off pool does not see it", T, async () => {
    const [a, b] = await Promise.all([bridge.python.context(), bridge.python.context()]);
    try {
      await a.execute("x = 'a'");
      await b.execute("x = 'b'");
      assert.equal(await a.evaluate("x"), "a");
      assert.equal(await b.evaluate("x"), "b");
      assert.equal(await bridge.python.execute("return 'x' in globals()"), false);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });
});
