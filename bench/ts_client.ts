// The TypeScript client's cost over a raw fetch of the same routes, measured in the same run,
// events per second through backend.on, and the round trip of a float32 array through
// backend.call as binary (multipart/mixed) against the same array as base64 JSON. Runs under Bun (`bun bench/ts_client.ts`) and
// Node (`node clients/typescript/dist/bench/ts_client.js`, built by `make ts-client`);
// `make bench-ts` runs both. Targets: p50 overhead <= 0.2 ms, >= 20,000 events/s.
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

import type * as Client from "../clients/typescript/dist/src/index.js";

function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "clients", "typescript", "package.json"))) {
    const up = dirname(dir);
    if (up === dir) throw new Error("run this from the kernel-bridge repository");
    dir = up;
  }
  return dir;
}

const ROOT = repoRoot();
const { KernelBridge } = (await import(
  pathToFileURL(join(ROOT, "clients/typescript/dist/src/index.js")).href
)) as typeof Client;
const RUNTIME = typeof (globalThis as { Bun?: unknown }).Bun !== "undefined" ? "bun" : `node`;
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 10);
const PER_ROUND = Number(process.env.BENCH_PER_ROUND ?? 100);
const EVENTS = Number(process.env.BENCH_EVENTS ?? 20_000);

function p50(samples: number[]): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] as number;
}

/** Alternate blocks of the raw and the client call, so drift hits both alike. */
async function compare(raw: () => Promise<unknown>, client: () => Promise<unknown>): Promise<[number, number]> {
  for (let i = 0; i < 50; i++) {
    await raw();
    await client();
  }
  const a: number[] = [];
  const b: number[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    for (const [call, into] of [
      [raw, a],
      [client, b],
    ] as const) {
      for (let i = 0; i < PER_ROUND; i++) {
        const t0 = performance.now();
        await call();
        into.push(performance.now() - t0);
      }
    }
  }
  return [p50(a), p50(b)];
}

function line(what: string, raw: number, client: number): void {
  const over = client - raw;
  console.log(
    `${RUNTIME.padEnd(5)} ${what.padEnd(34)} raw fetch p50 ${raw.toFixed(3)} ms | client p50 ${client.toFixed(3)} ms | ` +
      `overhead ${over >= 0 ? "+" : ""}${over.toFixed(3)} ms (x${(client / raw).toFixed(3)}) ${over <= 0.2 ? "ok" : "OVER the 0.2 ms target"}`,
  );
}

// 64 MB arrays as base64 JSON are 90 MB bodies: past the default limit of 10 MB.
const bridge = await KernelBridge.start({ poolSize: 1, args: ["--BridgeApp.max_body_size=100000000"] });
try {
  const service = bridge.service as Client.ServiceProcess;
  const headers = { Authorization: `token ${service.token}`, "Content-Type": "application/json" };
  const post = async (path: string, body: unknown) => {
    const response = await fetch(bridge.url + path, { method: "POST", headers, body: JSON.stringify(body) });
    return response.json();
  };

  const [rawExec, clientExec] = await compare(
    () => post("execute", { content: "return 1", timeout_secs: 30 }),
    () => bridge.python.execute("return 1"),
  );
  line('execute("return 1")', rawExec, clientExec);

  const echo = await bridge.python.spawn(join(ROOT, "kernels/examples/echo_backend.py"));
  const callPath = `backends/${echo.id}/call`;
  const [rawCall, clientCall] = await compare(
    () => post(callPath, { cmd: "echo", params: { data: "x" } }),
    () => echo.call("echo", { data: "x" }),
  );
  line('backend.call("echo")', rawCall, clientCall);

  // Arrays: a Float32Array to echo() and back, binary against base64 JSON (a second client of
  // the same service), alternating, the best of a few round trips each (MB/s of the array).
  const plain = await KernelBridge.connect({ url: bridge.url, token: service.token, binary: false });
  try {
    const echo64 = await plain.python.spawn(join(ROOT, "kernels/examples/echo_backend.py"));
    for (const [mb, rounds] of [
      [4, 10],
      [64, 3],
    ] as const) {
      const data = new Float32Array((mb * 1_000_000) / 4).fill(1.5);
      const best = { binary: Infinity, base64: Infinity };
      for (let i = 0; i < rounds; i++) {
        for (const [kind, handle] of [
          ["binary", echo],
          ["base64", echo64],
        ] as const) {
          const t0 = performance.now();
          const back = (await handle.call("echo", { data }, 120_000)) as { echo: { data: Float32Array } };
          const took = performance.now() - t0;
          if (back.echo.data.length !== data.length) throw new Error(`${kind}: the array came back short`);
          best[kind] = Math.min(best[kind], took);
        }
      }
      const rate = (ms: number) => mb / (ms / 1000);
      console.log(
        `${RUNTIME.padEnd(5)} ${`array round trip ${mb} MB`.padEnd(34)} binary ${rate(best.binary).toFixed(1)} MB/s ` +
          `(${best.binary.toFixed(1)} ms) | base64 JSON ${rate(best.base64).toFixed(1)} MB/s (${best.base64.toFixed(1)} ms) | ` +
          `x${(best.base64 / best.binary).toFixed(2)}`,
      );
    }
  } finally {
    await plain.close();
  }

  // Events: the same stream of EVENTS events read raw (SSE lines counted) and through on().
  const streaming = join(ROOT, "kernels/examples/streaming_backend.py");
  const rawBackend = (await post("backends", {
    script: await (await import("node:fs/promises")).readFile(streaming, "utf8"),
  })) as { id: string };
  const response = await fetch(`${bridge.url}backends/${rawBackend.id}/events`, { headers });
  const reader = (response.body as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  const rawStart = performance.now();
  await post(`backends/${rawBackend.id}/call`, { cmd: "start_streaming", params: { interval: 0, count: EVENTS } });
  let seen = 0;
  let text = "";
  // The service's JSON may or may not have a space after the colon (msgspec writes none).
  while (!/"type": ?"done"/.test(text)) {
    const { value, done } = await reader.read();
    if (done) break;
    text = decoder.decode(value, { stream: true });
    seen += text.split(/"type": ?"data"/).length - 1;
  }
  const rawRate = seen / ((performance.now() - rawStart) / 1000);
  await reader.cancel();
  await fetch(`${bridge.url}backends/${rawBackend.id}`, { method: "DELETE", headers });

  const backend = await bridge.python.spawn(streaming);
  let count = 0;
  backend.on("data", () => {
    count++;
  });
  const done = new Promise((r) => backend.on("done", r));
  const start = performance.now();
  await backend.call("start_streaming", { interval: 0, count: EVENTS });
  await done;
  const rate = count / ((performance.now() - start) / 1000);
  console.log(
    `${RUNTIME.padEnd(5)} ${"events through on()".padEnd(34)} raw SSE read ${Math.round(rawRate)}/s | client ${Math.round(rate)}/s ` +
      `(x${(rate / rawRate).toFixed(3)}, ${count} of ${EVENTS} events) ` +
      (count < EVENTS ? "EVENTS LOST" : rate >= 20_000 ? "ok" : "UNDER the 20,000/s target"),
  );
} finally {
  await bridge.close();
}
