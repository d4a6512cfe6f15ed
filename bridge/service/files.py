"""A context's files as the routes hand them over: answers made of FileInfo, a download ready
to stream.

The bytes go through the context's kernel (``AsyncSession.upload`` and ``download_stream``);
here is what a front end needs around them: the models, the content type a download is
served with, and a download that keeps its context busy (never culled as idle) until the
front end has written its last byte or given up.
"""

from __future__ import annotations

import mimetypes
from collections.abc import AsyncIterator, Callable
from typing import Any

from bridge import FileDownload, FileInfo

from . import models as m


def file_info(info: FileInfo) -> m.FileInfo:
    kind: Any = info.kind
    return m.FileInfo(
        name=info.name, path=info.path, size=info.size, kind=kind, modified=info.modified
    )


def media_type(path: str) -> str:
    """The content type a file is served with: from its name, else application/octet-stream."""
    guessed, encoding = mimetypes.guess_type(path, strict=False)
    if guessed is None or encoding is not None:  # data.csv.gz is gzip bytes, not text/csv
        return "application/octet-stream"
    return guessed


class FileStream:
    """A download whose first answer (the file's info) is in: its bytes come as iterated.

    ``aclose()`` (always called, by the front end) tells the kernel to stop if the bytes were
    not all taken, and lets the context be idle again.
    """

    def __init__(self, download: FileDownload, done: Callable[[], None]) -> None:
        assert download.info is not None  # entered
        self._download = download
        self._done: Callable[[], None] | None = done
        self.info = file_info(download.info)
        self.media_type = media_type(self.info.path)

    @property
    def size(self) -> int:
        return self.info.size

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._download.__aiter__()

    async def read(self) -> bytes:
        """All of it (for a transport that answers whole: QNTX's HandleHTTP)."""
        try:
            return await self._download.read()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        done, self._done = self._done, None
        if done is not None:
            try:
                await self._download.__aexit__(None, None, None)
            finally:
                done()
