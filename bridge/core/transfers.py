"""Files in and out of a kernel's working folder, through the kernel's own channels.

The host side of ``kernels/bridge_runtime/_files.py``: one comm per kernel (opened on first
use), each operation under an id of its own, chunks as binary buffers. Both directions keep a
window of chunks in flight and wait for the other side before sending more, so a transfer of
any size holds at most ``WINDOW`` chunks in this process (ZeroMQ's queues, and a gateway's
websocket, hold no more either); and the bytes never touch the host's disk, so a kernel on a
gateway is served the same way as a local one.

Every wait (an answer, an acknowledgement, a chunk) is bounded by the caller's timeout: a
transfer that makes no progress for that long is abandoned (the kernel drops what it had)
and raises CallTimeout. A kernel that dies fails what is in flight with KernelDied.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from bridge.core import wire
from bridge.core.errors import (
    BridgeClosed,
    BridgeError,
    CallTimeout,
    ExitStatus,
    FileRefused,
    KernelDied,
)
from bridge.core.kernel import Kernel

log = logging.getLogger("bridge.files")

CHUNK = 1 << 20  # bytes of an upload chunk (a gateway's websocket takes at most 10 MiB)
WINDOW = 8  # upload chunks in flight: 1 MiB x 8 was the fastest measured (docs/api.md)


@dataclass(frozen=True)
class FileInfo:
    """A file or folder in a context's working folder.

    ``path`` is relative to that folder; ``kind`` is ``file``, ``directory``, ``symlink``
    (never followed) or ``other``; ``size`` in bytes (0 but for files); ``modified`` an ISO
    8601 time in UTC.
    """

    name: str
    path: str
    size: int
    kind: str
    modified: str

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> FileInfo:
        return cls(
            name=str(data["name"]),
            path=str(data["path"]),
            size=int(data["size"]),
            kind=str(data["kind"]),
            modified=str(data["modified"]),
        )


_Item = tuple[dict[str, Any], list[Any]] | BaseException


class _Op:
    """One operation's messages from the kernel, in order."""

    def __init__(self, channel: FileChannel, rid: int, what: str, timeout: float) -> None:
        self.channel = channel
        self.rid = rid
        self.what = what
        self.timeout = timeout
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()

    def send(self, op: str, buffers: list[Any] | None = None, **fields: Any) -> None:
        self.channel.send({"id": self.rid, "op": op, **fields}, buffers)

    async def next(self) -> tuple[dict[str, Any], list[Any]]:
        """The kernel's next message about this operation; FileRefused if it refused."""
        try:
            async with asyncio.timeout(self.timeout):
                item = await self.queue.get()
        except TimeoutError:
            raise CallTimeout(
                f"{self.what}: no progress within the timeout of {self.timeout:g} s "
                "(is the kernel busy running code?)",
                method=self.what.split(" ", 1)[0],
                timeout=self.timeout,
            ) from None
        return self._check(item)

    def pending(self) -> tuple[dict[str, Any], list[Any]] | None:
        """A message that has arrived already, without waiting; None if none has."""
        try:
            return self._check(self.queue.get_nowait())
        except asyncio.QueueEmpty:
            return None

    @staticmethod
    def _check(item: _Item) -> tuple[dict[str, Any], list[Any]]:
        if isinstance(item, BaseException):
            raise item
        data, _ = item
        error = data.get("error")
        if isinstance(error, dict):
            raise FileRefused(str(error.get("reason", "bad_request")), str(error.get("message")))
        return item

    async def answer(self) -> dict[str, Any]:
        data, _ = await self.next()
        ok = data.get("ok")
        if not isinstance(ok, dict):
            raise BridgeError(f"{self.what}: the kernel sent {sorted(data)}, not an answer")
        return ok

    def abort(self) -> None:
        """Tell the kernel to drop the transfer (its temporary file, its open file)."""
        if self.channel.kernel.alive:
            try:
                self.send(wire.ABORT)
            except BridgeError:
                pass


class FileChannel:
    """The file comm of one kernel; every operation on that kernel's files goes through it."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self._comm = ""
        self._ids = itertools.count(1)
        self._ops: dict[int, _Op] = {}
        self._closed: BridgeError | None = None

    def send(self, data: dict[str, Any], buffers: list[Any] | None = None) -> None:
        self.kernel.send_comm(self._comm, data, buffers)

    def _start(self, what: str, timeout: float) -> _Op:
        if self._closed is not None:
            raise self._closed
        if not self._comm:
            self._comm = self.kernel.open_comm(wire.FILES_COMM, {}, self._on_msg)
            self.kernel.on_exit(self._on_exit)
        op = _Op(self, next(self._ids), what, timeout)
        self._ops[op.rid] = op
        return op

    def _end(self, op: _Op) -> None:
        self._ops.pop(op.rid, None)

    def _on_msg(self, msg: dict[str, Any]) -> None:
        if msg["header"]["msg_type"] == "comm_close":
            self._fail_all(BridgeClosed(f"{self.kernel.name} closed its file channel"))
            return
        data = msg["content"].get("data") or {}
        rid = data.get("id") if isinstance(data, dict) else None
        op = self._ops.get(rid) if isinstance(rid, int) else None
        if op is not None:
            op.queue.put_nowait((data, msg.get("buffers") or []))

    def _on_exit(self, status: ExitStatus) -> None:
        self._fail_all(KernelDied(f"{self.kernel.name} died ({status})", status=status))

    def _fail_all(self, error: BridgeError) -> None:
        self._closed = error
        for op in list(self._ops.values()):
            op.queue.put_nowait(error)

    # -- the operations --------------------------------------------------------------------------

    async def upload(
        self,
        path: str,
        chunks: AsyncIterable[bytes | bytearray | memoryview],
        *,
        size: int | None,
        max_file: int,
        max_total: int,
        timeout: float,
    ) -> FileInfo:
        """Write *chunks* to *path*, all or nothing: the file appears only once complete."""
        op = self._start(f"upload of {path}", timeout)
        done = False
        try:
            op.send(wire.PUT, path=path, size=size, max_file=max_file, max_total=max_total)
            await op.answer()
            unacked = 0
            async for chunk in rechunk(chunks, CHUNK):
                while op.pending() is not None:  # acks that came meanwhile (or a refusal)
                    unacked -= 1
                while unacked >= WINDOW:
                    await op.next()
                    unacked -= 1
                op.send(wire.DATA, [chunk])
                unacked += 1
            for _ in range(unacked):
                await op.next()
            op.send(wire.END)
            info = FileInfo.from_wire(await op.answer())
            done = True
            return info
        finally:
            if not done:
                op.abort()
            self._end(op)

    def download(self, path: str, *, max_file: int, timeout: float) -> FileDownload:
        """The file at *path*, streamed: ``async with channel.download(p) as d: async for ...``."""
        return FileDownload(self, path, max_file=max_file, timeout=timeout)

    async def _simple(self, what: str, op_name: str, path: str, timeout: float) -> dict[str, Any]:
        op = self._start(what, timeout)
        try:
            op.send(op_name, path=path)
            return await op.answer()
        finally:
            self._end(op)

    async def list(self, path: str, *, timeout: float) -> list[FileInfo]:
        answer = await self._simple(f"list of {path or '.'}", wire.LIST, path, timeout)
        return [FileInfo.from_wire(entry) for entry in answer["entries"]]

    async def remove(self, path: str, *, timeout: float) -> None:
        await self._simple(f"remove of {path}", wire.REMOVE, path, timeout)


class FileDownload:
    """A file coming from a kernel, chunk by chunk; ``info`` (its size) once entered.

    >>> async with session.download_stream("out.png") as d:   # doctest: +SKIP
    ...     print(d.info.size)
    ...     async for chunk in d:
    ...         sink.write(chunk)

    Leaving before the last chunk tells the kernel to stop sending.
    """

    def __init__(self, channel: FileChannel, path: str, *, max_file: int, timeout: float) -> None:
        self._channel = channel
        self._path = path
        self._max_file = max_file
        self._timeout = timeout
        self._op: _Op | None = None
        self._received = 0
        self.info: FileInfo | None = None

    @property
    def size(self) -> int:
        if self.info is None:
            raise BridgeError("the download has not started: use `async with`")
        return self.info.size

    async def __aenter__(self) -> FileDownload:
        op = self._channel._start(f"download of {self._path}", self._timeout)
        self._op = op
        try:
            op.send(wire.GET, path=self._path, max_file=self._max_file)
            self.info = FileInfo.from_wire(await op.answer())
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        op, self._op = self._op, None
        if op is None:
            return
        if self.info is None or self._received < self.info.size:
            op.abort()
        self._channel._end(op)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        op, size = self._op, self.size
        if op is None:
            raise BridgeError("the download is over")
        seq = 0
        while self._received < size:
            data, buffers = await op.next()
            seq += 1
            if data.get("seq") != seq or len(buffers) != 1:
                raise BridgeError(f"download of {self._path}: chunk {seq} went missing")
            chunk = bytes(buffers[0])
            self._received += len(chunk)
            if self._received > size:
                raise BridgeError(f"download of {self._path}: more bytes than its size")
            if self._received < size:
                op.send(wire.ACK)
            yield chunk

    async def read(self) -> bytes:
        """The rest of the file, whole."""
        return b"".join([chunk async for chunk in self])


async def rechunk(
    chunks: AsyncIterable[bytes | bytearray | memoryview], size: int
) -> AsyncIterator[bytes]:
    """*chunks* regrouped into pieces of *size* bytes (the last one shorter)."""
    pending = bytearray()
    async for chunk in chunks:
        view = memoryview(chunk).cast("B")
        if not pending and len(view) == size:
            yield bytes(view)
            continue
        pending += view
        while len(pending) >= size:
            yield bytes(pending[:size])
            del pending[:size]
    if pending:
        yield bytes(pending)
