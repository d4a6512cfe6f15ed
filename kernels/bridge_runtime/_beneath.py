"""Opening a path beneath a folder, following no symlink: stdlib only, shared by both sides.

The kernel serves file transfers with it (``_files.py``) and the host reads scripts for
``execute_file`` with it (``bridge/core/files.py`` loads this very file), so the two confine
paths the same way. ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`` where the Linux kernel
has it, else a walk that opens one part at a time with ``O_NOFOLLOW``: either way a ``..``, an
absolute path or a symlink anywhere on the way fails (``ELOOP``/``EXDEV``) instead of leading
out of the folder, and what is checked afterwards is the opened descriptor itself.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
import struct
import sys
import urllib.parse

# openat2(2): its number is the same on every architecture of the unified syscall table.
_SYS_OPENAT2 = 437
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_OPENAT2_MACHINES = {"x86_64", "aarch64", "arm64", "riscv64", "ppc64le", "s390x"}
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

READ = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)


def decoded_forms(path: str) -> list[str]:
    """*path* and what percent-decoding makes of it, up to three times over, and each with its
    backslashes read as ``/``: a ``..%2f`` must be refused like a ``../``."""
    forms = [path]
    while len(forms) < 4:
        decoded = urllib.parse.unquote(forms[-1])
        if decoded == forms[-1]:
            break
        forms.append(decoded)
    return forms + [form.replace("\\", "/") for form in forms if "\\" in form]


class NoOpenat2(Exception):
    """This kernel (or its seccomp filter) has no openat2."""


_state = {"openat2": sys.platform == "linux" and platform.machine() in _OPENAT2_MACHINES}


def openat2(dir_fd: int, relative: str, flags: int) -> int:
    """openat2 from *dir_fd*, staying beneath it and following no symlink; OSError as open."""
    if not _state["openat2"]:
        raise NoOpenat2
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    resolve = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
    how = ctypes.create_string_buffer(struct.pack("QQQ", flags, 0, resolve), 24)
    fd = libc.syscall(
        ctypes.c_long(_SYS_OPENAT2),
        ctypes.c_int(dir_fd),
        ctypes.c_char_p(os.fsencode(relative)),
        how,
        ctypes.c_size_t(24),
    )
    if fd < 0:
        code = ctypes.get_errno()
        if code in (errno.ENOSYS, errno.EPERM):
            _state["openat2"] = False  # not here, and it will not be: walk from now on
            raise NoOpenat2
        raise OSError(code, os.strerror(code), relative)
    return int(fd)


def _open_part(part: str, flags: int, dir_fd: int) -> int:
    """``open(part, flags | O_NOFOLLOW, dir_fd=...)``; a symlink fails as ELOOP, also where
    ``O_DIRECTORY`` makes the system say ENOTDIR."""
    try:
        return os.open(part, flags | os.O_NOFOLLOW, dir_fd=dir_fd)
    except NotADirectoryError:
        try:
            link = stat.S_ISLNK(os.stat(part, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            link = False
        if link:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), part) from None
        raise


def walk(dir_fd: int, relative: str, flags: int) -> int:
    """Open *relative* one part at a time from *dir_fd*, following no symlink."""
    parts = relative.split("/")
    if any(part in ("", "..") for part in parts) or relative.startswith("/"):
        raise OSError(errno.EXDEV, "the path leads out of the folder", relative)
    current = os.dup(dir_fd)
    try:
        for part in parts[:-1]:
            next_fd = _open_part(part, _DIRECTORY, current)
            os.close(current)
            current = next_fd
        return _open_part(parts[-1], flags, current)
    finally:
        os.close(current)


def open_beneath(dir_fd: int, relative: str, flags: int = READ) -> int:
    """A descriptor of *relative* (a path with ``/`` between its parts) opened beneath
    *dir_fd* with *flags* (no ``O_CREAT``), no symlink followed; OSError as ``open``."""
    if relative in ("", "."):
        return os.open(".", flags, dir_fd=dir_fd)
    try:
        return openat2(dir_fd, relative, flags)
    except NoOpenat2:
        return walk(dir_fd, relative, flags)


def folder_beneath(dir_fd: int, parts: list[str], *, create: bool) -> int:
    """A descriptor of the folder *parts* beneath *dir_fd*, made (``mkdir -p``) if *create*;
    every part is opened with ``O_NOFOLLOW``, so a symlink on the way is refused."""
    current = os.dup(dir_fd)
    try:
        for part in parts:
            if part in ("", ".", ".."):
                raise OSError(errno.EXDEV, "the path leads out of the folder", part)
            try:
                next_fd = _open_part(part, _DIRECTORY, current)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(part, 0o777, dir_fd=current)
                except FileExistsError:
                    pass  # made meanwhile: open it as it is (a symlink still fails)
                next_fd = _open_part(part, _DIRECTORY, current)
            os.close(current)
            current = next_fd
        result, current = current, -1
        return result
    finally:
        if current >= 0:
            os.close(current)
