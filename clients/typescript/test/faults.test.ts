// Faults from TypeScript: a backend kernel killed mid-call, close() and a host's exit (even a
// killed host) leave no process behind.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";

import { BridgeHTTPError, KernelBridge, KernelDiedError } from "../src/index.js";
import { alive, cmdline, descendants, eventually, FIXTURES, PYTHON, startBridge, waitFor, within } from "./helpers.js";

const T = { timeout: 90_000 };
const PROBE = `${FIXTURES}/probe_backend.py`;
const HOST = fileURLToPath(new URL("./fixtures/exit_host.js", import.meta.url));

/** Run the exit host in this runtime (Bun or Node); its first line names the service. */
async function host(mode: "exit" | "hang"): Promise<{ pid: number; service: number; kernel: number; exited: Promise<number | null> }> {
  const child = spawn(process.execPath, [HOST, mode, PYTHON, PROBE], { stdio: ["ignore", "pipe", "pipe"] });
  let err = "";
  child.stderr.on("data", (c: Buffer) => (err += c.toString()));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const line = await within(
    new Promise<string>((resolve, reject) => {
      let out = "";
      child.stdout.on("data", (c: Buffer) => {
        out += c.toString();
        if (out.includes("\n")) resolve(out.split("\n")[0] as string);
      });
      void exited.then((code) => reject(new Error(`the host exited (${code}) early: ${err}`)));
    }),
    90_000,
    "the host's start",
  );
  const { service, kernel } = JSON.parse(line) as { service: number; kernel: number };
  return { pid: child.pid as number, service, kernel, exited };
}

function leftOf(pids: number[]): string[] {
  return pids.filter(alive).map((pid) => `${pid}: ${cmdline(pid)}`);
}

describe("faults", () => {
  test("a backend kernel killed mid-call rejects with KernelDiedError within 5 s; close() leaves no process", T, async () => {
    const bridge = await startBridge();
    const service = bridge.service?.pid as number;
    let processes: number[] = [];
    try {
      const backend = await bridge.python.spawn(PROBE);
      const pid = await backend.call<number>("pid");
      processes = [service, ...descendants(service)];
      assert.ok(processes.includes(pid), "the backend's kernel is the service's");
      const started = new Promise<void>((resolve) => backend.on("started", () => resolve()));
      const pending = backend.call("sleep", { seconds: 60, announce: true });
      await within(started, 30_000, "the call's start"); // killed while the call runs
      const killedAt = Date.now();
      process.kill(pid, "SIGKILL");
      const error = await within(pending.then(() => "resolved", (e: unknown) => e), 5_000, "the call");
      assert.ok(error instanceof KernelDiedError, `got ${String(error)}`);
      assert.equal(error.status, 503);
      assert.ok(Date.now() - killedAt < 5_000);
      assert.equal(await bridge.python.execute("return 2 + 2"), 4); // the service lives on
    } finally {
      await bridge.close();
    }
    assert.equal(alive(service), false);
    assert.ok(await waitFor(() => leftOf(processes).length === 0, 10_000), `left: ${leftOf(processes).join("; ")}`);
  });

  test("a backend whose kernel died is not handed out again, even without on()", T, async () => {
    const bridge = await startBridge();
    try {
      // No on(): no event stream tells the handle its kernel died; the service does.
      const first = await bridge.python.spawn(PROBE);
      const firstPid = await first.call<number>("pid");
      process.kill(firstPid, "SIGKILL");
      assert.ok(
        await eventually(async () => (await bridge.python.getBackend(PROBE)) === undefined, 20_000),
        "getBackend still hands out the backend whose kernel was killed",
      );
      assert.equal(first.alive, false);
      const second = await bridge.python.spawn(PROBE);
      assert.notEqual(second, first);
      assert.notEqual(second.id, first.id);
      const secondPid = await second.call<number>("pid");
      assert.notEqual(secondPid, firstPid);

      // A call that meets the dead kernel marks its handle dead; spawn starts the script anew.
      process.kill(secondPid, "SIGKILL");
      const error = await within(second.call("echo", { data: 1 }).then(() => "resolved", (e: unknown) => e), 20_000, "the call");
      assert.ok(error instanceof KernelDiedError, `got ${String(error)}`);
      assert.equal(second.alive, false);
      const third = await bridge.python.spawn(PROBE);
      assert.notEqual(third.id, second.id);
      assert.equal(await third.call("echo", { data: 1 }), 1);
      assert.equal(await bridge.python.getBackend(PROBE), third);
      // The dead ones were deleted: only the third is listed.
      assert.equal((await bridge.health()).backends, 1);
    } finally {
      await bridge.close();
    }
  });

  test("a host's process.exit() leaves no service or kernel behind", T, async () => {
    const { service, kernel, exited } = await host("exit");
    const processes = [service, ...descendants(service)];
    assert.ok(processes.includes(kernel));
    assert.equal(await within(exited, 30_000, "the host's exit"), 0);
    assert.ok(await waitFor(() => leftOf(processes).length === 0, 20_000), `left: ${leftOf(processes).join("; ")}`);
  });

  test("a host killed with SIGKILL leaves no service or kernel behind (the service watches its stdin)", T, async () => {
    const { pid, service, kernel, exited } = await host("hang");
    const processes = [service, ...descendants(service)];
    assert.ok(processes.includes(kernel));
    process.kill(pid, "SIGKILL");
    await within(exited, 10_000, "the host's death");
    assert.ok(await waitFor(() => leftOf(processes).length === 0, 20_000), `left: ${leftOf(processes).join("; ")}`);
  });
});

describe("overload", () => {
  test("an overloaded answer is retried until the call's timeout; overloadRetry: false shows it", T, async () => {
    // One pool kernel and no room to wait: every call beyond the running one is refused at once.
    const bridge = await startBridge({ args: ["--BridgeApp.max_waiting=0"] });
    const service = bridge.service;
    assert.ok(service);
    const raw = await KernelBridge.connect({ url: service.url, token: service.token, overloadRetry: false });
    try {
      const slow = "import time\ntime.sleep(0.2)\nreturn n";
      const calls = [0, 1, 2, 3].map((n) => bridge.python.execute(slow, { inputs: { n }, timeout: 30_000 }));
      assert.deepEqual(await Promise.all(calls), [0, 1, 2, 3]);
      const refused = await Promise.allSettled([0, 1].map((n) => raw.python.execute(slow, { inputs: { n } })));
      const reasons = refused.filter((r) => r.status === "rejected").map((r) => (r as PromiseRejectedResult).reason);
      assert.equal(reasons.length, 1);
      assert.ok(reasons[0] instanceof BridgeHTTPError && reasons[0].error_type === "overloaded" && reasons[0].status === 503);
      // A call whose timeout is spent before a kernel frees up gets the overloaded answer.
      const held = bridge.python.execute("import time\ntime.sleep(2)", { timeout: 30_000 });
      const refusedNow = () => raw.python.execute("return 1").then(
        () => false,
        (e: unknown) => e instanceof BridgeHTTPError && e.error_type === "overloaded",
      );
      while (!(await refusedNow())); // until the held call has the kernel
      await assert.rejects(bridge.python.execute("return 1", { timeout: 500 }), (e: unknown) => e instanceof BridgeHTTPError && e.error_type === "overloaded");
      await held;
    } finally {
      await raw.close();
      await bridge.close();
    }
  });
});
