/**
 * The errors of the client. Every one is an `Error` subclass; the service's own failures
 * ({@link BridgeHTTPError} and its subclasses) keep the answer they came with.
 *
 * @module
 */

import type { CallAnswer, ErrorType, ExecuteAnswer, FailureAnswer, Output, PythonException } from "./types.js";

/** The base class of every error this package throws. */
export class KernelBridgeError extends Error {
  /** @param message - what went wrong */
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/**
 * The service answered with a failure (`{success: false, error, error_type, status}`), or
 * could not be reached at all (`status` 0, `errorType` `"unreachable"`).
 */
export class BridgeHTTPError extends KernelBridgeError {
  /** The HTTP status; 0 when no answer came (refused connection, network failure). */
  readonly status: number;
  /**
   * The service's `error_type` (`bad_request`, `not_found`, `overloaded`, ...), `unreachable`
   * when no answer came, `http` when the answer was not the service's.
   */
  readonly errorType: ErrorType | "unreachable" | "http";
  /** The whole failure answer, when there was one. */
  readonly body: FailureAnswer | undefined;

  /**
   * @param message - the service's `error` text, or what the client saw
   * @param status - the HTTP status (0: no answer)
   * @param errorType - the service's `error_type`
   * @param body - the failure answer
   */
  constructor(
    message: string,
    status: number,
    errorType: ErrorType | "unreachable" | "http",
    body?: FailureAnswer,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.status = status;
    this.errorType = errorType;
    this.body = body;
  }

  /** @deprecated The same as {@link BridgeHTTPError.errorType}: use that. */
  get error_type(): ErrorType | "unreachable" | "http" {
    return this.errorType;
  }
}

/**
 * A call ran past its timeout. The service interrupted the code (504 `timeout`), or, when the
 * service itself did not answer in time, the client gave up (`status` 0).
 */
export class PythonTimeoutError extends BridgeHTTPError {
  /** Whether the kernel had to be restarted to stop the code. */
  readonly restarted: boolean;
  /** What the code printed before it was stopped. */
  readonly stdout: string;
  /** What the code wrote to stderr before it was stopped. */
  readonly stderr: string;
  /** The outputs made before it was stopped (nbformat v4). */
  readonly outputs: Output[];

  /**
   * @param message - what timed out
   * @param status - 504 from the service, 0 for the client's own deadline
   * @param body - the service's answer, if any
   */
  constructor(message: string, status = 504, body?: FailureAnswer) {
    super(message, status, "timeout", body);
    this.restarted = Boolean(body?.restarted);
    this.stdout = body?.stdout ?? "";
    this.stderr = body?.stderr ?? "";
    this.outputs = body?.outputs ?? [];
  }
}

/** The kernel running the code or the backend died during the call (503 `kernel_died`). */
export class KernelDiedError extends BridgeHTTPError {
  /** What the code printed before the kernel died. */
  readonly stdout: string;
  /** What the code wrote to stderr before the kernel died. */
  readonly stderr: string;
  /** The outputs made before the kernel died (nbformat v4). */
  readonly outputs: Output[];

  /**
   * @param message - the service's message
   * @param body - the service's answer
   */
  constructor(message: string, body?: FailureAnswer) {
    super(message, 503, "kernel_died", body);
    this.stdout = body?.stdout ?? "";
    this.stderr = body?.stderr ?? "";
    this.outputs = body?.outputs ?? [];
  }
}

/**
 * The Python code raised. The message is `"<type>: <value>"` (for example
 * `"ZeroDivisionError: division by zero"`); the Python traceback is in
 * {@link PythonError.traceback} and is appended to `stack`.
 */
export class PythonError extends KernelBridgeError {
  /** The exception's class name, for example `"ZeroDivisionError"`. */
  readonly pythonType: string;
  /** The exception's message, for example `"division by zero"`. */
  readonly pythonValue: string;
  /** The Python traceback, as text. */
  readonly traceback: string;
  /** The whole answer of the call that raised. */
  readonly result: ExecuteAnswer | CallFailure | FailureAnswer;

  /**
   * @param pythonType - the exception's class name
   * @param pythonValue - the exception's message
   * @param traceback - the traceback, as text
   * @param result - the whole answer
   */
  constructor(
    pythonType: string,
    pythonValue: string,
    traceback: string,
    result: ExecuteAnswer | CallFailure | FailureAnswer,
  ) {
    super(pythonValue ? `${pythonType}: ${pythonValue}` : pythonType);
    this.pythonType = pythonType;
    this.pythonValue = pythonValue;
    this.traceback = traceback;
    this.result = result;
    if (traceback) {
      this.stack = `${this.stack ?? this.message}\n\nPython traceback:\n${traceback.trimEnd()}`;
    }
  }
}

/** A failed backend call as the service answers it (`success: false`, the exception). */
export type CallFailure = CallAnswer & { success: false; error: string; error_type: "python_error" };

/** A call on a backend that was terminated (by `terminate()` or `close()`). */
export class BackendTerminatedError extends KernelBridgeError {}

/**
 * The service could not be started by {@link KernelBridge.start}: no such Python, a Python
 * without kernel-bridge, or a service that exited or did not become ready in time.
 */
export class BridgeStartError extends KernelBridgeError {
  /** The last lines the service wrote, if it ran at all. */
  readonly log: string;

  /**
   * @param message - what went wrong and what to do
   * @param log - the service's output
   */
  constructor(message: string, log = "") {
    super(message);
    this.log = log;
  }
}

/** The client was closed: no call goes out any more. */
export class BridgeClosedError extends KernelBridgeError {}

/** An ANSI escape sequence (IPython colors its tracebacks). */
const ANSI = /\x1b\[[0-9;]*[A-Za-z]/g;

/** Text without ANSI color codes. */
export function stripAnsi(text: string): string {
  return text.replace(ANSI, "");
}

/** The PythonError of any answer that carries the exception (`{ename, evalue, traceback}`). */
export function pythonErrorOfException(
  exception: PythonException,
  answer: ExecuteAnswer | CallFailure | FailureAnswer,
): PythonError {
  return new PythonError(exception.ename, exception.evalue, exception.traceback, answer);
}

/** The PythonError of an execution answer with `success: false`. */
export function pythonErrorOf(answer: ExecuteAnswer): PythonError {
  if (answer.exception) return pythonErrorOfException(answer.exception, answer);
  const out = answer.outputs?.find((o) => o.output_type === "error");
  let ename = "";
  let evalue = "";
  if (out && out.output_type === "error") {
    ename = out.ename;
    evalue = out.evalue;
  }
  const traceback = stripAnsi(answer.error ?? "");
  if (!ename) {
    [ename, evalue] = lastExceptionLine(traceback);
  }
  return new PythonError(ename || "Error", evalue, traceback, answer);
}

/** The PythonError of a failed backend call. */
export function pythonErrorOfCall(answer: CallFailure): PythonError {
  if (answer.exception) return pythonErrorOfException(answer.exception, answer);
  // An older service: "<method>() raised <type>: <value>\n<traceback>".
  const match = /^\S+\(\) raised ([\w.]+): ?([^\n]*)\n?([\s\S]*)$/.exec(answer.error);
  if (match) {
    return new PythonError(match[1] ?? "Error", match[2] ?? "", match[3] ?? "", answer);
  }
  return new PythonError("Error", answer.error, "", answer);
}

function lastExceptionLine(traceback: string): [string, string] {
  const lines = traceback.trimEnd().split("\n");
  const last = lines[lines.length - 1] ?? "";
  const match = /^([\w.]+)(?::\s?(.*))?$/.exec(last);
  return match ? [match[1] ?? "", match[2] ?? ""] : ["", last];
}
