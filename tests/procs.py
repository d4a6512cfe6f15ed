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
