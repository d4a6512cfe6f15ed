/**
 * The client: {@link KernelBridge}, its {@link PythonAPI} (`bridge.python`), backends and
 * contexts.
 *
 * @module
 */

import { readFile } from "node:fs/promises";
import { basename, resolve } from "node:path";

import {
  BackendTerminatedError,
  BridgeHTTPError,
  type CallFailure,
  KernelDiedError,
  PythonError,
  pythonErrorOf,
  pythonErrorOfCall,
  pythonErrorOfException,
  PythonTimeoutError,
} from "./errors.js";
import { ContextFiles } from "./files.js";
import { failure, GRACE_MS, type OverloadRetry, Transport } from "./http.js";
import { ServiceProcess, type StartOptions } from "./service.js";
import { readSSE } from "./sse.js";
import { decodeValue } from "./values.js";
import type {
  Attestation,
  BackendInfo,
  BackendRequest,
  CallEvents,
  CallSuccess,
  ContextInfo,
  ContextRequest,
  DisplayDataOutput,
  ExecuteAnswer,
  ExecuteResultOutput,
  FailureAnswer,
  HealthAnswer,
  InstallAnswer,
  KernelLimits,
  MimeBundle,
  ModulesAnswer,
  Output,
  SkippedEvent,
  VersionAnswer,
} from "./types.js";

/** The default timeout of a call, in milliseconds (as the old bridge's). */
export const DEFAULT_TIMEOUT = 30_000;

/** What both {@link KernelBridge.start} and {@link KernelBridge.connect} take. */
export interface ClientOptions {
  /**
   * Called when an event handler throws or rejects; the stream goes on either way.
   * Default: `console.error`.
   */
  onHandlerError?: (error: unknown, event: string) => void;
  /**
   * Send and take bytes and arrays as binary parts of `multipart/mixed` bodies (default true);
   * false sends and asks for JSON with the bytes as base64, as curl sees them.
   */
  binary?: boolean;
  /**
   * Retrying a call the service refused as `overloaded` (all pool kernels busy, its queue
   * full): with backoff until the call's timeout is spent (default: on); `false` never retries.
   */
  overloadRetry?: OverloadRetry | false;
}

/** Options of {@link KernelBridge.connect}. */
export interface ConnectOptions extends ClientOptions {
  /** The service's base URL, for example `http://127.0.0.1:9000/`. */
  url: string;
  /** Its token. */
  token: string;
}

/** Options of {@link PythonAPI.execute} and {@link PythonAPI.evaluate}. */
export interface ExecuteOptions {
  /** Milliseconds the code may run (default 30000); past it the code is interrupted. */
  timeout?: number;
  /** Globals for the code: Python names mapped to JSON values. */
  inputs?: Record<string, unknown>;
}

/** Options of {@link PythonAPI.run}: {@link ExecuteOptions} and callbacks for live output. */
export interface RunOptions extends ExecuteOptions {
  /** Text the code prints, as it prints it. */
  onStdout?: (text: string) => void;
  /** Text the code writes to stderr, as it writes it. */
  onStderr?: (text: string) => void;
  /** Each display output (`display(...)`, a plot), as it is shown. */
  onDisplay?: (output: DisplayDataOutput) => void;
  /** The code's value (an `execute_result` output), when it is known. */
  onResult?: (output: ExecuteResultOutput) => void;
  /**
   * The exception the code raised, once it has ended with it (before `run()` resolves with
   * the same error in {@link Execution.error}); not called for a failure of the service.
   */
  onError?: (error: PythonError) => void;
  /**
   * Outputs the service left out of the stream because this client read more slowly than
   * the code printed (more than 1 MiB of outputs waiting): the other callbacks did not get
   * them, but the {@link Execution} `run()` resolves with has every output all the same.
   */
  onSkipped?: (skipped: SkippedEvent) => void;
  /** Stops the call (the service interrupts the code). */
  signal?: AbortSignal;
}

/** The whole outcome of {@link PythonAPI.run}: what the code returned, printed and showed. */
export interface Execution {
  /** Whether the code ran without raising. */
  success: boolean;
  /** The value (`return X`, or the last expression's), as JSON; null when there is none. */
  value: unknown;
  /** The value's rich representations by MIME type (`text/plain`, `text/html`, `image/png`, ...). */
  data: MimeBundle | null;
  /** Every output in order, nbformat v4. */
  outputs: Output[];
  /** Everything printed to stdout. */
  stdout: string;
  /** Everything written to stderr. */
  stderr: string;
  /** The exception the code raised, or null. */
  error: PythonError | null;
  /** How long the code ran, in milliseconds. */
  durationMs: number;
  /** Provenance of the outputs. */
  attestations: Attestation[];
  /** Whether output past the service's limit was dropped. */
  truncated: boolean;
  /** The service's answer as it came. */
  answer: ExecuteAnswer;
}

/** Options of {@link PythonAPI.spawn}. */
export interface SpawnOptions {
  /** Extra environment variables for the backend's kernel. */
  env?: Record<string, string>;
  /** Milliseconds the script gets to start, and the default timeout of its calls (30000). */
  timeout?: number;
  /** Bring the kernel back (running the script anew) when it dies. */
  restart?: boolean;
  /** Limits for the backend's kernel, tighter than the service's (`{ memory_mb: 512 }`). */
  limits?: KernelLimits;
}

/** Options of {@link PythonAPI.context}. */
export interface ContextOptions {
  /** A name for the context. */
  name?: string;
  /** Extra environment variables for its kernel. */
  env?: Record<string, string>;
  /** Its working folder. */
  cwd?: string;
  /** Milliseconds it gets to start. */
  timeout?: number;
  /** Limits for its kernel, tighter than the service's (`{ memory_mb: 256, cpu_seconds: 60 }`). */
  limits?: KernelLimits;
}

/** Options of {@link PythonBackendHandle.stream}. */
export interface StreamOptions {
  /**
   * Milliseconds to wait for each item (default: the spawn's `timeout`, else 30000); past it
   * the generator is closed and the stream rejects with a PythonTimeoutError.
   */
  timeout?: number;
  /** Stops the stream (the generator is closed in the kernel, its `finally` runs). */
  signal?: AbortSignal;
}

/** An event handler: the event's data (and its type, for handlers shared between types). */
export type EventHandler<T = any> = (data: T, event: string) => unknown;

/** The Execution of an answer. */
function toExecution(answer: ExecuteAnswer): Execution {
  let data: MimeBundle | null = null;
  for (const output of answer.outputs ?? []) {
    if (output.output_type === "execute_result") data = output.data;
  }
  return {
    success: answer.success,
    value: answer.result ?? null,
    data,
    outputs: answer.outputs ?? [],
    stdout: answer.stdout ?? "",
    stderr: answer.stderr ?? "",
    error: answer.success ? null : pythonErrorOf(answer),
    durationMs: answer.duration_ms,
    attestations: answer.attestations ?? [],
    truncated: Boolean(answer.truncated),
    answer,
  };
}

function secs(ms: number): number {
  return ms / 1000;
}

/** Runs code on one route (`execute`, `contexts/{id}/execute`, ...), plain or streamed. */
class Runner {
  constructor(private readonly transport: Transport) {}

  /** The value, or the PythonError. */
  async value(route: string, body: Record<string, unknown>, timeout: number): Promise<unknown> {
    const answer = await this.transport.request<ExecuteAnswer>("POST", route, body, {
      deadline: timeout + GRACE_MS,
    });
    if (!answer.success) throw pythonErrorOf(answer);
    return answer.result ?? null;
  }

  /** The Execution, streamed to the callbacks when there are any. */
  async run(route: string, body: Record<string, unknown>, options: RunOptions): Promise<Execution> {
    const timeout = options.timeout ?? DEFAULT_TIMEOUT;
    const live = options.onStdout || options.onStderr || options.onDisplay || options.onResult;
    if (!live) {
      const answer = await this.transport.request<ExecuteAnswer>("POST", route, body, {
        deadline: timeout + GRACE_MS,
        ...(options.signal ? { signal: options.signal } : {}),
      });
      return reportError(toExecution(answer), options);
    }
    const deadline = AbortSignal.timeout(timeout + GRACE_MS);
    const signal = options.signal ? both(deadline, options.signal) : deadline;
    const { response, done } = await this.transport.openStream(
      "POST",
      route,
      body,
      { Accept: "text/event-stream" },
      signal,
    );
    try {
      const type = response.headers.get("content-type") ?? "";
      if (!type.includes("text/event-stream")) {
        // A service without streaming answers JSON: the callbacks get the outputs in order.
        const answer = (await this.transport.read(response, deadline, timeout + GRACE_MS)) as ExecuteAnswer;
        for (const output of answer.outputs ?? []) deliver(output, options);
        return reportError(toExecution(answer), options);
      }
      let end: ExecuteAnswer | FailureAnswer | undefined;
      try {
        for await (const message of readSSE(response.body as ReadableStream<Uint8Array>)) {
          const data = decodeValue(JSON.parse(message.data)) as Record<string, unknown>;
          switch (message.event) {
            case "stdout":
              options.onStdout?.(String(data.text ?? ""));
              break;
            case "stderr":
              options.onStderr?.(String(data.text ?? ""));
              break;
            case "display":
              options.onDisplay?.(data as unknown as DisplayDataOutput);
              break;
            case "result":
              options.onResult?.(data as unknown as ExecuteResultOutput);
              break;
            case "skipped":
              options.onSkipped?.(data as unknown as SkippedEvent);
              break;
            case "end":
              end = data as unknown as ExecuteAnswer | FailureAnswer;
              break;
            default:
              break; // "error" and future events: the end answer has them too
          }
          if (end) break;
        }
      } catch (err) {
        if (deadline.aborted) {
          // The client's own deadline: no answer, so no body (status 0, as for any request).
          throw new PythonTimeoutError(`no answer within ${timeout + GRACE_MS} ms (the client's deadline)`, 0);
        }
        throw err;
      }
      if (!end) throw new BridgeHTTPError(`the stream of ${route} ended without its end event`, response.status, "http");
      if (!end.success && end.error_type !== "python_error") {
        const fail = end as FailureAnswer;
        throw failure(fail.status ?? 500, fail, response.url);
      }
      return reportError(toExecution(end as ExecuteAnswer), options);
    } finally {
      done();
    }
  }
}

/** Hand the execution's error to `onError`, as the other callbacks get their outputs. */
function reportError(execution: Execution, options: RunOptions): Execution {
  if (execution.error) options.onError?.(execution.error);
  return execution;
}

function deliver(output: Output, options: RunOptions): void {
  switch (output.output_type) {
    case "stream":
      (output.name === "stderr" ? options.onStderr : options.onStdout)?.(output.text);
      break;
    case "display_data":
      options.onDisplay?.(output);
      break;
    case "execute_result":
      options.onResult?.(output);
      break;
    default:
      break;
  }
}

function both(a: AbortSignal, b: AbortSignal): AbortSignal {
  const controller = new AbortController();
  const abort = () => controller.abort();
  if (a.aborted || b.aborted) abort();
  a.addEventListener("abort", abort, { once: true });
  b.addEventListener("abort", abort, { once: true });
  return controller.signal;
}

function executeBody(code: string, options: ExecuteOptions): Record<string, unknown> {
  const body: Record<string, unknown> = {
    content: code,
    timeout_secs: secs(options.timeout ?? DEFAULT_TIMEOUT),
  };
  if (options.inputs !== undefined) body.inputs = options.inputs;
  return body;
}

/** Events kept per type for a type with no handler yet (as the host API keeps them). */
const KEPT_PER_TYPE = 1000;

/**
 * A running backend: a script's class in a kernel of its own, whose methods the host calls and
 * whose events it receives. Returned by {@link PythonAPI.spawn}.
 */
export class PythonBackendHandle {
  /** The backend's id in the service. */
  readonly id: string;
  /** The id of its kernel (a Jupyter Server kernel: JupyterLab can open it). */
  readonly kernelId: string;
  /** Its public methods. */
  readonly methods: string[];
  /** The script's path, as resolved from the host's working folder. */
  readonly script: string;
  private readonly transport: Transport;
  private readonly callPath: string;
  private readonly defaultTimeout: number;
  private readonly handlers = new Map<string, Set<EventHandler>>();
  private readonly kept = new Map<string, unknown[]>();
  private readonly onHandlerError: (error: unknown, event: string) => void;
  private readonly forget: () => void;
  private events: AbortController | undefined;
  private terminated = false;
  private dead = false;

  /** @internal */
  constructor(
    info: BackendInfo,
    script: string,
    transport: Transport,
    defaultTimeout: number,
    onHandlerError: (error: unknown, event: string) => void,
    forget: () => void,
  ) {
    this.id = info.id;
    this.kernelId = info.kernel_id;
    this.methods = info.methods;
    this.script = script;
    this.transport = transport;
    this.callPath = `backends/${encodeURIComponent(info.id)}/call`;
    this.defaultTimeout = defaultTimeout;
    this.onHandlerError = onHandlerError;
    this.forget = forget;
  }

  /**
   * False once terminated (by {@link PythonBackendHandle.terminate}, the service or `close()`),
   * or once its kernel is known to have died (an `exit` event, a call that got `kernel_died`).
   */
  get alive(): boolean {
    return !this.terminated && !this.dead;
  }

  /** Whether the backend was terminated. */
  get isTerminated(): boolean {
    return this.terminated;
  }

  /**
   * Call a method of the backend.
   *
   * @param cmd - the method's name
   * @param params - its keyword arguments
   * @param timeout - milliseconds it may take (default: the spawn's `timeout`, else 30000);
   *   past it the method is interrupted and the call rejects with a PythonTimeoutError
   * @returns what the method returned
   * @throws PythonError when the method raised; KernelDiedError when the kernel died;
   *   BackendTerminatedError at once when the backend was terminated
   */
  async call<T = any>(cmd: string, params?: Record<string, unknown>, timeout?: number): Promise<T> {
    if (this.terminated) {
      throw new BackendTerminatedError(`the backend ${this.script} was terminated: call("${cmd}") was not sent`);
    }
    const body: Record<string, unknown> = { cmd };
    if (params !== undefined) body.params = params;
    if (timeout !== undefined) body.timeout_secs = secs(timeout);
    let answer: CallSuccess | CallFailure;
    try {
      answer = await this.transport.request<CallSuccess | CallFailure>("POST", this.callPath, body, {
        deadline: (timeout ?? this.defaultTimeout) + GRACE_MS,
      });
    } catch (err) {
      if (this.terminated) {
        throw new BackendTerminatedError(`the backend ${this.script} was terminated during call("${cmd}")`, { cause: err });
      }
      // Its kernel died: spawn() and getBackend() no longer hand this handle out (unless the
      // service says it came back, with `restart`).
      if (err instanceof KernelDiedError) this.dead = true;
      throw err;
    }
    if (!answer.success) throw pythonErrorOfCall(answer);
    return answer.result as T;
  }

  /**
   * The items of a generator method (`def` or `async def` with `yield`), as it yields them.
   * Bytes and arrays among them arrive as `Uint8Array` and {@link NDArray}.
   *
   * Breaking out of the loop (or the signal) closes the generator in the kernel, so its
   * `finally` runs. The kernel never runs more than a window of items ahead of this reader.
   *
   * @example
   * ```ts
   * for await (const n of backend.stream<number>("count", { n: 5 })) console.log(n);
   * ```
   *
   * @param cmd - the generator method's name
   * @param params - its keyword arguments
   * @param options - see {@link StreamOptions}
   * @throws PythonError when the method raised (after the items it yielded before);
   *   PythonTimeoutError when no item came in time; KernelDiedError when the kernel died
   */
  async *stream<T = any>(cmd: string, params?: Record<string, unknown>, options: StreamOptions = {}): AsyncGenerator<T, void, undefined> {
    if (this.terminated) {
      throw new BackendTerminatedError(`the backend ${this.script} was terminated: stream("${cmd}") was not sent`);
    }
    const body: Record<string, unknown> = { cmd };
    if (params !== undefined) body.params = params;
    if (options.timeout !== undefined) body.timeout_secs = secs(options.timeout);
    const controller = new AbortController();
    const signal = options.signal ? both(controller.signal, options.signal) : controller.signal;
    const { response, done } = await this.transport.openStream("POST", this.callPath, body, { Accept: "text/event-stream" }, signal);
    try {
      if (!(response.headers.get("content-type") ?? "").includes("text/event-stream")) {
        const answer = (await this.transport.read(response)) as CallSuccess | CallFailure; // a failure throws
        if (!answer.success) throw pythonErrorOfCall(answer);
        throw new BridgeHTTPError(`${this.callPath} answered JSON, not a stream: the service is older than this client`, response.status, "http");
      }
      for await (const message of readSSE(response.body as ReadableStream<Uint8Array>)) {
        if (message.event === "item") {
          yield decodeValue(JSON.parse(message.data)) as T;
        } else if (message.event === "end") {
          const end = JSON.parse(message.data) as CallEvents["end"];
          if (end.success) return;
          if (end.error_type === "python_error") throw pythonErrorOfCall(end as CallFailure);
          const error = failure((end as FailureAnswer).status ?? 500, end, response.url);
          if (error instanceof KernelDiedError) this.dead = true;
          throw error;
        }
      }
      throw new BridgeHTTPError(`the stream of ${cmd}() ended without its end event`, response.status, "http");
    } finally {
      controller.abort(); // when the reader stopped early: the service closes the generator
      done();
    }
  }

  /**
   * Handle the backend's events of one type. Events sent before the first handler of their
   * type are kept (the last 1000) and delivered to it. A handler that throws does not stop the
   * stream (the client's `onHandlerError` sees the error).
   *
   * @param event - the event type (`send_event`'s first argument; also `stdout`, `stderr`,
   *   `exit`, `restart`), or `"*"` for every type
   * @param handler - called with the event's data and its type
   * @returns a function that removes the handler
   */
  on<T = any>(event: string, handler: EventHandler<T>): () => void {
    let set = this.handlers.get(event);
    if (!set) {
      set = new Set();
      this.handlers.set(event, set);
    }
    set.add(handler as EventHandler);
    const kept = this.kept.get(event);
    if (kept && event !== "*") {
      this.kept.delete(event);
      for (const data of kept) this.invoke(handler as EventHandler, data, event);
    }
    if (!this.events && !this.terminated) this.listen();
    return () => this.off(event, handler);
  }

  /**
   * Remove a handler given to {@link PythonBackendHandle.on}.
   *
   * @param event - its event type
   * @param handler - the handler
   */
  off<T = any>(event: string, handler: EventHandler<T>): void {
    this.handlers.get(event)?.delete(handler as EventHandler);
  }

  /** Stop the backend and its kernel; idempotent. Later calls reject at once. */
  async terminate(): Promise<void> {
    if (this.terminated) return;
    this.ended();
    try {
      await this.transport.request("DELETE", `backends/${encodeURIComponent(this.id)}`);
    } catch (err) {
      if (err instanceof BridgeHTTPError && err.status === 404) return; // already gone
      throw err;
    }
  }

  /** @internal What the service says of the backend now: alive and restarting ones are kept. */
  async usable(): Promise<boolean> {
    if (this.terminated) return false;
    let state: string;
    try {
      const info = await this.transport.request<BackendInfo>("GET", `backends/${encodeURIComponent(this.id)}`);
      state = info.state ?? (info.alive ? "alive" : "dead");
    } catch (err) {
      if (!(err instanceof BridgeHTTPError && err.status === 404)) throw err;
      state = "deleted";
    }
    this.dead = state !== "alive" && state !== "restarting";
    return !this.dead;
  }

  /** @internal The backend is gone: no call goes out, the stream stops. */
  ended(): void {
    this.terminated = true;
    this.events?.abort();
    this.forget();
  }

  private dispatch(type: string, data: unknown): void {
    if (type === "exit" && !(data as { restarting?: boolean } | null)?.restarting) this.dead = true;
    if (type === "restart" && (data as { ok?: boolean } | null)?.ok) this.dead = false;
    const set = this.handlers.get(type);
    const any = this.handlers.get("*");
    if (set && set.size > 0) {
      for (const handler of set) this.invoke(handler, data, type);
    } else {
      let kept = this.kept.get(type);
      if (!kept) {
        kept = [];
        this.kept.set(type, kept);
      }
      kept.push(data);
      if (kept.length > KEPT_PER_TYPE) kept.shift();
    }
    if (any) for (const handler of any) this.invoke(handler, data, type);
  }

  private invoke(handler: EventHandler, data: unknown, type: string): void {
    try {
      const out = handler(data, type);
      if (out && typeof (out as Promise<unknown>).then === "function") {
        (out as Promise<unknown>).then(undefined, (err: unknown) => this.onHandlerError(err, type));
      }
    } catch (err) {
      this.onHandlerError(err, type);
    }
  }

  /** Read the event stream, reconnecting with Last-Event-ID, until the backend is gone. */
  private listen(): void {
    const controller = new AbortController();
    this.events = controller;
    const path = `backends/${encodeURIComponent(this.id)}/events`;
    void (async () => {
      let lastId: string | undefined;
      let pause = 50;
      while (!controller.signal.aborted && !this.transport.isClosed) {
        let finished = false;
        try {
          const headers: Record<string, string> = { Accept: "text/event-stream" };
          if (lastId !== undefined) headers["Last-Event-ID"] = lastId;
          const { response, done } = await this.transport.openStream("GET", path, undefined, headers, controller.signal);
          try {
            if (response.status === 404) {
              finished = true; // the backend was deleted
            } else if (response.ok && response.body) {
              for await (const message of readSSE(response.body)) {
                if (message.event === "end") {
                  finished = true;
                  break;
                }
                if (message.id !== undefined) lastId = message.id;
                const event = JSON.parse(message.data) as { type: string; data: unknown };
                this.dispatch(event.type, decodeValue(event.data));
                pause = 50;
              }
            } else {
              await response.body?.cancel();
            }
          } finally {
            done();
          }
        } catch {
          // a dropped connection: reconnect below, from the last event seen
        }
        if (finished) {
          this.terminated = true;
          this.forget();
          return;
        }
        if (controller.signal.aborted || this.transport.isClosed) return;
        await new Promise((r) => setTimeout(r, pause));
        pause = Math.min(pause * 2, 2000);
      }
    })();
  }
}

/**
 * A context: a kernel of its own whose state (variables, imports) lasts from one call to the
 * next, until {@link Context.close}. Made by {@link PythonAPI.context}.
 */
export class Context {
  /** The context's id. */
  readonly id: string;
  /** Its name. */
  readonly name: string | null;
  /** The id of its kernel. */
  readonly kernelId: string;
  /** What the service said when it made it. */
  readonly info: ContextInfo;
  /** Its files: `write`, `read`, `stream`, `list`, `remove` (relative to its working folder). */
  readonly files: ContextFiles;
  private readonly transport: Transport;
  private readonly runner: Runner;
  private readonly base: string;
  private readonly forget: () => void;
  private closed = false;

  /** @internal */
  constructor(info: ContextInfo, transport: Transport, forget: () => void) {
    this.id = info.id;
    this.name = info.name ?? null;
    this.kernelId = info.kernel_id;
    this.info = info;
    this.transport = transport;
    this.runner = new Runner(transport);
    this.base = `contexts/${encodeURIComponent(info.id)}`;
    this.files = new ContextFiles(transport, this.base);
    this.forget = forget;
  }

  /** Whether {@link Context.close} was called. */
  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * Run code in the context and resolve to its value (a top-level `return X` gives X).
   *
   * @throws PythonError when the code raised
   */
  execute<T = any>(code: string, options: ExecuteOptions = {}): Promise<T> {
    return this.runner.value(`${this.base}/execute`, executeBody(code, options), options.timeout ?? DEFAULT_TIMEOUT) as Promise<T>;
  }

  /** Run code in the context and resolve to the whole {@link Execution}, streamed to the callbacks. */
  run(code: string, options: RunOptions = {}): Promise<Execution> {
    return this.runner.run(`${this.base}/execute`, executeBody(code, options), options);
  }

  /** The value of a Python expression in the context. */
  evaluate<T = any>(expr: string, options: { timeout?: number } = {}): Promise<T> {
    const timeout = options.timeout ?? DEFAULT_TIMEOUT;
    return this.runner.value(`${this.base}/evaluate`, { expr, timeout_secs: secs(timeout) }, timeout) as Promise<T>;
  }

  /** Run a script of the service's root folder in the context; resolves to its value. */
  executeFile<T = any>(path: string, options: { timeout?: number } = {}): Promise<T> {
    const timeout = options.timeout ?? DEFAULT_TIMEOUT;
    return this.runner.value(`${this.base}/execute-file`, { path, timeout_secs: secs(timeout) }, timeout) as Promise<T>;
  }

  /** What the service says about the context now. */
  describe(): Promise<ContextInfo> {
    return this.transport.request<ContextInfo>("GET", this.base);
  }

  /** Restart the context's kernel: its state starts anew. */
  async restart(): Promise<ContextInfo> {
    return this.transport.request<ContextInfo>("POST", `${this.base}/restart`, {}, { deadline: 120_000 });
  }

  /** Stop the context and its kernel; idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.forget();
    try {
      await this.transport.request("DELETE", this.base);
    } catch (err) {
      if (err instanceof BridgeHTTPError && err.status === 404) return;
      throw err;
    }
  }
}

/**
 * `bridge.python`: the old Python Bridge's API (`execute`, `spawn`, `hasPython`,
 * `getPythonVersion`, ...) with the same names and semantics, and more (`run`, `context`, ...).
 */
export class PythonAPI {
  private readonly transport: Transport;
  private readonly runner: Runner;
  private readonly onHandlerError: (error: unknown, event: string) => void;
  private readonly backends = new Map<string, Promise<PythonBackendHandle>>();
  private readonly contexts = new Set<Context>();

  /** @internal */
  constructor(transport: Transport, onHandlerError: (error: unknown, event: string) => void) {
    this.transport = transport;
    this.runner = new Runner(transport);
    this.onHandlerError = onHandlerError;
  }

  /**
   * Run Python code in a warm kernel and resolve to its value: a top-level `return X` gives X
   * (as JSON).
   *
   * @param code - the code
   * @param options - `timeout` in milliseconds (default 30000), `inputs` as globals
   * @throws PythonError when the code raised; PythonTimeoutError past the timeout (the code is
   *   interrupted); KernelDiedError when the kernel died
   */
  execute<T = any>(code: string, options: ExecuteOptions = {}): Promise<T> {
    return this.runner.value("execute", executeBody(code, options), options.timeout ?? DEFAULT_TIMEOUT) as Promise<T>;
  }

  /**
   * Run Python code and resolve to the whole {@link Execution}: value, rich data, outputs,
   * stdout, stderr, error. With callbacks, output is streamed to them as it happens. A Python
   * exception does not reject: it is in `error`.
   */
  run(code: string, options: RunOptions = {}): Promise<Execution> {
    return this.runner.run("execute", executeBody(code, options), options);
  }

  /** The value of one Python expression. */
  evaluate<T = any>(expr: string, options: { timeout?: number } = {}): Promise<T> {
    const timeout = options.timeout ?? DEFAULT_TIMEOUT;
    return this.runner.value("evaluate", { expr, timeout_secs: secs(timeout) }, timeout) as Promise<T>;
  }

  /**
   * Run a script that lies in the service's root folder (its `root` option) and resolve to its
   * value.
   *
   * @param path - relative to the service's root, or absolute inside it
   */
  executeFile<T = any>(path: string, options: { timeout?: number } = {}): Promise<T> {
    const timeout = options.timeout ?? DEFAULT_TIMEOUT;
    return this.runner.value("execute-file", { path, timeout_secs: secs(timeout) }, timeout) as Promise<T>;
  }

  /** {@link PythonAPI.executeFile}, resolving to the whole {@link Execution} (streamed to the callbacks). */
  runFile(path: string, options: Omit<RunOptions, "inputs"> = {}): Promise<Execution> {
    const timeout = options.timeout ?? DEFAULT_TIMEOUT;
    return this.runner.run("execute-file", { path, timeout_secs: secs(timeout) }, options);
  }

  /**
   * Start a backend from a script: the client reads the file (relative to the host's working
   * folder) and sends its source, named after the file (its Jupyter Server session is
   * `backends/<file name>`). Spawning the same path again returns the same handle while the
   * service says it is alive (or restarting); one whose kernel died is deleted and the script
   * spawned anew.
   *
   * @param script - the script's path
   * @param options - `env`, `timeout` (ms: for the start, and the calls' default), `restart`
   */
  spawn(script: string, options: SpawnOptions = {}): Promise<PythonBackendHandle> {
    const path = resolve(script);
    const known = this.backends.get(path);
    if (known) {
      return this.live(known).then((handle) => handle ?? this.respawn(path, options, known));
    }
    return this.startBackend(path, options);
  }

  /** The handle *known* resolves to if the service says it is alive or restarting; a dead one
   * is deleted (its slot and listing freed) and forgotten. */
  private async live(known: Promise<PythonBackendHandle>): Promise<PythonBackendHandle | undefined> {
    let handle: PythonBackendHandle;
    try {
      handle = await known;
    } catch {
      return undefined; // its start failed
    }
    if (await handle.usable()) return handle;
    await handle.terminate().catch(() => undefined); // best effort: the service cleans dead ones up
    return undefined;
  }

  private respawn(path: string, options: SpawnOptions, old: Promise<PythonBackendHandle>): Promise<PythonBackendHandle> {
    const now = this.backends.get(path);
    if (now && now !== old) return now; // another spawn got there first
    return this.startBackend(path, options);
  }

  private startBackend(path: string, options: SpawnOptions): Promise<PythonBackendHandle> {
    const started = this.create(path, options);
    this.backends.set(path, started);
    started.catch(() => {
      if (this.backends.get(path) === started) this.backends.delete(path);
    });
    return started;
  }

  private async create(path: string, options: SpawnOptions): Promise<PythonBackendHandle> {
    const source = await readFile(path, "utf8");
    const timeout = options.timeout ?? DEFAULT_TIMEOUT;
    const body: BackendRequest = { script: source, name: basename(path), timeout_secs: secs(timeout) };
    if (options.env) body.env = options.env;
    if (options.restart) body.restart = true;
    if (options.limits) body.limits = options.limits;
    const answer = await this.transport.request<BackendInfo | FailureAnswer>("POST", "backends", body, { deadline: timeout + 60_000 });
    if ("success" in answer) {
      // The script raised: a Python error is 200 on every route, with its exception.
      if (answer.exception) throw pythonErrorOfException(answer.exception, answer);
      throw failure(answer.status, answer);
    }
    const info: BackendInfo = answer;
    let handle: PythonBackendHandle | undefined;
    handle = new PythonBackendHandle(info, path, this.transport, timeout, this.onHandlerError, () => {
      const entry = this.backends.get(path);
      void entry?.then((h) => {
        // Only if the path still maps to this handle: a new spawn may have replaced it.
        if (h === handle && this.backends.get(path) === entry) this.backends.delete(path);
      }, () => undefined);
    });
    return handle;
  }

  /**
   * The handle of a script spawned before, if the service says it is alive (or restarting);
   * else undefined, and a dead one is deleted and forgotten.
   */
  async getBackend(script: string): Promise<PythonBackendHandle | undefined> {
    const known = this.backends.get(resolve(script));
    if (!known) return undefined;
    return this.live(known);
  }

  /** Terminate the backend of a script; resolves to whether there was one. */
  async terminate(script: string): Promise<boolean> {
    const handle = await this.getBackend(script);
    if (!handle) return false;
    await handle.terminate();
    return true;
  }

  /** Terminate every backend spawned through this client. */
  async terminateAll(): Promise<void> {
    const handles = await Promise.allSettled([...this.backends.values()]);
    await Promise.allSettled(
      handles.map((h) => (h.status === "fulfilled" ? h.value.terminate() : Promise.resolve())),
    );
  }

  /** @internal Every handle and context is gone (the client closed). */
  async endAll(): Promise<void> {
    const handles = await Promise.allSettled([...this.backends.values()]);
    for (const h of handles) if (h.status === "fulfilled") h.value.ended();
    this.backends.clear();
    this.contexts.clear();
  }

  /** @internal Close the contexts this client opened. */
  async closeContexts(): Promise<void> {
    await Promise.allSettled([...this.contexts].map((c) => c.close()));
  }

  /** Whether the service's kernels run Python (false when the service cannot be reached). */
  async hasPython(): Promise<boolean> {
    try {
      const version = await this.version();
      return Boolean(version.python_version);
    } catch {
      return false;
    }
  }

  /** The kernels' Python version, as `"Python 3.x.y"`. */
  async getPythonVersion(): Promise<string> {
    const version = await this.version();
    return `Python ${version.python_version}`;
  }

  /** The versions: the kernels' Python, kernel-bridge, Jupyter Server. */
  version(): Promise<VersionAnswer> {
    return this.transport.request<VersionAnswer>("GET", "version");
  }

  /** Whether the kernels can import each module (without importing it). */
  async modules(names: string[]): Promise<Record<string, boolean>> {
    const query = encodeURIComponent(names.join(","));
    const answer = await this.transport.request<ModulesAnswer>("GET", `modules?names=${query}`);
    return answer.modules;
  }

  /**
   * Install packages into the kernels' Python with pip. Resolves to pip's answer (check
   * `success`); rejects only when the service refuses the request.
   */
  install(packages: string[], options: { upgrade?: boolean; timeout?: number } = {}): Promise<InstallAnswer> {
    const body: Record<string, unknown> = { packages };
    if (options.upgrade) body.upgrade = true;
    return this.transport.request<InstallAnswer>("POST", "packages/install", body, {
      deadline: options.timeout ?? 600_000,
    });
  }

  /**
   * Open a {@link Context}: a kernel of its own whose state lasts across calls.
   *
   * @param options - `name`, `env`, `cwd`, `timeout` (ms to start)
   */
  async context(options: ContextOptions = {}): Promise<Context> {
    const body: ContextRequest = {};
    if (options.name !== undefined) body.name = options.name;
    if (options.env !== undefined) body.env = options.env;
    if (options.cwd !== undefined) body.cwd = options.cwd;
    if (options.timeout !== undefined) body.timeout_secs = secs(options.timeout);
    if (options.limits !== undefined) body.limits = options.limits;
    const info = await this.transport.request<ContextInfo>("POST", "contexts", body, {
      deadline: (options.timeout ?? 60_000) + 60_000,
    });
    const context: Context = new Context(info, this.transport, () => this.contexts.delete(context));
    this.contexts.add(context);
    return context;
  }
}

/**
 * A client of a kernel-bridge service: {@link KernelBridge.start} runs one for the host,
 * {@link KernelBridge.connect} uses one that already runs.
 *
 * @example
 * ```ts
 * const bridge = await KernelBridge.start();
 * console.log(await bridge.python.execute("return 6 * 7")); // 42
 * await bridge.close();
 * ```
 */
export class KernelBridge {
  /** The old Python Bridge's API, and more. */
  readonly python: PythonAPI;
  /** The service's base URL. */
  readonly url: string;
  /** The service process, when {@link KernelBridge.start} started it. */
  readonly service: ServiceProcess | undefined;
  private readonly transport: Transport;
  private closing: Promise<void> | undefined;

  private constructor(transport: Transport, service: ServiceProcess | undefined, options: ClientOptions) {
    this.transport = transport;
    this.url = transport.base;
    this.service = service;
    const onHandlerError =
      options.onHandlerError ??
      ((error: unknown, event: string) => console.error(`kernel-bridge: a handler of "${event}" threw:`, error));
    this.python = new PythonAPI(transport, onHandlerError);
  }

  /**
   * Start a kernel-bridge service for this host (`<python> -m bridge serve --port 0`, its
   * token in a private file) and connect to it once its kernels are ready. {@link
   * KernelBridge.close}, or the host's exit, stops it with every kernel.
   *
   * @throws BridgeStartError when there is no such Python, it lacks kernel-bridge, or the
   *   service does not become ready in time
   */
  static async start(options: StartOptions & ClientOptions = {}): Promise<KernelBridge> {
    const service = await ServiceProcess.start(options);
    const endpoint = {
      url: service.url,
      token: service.token,
      binary: options.binary ?? true,
      overloadRetry: options.overloadRetry,
    };
    return new KernelBridge(new Transport(endpoint), service, options);
  }

  /**
   * Connect to a service that already runs, and check that it answers.
   *
   * @throws BridgeHTTPError when nothing answers at the URL (`status` 0, `unreachable`) or the
   *   token is refused (401)
   */
  static async connect(options: ConnectOptions): Promise<KernelBridge> {
    const bridge = new KernelBridge(new Transport(options), undefined, options);
    await bridge.health();
    return bridge;
  }

  /** The service's health: its version, pool, live kernels and backends. */
  health(): Promise<HealthAnswer> {
    return this.transport.request<HealthAnswer>("GET", "health", undefined, { deadline: 120_000 });
  }

  /**
   * Close the client. A service it started stops, with every kernel; on a service it connected
   * to, the backends and contexts it opened are stopped. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    if (this.service) {
      this.transport.close();
      await this.python.endAll();
      await this.service.stop();
      return;
    }
    await this.python.terminateAll();
    await this.python.closeContexts();
    await this.python.endAll();
    this.transport.close();
  }
}
