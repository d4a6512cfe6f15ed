/**
 * kernel-bridge for Bun and Node: run Python in managed IPython kernels through a
 * kernel-bridge service, with the old Python Bridge's API (`bridge.python.execute`,
 * `spawn`, `backend.call`, `backend.on`, ...).
 *
 * @example
 * ```ts
 * import { KernelBridge } from "kernel-bridge";
 *
 * const bridge = await KernelBridge.start();
 * const backend = await bridge.python.spawn("echo_backend.py");
 * console.log(await backend.call("echo", { data: "hi" }));
 * await bridge.close();
 * ```
 *
 * @packageDocumentation
 */

export {
  Context,
  DEFAULT_TIMEOUT,
  KernelBridge,
  PythonAPI,
  PythonBackendHandle,
  type ClientOptions,
  type ConnectOptions,
  type ContextOptions,
  type EventHandler,
  type ExecuteOptions,
  type Execution,
  type RunOptions,
  type SpawnOptions,
  type StreamOptions,
} from "./client.js";
export {
  BackendTerminatedError,
  BridgeClosedError,
  BridgeHTTPError,
  BridgeStartError,
  KernelBridgeError,
  KernelDiedError,
  PythonError,
  PythonTimeoutError,
  type CallFailure,
} from "./errors.js";
export { ContextFiles, type FileData, type FileOptions } from "./files.js";
export { GRACE_MS, type Endpoint, type OverloadRetry } from "./http.js";
export { ServiceProcess, type StartOptions } from "./service.js";
export { readSSE, type SSEMessage } from "./sse.js";
export {
  decodeValue,
  dtypeOf,
  encodeValue,
  NDArray,
  PLACEHOLDER,
  type BinaryPlaceholder,
  type TypedArray,
} from "./values.js";
export type * from "./types.js";
export { errorTypeValues } from "./types.js";
