/**
 * A Server-Sent Events reader over a `fetch` body (web streams), with no EventSource needed.
 *
 * @module
 */

/** One Server-Sent Event. */
export interface SSEMessage {
  /** The `event:` field; `"message"` when there was none. */
  event: string;
  /** The `data:` lines, joined with newlines. */
  data: string;
  /** The `id:` field, or undefined when the event had none. */
  id: string | undefined;
}

/**
 * The events of an SSE body, as they arrive. Comments (keep-alives) are skipped.
 *
 * @param body - a `fetch` response body
 */
export async function* readSSE(body: ReadableStream<Uint8Array>): AsyncGenerator<SSEMessage> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let event = "";
  let data: string[] = [];
  let id: string | undefined;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let start = 0;
      let end: number;
      const out: SSEMessage[] = [];
      while ((end = buffer.indexOf("\n", start)) !== -1) {
        let line = buffer.slice(start, end);
        start = end + 1;
        if (line.endsWith("\r")) line = line.slice(0, -1);
        if (line === "") {
          if (data.length > 0) {
            out.push({ event: event || "message", data: data.join("\n"), id });
          }
          event = "";
          data = [];
          id = undefined;
          continue;
        }
        if (line.charCodeAt(0) === 58 /* ":" */) continue;
        const colon = line.indexOf(":");
        const field = colon === -1 ? line : line.slice(0, colon);
        let text = colon === -1 ? "" : line.slice(colon + 1);
        if (text.charCodeAt(0) === 32 /* " " */) text = text.slice(1);
        if (field === "data") data.push(text);
        else if (field === "event") event = text;
        else if (field === "id") id = text;
      }
      buffer = buffer.slice(start);
      for (const message of out) yield message;
    }
  } finally {
    reader.releaseLock();
    await body.cancel().catch(() => undefined);
  }
}
