"""The host's copy of the kernel side's contract, loaded from ``kernels/bridge_runtime``.

The names both ends share (comm targets, metadata keys, message kinds) and the value codec are
defined once, in the kernel-side package, which needs nothing but ipykernel. The host loads
those two files by path (the package itself is not importable on the host), so there is one
definition of each and no copy to drift.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

from bridge.core.errors import KernelStartError


def kernel_side_dir() -> Path:
    """Where ``bridge_runtime`` is: ``kernels/`` in a checkout, ``bridge/_kernels`` in a wheel."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_kernels", package.parent / "kernels"):
        if (candidate / "bridge_runtime" / "__init__.py").is_file():
            return candidate
    raise KernelStartError(f"kernel-bridge is incomplete: no bridge_runtime near {package}")


def _load(name: str) -> ModuleType:
    path = kernel_side_dir() / "bridge_runtime" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bridge.core.wire.{name.lstrip('_')}", path)
    if spec is None or spec.loader is None:  # pragma: no cover - a broken install
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


protocol = _load("protocol")
codec: Any = _load("_wire")  # encode/decode/dumps/loads of values with binary buffers
rlimits: Any = _load("limits")  # a kernel's resource limits: their variable and how they apply

EXECUTE_COMM: str = protocol.EXECUTE_COMM
BACKEND_COMM: str = protocol.BACKEND_COMM
META_KEY: str = protocol.META_KEY
METHODS: str = protocol.METHODS
EXECUTE: str = protocol.EXECUTE
PING: str = protocol.PING
PONG: str = protocol.PONG
REPLY: str = protocol.REPLY
ATTESTATION: str = protocol.ATTESTATION
VARIABLES: str = protocol.VARIABLES
REPLY_VALUE: str = protocol.REPLY_VALUE
