"""The host's copy of the kernel side's contract, loaded from ``kernels/bridge_runtime``.

The names both ends share (comm targets, metadata keys, message kinds), the value codec and
the confinement of paths beneath a folder are defined once, in the kernel-side package, which
needs nothing but ipykernel. The host loads those files by path (the package itself is not
importable on the host), so there is one definition of each and no copy to drift.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

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
beneath: Any = _load("_beneath")  # opening a path beneath a folder, no symlink followed
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
BINARY: str = protocol.BINARY
REPLY_VALUE: str = protocol.REPLY_VALUE
REPLY_BINARY: str = protocol.REPLY_BINARY
FILES_COMM: str = protocol.FILES_COMM
PUT: str = protocol.PUT
DATA: str = protocol.DATA
END: str = protocol.END
GET: str = protocol.GET
ACK: str = protocol.ACK
ABORT: str = protocol.ABORT
LIST: str = protocol.LIST
REMOVE: str = protocol.REMOVE


@dataclass
class Encoded:
    """A value still in its wire form: JSON with placeholders, and the buffers they name.

    What a front end relays without decoding it (no NumPy needed, no copy): a backend's
    result taken with ``call(..., encoded=True)``, params passed to ``call`` as they came in a
    multipart body. ``inline()`` gives its JSON form (the buffers as base64).
    """

    PLACEHOLDER: ClassVar[str] = codec.PLACEHOLDER  # the key that marks a placeholder

    value: Any
    buffers: list[Any] = field(default_factory=list)

    def inline(self) -> Any:
        """The JSON form: each placeholder with its bytes inline as base64."""
        return codec.inline(self.value, self.buffers) if self.buffers else self.value

    @classmethod
    def of(cls, value: Any) -> Any:
        """*value* as an ``Encoded`` if it holds bytes or NumPy arrays, else *value* itself.

        >>> Encoded.of({"a": b"xy"}).value
        {'a': {'__bridge_buffer__': 0, 'kind': 'bytes'}}
        """
        if not codec.has_binary(value):
            return value
        data, buffers = codec.encode(value)
        return cls(data, buffers)
