"""The host's end of a session's files: what a caller hands ``upload`` and ``download``.

The transfer itself is ``bridge.core.transfers``; here are the limits' defaults, the check of
a path's type (the kernel checks where it leads), a source made into chunks (bytes, a local
file read in a thread, an async iterable) and a download saved to a local file whole or not
at all.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import stat
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from bridge.core.errors import InvalidRequest
from bridge.core.transfers import CHUNK, FileDownload

DEFAULT_MAX_FILE = 1 << 30  # bytes of one file uploaded or downloaded
DEFAULT_MAX_CONTEXT = 4 << 30  # bytes of all the files a session has uploaded (still there)


def check_path(path: object) -> str:
    """*path* as a str; where it leads is the kernel's to check (it alone sees its folder)."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise InvalidRequest(f"a file path must be a str, got {type(path).__name__}")
    return path


async def source_chunks(
    source: object, size: int | None
) -> tuple[AsyncIterable[bytes | bytearray | memoryview], int | None]:
    """*source* as chunks, and its size if known."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        view = memoryview(source).cast("B")
        return _slices(view), len(view)
    if isinstance(source, (str, os.PathLike)):
        local = os.fspath(source)
        try:
            info = await asyncio.to_thread(os.stat, local)
        except (OSError, ValueError) as exc:
            raise InvalidRequest(
                f"no local file {local!r} to upload ({exc}); pass bytes to upload content"
            ) from None
        if not stat.S_ISREG(info.st_mode):
            raise InvalidRequest(f"{local!r} is not a regular file")
        return _read(local), info.st_size
    if isinstance(source, AsyncIterable):
        if size is not None and (not isinstance(size, int) or size < 0):
            raise InvalidRequest(f"size must be a number of bytes, got {size!r}")
        return source, size
    raise InvalidRequest(
        "an upload's source must be bytes, a local file's path or an async iterable of "
        f"bytes, got {type(source).__name__}"
    )


async def _slices(view: memoryview) -> AsyncIterator[memoryview]:
    for start in range(0, len(view), CHUNK):
        yield view[start : start + CHUNK]


async def _read(path: str) -> AsyncIterator[bytes]:
    f = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, CHUNK):
            yield chunk
    finally:
        await asyncio.to_thread(f.close)


async def save(stream: FileDownload, dest: str | os.PathLike[str]) -> None:
    """Write what *stream* brings to the local *dest*: a temporary file beside it, renamed
    at the end, so a failed download leaves the old file (or none) in place."""
    target, temp = _beside(dest)
    try:
        f: Any = await asyncio.to_thread(open, temp, "xb")
    except OSError as exc:
        raise InvalidRequest(f"cannot write {target}: {exc.strerror}") from None
    try:
        try:
            async for chunk in stream:
                await asyncio.to_thread(f.write, chunk)
        finally:
            await asyncio.to_thread(f.close)
        await asyncio.to_thread(os.replace, temp, target)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise


def _beside(dest: str | os.PathLike[str]) -> tuple[str, str]:
    """*dest* made absolute, and a temporary name in its folder."""
    target = os.path.abspath(os.fspath(dest))
    folder, name = os.path.split(target)
    return target, os.path.join(folder, f".{name}.{secrets.token_hex(6)}.download")
