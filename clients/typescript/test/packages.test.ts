// Package installation (issue 11: POST /packages/install): passes once the service has it.
// The package comes from the package index the service's pip is configured with.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { KernelBridge } from "../src/index.js";
import { startBridge } from "./helpers.js";

describe("install", () => {
  let bridge: KernelBridge;
  before(async () => {
    bridge = await startBridge();
  });
  after(async () => {
    await bridge?.close();
  });

  test("install a package the kernels then import; a bogus one is success: false", { timeout: 300_000 }, async () => {
    const ok = await bridge.python.install(["six"]);
    assert.equal(ok.success, true, ok.stderr);
    assert.ok(ok.duration_ms > 0);
    assert.deepEqual(await bridge.python.modules(["six"]), { six: true });
    const bad = await bridge.python.install(["no-such-package-kernel-bridge-test-0000"]);
    assert.equal(bad.success, false);
    assert.notEqual(bad.stderr, "");
  });
});
