"""Reading /proc in tests: is a process alive, which processes did it start."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path


def _stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """True while *pid* runs (a zombie counts as dead: its parent only has to reap it)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def children(pid: int) -> set[int]:
    """Direct children of *pid* (a gateway's or a service's kernels)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(ValueError, IndexError):
                fields = _stat_fields(entry.name)
                if fields is not None and int(fields[1]) == pid:
                    found.add(int(entry.name))
    return found


def descendants(pid: int) -> set[int]:
    """Every process below *pid*: its children, theirs, and so on (forked kernels are the
    children of a fork server, itself a child of the host)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def parent(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields is not None else None


def is_kernel(pid: int) -> bool:
    """A bridge kernel, launched (``bridge_runtime.launch``) or forked (a fork server's child,
    which shows a launched kernel's command line, or the server's before it has written it)."""
    if "bridge_runtime.launch" in cmdline(pid):
        return True
    up = parent(pid)
    return up is not None and "bridge_runtime.forkserver" in cmdline(up)


def kernels_below(pid: int) -> set[int]:
    """The bridge kernels among *pid*'s descendants."""
    return {p for p in descendants(pid) if is_kernel(p)}


# Every process the run starts inherits this tag (tests/conftest.py ends any left at the end).
TAG_NAME = "KERNEL_BRIDGE_TEST_RUN"
TAG = os.environ.setdefault(TAG_NAME, uuid.uuid4().hex)
_TAG_BYTES = f"{TAG_NAME}={TAG}".encode()


def tagged_processes() -> list[tuple[int, str]]:
    """(pid, command line) of every live process of this test run except pytest itself."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if _TAG_BYTES not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue  # a zombie is already dead; its parent reaps it
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        found.append((int(entry), cmd))
    return found
