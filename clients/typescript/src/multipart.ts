/**
 * The binary body of kernel-bridge's HTTP service: `multipart/mixed`, a JSON part first (the
 * ordinary body, binary values as placeholders naming a part) and then one part per buffer,
 * each with its `Content-Length` (docs/http.md, "Binary values").
 *
 * @module
 */

/** The media type of a binary body. */
export const MULTIPART = "multipart/mixed";

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const CRLF = 0x0d;
type BlobPart = NonNullable<ConstructorParameters<typeof Blob>[0]>[number];

/** A JSON body and its buffers as one `multipart/mixed` body. */
export function encodeMultipart(json: unknown, buffers: Uint8Array[]): { body: Blob; contentType: string } {
  const boundary = `kernel-bridge-${crypto.randomUUID()}`;
  const text = encoder.encode(JSON.stringify(json));
  const parts: BlobPart[] = [
    `--${boundary}\r\nContent-Type: application/json\r\nContent-Length: ${text.byteLength}\r\n\r\n`,
    text as Uint8Array<ArrayBuffer>,
  ];
  for (const buffer of buffers) {
    parts.push(`\r\n--${boundary}\r\nContent-Type: application/octet-stream\r\nContent-Length: ${buffer.byteLength}\r\n\r\n`);
    parts.push(buffer as Uint8Array<ArrayBuffer>);
  }
  parts.push(`\r\n--${boundary}--\r\n`);
  return { body: new Blob(parts), contentType: `${MULTIPART}; boundary=${boundary}` };
}

/** The boundary of a `multipart/*` content type, or undefined. */
export function boundaryOf(contentType: string): string | undefined {
  const match = /;\s*boundary=(?:"([^"]+)"|([^;\s]+))/i.exec(contentType);
  return match ? (match[1] ?? match[2]) : undefined;
}

function indexOf(body: Uint8Array, needle: Uint8Array, from: number): number {
  const first = needle[0] as number;
  for (let i = body.indexOf(first, from); i !== -1; i = body.indexOf(first, i + 1)) {
    let j = 1;
    while (j < needle.length && body[i + j] === needle[j]) j++;
    if (j === needle.length) return i;
  }
  return -1;
}

/**
 * The parts of a `multipart/mixed` body: the JSON of the first, the bytes of the others (views
 * into *body*, no copies). A part with a `Content-Length` is taken by its length; one without
 * ends at the next boundary.
 */
export function decodeMultipart(body: Uint8Array, contentType: string): { json: unknown; buffers: Uint8Array[] } {
  const boundary = boundaryOf(contentType);
  if (!boundary) throw new TypeError(`a multipart answer without a boundary: ${contentType}`);
  const delimiter = encoder.encode(`--${boundary}`);
  const next = encoder.encode(`\r\n--${boundary}`);
  let at = indexOf(body, delimiter, 0);
  if (at === -1) throw new TypeError("a multipart answer without its first boundary");
  at += delimiter.length;
  const parts: Uint8Array[] = [];
  for (;;) {
    if (body[at] === 0x2d && body[at + 1] === 0x2d) break; // "--": the last boundary
    if (body[at] === CRLF) at += 2;
    const headersEnd = indexOf(body, encoder.encode("\r\n\r\n"), at);
    if (headersEnd === -1) throw new TypeError("a multipart part without the end of its headers");
    const headers = decoder.decode(body.subarray(at, headersEnd));
    const length = /^content-length:\s*(\d+)\s*$/im.exec(headers);
    const start = headersEnd + 4;
    let end: number;
    if (length) {
      end = start + Number(length[1]);
      if (end > body.byteLength) throw new TypeError("a multipart part longer than the body");
    } else {
      end = indexOf(body, next, start);
      if (end === -1) throw new TypeError("a multipart part without a boundary after it");
    }
    parts.push(body.subarray(start, end));
    at = end + next.length;
  }
  const [first, ...buffers] = parts;
  if (first === undefined) throw new TypeError("a multipart answer with no parts");
  return { json: JSON.parse(decoder.decode(first)), buffers };
}
