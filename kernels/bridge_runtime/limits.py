"""A kernel's resource limits as rlimits, applied before any user code runs.

The host names them in the kernel's environment, ``KERNEL_BRIDGE_LIMITS`` (JSON: ``memory_mb``,
``cpu_seconds``, ``processes``, ``open_files``, ``file_size_mb``; a missing or null one is not
limited). Both launch paths apply them with ``apply()``:

- a forked kernel applies them to itself in the fork server's child, before it runs the kernel
  module (``forkserver.py``);
- an ordinarily launched kernel gets them from the host's provisioner, by pid, the moment its
  process exists: before it has bound its ports, so before it can run anything sent to it.

Which rlimit each is: memory is ``RLIMIT_DATA`` (the heap and private writable mappings, so a
large allocation fails as ``MemoryError``; ``RLIMIT_AS`` would count the address space a kernel
only reserves, 700 MB for a bare one), CPU is ``RLIMIT_CPU`` (soft: SIGXCPU; one second later,
hard: SIGKILL), processes ``RLIMIT_NPROC`` (counted per user, and root is exempt), open files
``RLIMIT_NOFILE``, file size ``RLIMIT_FSIZE`` (SIGXFSZ). A limit is never raised above the
current hard limit. Standard library only: it runs in the kernel's interpreter, and the host
loads this file by path (``bridge/core/wire.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

ENV = "KERNEL_BRIDGE_LIMITS"
MB = 1024 * 1024
CPU_GRACE = 1  # seconds between SIGXCPU (which code may catch) and SIGKILL


def from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """The limits named in *env* ({} if none)."""
    text = env.get(ENV)
    if not text:
        return {}
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


def rlimits(limits: Mapping[str, Any]) -> list[tuple[int, int, int]]:
    """(resource, soft, hard) for each limit that is set."""
    import resource

    found = []
    memory = limits.get("memory_mb")
    if memory:
        found.append((resource.RLIMIT_DATA, int(memory) * MB, int(memory) * MB))
    cpu = limits.get("cpu_seconds")
    if cpu:
        found.append((resource.RLIMIT_CPU, int(cpu), int(cpu) + CPU_GRACE))
    processes = limits.get("processes")
    if processes:
        found.append((resource.RLIMIT_NPROC, int(processes), int(processes)))
    files = limits.get("open_files")
    if files:
        found.append((resource.RLIMIT_NOFILE, int(files), int(files)))
    size = limits.get("file_size_mb")
    if size:
        found.append((resource.RLIMIT_FSIZE, int(size) * MB, int(size) * MB))
    return found


def apply(limits: Mapping[str, Any], pid: int = 0) -> None:
    """Set *limits* on the process *pid* (0: this one), never above its current hard limits."""
    import resource

    for which, soft, hard in rlimits(limits):
        if pid and hasattr(resource, "prlimit"):
            _, current = resource.prlimit(pid, which)
        else:
            _, current = resource.getrlimit(which)
        if current != resource.RLIM_INFINITY:
            soft, hard = min(soft, current), min(hard, current)
        if pid and pid != os.getpid():
            resource.prlimit(pid, which, (soft, hard))
        else:
            resource.setrlimit(which, (soft, hard))
