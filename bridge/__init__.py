"""kernel-bridge: run Python in managed IPython kernels over the Jupyter protocol.

>>> import bridge
>>> with bridge.Bridge(pool_size=1) as b:          # doctest: +SKIP
...     b.evaluate("1 + 2 * 3").value
7

``import bridge`` stays light: the kernel machinery (jupyter_client, pyzmq) is imported the
first time one of its names is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bridge._version import __version__
from bridge.core.errors import (
    BackendError,
    BackendLost,
    BackendStartError,
    BridgeClosed,
    BridgeError,
    CallTimeout,
    ExecutionError,
    ExecutionTimeout,
    ExitStatus,
    FileRefused,
    InstallTimeout,
    InvalidNotebook,
    InvalidRequest,
    KernelDied,
    KernelStartError,
    NotebookFailed,
    Overloaded,
    PackageConflict,
    PathRefused,
    ScriptRefused,
)
from bridge.core.python import has_python, python_version
from bridge.core.results import ErrorInfo, ExecutionResult, strip_ansi


def _publish(value: Any) -> None:
    """Show a public name as ``bridge.X`` (in reprs, tracebacks and docs), as httpx does."""
    if getattr(value, "__module__", "").startswith("bridge."):
        value.__module__ = "bridge"


if TYPE_CHECKING:
    from bridge.api.bridge import AsyncBridge, AsyncSession
    from bridge.api.packages import InstallResult
    from bridge.api.sync import Backend, BackendStream, Bridge, Session
    from bridge.backends.backend import AsyncBackend
    from bridge.backends.stream import AsyncBackendStream
    from bridge.core.limits import KernelLimits
    from bridge.core.pool import PoolStatus
    from bridge.core.transfers import FileDownload, FileInfo
    from bridge.core.wire import Encoded
    from bridge.notebooks.handle import AsyncNotebook, Notebook
    from bridge.notebooks.options import NotebookOptions
    from bridge.notebooks.report import NotebookResult
    from bridge.notebooks.runner import run_notebook

__all__ = [
    "AsyncBackend",
    "AsyncBackendStream",
    "AsyncBridge",
    "AsyncNotebook",
    "AsyncSession",
    "Backend",
    "BackendError",
    "BackendLost",
    "BackendStartError",
    "BackendStream",
    "Bridge",
    "BridgeClosed",
    "BridgeError",
    "CallTimeout",
    "Encoded",
    "ErrorInfo",
    "ExecutionError",
    "ExecutionResult",
    "ExecutionTimeout",
    "ExitStatus",
    "FileDownload",
    "FileInfo",
    "FileRefused",
    "InstallResult",
    "InstallTimeout",
    "InvalidNotebook",
    "InvalidRequest",
    "KernelDied",
    "KernelLimits",
    "KernelStartError",
    "Notebook",
    "NotebookFailed",
    "NotebookOptions",
    "NotebookResult",
    "Overloaded",
    "PackageConflict",
    "PathRefused",
    "PoolStatus",
    "ScriptRefused",
    "Session",
    "__version__",
    "has_python",
    "python_version",
    "run_notebook",
    "strip_ansi",
]

for _name in __all__:  # the ones imported above; the lazy ones as they load
    if _name in globals():
        _publish(globals()[_name])

_LAZY = {
    "AsyncBackend": "bridge.backends.backend",
    "AsyncBackendStream": "bridge.backends.stream",
    "AsyncBridge": "bridge.api.bridge",
    "AsyncNotebook": "bridge.notebooks.handle",
    "AsyncSession": "bridge.api.bridge",
    "Encoded": "bridge.core.wire",
    "Backend": "bridge.api.sync",
    "BackendStream": "bridge.api.sync",
    "Bridge": "bridge.api.sync",
    "FileDownload": "bridge.core.transfers",
    "FileInfo": "bridge.core.transfers",
    "InstallResult": "bridge.api.packages",
    "KernelLimits": "bridge.core.limits",
    "Notebook": "bridge.notebooks.handle",
    "NotebookOptions": "bridge.notebooks.options",
    "NotebookResult": "bridge.notebooks.report",
    "PoolStatus": "bridge.core.pool",
    "Session": "bridge.api.sync",
    "run_notebook": "bridge.notebooks.runner",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bridge' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    _publish(value)
    globals()[name] = value
    return value


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    """Jupyter Server finds the HTTP service here: ``jupyter lab``
    ``--ServerApp.jpserver_extensions=bridge=True`` loads it into JupyterLab's server."""
    from bridge.server import BridgeApp

    return [{"module": "bridge.server", "app": BridgeApp}]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
