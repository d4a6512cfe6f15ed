/**
 * A context's files: `context.files.write/read/list/remove`, raw bodies streamed both ways.
 *
 * @module
 */

import type { RequestOptions, Transport } from "./http.js";
import type { FileInfo, FileList } from "./types.js";

/** What {@link ContextFiles.write} takes: bytes, text (written as UTF-8), a Blob or a stream. */
export type FileData = Uint8Array | ArrayBuffer | string | Blob | ReadableStream<Uint8Array>;

/** Options of a file operation. */
export interface FileOptions {
  /** Stops the transfer when aborted. */
  signal?: AbortSignal;
}

/**
 * The URL path of a file: the whole path percent-encoded as one segment (its `/` as `%2F`, its
 * dots as `%2E`), so no URL normalization turns `../x` into another route: the service sees
 * the path exactly as given, and answers for it (403 out of the folder).
 */
export function filePath(base: string, path: string): string {
  return `${base}/files/${encodeURIComponent(path).replace(/\./g, "%2E")}`;
}

/**
 * The files of one context, relative to its working folder (wherever its kernel runs: the
 * bytes travel through the kernel). A path that leads out of the folder (absolute, `..`, a
 * symlink) is refused with a 403 {@link BridgeHTTPError}, a file past the service's size limit
 * with a 413, and a missing one with a 404.
 *
 * @example
 * ```ts
 * await context.files.write("data/in.csv", "a,b\n1,2\n");
 * await context.execute("import pandas as pd; pd.read_csv('data/in.csv').plot().figure.savefig('chart.png')");
 * const png: Uint8Array = await context.files.read("chart.png");
 * ```
 */
export class ContextFiles {
  private readonly transport: Transport;
  private readonly base: string;

  /** @internal */
  constructor(transport: Transport, base: string) {
    this.transport = transport;
    this.base = base;
  }

  /**
   * Write `data` to `path` (folders on the way are made); the file appears whole or not at all.
   * A `ReadableStream` or a `Blob` is streamed, never held whole.
   */
  async write(path: string, data: FileData, options: FileOptions = {}): Promise<FileInfo> {
    const body = typeof data === "string" ? new TextEncoder().encode(data) : data;
    const response = await this.transport.sendRaw("PUT", filePath(this.base, path), body, options);
    return (await this.transport.read(response)) as FileInfo;
  }

  /** The file at `path`, whole. */
  async read(path: string, options: FileOptions = {}): Promise<Uint8Array> {
    const response = await this.open(path, options);
    return new Uint8Array(await response.arrayBuffer());
  }

  /** The file at `path` as UTF-8 text. */
  async readText(path: string, options: FileOptions = {}): Promise<string> {
    return new TextDecoder().decode(await this.read(path, options));
  }

  /** The file at `path`, streamed: a `ReadableStream` of its bytes. */
  async stream(path: string, options: FileOptions = {}): Promise<ReadableStream<Uint8Array>> {
    const response = await this.open(path, options);
    if (!response.body) return new Blob([]).stream();
    return response.body;
  }

  /** What the folder `path` holds (default: the working folder), sorted by name. */
  async list(path = "", options: FileOptions = {}): Promise<FileInfo[]> {
    const request: RequestOptions = options.signal ? { signal: options.signal } : {};
    const answer = await this.transport.request<FileList>(
      "GET",
      `${this.base}/files?path=${encodeURIComponent(path)}`,
      undefined,
      request,
    );
    return answer.entries;
  }

  /** Remove the file, empty folder or symlink (the link itself) at `path`. */
  async remove(path: string, options: FileOptions = {}): Promise<void> {
    const request: RequestOptions = options.signal ? { signal: options.signal } : {};
    await this.transport.request("DELETE", filePath(this.base, path), undefined, request);
  }

  private async open(path: string, options: FileOptions): Promise<Response> {
    const response = await this.transport.sendRaw("GET", filePath(this.base, path), undefined, options);
    if (!response.ok) await this.transport.read(response); // throws the failure
    return response;
  }
}
