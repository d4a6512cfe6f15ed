"""Reading a script for execute_file: opened once, and the opened file is what is checked.

A path checked and then read later can be something else by then: a FIFO (a read that waits
for a writer forever), a symlink out of the allowed folder. So the file is opened first,
without blocking (``O_NONBLOCK``: opening a FIFO does not wait for a writer), and the open
file descriptor is what is checked: a regular file (``fstat``), no larger than the limit, and,
with a *root*, inside it: opened through ``openat2(RESOLVE_BENEATH)`` from the root where the
kernel has it, else by an ``O_NOFOLLOW`` walk from the root (the kernel side's
``_beneath.py``, which confines file transfers the same way), and the descriptor's own path
(``/proc/self/fd``) checked again. The read is blocking file I/O: async callers run
``read_script`` in a thread.

>>> source, path = read_script("job.py", root="/srv/jobs", max_size=1 << 20)  # doctest: +SKIP
"""

from __future__ import annotations

import errno
import os
import stat

from bridge.core import wire
from bridge.core.errors import InvalidRequest, ScriptRefused

DEFAULT_MAX_SCRIPT = 10 * 1024 * 1024  # bytes of a script execute_file reads at most

_FLAGS: int = wire.beneath.READ  # O_NONBLOCK: opening a FIFO does not wait for a writer


def read_script(
    path: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    max_size: int = DEFAULT_MAX_SCRIPT,
) -> tuple[str, str]:
    """(source, real path) of the script at *path*; with *root*, only a file inside it.

    Raises ScriptRefused (an InvalidRequest) whose ``reason`` says why: ``not_found``,
    ``forbidden`` (outside the root), ``too_large`` or ``bad_request`` (not a regular file,
    not UTF-8, unreadable). Blocking: async callers run it in a thread.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidRequest(f"path must be a path, got {path!r}")
    text = os.fspath(path)
    if not isinstance(text, str):
        raise InvalidRequest(f"path must be a str path, got {path!r}")
    if "\x00" in text:
        raise ScriptRefused("bad_request", "path must not contain a NUL character")
    if root is None:
        fd = _open_plain(text)
        real_root = None
    else:
        real_root = os.path.realpath(os.fspath(root))
        fd = _open_beneath(real_root, text)
    try:
        real = _real_path(fd, text)
        if real_root is not None and not _inside(real_root, real):
            raise ScriptRefused("forbidden", f"path {text!r} is outside the service's root")
        data = _read_regular(fd, text, max_size)
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8"), real
    except UnicodeDecodeError as exc:
        raise ScriptRefused("bad_request", f"{text} is not UTF-8 text: {exc}") from None


def _open_plain(path: str) -> int:
    try:
        return os.open(path, _FLAGS)
    except OSError as exc:
        raise _refused(exc, path, "") from None


def _open_beneath(root: str, path: str) -> int:
    """A descriptor of *path* (relative to *root*, or absolute) that the kernel opened inside
    *root*; the string forms are checked first for a clear 403."""
    resolved = _resolve_inside(root, path)
    relative = os.path.relpath(resolved, root)
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ScriptRefused(
            "bad_request", f"the root {root} cannot be opened: {exc.strerror}"
        ) from None
    try:
        if relative == ".":
            return os.dup(root_fd)  # the root itself: refused as a directory by the caller
        # A real path already: a symlink in it now means it changed since it was resolved.
        return int(wire.beneath.open_beneath(root_fd, relative, _FLAGS))
    except OSError as exc:
        raise _refused(exc, path, " in the service's root") from None
    finally:
        os.close(root_fd)


def _resolve_inside(root: str, path: str) -> str:
    """The real path of *path* if it lies inside *root*, checked for every decoded form.

    ``..%2f`` is refused like ``../``, and so are forms with backslashes read as separators;
    the real path must equal the root or start with the root plus a separator (a bare prefix
    check would let ``/srv/data-evil`` pass for ``/srv/data``)."""
    resolved = ""
    for form in wire.beneath.decoded_forms(path):
        if "\x00" in form:
            raise ScriptRefused("bad_request", "path must not contain a NUL character")
        real = os.path.realpath(os.path.join(root, form))
        if not _inside(root, real):
            raise ScriptRefused("forbidden", f"path {path!r} is outside the service's root")
        resolved = resolved or real
    return resolved


def folder_inside(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> str:
    """The real path of the folder *path* (relative to *root*, or absolute) inside *root*;
    ScriptRefused (``forbidden``, ``not_found`` or ``bad_request``) otherwise."""
    base = os.path.realpath(os.fspath(root))
    resolved = _resolve_inside(base, os.fspath(path))
    if not os.path.exists(resolved):
        raise ScriptRefused("not_found", f"no such folder in the service's root: {path}")
    if not os.path.isdir(resolved):
        raise ScriptRefused("bad_request", f"{path} is not a folder")
    return resolved


def _inside(root: str, real: str) -> bool:
    return real == root or real.startswith(root if root.endswith(os.sep) else root + os.sep)


def _refused(exc: OSError, path: str, where: str) -> ScriptRefused:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return ScriptRefused("not_found", f"no such file{where}: {path}")
    if exc.errno in (errno.ELOOP, errno.EXDEV):
        return ScriptRefused("forbidden", f"path {path!r} changed while it was opened")
    return ScriptRefused("bad_request", f"cannot read {path}: {exc.strerror}")


def _real_path(fd: int, path: str) -> str:
    """The path of the open file itself, where the system says it (Linux), else resolved."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(path)
    return target if target.startswith("/") else os.path.realpath(path)


def _read_regular(fd: int, path: str, max_size: int) -> bytes:
    info = os.fstat(fd)
    if stat.S_ISDIR(info.st_mode):
        raise ScriptRefused("bad_request", f"{path} is a directory, not a script")
    if not stat.S_ISREG(info.st_mode):
        raise ScriptRefused("bad_request", f"{path} is not a regular file")
    if info.st_size > max_size:
        raise ScriptRefused("too_large", f"{path} is larger than {max_size} bytes")
    chunks = []
    size = 0
    while size <= max_size:  # the file may grow as it is read: read one byte past the limit
        try:
            chunk = os.read(fd, min(1 << 20, max_size + 1 - size))
        except OSError as exc:
            raise ScriptRefused("bad_request", f"cannot read {path}: {exc.strerror}") from None
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > max_size:
        raise ScriptRefused("too_large", f"{path} is larger than {max_size} bytes")
    return b"".join(chunks)
