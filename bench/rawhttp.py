"""A minimal keep-alive HTTP/1.1 client for the benchmarks: what a lean host sends, nothing more
(httpx's own per-request cost would hide the service's)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from typing import Any


class RawClient:
    """A minimal keep-alive HTTP/1.1 client: one connection, one request at a time."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.head = (
            "POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: token {token}\r\nContent-Type: application/json\r\n"
            "Content-Length: {}\r\n\r\n"
        )
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> Any:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.writer.get_extra_info("socket").setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
            )
        assert self.reader is not None
        self.writer.write(self.head.format(path, len(body)).encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        assert match is not None and head.startswith(b"HTTP/1.1 200"), head
        return json.loads(await self.reader.readexactly(int(match.group(1))))

    async def first_event(self, path: str, body: bytes) -> float:
        """POST with ``Accept: text/event-stream``: seconds until the first event's data line
        arrived; the rest of the stream (chunked) is read too, so the connection stays usable."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.writer.get_extra_info("socket").setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
            )
        assert self.reader is not None
        started = time.perf_counter()
        head = self.head.format(path, len(body)).replace(
            "Content-Length", "Accept: text/event-stream\r\nContent-Length"
        )
        self.writer.write(head.encode() + body)
        head_bytes = await self.reader.readuntil(b"\r\n\r\n")
        assert head_bytes.startswith(b"HTTP/1.1 200"), head_bytes
        assert re.search(rb"(?i)\r\ntransfer-encoding: *chunked", head_bytes), head_bytes
        first = 0.0
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await self.reader.readexactly(size + 2)
            if not first and b"data: " in chunk:
                first = time.perf_counter() - started
            if size == 0:
                return first

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
