/**
 * Binary values both ways: Python's `bytes` and NumPy arrays as `Uint8Array` and typed arrays.
 *
 * On the wire a binary value is a placeholder object where the value was:
 * `{"__bridge_buffer__": i, "kind": "ndarray", "dtype": "<f4", "shape": [1000, 1000]}` for
 * part *i* of a `multipart/mixed` body, or `{"__bridge_buffer__": null, ..., "base64": "..."}`
 * inline in plain JSON (docs/http.md, "Binary values"). This module turns them into
 * JavaScript values and back.
 *
 * @module
 */

/** The key that marks a binary value's placeholder in JSON. */
export const PLACEHOLDER = "__bridge_buffer__";

/** Every typed array an {@link NDArray} may hold. */
export type TypedArray =
  | Int8Array
  | Uint8Array
  | Int16Array
  | Uint16Array
  | Int32Array
  | Uint32Array
  | Float32Array
  | Float64Array
  | BigInt64Array
  | BigUint64Array;

type TypedArrayClass = {
  new (buffer: ArrayBufferLike, byteOffset: number, length: number): TypedArray;
  readonly BYTES_PER_ELEMENT: number;
};

/** NumPy dtypes (as `dtype.str`) that have a typed array, and theirs. */
const TYPED: Record<string, TypedArrayClass> = {
  "|i1": Int8Array,
  "|u1": Uint8Array,
  "|b1": Uint8Array,
  "<i2": Int16Array,
  "<u2": Uint16Array,
  "<i4": Int32Array,
  "<u4": Uint32Array,
  "<f4": Float32Array,
  "<f8": Float64Array,
  "<i8": BigInt64Array,
  "<u8": BigUint64Array,
};

/**
 * A NumPy array: its elements in C order, its shape and its NumPy dtype (`dtype.str`, for
 * example `"<f4"`). `data` is the matching typed array (`Float32Array` for `"<f4"`, ...); a
 * dtype with no typed array (complex, big-endian, strings, datetimes, float16) keeps its raw
 * bytes in a `Uint8Array`, with the dtype named.
 *
 * @example
 * ```ts
 * const image = new NDArray(new Float32Array(640 * 480), [480, 640]);   // dtype "<f4"
 * const z = new NDArray(rawBytes, [3], "<c16");                           // complex, as bytes
 * ```
 */
export class NDArray<T extends TypedArray = TypedArray> {
  /** The elements, in C (row-major) order. */
  readonly data: T;
  /** The length of each axis; `[]` for a 0-d array. */
  readonly shape: number[];
  /** NumPy's name of the element type, as `numpy.dtype(x).str`: `"<f4"`, `"|u1"`, `"<c16"`. */
  readonly dtype: string;

  /**
   * @param data - the elements (or, for a dtype with no typed array, the raw bytes)
   * @param shape - default: one axis, as long as `data`
   * @param dtype - default: the typed array's own (`Float32Array` is `"<f4"`)
   */
  constructor(data: T, shape?: number[], dtype?: string) {
    this.data = data;
    this.dtype = dtype ?? dtypeOf(data);
    this.shape = shape ?? [data.length];
  }

  /** How many elements: the product of the shape. */
  get size(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }
}

/** The NumPy dtype of a typed array's elements (this host is little-endian, as every JS host). */
export function dtypeOf(data: TypedArray): string {
  if (data instanceof Int8Array) return "|i1";
  if (data instanceof Uint8Array) return "|u1";
  if (data instanceof Int16Array) return "<i2";
  if (data instanceof Uint16Array) return "<u2";
  if (data instanceof Int32Array) return "<i4";
  if (data instanceof Uint32Array) return "<u4";
  if (data instanceof Float32Array) return "<f4";
  if (data instanceof Float64Array) return "<f8";
  if (data instanceof BigInt64Array) return "<i8";
  if (data instanceof BigUint64Array) return "<u8";
  throw new TypeError(`no NumPy dtype for ${(data as object).constructor.name}`);
}

/** A binary value's placeholder, as it is in JSON. */
export interface BinaryPlaceholder {
  /** The part of the body that holds it, or null when it is inline as base64. */
  __bridge_buffer__: number | null;
  /** `"bytes"` or `"ndarray"`. */
  kind: "bytes" | "ndarray";
  /** An array's dtype. */
  dtype?: string;
  /** An array's shape. */
  shape?: number[];
  /** The bytes, when inline. */
  base64?: string;
}

function isPlaceholder(value: unknown): value is BinaryPlaceholder {
  return typeof value === "object" && value !== null && PLACEHOLDER in value;
}

/** Bytes as base64 (Buffer: in Node and Bun, and much faster than btoa). */
function toBase64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
}

function fromBase64(text: string): Uint8Array {
  const buffer = Buffer.from(text, "base64");
  return new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
}

function restore(placeholder: BinaryPlaceholder, buffers: Uint8Array[]): Uint8Array | NDArray {
  const index = placeholder.__bridge_buffer__;
  let bytes: Uint8Array;
  if (index === null) {
    bytes = fromBase64(placeholder.base64 ?? "");
  } else {
    const part = buffers[index];
    if (part === undefined) throw new TypeError(`the answer refers to part ${index}, which it does not carry`);
    bytes = part;
  }
  if (placeholder.kind !== "ndarray") return bytes;
  const dtype = placeholder.dtype ?? "|u1";
  const shape = placeholder.shape ?? [bytes.byteLength];
  const Typed = TYPED[dtype];
  if (Typed === undefined) return new NDArray(bytes, shape, dtype);
  if (bytes.byteOffset % Typed.BYTES_PER_ELEMENT !== 0) bytes = bytes.slice(); // aligned copy
  const data = new Typed(bytes.buffer, bytes.byteOffset, bytes.byteLength / Typed.BYTES_PER_ELEMENT);
  return new NDArray(data, shape, dtype);
}

/**
 * A value from the service with its placeholders made `Uint8Array`s and {@link NDArray}s.
 *
 * @param value - parsed JSON
 * @param buffers - the parts of a `multipart/mixed` answer after its JSON (none for plain JSON)
 */
export function decodeValue(value: unknown, buffers: Uint8Array[] = []): any {
  if (Array.isArray(value)) return value.map((item) => decodeValue(item, buffers));
  if (typeof value !== "object" || value === null) return value;
  if (isPlaceholder(value)) return restore(value, buffers);
  const out: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(value)) out[key] = decodeValue(item, buffers);
  return out;
}

/**
 * A value for the service with its binary parts as placeholders: `Uint8Array`, `ArrayBuffer`,
 * `DataView` and Node's `Buffer` become `bytes`; another typed array a 1-d NumPy array of its
 * type; an {@link NDArray} an array of its dtype and shape.
 *
 * @param value - what the caller passed
 * @param buffers - where the binary parts go (each placeholder names its index); without it
 *   they go inline as base64
 */
export function encodeValue(value: unknown, buffers?: Uint8Array[]): unknown {
  if (Array.isArray(value)) return value.map((item) => encodeValue(item, buffers));
  if (typeof value !== "object" || value === null) return value;
  const binary = binaryOf(value);
  if (binary) {
    const { bytes, meta } = binary;
    if (!buffers) return { [PLACEHOLDER]: null, ...meta, base64: toBase64(bytes) };
    buffers.push(bytes);
    return { [PLACEHOLDER]: buffers.length - 1, ...meta };
  }
  if (typeof (value as { toJSON?: unknown }).toJSON === "function") return value; // a Date, ...
  const out: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(value)) out[key] = encodeValue(item, buffers);
  return out;
}

/** Whether a value holds a binary part anywhere (so that a binary body is worth sending). */
export function hasBinary(value: unknown): boolean {
  if (Array.isArray(value)) return value.some(hasBinary);
  if (typeof value !== "object" || value === null) return false;
  if (binaryOf(value)) return true;
  return Object.values(value).some(hasBinary);
}

function binaryOf(value: object): { bytes: Uint8Array; meta: Omit<BinaryPlaceholder, typeof PLACEHOLDER> } | undefined {
  if (value instanceof NDArray) {
    const data = value.data;
    if (TYPED[value.dtype] !== undefined && data.length !== value.size) {
      throw new TypeError(`an NDArray of shape [${value.shape}] needs ${value.size} elements, it has ${data.length}`);
    }
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    return { bytes, meta: { kind: "ndarray", dtype: value.dtype, shape: value.shape } };
  }
  if (value instanceof Uint8Array) return { bytes: value, meta: { kind: "bytes" } };
  if (value instanceof ArrayBuffer) return { bytes: new Uint8Array(value), meta: { kind: "bytes" } };
  if (value instanceof DataView) {
    return { bytes: new Uint8Array(value.buffer, value.byteOffset, value.byteLength), meta: { kind: "bytes" } };
  }
  if (ArrayBuffer.isView(value)) {
    const data = value as TypedArray;
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    return { bytes, meta: { kind: "ndarray", dtype: dtypeOf(data), shape: [data.length] } };
  }
  return undefined;
}
