// Binary values (issue 22): NumPy arrays and bytes arrive as typed arrays and Uint8Array, typed
// arrays go to Python as arrays, bodies are binary (multipart/mixed) rather than base64, and
// generator methods stream with backend.stream().
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { KernelBridge, NDArray, PythonError, type PythonBackendHandle } from "../src/index.js";
import { FIXTURES, REPO, startBridge } from "./helpers.js";

const T = { timeout: 120_000 };
const ARRAYS = `${FIXTURES}/arrays_backend.py`;
const MB64 = 64 * 1024 * 1024;

describe("binary values", () => {
  let bridge: KernelBridge;
  let backend: PythonBackendHandle;
  before(async () => {
    process.chdir(REPO);
    // 64 MB arguments: past the default request limit of 10 MB.
    bridge = await startBridge({ args: [`--BridgeApp.max_body_size=${MB64 + 1024 * 1024}`] });
    backend = await bridge.python.spawn(ARRAYS);
  });
  after(async () => {
    await bridge?.close();
  });

  test("np.ones((1000, 1000), 'float32') arrives as a Float32Array with its shape", T, async () => {
    const ones = await backend.call<NDArray<Float32Array>>("ones");
    assert.ok(ones instanceof NDArray);
    assert.ok(ones.data instanceof Float32Array);
    assert.equal(ones.data.length, 1_000_000);
    assert.deepEqual(ones.shape, [1000, 1000]);
    assert.equal(ones.dtype, "<f4");
    let sum = 0;
    for (const x of ones.data) sum += x;
    const python = await bridge.python.evaluate("float(__import__('numpy').ones((1000, 1000), 'float32').sum())");
    assert.equal(sum, python);
  });

  test("the answer's body is about 4 MB binary, about 5.3 MB as base64 JSON", T, async () => {
    const { url, token } = { url: bridge.url, token: bridge.service?.token ?? "" };
    const sizes: Record<string, number> = {};
    for (const accept of ["multipart/mixed", "application/json"]) {
      const response = await fetch(`${url}backends/${encodeURIComponent(backend.id)}/call`, {
        method: "POST",
        headers: { Authorization: `token ${token}`, Accept: accept, "Content-Type": "application/json" },
        body: JSON.stringify({ cmd: "ones" }),
      });
      assert.equal(response.status, 200);
      assert.ok((response.headers.get("content-type") ?? "").startsWith(accept));
      sizes[accept] = (await response.arrayBuffer()).byteLength;
    }
    const binary = sizes["multipart/mixed"] as number;
    const json = sizes["application/json"] as number;
    assert.ok(binary >= 4_000_000 && binary < 4_010_000, `multipart body: ${binary} bytes`);
    assert.ok(json >= 5_333_000 && json < 5_400_000, `JSON body: ${json} bytes`);
  });

  test("typed arrays, NDArrays, Uint8Array and ArrayBuffer arguments arrive as arrays and bytes", T, async () => {
    assert.deepEqual(await backend.call("describe", { value: new Float32Array([1, 2, 3.5]) }), {
      type: "ndarray",
      dtype: "float32",
      shape: [3],
      sum: 6.5,
    });
    const grid = new NDArray(new Float32Array(1_000_000).fill(0.5), [1000, 1000]);
    assert.deepEqual(await backend.call("describe", { value: grid }), {
      type: "ndarray",
      dtype: "float32",
      shape: [1000, 1000],
      sum: 500_000,
    });
    const ints = await backend.call("describe", { value: new BigInt64Array([1n, -2n]) });
    assert.deepEqual(ints, { type: "ndarray", dtype: "int64", shape: [2], sum: -1 });
    assert.deepEqual(await backend.call("describe", { value: new Uint8Array([1, 2, 3]) }), { type: "bytes", length: 3, sum: 6 });
    assert.deepEqual(await backend.call("describe", { value: new Uint8Array([7, 7]).buffer }), { type: "bytes", length: 2, sum: 14 });
    // The same as base64 JSON, for a client that does not send binary bodies.
    const plain = await KernelBridge.connect({ url: bridge.url, token: bridge.service?.token ?? "", binary: false });
    try {
      const handle = await plain.python.spawn(ARRAYS);
      assert.deepEqual(await handle.call("describe", { value: new Int16Array([1, -1, 5]) }), {
        type: "ndarray",
        dtype: "int16",
        shape: [3],
        sum: 5,
      });
      const back = await handle.call<NDArray<Int16Array>>("echo", { value: new NDArray(new Int16Array([1, 2, 3, 4]), [2, 2]) });
      assert.deepEqual([...back.data], [1, 2, 3, 4]);
      assert.deepEqual(back.shape, [2, 2]);
    } finally {
      await plain.close();
    }
  });

  test("0-byte and 64 MB values, both ways", T, async () => {
    const empty = await backend.call<Uint8Array>("blob", { size: 0 });
    assert.ok(empty instanceof Uint8Array);
    assert.equal(empty.byteLength, 0);
    assert.deepEqual(await backend.call("describe", { value: new Uint8Array(0) }), { type: "bytes", length: 0, sum: 0 });

    const big = await backend.call<Uint8Array>("blob", { size: MB64 }, 60_000);
    assert.equal(big.byteLength, MB64);
    for (const i of [0, 250, 251, 123_456, MB64 - 1]) assert.equal(big[i], i % 251, `byte ${i}`);
    const up = new Float32Array(MB64 / 4).fill(1);
    assert.deepEqual(await backend.call("describe", { value: up }, 60_000), {
      type: "ndarray",
      dtype: "float32",
      shape: [MB64 / 4],
      sum: MB64 / 4,
    });
  });

  test("a non-contiguous array, dtypes without a typed array, an empty array", T, async () => {
    const strided = await backend.call<NDArray<Int32Array>>("strided");
    assert.ok(strided.data instanceof Int32Array);
    assert.deepEqual([...strided.data], [0, 2, 4, 6, 8, 10]);
    assert.deepEqual(strided.shape, [3, 2]);

    const kinds = await backend.call<Record<string, NDArray>>("kinds");
    for (const [name, dtype] of [
      ["complex", "<c16"],
      ["big_endian", ">i4"],
      ["half", "<f2"],
    ] as const) {
      const array = kinds[name] as NDArray;
      assert.ok(array.data instanceof Uint8Array && array.dtype === dtype, `${name}: ${array.dtype}`);
    }
    assert.equal((kinds.complex as NDArray).data.byteLength, 32); // 2 complex128, as bytes
    assert.deepEqual([...(kinds.bool as NDArray).data], [1, 0, 1]);
    assert.deepEqual([...(kinds.int64 as NDArray<BigInt64Array>).data], [-1n, 2n ** 40n]);
    const empty = kinds.empty as NDArray<Float64Array>;
    assert.ok(empty.data instanceof Float64Array && empty.data.length === 0);
    assert.deepEqual(empty.shape, [0, 3]);
  });

  test("an event carrying an array, and an execute's inputs", T, async () => {
    const frame = new Promise<{ pixels: NDArray<Uint16Array> }>((resolve) => {
      backend.on("frame", resolve);
    });
    await backend.call("frame");
    const { pixels } = await frame;
    assert.ok(pixels.data instanceof Uint16Array);
    assert.deepEqual([...pixels.data], [0, 1, 2, 3, 4, 5]);
    assert.deepEqual(pixels.shape, [2, 3]);

    const seen = await bridge.python.execute("return str(x.dtype), list(x.shape), float(x.sum()), len(b)", {
      inputs: { x: new NDArray(new Float64Array([1, 2, 3, 4]), [2, 2]), b: new Uint8Array(5) },
    });
    assert.deepEqual(seen, ["float64", [2, 2], 10, 5]);
  });

  test("stream(): items as they are yielded, binary ones too", T, async () => {
    const started = Date.now();
    const times: number[] = [];
    const items: number[] = [];
    for await (const n of backend.stream<number>("count", { n: 5, delay: 0.5 })) {
      items.push(n);
      times.push(Date.now() - started);
    }
    assert.deepEqual(items, [0, 1, 2, 3, 4]);
    assert.ok((times[4] as number) - (times[0] as number) >= 1500, `arrivals at ${times} ms`);
    const chunks: NDArray<Float32Array>[] = [];
    for await (const chunk of backend.stream<NDArray<Float32Array>>("chunks", { n: 3 })) chunks.push(chunk);
    assert.deepEqual(
      chunks.map((c) => [...c.data]),
      [
        [0, 0],
        [1, 1],
        [2, 2],
      ],
    );
  });

  test("stream(): breaking out runs the generator's finally; 10,000 items in order", T, async () => {
    for await (const n of backend.stream<number>("count", { n: 1_000_000 })) {
      if (n === 1) break;
    }
    // A serial backend: this call runs once the generator is closed.
    assert.equal(await backend.call("finally_ran"), true);
    const items: number[] = [];
    for await (const n of backend.stream<number>("count", { n: 10_000 })) items.push(n);
    assert.equal(items.length, 10_000);
    assert.ok(items.every((n, i) => n === i));
  });

  test("stream(): an exception ends it with a PythonError after the items before it", T, async () => {
    const items: number[] = [];
    const error = await (async () => {
      for await (const n of backend.stream<number>("count", { n: 5, fail_at: 2 })) items.push(n);
    })().then(
      () => assert.fail("no error"),
      (e: unknown) => e,
    );
    assert.deepEqual(items, [0, 1]);
    assert.ok(error instanceof PythonError, String(error));
    assert.equal(error.pythonType, "ValueError");
    assert.equal(error.pythonValue, "failed at 2");
  });
});
