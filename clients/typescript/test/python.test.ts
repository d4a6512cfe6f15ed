// bridge.python against a real service: values and rich results, spawn's semantics, events
// (replay, throwing handlers, off, reconnection with Last-Event-ID), errors, connect().
import assert from "node:assert/strict";
import { connect, createServer, type Socket } from "node:net";
import { after, before, describe, test } from "node:test";
import { writeFileSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import {
  BackendTerminatedError,
  BridgeHTTPError,
  BridgeStartError,
  KernelBridge,
  PythonError,
} from "../src/index.js";
import { EXAMPLES, FIXTURES, REPO, startBridge, within } from "./helpers.js";

const T = { timeout: 60_000 };
const PROBE = `${FIXTURES}/probe_backend.py`;

describe("bridge.python", () => {
  let bridge: KernelBridge;
  const handlerErrors: unknown[] = [];
  before(async () => {
    process.chdir(REPO);
    bridge = await startBridge({ root: REPO, onHandlerError: (error) => handlerErrors.push(error) });
  });
  after(async () => {
    await bridge?.close();
  });

  test("execute: inputs, values of every JSON type, None is null", T, async () => {
    assert.deepEqual(await bridge.python.execute("return {'n': n * 2, 's': s.upper()}", { inputs: { n: 21, s: "ab" } }), {
      n: 42,
      s: "AB",
    });
    assert.deepEqual(await bridge.python.execute("return [1, 2.5, 'x', True, None, {'a': []}]"), [1, 2.5, "x", true, null, { a: [] }]);
    assert.equal(await bridge.python.execute("x = 1"), null);
    assert.equal(await bridge.python.evaluate("1 + 2 * 3"), 7);
  });

  test("run: value, rich data, outputs in order, stdout, stderr, callbacks", T, async () => {
    const seen: string[] = [];
    const execution = await bridge.python.run(
      `import sys
from IPython.display import HTML, display
print("first")
display(HTML("<b>bold</b>"))
print("oops", file=sys.stderr)
return {"answer": 42}`,
      {
        onStdout: (text) => seen.push(`out:${text}`),
        onStderr: (text) => seen.push(`err:${text}`),
        onDisplay: (output) => seen.push(`display:${output.data["text/html"]}`),
        onResult: (output) => seen.push(`result:${JSON.stringify(output.data["application/json"])}`),
      },
    );
    assert.equal(execution.success, true);
    assert.deepEqual(execution.value, { answer: 42 });
    assert.equal(execution.stdout, "first\n");
    assert.equal(execution.stderr, "oops\n");
    assert.equal(execution.error, null);
    assert.ok(execution.durationMs > 0);
    assert.equal(execution.truncated, false);
    assert.ok(Array.isArray(execution.attestations));
    assert.deepEqual(
      execution.outputs.map((o) => o.output_type),
      ["stream", "display_data", "stream", "execute_result"],
    );
    assert.deepEqual(execution.data?.["application/json"], { answer: 42 });
    assert.deepEqual(seen, ["out:first\n", "display:<b>bold</b>", "err:oops\n", 'result:{"answer":42}']);

    const failed = await bridge.python.run("print('before')\n[][1]");
    assert.equal(failed.success, false);
    assert.equal(failed.stdout, "before\n");
    assert.ok(failed.error instanceof PythonError);
    assert.equal(failed.error.message, "IndexError: list index out of range");
  });

  test("executeFile and runFile run a script of the service's root", T, async () => {
    const folder = mkdtempSync(join(REPO, ".ts-test-"));
    try {
      writeFileSync(join(folder, "script.py"), "print('from a file')\nreturn 6 * 7\n");
      const relative = `${folder.slice(REPO.length + 1)}/script.py`;
      assert.equal(await bridge.python.executeFile(relative), 42);
      const execution = await bridge.python.runFile(relative);
      assert.equal(execution.stdout, "from a file\n");
      await assert.rejects(bridge.python.executeFile("/etc/passwd"), (e: unknown) => e instanceof BridgeHTTPError && e.status === 403 && e.errorType === "forbidden");
    } finally {
      const { rmSync } = await import("node:fs");
      rmSync(folder, { recursive: true, force: true });
    }
  });

  test("version, modules, health", T, async () => {
    const version = await bridge.python.version();
    assert.match(version.python_version, /^3\.\d+\.\d+$/);
    assert.equal(version.kernel_python.length > 0, true);
    assert.deepEqual(await bridge.python.modules(["json", "numpy", "no_such_module_here"]), {
      json: true,
      numpy: true,
      no_such_module_here: false,
    });
    const health = await bridge.health();
    assert.equal(health.status, "ok");
    assert.equal(health.pool_size, 1);
  });

  test("spawn: the same path twice is the same live handle; getBackend, terminate(script)", T, async () => {
    const [a, b] = await Promise.all([bridge.python.spawn(PROBE), bridge.python.spawn(PROBE)]);
    assert.equal(a, b);
    assert.equal(await bridge.python.spawn(PROBE), a);
    assert.equal(await bridge.python.getBackend(PROBE), a);
    assert.equal(a.script, PROBE);
    assert.match(a.kernelId, /^[0-9a-f-]{36}$/);
    assert.deepEqual(a.methods, ["divide", "echo", "emit", "pid", "sleep"]);
    assert.equal(await bridge.python.terminate(PROBE), true);
    assert.equal(await bridge.python.getBackend(PROBE), undefined);
    assert.equal(await bridge.python.terminate(PROBE), false);
    const c = await bridge.python.spawn(PROBE, { env: { MODE: "x" } });
    assert.notEqual(c, a);
    await c.terminate();
  });

  test("spawn names the backend after its script: its Jupyter Server session is backends/<file name>", T, async () => {
    const backend = await bridge.python.spawn(PROBE);
    try {
      const token = bridge.service?.token as string;
      const response = await fetch(`${bridge.url}api/sessions`, { headers: { Authorization: `token ${token}` } });
      assert.equal(response.status, 200);
      const sessions = (await response.json()) as { name: string; kernel: { id: string } }[];
      assert.deepEqual(
        sessions.filter((s) => s.kernel.id === backend.kernelId).map((s) => s.name),
        ["backends/probe_backend.py"],
      );
    } finally {
      await backend.terminate();
    }
  });

  test("a call on a terminated backend rejects at once", T, async () => {
    const backend = await bridge.python.spawn(PROBE);
    await backend.terminate();
    await backend.terminate(); // idempotent
    const started = performance.now();
    await assert.rejects(backend.call("echo", { data: 1 }), BackendTerminatedError);
    assert.ok(performance.now() - started < 50);
  });

  test("spawn's env reaches the backend; terminateAll ends every backend", T, async () => {
    const echo = await bridge.python.spawn(`${EXAMPLES}/echo_backend.py`, { env: { MODE: "test" } });
    assert.deepEqual(await echo.call("greet", { name: "Ada" }), { message: "Hello, Ada!", mode: "test" });
    const probe = await bridge.python.spawn(PROBE);
    await bridge.python.terminateAll();
    assert.equal(echo.alive, false);
    assert.equal(probe.alive, false);
    assert.equal((await bridge.health()).backends, 0);
  });

  test("events: those sent before on() reach the first handler; a throwing handler does not stop the stream; off()", T, async () => {
    const backend = await bridge.python.spawn(PROBE);
    try {
      assert.equal(await backend.call("emit", { event: "early", n: 3 }), 3);
      const early: number[] = [];
      const got3 = new Promise<void>((resolve) =>
        backend.on("early", (data) => {
          early.push(data.i);
          if (early.length === 3) resolve();
        }),
      );
      await within(got3, 10_000, "the replay");
      assert.deepEqual(early, [0, 1, 2]);

      handlerErrors.length = 0;
      const good: number[] = [];
      backend.on("tick", () => {
        throw new Error("a broken handler");
      });
      const ten = new Promise<void>((resolve) =>
        backend.on("tick", (data) => {
          good.push(data.i);
          if (good.length === 10) resolve();
        }),
      );
      await backend.call("emit", { event: "tick", n: 10 });
      await within(ten, 10_000, "ten ticks");
      assert.deepEqual(good, [...Array(10).keys()]);
      assert.equal(handlerErrors.length, 10);

      const removed: number[] = [];
      const handler = (data: { i: number }) => removed.push(data.i);
      backend.on("gone", handler);
      backend.off("gone", handler);
      const last = new Promise<void>((resolve) => backend.on("mark", () => resolve()));
      await backend.call("emit", { event: "gone", n: 2 });
      await backend.call("emit", { event: "mark", n: 1 });
      await within(last, 10_000, "the mark");
      assert.deepEqual(removed, []);
    } finally {
      await backend.terminate();
    }
  });

  test("events: a dropped stream reconnects with Last-Event-ID, nothing lost or repeated", T, async () => {
    // A TCP proxy in front of the service, whose connections the test cuts.
    const target = new URL(bridge.url);
    const sockets = new Set<Socket>();
    const proxy = createServer((client) => {
      const upstream = connect(Number(target.port), target.hostname);
      client.on("data", (chunk: Buffer) => {
        // Only event streams are cut: a cut connection of the pool would fail a call instead.
        if (/GET [^ ]*\/events/.test(chunk.toString("latin1"))) sockets.add(client);
      });
      client.pipe(upstream).pipe(client);
      const drop = () => {
        client.destroy();
        upstream.destroy();
        sockets.delete(client);
      };
      client.on("error", drop).on("close", drop);
      upstream.on("error", drop).on("close", drop);
    });
    await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
    const address = proxy.address() as { port: number };
    const viaProxy = await KernelBridge.connect({ url: `http://127.0.0.1:${address.port}/`, token: bridge.service?.token ?? "" });
    try {
      const backend = await viaProxy.python.spawn(PROBE);
      const got: number[] = [];
      let first!: () => void;
      const firstBatch = new Promise<void>((r) => (first = r));
      let all!: () => void;
      const everything = new Promise<void>((r) => (all = r));
      backend.on("n", (data) => {
        got.push(data.i);
        if (got.length === 100) first();
        if (got.length === 300) all();
      });
      await backend.call("emit", { event: "n", n: 100 });
      await within(firstBatch, 10_000, "the first 100");
      assert.equal(sockets.size, 1);
      for (const socket of sockets) socket.destroy(); // cut the event stream's connection
      await backend.call("emit", { event: "n", n: 200 });
      await within(everything, 15_000, "the rest after the reconnect");
      // A last event on the same stream: once it is here, every event before it is too (a
      // repeat after the reconnect would be among them).
      const marked = new Promise<void>((resolve) => backend.on("mark", () => resolve()));
      await backend.call("emit", { event: "mark", n: 1 });
      await within(marked, 10_000, "the mark");
      assert.deepEqual(got, [...[...Array(100).keys()], ...Array(200).keys()]);
    } finally {
      await viaProxy.close();
      for (const socket of sockets) socket.destroy();
      proxy.close();
    }
  });

  test("connect: a wrong token is a 401 BridgeHTTPError", T, async () => {
    await assert.rejects(
      KernelBridge.connect({ url: bridge.url, token: "wrong" }),
      (e: unknown) => e instanceof BridgeHTTPError && e.status === 401 && e.errorType === "unauthorized",
    );
  });
});

describe("starting and reaching a service", () => {
  test("a service that is not there is a clear BridgeHTTPError", T, async () => {
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server.address() as { port: number }).port;
    await new Promise((resolve) => server.close(resolve)); // a port where nothing listens now
    const error = await KernelBridge.connect({ url: `http://127.0.0.1:${port}`, token: "t" }).then(
      () => assert.fail("connected to nothing"),
      (e: unknown) => e,
    );
    assert.ok(error instanceof BridgeHTTPError);
    assert.equal(error.status, 0);
    assert.equal(error.errorType, "unreachable");
    assert.match(error.message, new RegExp(`no kernel-bridge service answers at http://127\\.0\\.0\\.1:${port}/`));
  });

  test("a Python without kernel-bridge is a clear error saying what to install", T, async () => {
    // Not from the repository: `python3 -m bridge` would find its source folder there.
    const here = process.cwd();
    process.chdir(tmpdir());
    const error = await KernelBridge.start({ python: "python3", env: { PYTHONPATH: "" } })
      .then(
        () => assert.fail("started"),
        (e: unknown) => e,
      )
      .finally(() => process.chdir(here));
    assert.ok(error instanceof BridgeStartError, String(error));
    assert.match(error.message, /python3 does not have kernel-bridge installed: install it with "python3 -m pip install 'kernel-bridge\[server\]'"/);
  });

  test("no such Python is a clear error too", T, async () => {
    await assert.rejects(KernelBridge.start({ python: "/nonexistent/python3" }), (e: unknown) => e instanceof BridgeStartError && /no Python at "\/nonexistent\/python3"/.test(e.message));
  });
});
