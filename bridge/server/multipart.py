"""The binary body of the HTTP service: ``multipart/mixed``, JSON first, then one part per buffer.

A client that sends ``Accept: multipart/mixed`` gets an answer that holds binary values (bytes,
NumPy arrays) as::

    --B\\r\\nContent-Type: application/json\\r\\nContent-Length: N\\r\\n\\r\\n{...JSON...}
    \\r\\n--B\\r\\nContent-Type: application/octet-stream\\r\\nContent-Length: M\\r\\n\\r\\n<bytes>
    \\r\\n--B--\\r\\n

where the JSON is the ordinary answer and each binary value in it is a placeholder
``{"__bridge_buffer__": i, "kind": "ndarray", "dtype": "<f4", "shape": [...]}`` naming part
*i* after the JSON (the kernel's own wire form, ``kernels/bridge_runtime/_wire.py``). An
answer with no binary value stays JSON. A request may come the same way (``Content-Type:
multipart/mixed; boundary=B``). Without it, JSON carries the bytes inline as base64
(``"__bridge_buffer__": null, "base64": "..."``), which is the default for curl.

Every part carries its ``Content-Length``, so a reader jumps from part to part instead of
searching 64 MB for the boundary; a part without one ends at the next boundary.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

MULTIPART = "multipart/mixed"
_BOUNDARY = re.compile(r';\s*boundary=(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)
_LENGTH = re.compile(rb"^content-length:\s*(\d+)\s*$", re.IGNORECASE | re.MULTILINE)


class MultipartError(ValueError):
    """A multipart body that cannot be read; its message says why (a 400 answer)."""


def accepts(accept: str | None) -> bool:
    """Whether an ``Accept`` header takes ``multipart/mixed`` (not with ``q=0``)."""
    for item in (accept or "").split(","):
        media, _, params = item.strip().partition(";")
        if media.strip().lower() in (MULTIPART, "multipart/*"):
            q = re.search(r"q\s*=\s*([0-9.]+)", params)
            return q is None or float(q.group(1)) > 0
    return False


def is_multipart(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == MULTIPART


def encode(text: bytes, buffers: list[Any]) -> tuple[list[bytes | memoryview], str]:
    """The chunks of a multipart body, its JSON *text* first, then *buffers*; and its
    content type."""
    boundary = f"kernel-bridge-{secrets.token_hex(16)}"
    chunks: list[bytes | memoryview] = [
        _head(boundary, "application/json", len(text), first=True),
        text,
    ]
    for buffer in buffers:
        view = memoryview(buffer).cast("B")
        chunks += [_head(boundary, "application/octet-stream", view.nbytes), view]
    chunks.append(f"\r\n--{boundary}--\r\n".encode())
    return chunks, f"{MULTIPART}; boundary={boundary}"


def _head(boundary: str, media: str, length: int, *, first: bool = False) -> bytes:
    lead = "" if first else "\r\n"
    head = f"{lead}--{boundary}\r\nContent-Type: {media}\r\nContent-Length: {length}\r\n\r\n"
    return head.encode()


def decode(body: bytes, content_type: str) -> tuple[bytes, list[memoryview]]:
    """The JSON part (its bytes) and the buffers of a multipart request (views into *body*)."""
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise MultipartError("a multipart/mixed body needs a boundary in its Content-Type")
    boundary = (match.group(1) or match.group(2)).encode()
    delimiter, following = b"--" + boundary, b"\r\n--" + boundary
    view = memoryview(body)
    at = body.find(delimiter)
    if at == -1:
        raise MultipartError("the multipart body does not start with its boundary")
    at += len(delimiter)
    parts: list[memoryview] = []
    while body[at : at + 2] != b"--":
        if body[at : at + 2] == b"\r\n":
            at += 2
        end_of_headers = body.find(b"\r\n\r\n", at)
        if end_of_headers == -1:
            raise MultipartError(f"part {len(parts)} of the multipart body has no end of headers")
        length = _LENGTH.search(body, at, end_of_headers)
        start = end_of_headers + 4
        if length is not None:
            end = start + int(length.group(1))
            if body[end : end + len(following)] != following:
                raise MultipartError(f"part {len(parts)} is not as long as its Content-Length")
        else:
            end = body.find(following, start)
            if end == -1:
                raise MultipartError(f"part {len(parts)} has no boundary after it")
        parts.append(view[start:end])
        at = end + len(following)
    if not parts:
        raise MultipartError("the multipart body has no parts")
    return bytes(parts[0]), parts[1:]
