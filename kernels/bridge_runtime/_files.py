"""Files in and out of the kernel's working folder, over the comm ``kernel-bridge.files``.

The host opens the comm once per kernel and sends operations on it (see ``protocol.py``):
an upload (``put``, then ``data`` chunks as binary buffers, then ``end``), a download (``get``;
the kernel sends a few chunks ahead and one more for each ``ack``, so neither side holds more
than a window of chunks), ``list`` and ``remove``. They run on the kernel's shell thread
between the cells it runs, and their bytes travel over the kernel's own channels, so they work
the same wherever the kernel runs (a gateway's kernel included).

Every path is relative to the folder the kernel started in (its working folder, opened once
when the runtime loads, whatever ``os.chdir`` the code does later), and confined to it: no
absolute path, no ``..`` (in any percent-decoded form), no symlink followed anywhere on the way
(``_beneath.py``). An upload goes to a temporary file beside its target, renamed into place
at its end: a failed or abandoned one leaves nothing behind. Limits: *max_file* bytes per file
(uploads and downloads) and *max_total* bytes for all the files uploaded into this kernel's
folder that are still there.
"""

from __future__ import annotations

import datetime
import errno
import os
import secrets
import stat
from typing import Any

from . import _beneath
from .protocol import ABORT, ACK, DATA, END, FILES_COMM, GET, LIST, PUT, REMOVE

CHUNK = 1 << 20  # bytes of a download chunk
# Download chunks sent ahead of the host's acks. A comm's messages go on IOPub, to every
# subscriber, and one that reads slower than the host (Jupyter Server's activity watcher, in
# the HTTP service's own process) keeps what bursts past it: 8 ahead left 130-160 MB there
# during a 200-400 MB download, 2 ahead 38-90 MB, 1 ahead 8-19 MB, at the same speed
# (200-440 MB/s on a busy machine: the kernel reads the next chunk while this one travels).
WINDOW = 1
MAX_ENTRIES = 10_000  # a listing stops here (and says it was cut short)


class Refused(Exception):
    """An operation the kernel will not do; ``reason`` as the host's FileRefused."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _modified(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="milliseconds")


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def parts_of(path: Any, *, folder: bool = False) -> list[str]:
    """The parts of a relative *path*; Refused ``forbidden`` for one that leads out of the
    working folder in any form (absolute, ``..``, percent-encoded, backslashes)."""
    if not isinstance(path, str):
        raise Refused("bad_request", f"a path must be a string, got {type(path).__name__}")
    if "\x00" in path:
        raise Refused("bad_request", "a path must not contain a NUL character")
    for form in _beneath.decoded_forms(path):
        if form.startswith("/") or ".." in form.split("/"):
            raise Refused("forbidden", f"path {path!r} is outside the working folder")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if not parts and not folder:
        raise Refused("bad_request", "a file path is needed, not the working folder itself")
    return parts


def _refused(exc: OSError, path: str) -> Refused:
    code = exc.errno
    if code in (errno.ENOENT, errno.ENOTDIR):
        return Refused("not_found", f"no such file in the working folder: {path}")
    if code in (errno.ELOOP, errno.EXDEV):
        return Refused("forbidden", f"path {path!r} goes through a symlink: not followed")
    if code == errno.EISDIR:
        return Refused("bad_request", f"{path} is a folder")
    if code == errno.ENOSPC or code == errno.EDQUOT:
        return Refused("too_large", f"no space left for {path}: {exc.strerror}")
    return Refused("bad_request", f"{path}: {exc.strerror}")


def _info(name: str, path: str, st: os.stat_result) -> dict[str, Any]:
    kind = _kind(st.st_mode)
    size = st.st_size if kind == "file" else 0
    modified = _modified(st.st_mtime)
    return {"name": name, "path": path, "size": size, "kind": kind, "modified": modified}


def _check_target(folder: int, name: str, path: str) -> None:
    """Refuse to replace a symlink (the rename would not follow it, but the caller meant what
    it names) or a folder."""
    try:
        mode = os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise Refused("forbidden", f"path {path!r} is a symlink: not followed")
    if stat.S_ISDIR(mode):
        raise Refused("bad_request", f"{path} is a folder")


class _Upload:
    """An upload in progress: its temporary file, beside where it goes."""

    def __init__(self, folder: int, name: str, path: str, limit: int, limit_reason: str) -> None:
        self.folder = folder
        self.name = name
        self.path = path
        self.limit = limit
        self.limit_reason = limit_reason
        self.temp = f".{name[:200]}.{secrets.token_hex(6)}.upload"
        self.fd = os.open(
            self.temp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o666,
            dir_fd=folder,
        )
        self.written = 0

    def write(self, data: memoryview) -> None:
        if self.written + len(data) > self.limit:
            raise Refused("too_large", f"{self.path}: {self.limit_reason}")
        while data:
            done = os.write(self.fd, data)
            data = data[done:]
            self.written += done

    def finish(self) -> os.stat_result:
        os.close(self.fd)
        self.fd = -1
        os.rename(self.temp, self.name, src_dir_fd=self.folder, dst_dir_fd=self.folder)
        self.temp = ""
        return os.stat(self.name, dir_fd=self.folder, follow_symlinks=False)

    def drop(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.temp:
            try:
                os.unlink(self.temp, dir_fd=self.folder)
            except OSError:
                pass
            self.temp = ""
        os.close(self.folder)


class _Download:
    """A download in progress: the opened file, how much of it is left to send."""

    def __init__(self, fd: int, path: str, size: int) -> None:
        self.fd = fd
        self.path = path
        self.left = size
        self.seq = 0

    def drop(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Files:
    """The operations of one comm: what it has in progress, and the working folder."""

    def __init__(self, root: int, uploaded: dict[str, int], send: Any) -> None:
        self.root = root
        self.uploaded = uploaded  # path -> size of what was uploaded (shared by every comm)
        self.send = send  # send(data, buffers)
        self.transfers: dict[Any, _Upload | _Download] = {}

    def handle(self, data: Any, buffers: list[Any]) -> None:
        if not isinstance(data, dict) or "id" not in data:
            return
        rid = data["id"]
        op = data.get("op")
        try:
            if op == DATA:
                self._data(rid, buffers)
            elif op == ACK:
                self._next_chunk(rid)
            elif op == ABORT:
                self._drop(rid)
            elif op == PUT:
                self._put(rid, data)
            elif op == END:
                self._end(rid)
            elif op == GET:
                self._get(rid, data)
            elif op == LIST:
                self.send({"id": rid, "ok": self._list(data.get("path", ""))}, [])
            elif op == REMOVE:
                self.send({"id": rid, "ok": self._remove(data.get("path"))}, [])
            else:
                raise Refused("bad_request", f"no file operation {op!r}")
        except Refused as exc:
            self._fail(rid, exc.reason, str(exc))
        except OSError as exc:
            self._fail(rid, "bad_request", f"{data.get('path', '')}: {exc.strerror or exc}")
        except Exception as exc:  # a malformed request: answer it, never leave the host waiting
            self._fail(rid, "bad_request", f"{op}: {type(exc).__name__}: {exc}")

    def _fail(self, rid: Any, reason: str, message: str) -> None:
        self._drop(rid)
        self.send({"id": rid, "error": {"reason": reason, "message": message}}, [])

    def _drop(self, rid: Any) -> None:
        transfer = self.transfers.pop(rid, None)
        if transfer is not None:
            transfer.drop()

    def close(self) -> None:
        for rid in list(self.transfers):
            self._drop(rid)

    # -- uploads --

    def _uploaded_total(self, but: str) -> int:
        """Bytes of the files uploaded here that are still there (at their size now)."""
        total = 0
        for path in list(self.uploaded):
            if path == but:
                continue
            try:
                st = os.stat(path, dir_fd=self.root, follow_symlinks=False)
            except OSError:
                st = None
            if st is None or not stat.S_ISREG(st.st_mode):
                del self.uploaded[path]  # removed or replaced by other code: no longer ours
                continue
            total += st.st_size
        return total

    def _put(self, rid: Any, data: dict[str, Any]) -> None:
        parts = parts_of(data.get("path"))
        path = "/".join(parts)
        max_file, max_total = int(data["max_file"]), int(data["max_total"])
        room = max_total - self._uploaded_total(but=path)
        limit, why = max_file, f"larger than the limit of {max_file} bytes per file"
        if room < limit:
            limit = max(room, 0)
            why = f"the context's uploads would pass their limit of {max_total} bytes"
        size = data.get("size")
        if isinstance(size, int) and size > limit:
            raise Refused("too_large", f"{path}: {why}")
        try:
            folder = _beneath.folder_beneath(self.root, parts[:-1], create=True)
        except OSError as exc:
            raise _refused(exc, path) from None
        try:
            _check_target(folder, parts[-1], path)
            self.transfers[rid] = _Upload(folder, parts[-1], path, limit, why)
        except BaseException:
            os.close(folder)
            raise
        self.send({"id": rid, "ok": {"path": path}}, [])

    def _data(self, rid: Any, buffers: list[Any]) -> None:
        upload = self.transfers.get(rid)
        if not isinstance(upload, _Upload):
            return  # dropped already (refused, aborted): the error has been sent
        for buffer in buffers:
            upload.write(memoryview(buffer).cast("B"))
        self.send({"id": rid, "ack": upload.written}, [])

    def _end(self, rid: Any) -> None:
        upload = self.transfers.get(rid)
        if not isinstance(upload, _Upload):
            raise Refused("bad_request", "no such upload in progress")
        try:
            st = upload.finish()
        except OSError as exc:
            raise _refused(exc, upload.path) from None
        self.transfers.pop(rid, None)
        upload.drop()
        self.uploaded[upload.path] = st.st_size
        self.send({"id": rid, "ok": _info(upload.name, upload.path, st)}, [])

    # -- downloads --

    def _get(self, rid: Any, data: dict[str, Any]) -> None:
        parts = parts_of(data.get("path"))
        path = "/".join(parts)
        try:
            fd = _beneath.open_beneath(self.root, path)
        except OSError as exc:
            raise _refused(exc, path) from None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise Refused("bad_request", f"{path} is a folder, not a file")
            if not stat.S_ISREG(st.st_mode):
                raise Refused("bad_request", f"{path} is not a regular file")
            max_file = int(data["max_file"])
            if st.st_size > max_file:
                raise Refused("too_large", f"{path} is larger than the limit of {max_file} bytes")
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        self.send({"id": rid, "ok": _info(parts[-1], path, st)}, [])
        if st.st_size == 0:
            os.close(fd)
            return
        self.transfers[rid] = _Download(fd, path, st.st_size)
        for _ in range(WINDOW):
            self._next_chunk(rid)

    def _next_chunk(self, rid: Any) -> None:
        download = self.transfers.get(rid)
        if not isinstance(download, _Download) or download.left <= 0:
            return
        chunk = os.read(download.fd, min(CHUNK, download.left))
        if not chunk:
            raise Refused("bad_request", f"{download.path} shrank while it was read")
        download.left -= len(chunk)
        download.seq += 1
        if download.left <= 0:
            self._drop(rid)
        self.send({"id": rid, "seq": download.seq}, [chunk])

    # -- the rest --

    def _list(self, path: Any) -> dict[str, Any]:
        parts = parts_of(path, folder=True)
        where = "/".join(parts)
        try:
            fd = _beneath.open_beneath(self.root, where, _beneath.READ | os.O_DIRECTORY)
        except OSError as exc:
            raise _refused(exc, where or ".") from None
        entries = []
        truncated = False
        try:
            with os.scandir(fd) as it:
                for entry in it:
                    if len(entries) >= MAX_ENTRIES:
                        truncated = True
                        break
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue  # gone meanwhile
                    inner = f"{where}/{entry.name}" if where else entry.name
                    entries.append(_info(entry.name, inner, st))
        finally:
            os.close(fd)
        entries.sort(key=lambda e: e["name"])
        return {"path": where, "entries": entries, "truncated": truncated}

    def _remove(self, path: Any) -> dict[str, Any]:
        parts = parts_of(path)
        where = "/".join(parts)
        try:
            folder = _beneath.folder_beneath(self.root, parts[:-1], create=False)
        except OSError as exc:
            raise _refused(exc, where) from None
        try:
            st = os.stat(parts[-1], dir_fd=folder, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(parts[-1], dir_fd=folder)
            else:
                os.unlink(parts[-1], dir_fd=folder)  # a symlink itself, never what it names
        except OSError as exc:
            if exc.errno == errno.ENOTEMPTY:
                raise Refused("bad_request", f"{where} is a folder that is not empty") from None
            raise _refused(exc, where) from None
        finally:
            os.close(folder)
        self.uploaded.pop(where, None)
        return {"path": where, "removed": True}


class _State:
    root = -1  # the working folder, opened when the runtime loaded
    root_path = ""
    uploaded: dict[str, int] = {}


def _on_comm_open(comm: Any, msg: Any) -> None:
    def send(data: dict[str, Any], buffers: list[Any]) -> None:
        comm.send(data, buffers=buffers or None)

    files = Files(_State.root, _State.uploaded, send)
    comm.on_msg(lambda m: files.handle(m["content"].get("data"), m.get("buffers") or []))
    comm.on_close(lambda m: files.close())


def install() -> None:
    """Open the working folder and listen for the host's file comm (idempotent)."""
    import comm

    if _State.root < 0:
        _State.root_path = os.getcwd()
        _State.root = os.open(_State.root_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    manager = comm.get_comm_manager()
    if manager.targets.get(FILES_COMM) is not _on_comm_open:
        manager.register_target(FILES_COMM, _on_comm_open)
