"""Reading /proc in tests: is a process alive, which processes did it start."""

from __future__ import annotations

import contextlib
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
