/**
 * The shapes on the wire: requests, answers and events of the kernel-bridge HTTP service, and
 * the nbformat v4 outputs it returns.
 *
 * @module
 */

/** Any JSON value. */
export type JSONValue = null | boolean | number | string | JSONValue[] | { [key: string]: JSONValue };

/** A MIME bundle: MIME type to content (a string, or JSON for `application/json` and such). */
export type MimeBundle = Record<string, unknown>;

/** An nbformat v4 `stream` output: text a cell wrote to stdout or stderr. */
export interface StreamOutput {
  /** `"stream"` */
  output_type: "stream";
  /** Which stream. */
  name: "stdout" | "stderr";
  /** The text. */
  text: string;
}

/** An nbformat v4 `display_data` output (`display(...)`, a plot, HTML). */
export interface DisplayDataOutput {
  /** `"display_data"` */
  output_type: "display_data";
  /** The representations of the object, by MIME type. */
  data: MimeBundle;
  /** Metadata by MIME type. */
  metadata: Record<string, unknown>;
  /** Set when the output may be updated (`display(..., display_id=...)`). */
  transient?: { display_id?: string };
}

/** An nbformat v4 `execute_result` output: the value of the code. */
export interface ExecuteResultOutput {
  /** `"execute_result"` */
  output_type: "execute_result";
  /** The value's representations, by MIME type. */
  data: MimeBundle;
  /** Metadata by MIME type. */
  metadata: Record<string, unknown>;
  /** The kernel's execution counter. */
  execution_count: number | null;
}

/** An nbformat v4 `error` output: the exception the code raised. */
export interface ErrorOutput {
  /** `"error"` */
  output_type: "error";
  /** The exception's class name. */
  ename: string;
  /** The exception's message. */
  evalue: string;
  /** The traceback, one entry per frame (may contain ANSI colors). */
  traceback: string[];
}

/** One nbformat v4 output. */
export type Output = StreamOutput | DisplayDataOutput | ExecuteResultOutput | ErrorOutput;

/** The `error_type` of a failure answer. */
export type ErrorType =
  | "bad_request"
  | "unauthorized"
  | "forbidden"
  | "not_found"
  | "method_not_allowed"
  | "conflict"
  | "too_large"
  | "limit_reached"
  | "python_error"
  | "timeout"
  | "kernel_died"
  | "kernel_start_failed"
  | "overloaded"
  | "shutting_down"
  | "unavailable"
  | "internal";

/** A Python exception, the same in every answer that carries one. */
export interface PythonException {
  /** The exception's class, for example `"ZeroDivisionError"`. */
  ename: string;
  /** The exception's message. */
  evalue: string;
  /** The traceback, as plain text. */
  traceback: string;
}

/** Where an attestation says an output came from (the service's provenance records). */
export type Attestation = Record<string, unknown>;

/** `POST /execute`: run code in a pool kernel. */
export interface ExecuteRequest {
  /** The code; a top-level `return X` makes X the value. */
  content: string;
  /** Seconds the code may run (the service's default: 30). */
  timeout_secs?: number;
  /** Also return the globals the code defined. */
  capture_variables?: boolean;
  /** Globals for the code: Python names mapped to JSON values. */
  inputs?: Record<string, unknown>;
}

/** `POST /evaluate`: the value of one expression. */
export interface EvaluateRequest {
  /** A Python expression. */
  expr: string;
  /** Seconds it may run. */
  timeout_secs?: number;
}

/** `POST /execute-file`: run a script that lies in the service's root folder. */
export interface ExecuteFileRequest {
  /** The script's path, relative to the service's root (or absolute, inside it). */
  path: string;
  /** Seconds it may run. */
  timeout_secs?: number;
  /** Also return the globals the script defined. */
  capture_variables?: boolean;
}

/** The answer of `/execute`, `/evaluate`, `/execute-file` (and of a context's). */
export interface ExecuteAnswer {
  /** Whether the code ran without raising. */
  success: boolean;
  /** Everything printed to stdout. */
  stdout: string;
  /** Everything written to stderr. */
  stderr: string;
  /** The value (`return X`, or the expression's), as JSON. */
  result: unknown;
  /** The traceback when the code raised, else null. */
  error: string | null;
  /** `"python_error"` when the code raised, else null. */
  error_type: "python_error" | null;
  /** The exception when the code raised, else null. */
  exception: PythonException | null;
  /** How long the code ran, in milliseconds. */
  duration_ms: number;
  /** The outputs in order, nbformat v4. */
  outputs: Output[];
  /** The globals, when `capture_variables` was asked. */
  variables?: Record<string, unknown>;
  /** Provenance of the outputs. */
  attestations: Attestation[];
  /** Whether output past the service's limit was dropped. */
  truncated: boolean;
}

/** Every failure answer of the service. */
export interface FailureAnswer {
  /** Always false. */
  success: false;
  /** What went wrong. */
  error: string;
  /** The kind of failure. */
  error_type: ErrorType;
  /** The HTTP status, again. */
  status: number;
  /** With `timeout`: whether the kernel was restarted to stop the code. */
  restarted?: boolean;
  /** With `timeout` and `kernel_died`: what was printed before. */
  stdout?: string;
  /** With `timeout` and `kernel_died`: what went to stderr before. */
  stderr?: string;
  /** With `timeout` and `kernel_died`: the outputs made before. */
  outputs?: Output[];
  /** With `python_error` (a backend script that raised at start): the exception. */
  exception?: PythonException;
  /** With `bad_request`: the field at fault. */
  field?: string;
  /** With `conflict` on an install: the distributions it would change. */
  conflicts?: string[];
}

/** `GET /version`. */
export interface VersionAnswer {
  /** The kernels' Python version, for example `"3.11.2"`. */
  python_version: string;
  /** kernel-bridge's version. */
  plugin_version: string;
  /** The interpreter of the kernels. */
  kernel_python: string;
  /** The service's own Python version. */
  server_python_version: string;
  /** Jupyter Server's version. */
  jupyter_server_version: string;
}

/** `GET /modules?names=...`. */
export interface ModulesAnswer {
  /** Whether the kernels can import each module. */
  modules: Record<string, boolean>;
}

/** `GET /health`. */
export interface HealthAnswer {
  /** `"ok"` */
  status: "ok";
  /** kernel-bridge's version. */
  version: string;
  /** Warm kernels for one-off calls. */
  pool_size: number;
  /** Live kernels of the pool. */
  kernels: number;
  /** Backends running. */
  backends: number;
}

/**
 * What one kernel may take (docs/kernels.md#limits); each at most the service's, `null`: as
 * the service allows. A kernel that runs into one dies with `kernel_died` and a `reason`
 * naming it (memory: a Python `MemoryError` first, where Python can raise one).
 */
export interface KernelLimits {
  /** Megabytes of data segment (heap and private mappings); at least 192. */
  memory_mb?: number | null;
  /** CPU seconds over the kernel's life. */
  cpu_seconds?: number | null;
  /** Processes and threads of the kernel's user (not enforced for a service run as root). */
  processes?: number | null;
  /** Open files. */
  open_files?: number | null;
  /** The largest file it may write, in megabytes. */
  file_size_mb?: number | null;
}

/** `POST /backends`: start a backend from its source. */
export interface BackendRequest {
  /** The script's source. */
  script: string;
  /** A name for the backend (the client sends the script's file name): its session is `backends/<name>`. */
  name?: string;
  /** Extra environment variables for its kernel. */
  env?: Record<string, string>;
  /** Seconds the script gets to start, and the default for its calls. */
  timeout_secs?: number;
  /** Bring the kernel back (and run the script anew) when it dies. */
  restart?: boolean;
  /** Limits for its kernel, tighter than the service's. */
  limits?: KernelLimits;
}

/** A backend as the service describes it. */
export interface BackendInfo {
  /** The backend's id. */
  id: string;
  /** The id of its kernel (a Jupyter Server kernel). */
  kernel_id: string;
  /** Its public methods. */
  methods: string[];
  /** Whether its kernel runs. */
  alive: boolean;
  /**
   * `alive`; `restarting` (its kernel died and comes back: `restart`); `lost` (its kernel runs
   * but closed its connection); `dead` (its kernel died for good: calls answer 503
   * `kernel_died`).
   */
  state?: "alive" | "restarting" | "lost" | "dead";
  /** Its name: its Jupyter Server session is `backends/<name>`. */
  name?: string;
  /** The id of that session. */
  session_id?: string | null;
}

/** `POST /backends/{id}/call`. */
export interface CallRequest {
  /** The method. */
  cmd: string;
  /** Its keyword arguments. */
  params?: Record<string, unknown>;
  /** Seconds the call may take (default: the backend's). */
  timeout_secs?: number;
}

/** A successful backend call. */
export interface CallSuccess {
  /** Always true. */
  success: true;
  /** The method's return value, as JSON (bytes and arrays as base64 placeholders). */
  result: unknown;
  /** Always null. */
  error: null;
  /** Always null. */
  error_type: null;
  /** How long the call took, in milliseconds. */
  duration_ms: number;
}

/** One event of a backend's stream: `data: {"type", "data"}`. */
export interface BackendEvent<T = unknown> {
  /** The event's number (its SSE id). */
  id: number;
  /** The event type (`send_event`'s first argument, or `stdout`, `stderr`, `exit`, `restart`). */
  type: string;
  /** The event's data. */
  data: T;
}

/** The `exit` event: the backend's kernel died. */
export interface ExitEventData {
  /** The exit code, if known. */
  code: number | null;
  /** The signal that ended it, if any. */
  signal: number | null;
  /** Why, in words. */
  reason: string;
  /** Whether it is being brought back (`restart: true`). */
  restarting: boolean;
}

/** `POST /contexts`: a named, long-lived kernel whose state persists across calls. */
export interface ContextRequest {
  /** A name for it. */
  name?: string;
  /** Extra environment variables for its kernel. */
  env?: Record<string, string>;
  /** Its working folder. */
  cwd?: string;
  /** Seconds it gets to start. */
  timeout_secs?: number;
  /** Limits for its kernel, tighter than the service's. */
  limits?: KernelLimits;
}

/** A context as the service describes it. */
export interface ContextInfo {
  /** The context's id. */
  id: string;
  /** Its name. */
  name: string | null;
  /** The id of its kernel. */
  kernel_id: string;
  /** When it was created. */
  created: string | number;
  /** Anything else the service says about it. */
  [key: string]: unknown;
}

/** `POST /packages/install`. */
export interface InstallRequest {
  /** Requirement specifiers, as pip takes them. */
  packages: string[];
  /** Upgrade packages already there. */
  upgrade?: boolean;
}

/** The answer of `POST /packages/install`. */
export interface InstallAnswer {
  /** Whether pip succeeded. */
  success: boolean;
  /** What was installed. */
  installed: string[];
  /** pip's stdout. */
  stdout: string;
  /** pip's stderr. */
  stderr: string;
  /** How long it took, in milliseconds. */
  duration_ms: number;
}

/**
 * The events of a streamed execution (`Accept: text/event-stream` on the execution routes),
 * by SSE event name.
 */
export interface ExecutionEvents {
  /** Text printed to stdout. */
  stdout: { text: string };
  /** Text written to stderr. */
  stderr: { text: string };
  /** A display output (a MIME bundle). */
  display: DisplayDataOutput;
  /** The value of the code (an `execute_result` output). */
  result: ExecuteResultOutput;
  /** The exception the code raised. */
  error: { ename: string; evalue: string; traceback: string[] };
  /** The last event: the whole answer, as without streaming. */
  end: ExecuteAnswer | FailureAnswer;
}
