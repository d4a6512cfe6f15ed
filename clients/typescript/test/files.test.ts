// A context's files (issue 24: PUT/GET/DELETE /contexts/{id}/files/{path}, GET ?path=).
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { BridgeHTTPError, type Context, KernelBridge } from "../src/index.js";
import { startBridge } from "./helpers.js";

const T = { timeout: 60_000 };

function sha256(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

async function refused(promise: Promise<unknown>, status: number): Promise<void> {
  await assert.rejects(promise, (e: unknown) => e instanceof BridgeHTTPError && e.status === status);
}

describe("files", () => {
  let bridge: KernelBridge;
  let root: string;
  let outside: string;
  let context: Context;
  before(async () => {
    root = mkdtempSync(join(tmpdir(), "kb-files-root-"));
    outside = mkdtempSync(join(tmpdir(), "kb-files-outside-"));
    writeFileSync(join(outside, "secret"), "secret");
    bridge = await startBridge({ root, args: ["--BridgeApp.max_file_bytes=4000000"] });
    context = await bridge.python.context({ cwd: "." });
  });
  after(async () => {
    await context?.close();
    await bridge?.close();
    rmSync(root, { recursive: true, force: true });
    rmSync(outside, { recursive: true, force: true });
  });

  test("bytes, text and a stream go in; the kernel sees them; they come back", T, async () => {
    const data = new Uint8Array(randomBytes(3_000_000));
    const info = await context.files.write("in/random.bin", data);
    assert.deepEqual([info.name, info.path, info.size, info.kind], ["random.bin", "in/random.bin", data.length, "file"]);
    const kernelSha = await context.execute("import hashlib\nreturn hashlib.sha256(open('in/random.bin','rb').read()).hexdigest()");
    assert.equal(kernelSha, sha256(data));
    assert.equal(sha256(await context.files.read("in/random.bin")), sha256(data));

    await context.files.write("in/text.csv", "a,b\n1,2\n");
    assert.equal(await context.evaluate("open('in/text.csv').read()"), "a,b\n1,2\n");
    assert.equal(await context.files.readText("in/text.csv"), "a,b\n1,2\n");

    const pieces = [new Uint8Array([1, 2, 3]), new Uint8Array([4, 5])];
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        const next = pieces.shift();
        if (next) controller.enqueue(next);
        else controller.close();
      },
    });
    assert.equal((await context.files.write("in/streamed.bin", stream)).size, 5);
    const chunks: Uint8Array[] = [];
    for await (const chunk of (await context.files.stream("in/streamed.bin")) as unknown as AsyncIterable<Uint8Array>) chunks.push(chunk);
    assert.deepEqual([...Buffer.concat(chunks)], [1, 2, 3, 4, 5]);

    const names = (await context.files.list("in")).map((f) => [f.name, f.kind, f.size]);
    assert.deepEqual(names, [["random.bin", "file", data.length], ["streamed.bin", "file", 5], ["text.csv", "file", 8]]);
    await context.files.remove("in/text.csv");
    assert.deepEqual((await context.files.list("in")).map((f) => f.name), ["random.bin", "streamed.bin"]);
    await refused(context.files.read("in/text.csv"), 404);
  });

  test("the docs' example: a CSV in, pandas on it, a chart out", T, async () => {
    await context.files.write("sales.csv", "region,amount\nnorth,3\nsouth,5\nnorth,4\n");
    await context.execute(`
import pandas as pd
df = pd.read_csv("sales.csv")
df.groupby("region")["amount"].sum().plot.bar().figure.savefig("chart.png")`);
    const png = await context.files.read("chart.png");
    assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    assert.equal((await context.files.list()).find((f) => f.name === "chart.png")?.size, png.length);
  });

  test("a file the kernel wrote downloads whole", T, async () => {
    const sha = await context.execute("import hashlib, os\ndata = os.urandom(100_000)\nopen('out.png','wb').write(data)\nreturn hashlib.sha256(data).hexdigest()");
    assert.equal(sha256(await context.files.read("out.png")), sha);
  });

  test("out of the folder: 403, nothing read or written; past the limit: 413, no file", T, async () => {
    symlinkSync(outside, join(root, "out"));
    for (const path of ["../x", "/etc/passwd", "out/secret", "%2e%2e/x"]) {
      await refused(context.files.read(path), 403);
      await refused(context.files.write(path, "written"), 403);
    }
    await refused(context.files.list("out"), 403);
    assert.equal(await context.evaluate(`sorted(__import__('os').listdir(${JSON.stringify(outside)}))`).then(String), "secret");
    await refused(context.files.write("big.bin", new Uint8Array(4_000_001)), 413);
    const names = (await context.files.list()).map((f) => f.name);
    assert.ok(!names.some((n) => n.startsWith("big") || n.startsWith(".big")), names.join(","));
  });
});
