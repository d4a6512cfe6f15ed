/**
 * The HTTP side: JSON requests with the token, failures turned into errors, and SSE streams.
 *
 * @module
 */

import {
  BridgeClosedError,
  BridgeHTTPError,
  KernelDiedError,
  PythonTimeoutError,
} from "./errors.js";
import { decodeMultipart, encodeMultipart, MULTIPART } from "./multipart.js";
import type { FailureAnswer } from "./types.js";
import { decodeValue, encodeValue, hasBinary } from "./values.js";

/** Milliseconds a call may run past its own timeout before the client stops waiting for the answer. */
export const GRACE_MS = 15_000;

/** How to reach a service. */
export interface Endpoint {
  /** The service's base URL, for example `http://127.0.0.1:9000/`. */
  url: string;
  /** Its token. */
  token: string;
  /**
   * Send and take binary values (bytes, typed arrays) as `multipart/mixed` bodies, without
   * base64 (default true); false sends and asks for JSON with base64 placeholders.
   */
  binary?: boolean;
}

/** Options of one request. */
export interface RequestOptions {
  /** Milliseconds to wait for the answer before giving up (a {@link PythonTimeoutError}). */
  deadline?: number;
  /** Stops the request when aborted. */
  signal?: AbortSignal;
  /** Extra headers. */
  headers?: Record<string, string>;
}

/** JSON over HTTP to one service; shared by everything a client does. */
export class Transport {
  /** The base URL, always ending with `/`. */
  readonly base: string;
  /** The headers of every request. */
  readonly headers: Record<string, string>;
  /** Whether binary values travel as `multipart/mixed` parts (else base64 in JSON). */
  readonly binary: boolean;
  private closed = false;
  private readonly streams = new Set<AbortController>();

  /** @param endpoint - where the service is */
  constructor(endpoint: Endpoint) {
    this.base = endpoint.url.endsWith("/") ? endpoint.url : `${endpoint.url}/`;
    this.binary = endpoint.binary ?? true;
    this.headers = {
      Authorization: `token ${endpoint.token}`,
      "Content-Type": "application/json",
      Accept: this.binary ? `${MULTIPART}, application/json` : "application/json",
    };
  }

  /** A request body: JSON, or multipart when it holds binary values and the client may. */
  private encode(body: unknown, headers: Record<string, string>): { init: string | Blob; headers: Record<string, string> } {
    if (!hasBinary(body)) return { init: JSON.stringify(body), headers };
    if (!this.binary) return { init: JSON.stringify(encodeValue(body)), headers };
    const buffers: Uint8Array[] = [];
    const { body: blob, contentType } = encodeMultipart(encodeValue(body, buffers), buffers);
    return { init: blob, headers: { ...headers, "Content-Type": contentType } };
  }

  /** No request goes out after this; open streams are stopped. */
  close(): void {
    this.closed = true;
    for (const controller of this.streams) controller.abort();
    this.streams.clear();
  }

  /** Whether {@link Transport.close} was called. */
  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * Send a request and return the JSON answer of a success; a failure answer throws.
   *
   * @param method - `GET`, `POST` or `DELETE`
   * @param path - the route, without a leading `/`
   * @param body - the JSON body
   */
  async request<T>(method: string, path: string, body?: unknown, options: RequestOptions = {}): Promise<T> {
    const timer = options.deadline !== undefined ? AbortSignal.timeout(options.deadline) : undefined;
    const response = await this.send(method, path, body, options, timer);
    return (await this.read(response, timer, options.deadline)) as T;
  }

  /** The raw response (a failure status is not thrown). */
  async send(
    method: string,
    path: string,
    body: unknown,
    options: RequestOptions,
    timer?: AbortSignal,
  ): Promise<Response> {
    if (this.closed) throw new BridgeClosedError("the client is closed");
    const url = this.base + path;
    const signal = timer && options.signal ? anySignal(timer, options.signal) : (timer ?? options.signal);
    const init: RequestInit = {
      method,
      headers: options.headers ? { ...this.headers, ...options.headers } : this.headers,
    };
    if (body !== undefined) {
      const encoded = this.encode(body, init.headers as Record<string, string>);
      init.body = encoded.init;
      init.headers = encoded.headers;
    }
    if (signal) init.signal = signal;
    try {
      return await fetch(url, init);
    } catch (err) {
      throw this.fetchError(err, url, timer, options.deadline);
    }
  }

  /**
   * Send a raw body (not JSON) or none, and return the response, a failure status included:
   * a file's bytes both ways. A `ReadableStream` body is streamed.
   */
  async sendRaw(
    method: string,
    path: string,
    body: Uint8Array | ArrayBuffer | Blob | ReadableStream<Uint8Array> | undefined,
    options: { signal?: AbortSignal } = {},
  ): Promise<Response> {
    if (this.closed) throw new BridgeClosedError("the client is closed");
    const url = this.base + path;
    const headers: Record<string, string> = { Authorization: this.headers.Authorization as string };
    const init: RequestInit & { duplex?: "half" } = { method, headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/octet-stream";
      init.body = body as NonNullable<RequestInit["body"]>;
      if (body instanceof ReadableStream) init.duplex = "half"; // Node's fetch needs it to stream
    }
    if (options.signal) init.signal = options.signal;
    try {
      return await fetch(url, init);
    } catch (err) {
      throw this.fetchError(err, url, undefined, undefined);
    }
  }

  /** The JSON of a success, or the error of a failure. */
  async read(response: Response, timer?: AbortSignal, deadline?: number): Promise<unknown> {
    const type = response.headers.get("content-type") ?? "";
    if (response.ok && type.toLowerCase().startsWith(MULTIPART)) {
      let bytes: Uint8Array;
      try {
        bytes = new Uint8Array(await response.arrayBuffer());
      } catch (err) {
        throw this.fetchError(err, response.url, timer, deadline);
      }
      const { json, buffers } = decodeMultipart(bytes, type);
      return decodeValue(json, buffers);
    }
    let text: string;
    try {
      text = await response.text();
    } catch (err) {
      throw this.fetchError(err, response.url, timer, deadline);
    }
    let value: unknown;
    try {
      value = text ? decodeValue(JSON.parse(text)) : undefined;
    } catch {
      throw new BridgeHTTPError(
        `${response.url} answered ${response.status} with something that is not JSON: ${text.slice(0, 200)}`,
        response.status,
        "http",
      );
    }
    if (response.ok) return value;
    throw failure(response.status, value, response.url);
  }

  /**
   * Open an SSE stream (`GET` or `POST`) and return the response once its headers are in;
   * {@link Transport.close} aborts it.
   */
  async openStream(method: string, path: string, body: unknown, headers: Record<string, string>, signal?: AbortSignal): Promise<{ response: Response; controller: AbortController; done: () => void }> {
    if (this.closed) throw new BridgeClosedError("the client is closed");
    const controller = new AbortController();
    const onAbort = () => controller.abort();
    signal?.addEventListener("abort", onAbort, { once: true });
    this.streams.add(controller);
    const done = () => {
      this.streams.delete(controller);
      signal?.removeEventListener("abort", onAbort);
    };
    const url = this.base + path;
    const init: RequestInit = {
      method,
      headers: { ...this.headers, ...headers },
      signal: controller.signal,
    };
    if (body !== undefined) {
      const encoded = this.encode(body, init.headers as Record<string, string>);
      init.body = encoded.init;
      init.headers = encoded.headers;
    }
    try {
      const response = await fetch(url, init);
      return { response, controller, done };
    } catch (err) {
      done();
      throw this.fetchError(err, url, undefined, undefined);
    }
  }

  private fetchError(err: unknown, url: string, timer: AbortSignal | undefined, deadline: number | undefined): Error {
    if (timer?.aborted) {
      return new PythonTimeoutError(
        `no answer from ${url} within ${deadline} ms (the client's deadline)`,
        0,
      );
    }
    if (err instanceof Error && err.name === "AbortError") return err;
    if (this.closed) return new BridgeClosedError("the client is closed");
    const cause = err instanceof Error ? ((err.cause as Error | undefined)?.message ?? err.message) : String(err);
    return new BridgeHTTPError(
      `no kernel-bridge service answers at ${this.base} (${cause}): is it running, and is the URL right?`,
      0,
      "unreachable",
      undefined,
      { cause: err },
    );
  }
}

/** The error for a failure answer. */
export function failure(status: number, value: unknown, url = ""): BridgeHTTPError {
  const body = value as FailureAnswer | undefined;
  if (body && typeof body === "object" && typeof body.error_type === "string") {
    if (body.error_type === "timeout") return new PythonTimeoutError(body.error, status, body);
    if (body.error_type === "kernel_died") return new KernelDiedError(body.error, body);
    return new BridgeHTTPError(body.error, status, body.error_type, body);
  }
  return new BridgeHTTPError(`${url} answered HTTP ${status}`, status, "http");
}

/** A signal aborted when either one is (AbortSignal.any is not in Node 18). */
function anySignal(a: AbortSignal, b: AbortSignal): AbortSignal {
  const controller = new AbortController();
  const abort = () => controller.abort();
  if (a.aborted || b.aborted) abort();
  a.addEventListener("abort", abort, { once: true });
  b.addEventListener("abort", abort, { once: true });
  return controller.signal;
}
