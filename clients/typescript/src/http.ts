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

/**
 * How the client retries a call the service refused as `overloaded` (503, every pool kernel
 * busy and its wait queue full): after a backoff, until the call's own timeout is spent, so a
 * host sees latency rather than errors under a burst. Each try sends the time left as the
 * call's `timeout_secs`.
 */
export interface OverloadRetry {
  /** Milliseconds before the first retry (default 25); each next backoff doubles, with jitter. */
  initialDelay?: number;
  /** The longest backoff in milliseconds (default 1000); never longer than the service's `Retry-After`. */
  maxDelay?: number;
}

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
  /** Retrying `overloaded` answers (default: on, {@link OverloadRetry}'s defaults); `false`: never. */
  overloadRetry?: OverloadRetry | false;
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
  private readonly retry: Required<OverloadRetry> | false;

  /** @param endpoint - where the service is */
  constructor(endpoint: Endpoint) {
    this.base = endpoint.url.endsWith("/") ? endpoint.url : `${endpoint.url}/`;
    this.binary = endpoint.binary ?? true;
    const retry = endpoint.overloadRetry;
    this.retry = retry === false ? false : { initialDelay: retry?.initialDelay ?? 25, maxDelay: retry?.maxDelay ?? 1000 };
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
    const headers = options.headers ? { ...this.headers, ...options.headers } : this.headers;
    const started = Date.now();
    for (let attempt = 0; ; attempt++) {
      const init: RequestInit = { method, headers };
      if (body !== undefined) {
        const encoded = this.encode(attempt ? timeLeft(body, started) : body, headers as Record<string, string>);
        init.body = encoded.init;
        init.headers = encoded.headers;
      }
      if (signal) init.signal = signal;
      let response: Response;
      try {
        response = await fetch(url, init);
      } catch (err) {
        throw this.fetchError(err, url, timer, options.deadline);
      }
      const wait = await this.overloadBackoff(response, attempt, budget(body, options.deadline) - (Date.now() - started));
      if (wait === undefined) return response;
      try {
        await sleep(wait, signal);
      } catch (err) {
        throw this.fetchError(err, url, timer, options.deadline);
      }
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

  /** Milliseconds to wait before trying an `overloaded` answer again; undefined: do not. */
  private async overloadBackoff(response: Response, attempt: number, left: number): Promise<number | undefined> {
    if (response.status !== 503 || this.retry === false || this.closed) return undefined;
    let type: unknown;
    try {
      type = ((await response.clone().json()) as FailureAnswer).error_type;
    } catch {
      return undefined;
    }
    if (type !== "overloaded") return undefined;
    const hint = Number(response.headers.get("retry-after") ?? "") * 1000 || Infinity;
    const backoff = Math.min(this.retry.initialDelay * 2 ** attempt, this.retry.maxDelay, hint);
    const wait = backoff * (0.5 + Math.random() / 2);
    if (wait >= left) return undefined; // the call's time would be spent waiting: say so
    await response.body?.cancel();
    return wait;
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

/** Milliseconds a call may spend on retries: its `timeout_secs`, else the request's deadline. */
function budget(body: unknown, deadline: number | undefined): number {
  const secs = (body as { timeout_secs?: unknown } | undefined)?.timeout_secs;
  if (typeof secs === "number") return secs * 1000;
  return deadline ?? 0;
}

/** *body* with its `timeout_secs` less the time already spent since *started* (retries). */
function timeLeft(body: unknown, started: number): unknown {
  const secs = (body as { timeout_secs?: unknown } | undefined)?.timeout_secs;
  const spent = Date.now() - started;
  if (typeof secs !== "number") return body;
  return { ...(body as object), timeout_secs: Math.max(secs - spent / 1000, 0.001) };
}

/** Resolves after *ms*, or rejects with an AbortError when *signal* aborts first. */
function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const abort = () => {
      clearTimeout(timer);
      reject(new DOMException("aborted while waiting to retry", "AbortError"));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", abort);
      resolve();
    }, ms);
    if (signal?.aborted) abort();
    else signal?.addEventListener("abort", abort, { once: true });
  });
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
