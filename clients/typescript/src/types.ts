/**
 * The shapes on the wire: requests, answers and events of the kernel-bridge HTTP service, and
 * the nbformat v4 outputs it returns. They are the types generated from the service's OpenAPI
 * document (`src/generated/openapi.ts`, `make ts-types`), under the names this package has
 * always exported; nothing here is written by hand but what the document cannot say (a
 * backend event's SSE id, the data of its `exit` event, the narrowed call answers).
 *
 * @module
 */

import type { components } from "./generated/openapi.js";

/** The service's JSON Schemas, as TypeScript. */
type Schemas = components["schemas"];

export { errorTypeValues } from "./generated/openapi.js";

/** Any JSON value. */
export type JSONValue = null | boolean | number | string | JSONValue[] | { [key: string]: JSONValue };

/** A MIME bundle: MIME type to content (a string, or JSON for `application/json` and such). */
export type MimeBundle = Schemas["DisplayDataOutput"]["data"];

/** An nbformat v4 `stream` output: text a cell wrote to stdout or stderr. */
export type StreamOutput = Schemas["StreamOutput"];

/** An nbformat v4 `display_data` output (`display(...)`, a plot, HTML). */
export type DisplayDataOutput = Schemas["DisplayDataOutput"];

/** An nbformat v4 `execute_result` output: the value of the code. */
export type ExecuteResultOutput = Schemas["ExecuteResultOutput"];

/** An nbformat v4 `error` output: the exception the code raised. */
export type ErrorOutput = Schemas["ErrorOutput"];

/** One nbformat v4 output. */
export type Output = StreamOutput | DisplayDataOutput | ExecuteResultOutput | ErrorOutput;

/**
 * The `error_type` of a failure answer: one per cause a client acts on differently (the
 * service's `ErrorType`; {@link errorTypeValues} lists them at run time).
 */
export type ErrorType = Schemas["ErrorType"];

/** A Python exception, the same in every answer that carries one: `{ename, evalue, traceback}`. */
export type PythonException = Schemas["PythonError"];

/** Where an attestation says an output came from (the service's provenance records). */
export type Attestation = Schemas["ExecuteAnswer"]["attestations"][number];

/** `POST /execute`: run code in a pool kernel (`content`, or its older name `code`). */
export type ExecuteRequest = Schemas["ExecuteRequest"];

/** `POST /evaluate`: the value of one expression. */
export type EvaluateRequest = Schemas["EvaluateRequest"];

/** `POST /execute-file`: run a script that lies in the service's root folder. */
export type ExecuteFileRequest = Schemas["ExecuteFileRequest"];

/** The answer of `/execute`, `/evaluate`, `/execute-file` (and of a context's). */
export type ExecuteAnswer = Schemas["ExecuteAnswer"];

/** Every failure answer of the service: `{success: false, error, error_type, status}` and more. */
export type FailureAnswer = Schemas["Failure"];

/** `GET /version`. */
export type VersionAnswer = Schemas["VersionAnswer"];

/** `GET /modules?names=...`. */
export type ModulesAnswer = Schemas["ModulesAnswer"];

/** `GET /health`. */
export type HealthAnswer = Schemas["HealthAnswer"];

/**
 * What one kernel may take (docs/kernels.md#limits): `memory_mb`, `cpu_seconds`, `processes`,
 * `open_files`, `file_size_mb`, each at most the service's (`null`: as the service allows).
 * A kernel that runs into one dies with `kernel_died` and a `reason` naming it (memory: a
 * Python `MemoryError` first, where Python can raise one).
 */
export type KernelLimits = Schemas["Limits"];

/** `POST /backends`: start a backend from its source. */
export type BackendRequest = Schemas["BackendRequest"];

/** A backend as the service describes it. */
export type BackendInfo = Schemas["BackendInfo"];

/** `POST /backends/{id}/call`. */
export type CallRequest = Schemas["CallRequest"];

/** The answer of a backend call, either way. */
export type CallAnswer = Schemas["CallAnswer"];

/** A successful backend call. */
export type CallSuccess = CallAnswer & { success: true; error: null; error_type: null; exception: null };

/** The `end` event of a generator method's stream (`POST /backends/{id}/call`, SSE) that ended well. */
export type StreamEnd = Schemas["StreamEnd"];

/**
 * The events of a generator method's stream, by SSE event name: `item` (one per item; bytes and
 * arrays as {@link BinaryValue}), then `end` (a {@link StreamEnd}, or the failure).
 */
export type CallEvents = Schemas["CallEvents"];

/**
 * A bytes value or NumPy array on the wire: a part of a `multipart/mixed` body, or inline as
 * base64. The client turns it into a `Uint8Array` or an `NDArray`.
 */
export type BinaryValue = Schemas["BinaryValue"];

/** One event of a backend's stream: `data: {"type", "data"}`, with its SSE id. */
export type BackendEvent<T = unknown> = Omit<Schemas["BackendEvent"], "data"> & {
  /** The event's number (its SSE id). */
  id: number;
  /** The event's data. */
  data: T;
};

/** The `exit` event: the backend's kernel died (the data the host API sends). */
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
export type ContextRequest = Schemas["ContextRequest"];

/** A context as the service describes it. */
export type ContextInfo = Schemas["ContextInfo"];

/** A file or folder in a context's working folder (`kind`: a symlink is listed, never followed). */
export type FileInfo = Schemas["FileInfo"];

/** `GET /contexts/{id}/files?path=`: a folder's entries, by name. */
export type FileList = Schemas["FileList"];

/** `POST /packages/install` (`packages`, or one `package`). */
export type InstallRequest = Schemas["InstallRequest"];

/** The answer of `POST /packages/install`. */
export type InstallAnswer = Schemas["InstallAnswer"];

/**
 * The events of a streamed execution (`Accept: text/event-stream` on the execution routes),
 * by SSE event name.
 */
export type ExecutionEvents = Schemas["ExecutionEvents"];

/**
 * The `skipped` event of a streamed execution: outputs left out of the stream because its
 * reader fell more than the service's backlog (1 MiB of outputs) behind. The stream goes on,
 * and the end answer has every output all the same.
 */
export type SkippedEvent = Schemas["SkippedEvent"];
