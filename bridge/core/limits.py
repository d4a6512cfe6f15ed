"""What one kernel may take of the machine: memory, CPU time, processes, open files, file size.

>>> bridge.AsyncBridge(limits={"memory_mb": 1024, "cpu_seconds": 600})    # doctest: +SKIP

A bridge's limits apply to every kernel it starts; a session or backend may ask for tighter
ones (``session(limits={"memory_mb": 256})``), never looser. They travel to the kernel in its
environment and are applied as rlimits in the kernel's process before any user code runs
(``kernels/bridge_runtime/limits.py``, on both launch paths). docs/kernels.md#limits says
what each bounds, the defaults and why.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from bridge.core.errors import ExitStatus, InvalidRequest
from bridge.core.validate import check_limits
from bridge.core.wire import rlimits


def _ram_mb() -> int:
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // rlimits.MB)
    except (ValueError, OSError, AttributeError):
        return 16384


# A bare kernel takes ~120 MB of RLIMIT_DATA; numpy + pandas + a scikit-learn fit ~430 MB.
DEFAULT_MEMORY_MB = min(4096, max(1024, _ram_mb() // 4))
MINIMUMS = {  # below these a kernel cannot start (docs/kernels.md#limits)
    "memory_mb": 192,
    "cpu_seconds": 1,
    "processes": 16,
    "open_files": 128,
    "file_size_mb": 1,
}
# Words a kernel's log shows when an allocation failed in a way Python could not raise.
_OUT_OF_MEMORY = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory")


@dataclass(frozen=True)
class KernelLimits:
    """Per-kernel limits; None means not limited. ``KernelLimits()`` holds the defaults.

    ``memory_mb``: the data segment (heap, private mappings: ``RLIMIT_DATA``), default a
    quarter of the RAM up to 4 GB; ``cpu_seconds``: CPU time over the kernel's life
    (``RLIMIT_CPU``), default none (each call's timeout bounds its wall time);
    ``processes``: processes and threads of the kernel's user (``RLIMIT_NPROC``; root is
    exempt), default 4096; ``open_files``: default 4096; ``file_size_mb``: the largest file
    it may write, default none.
    """

    memory_mb: int | None = DEFAULT_MEMORY_MB
    cpu_seconds: int | None = None
    processes: int | None = 4096
    open_files: int | None = 4096
    file_size_mb: int | None = None

    @classmethod
    def of(cls, value: KernelLimits | Mapping[str, Any] | None) -> KernelLimits:
        """The defaults with *value*'s entries (a mapping's null entries: not limited)."""
        if value is None:
            return cls()
        if isinstance(value, KernelLimits):
            return value
        return replace(cls(), **check_limits(value, MINIMUMS))

    def tighten(self, value: KernelLimits | Mapping[str, Any] | None) -> KernelLimits:
        """These limits with *value*'s entries, each at most what these allow."""
        if value is None:
            return self
        asked = asdict(value) if isinstance(value, KernelLimits) else check_limits(value, MINIMUMS)
        for name, wanted in asked.items():
            bound = getattr(self, name)
            if bound is not None and (wanted is None or wanted > bound):
                raise InvalidRequest(
                    f"limits.{name} may not exceed the service's {bound}, got {wanted!r}"
                )
        return replace(self, **asked)

    def as_dict(self) -> dict[str, int | None]:
        return asdict(self)

    def env(self) -> dict[str, str]:
        """The kernel environment entry that carries them (kernels/bridge_runtime/limits.py)."""
        return {rlimits.ENV: json.dumps({k: v for k, v in asdict(self).items() if v})}

    def death_reason(self, status: ExitStatus, log_tail: str = "") -> str | None:
        """The limit a kernel that ended with *status* ran into, if that is what ended it."""
        if status.signal == signal.SIGXCPU or (
            status.signal == signal.SIGKILL and self.cpu_seconds is not None
        ):
            return f"cpu limit {self.cpu_seconds} s" if self.cpu_seconds else None
        if status.signal == signal.SIGXFSZ and self.file_size_mb is not None:
            return f"file size limit {self.file_size_mb} MB"
        failed = status != ExitStatus(code=0)
        if self.memory_mb is not None and failed and any(w in log_tail for w in _OUT_OF_MEMORY):
            return f"memory limit {self.memory_mb} MB"
        return None


LIMIT_NAMES = tuple(f.name for f in fields(KernelLimits))


def enforcement() -> dict[str, str]:
    """How limits are enforced on this host, for /health: rlimits, and what they cannot do."""
    found = {"mechanism": "rlimit", "cgroup_v2": _cgroup_v2()}
    if os.geteuid() == 0:
        found["processes"] = "not enforced: the service runs as root, whom RLIMIT_NPROC exempts"
    else:
        found["processes"] = "enforced per user (RLIMIT_NPROC counts every process of the user)"
    return found


def _cgroup_v2() -> str:
    """Why no cgroup v2 of the kernel's own is used here (docs/kernels.md#limits)."""
    mount = ""
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and parts[2] == "cgroup2":
                    mount = parts[1]
                    break
        if not mount:
            return "not used: no cgroup v2 hierarchy is mounted"
        with open(os.path.join(mount, "cgroup.controllers")) as f:
            controllers = set(f.read().split())
    except OSError as exc:
        return f"not used: {exc}"
    missing = sorted({"memory", "pids", "cpu"} - controllers)
    if missing:
        lacking = ", ".join(missing)
        return f"not used: the cgroup v2 hierarchy at {mount} has no {lacking} controller"
    return f"not used: rlimits only (cgroup v2 at {mount} could be delegated: docs/kernels.md)"
