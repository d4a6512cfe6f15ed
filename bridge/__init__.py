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

from ._exceptions import (
    BackendError,
    BackendLost,
    BackendStartError,
    BridgeClosed,
    BridgeError,
    CallTimeout,
    ExecutionError,
    ExecutionTimeout,
    ExitStatus,
    InvalidNotebook,
    InvalidRequest,
    KernelDied,
    KernelStartError,
    NotebookFailed,
)
from ._python import has_python, python_version
from ._result import ErrorInfo, ExecutionResult
from ._version import __version__

if TYPE_CHECKING:
    from ._backend import AsyncBackend
    from ._bridge import AsyncBridge, AsyncSession
    from ._nbhandle import AsyncNotebook, Notebook
    from ._notebook import NotebookOptions, NotebookResult, run_notebook
    from ._sync import Backend, Bridge, Session

__all__ = [
    "AsyncBackend",
    "AsyncBridge",
    "AsyncNotebook",
    "AsyncSession",
    "Backend",
    "BackendError",
    "BackendLost",
    "BackendStartError",
    "Bridge",
    "BridgeClosed",
    "BridgeError",
    "CallTimeout",
    "ErrorInfo",
    "ExecutionError",
    "ExecutionResult",
    "ExecutionTimeout",
    "ExitStatus",
    "InvalidNotebook",
    "InvalidRequest",
    "KernelDied",
    "KernelStartError",
    "Notebook",
    "NotebookFailed",
    "NotebookOptions",
    "NotebookResult",
    "Session",
    "__version__",
    "has_python",
    "python_version",
    "run_notebook",
]

_LAZY = {
    "AsyncBackend": "._backend",
    "AsyncBridge": "._bridge",
    "AsyncNotebook": "._nbhandle",
    "AsyncSession": "._bridge",
    "Backend": "._sync",
    "Bridge": "._sync",
    "Notebook": "._nbhandle",
    "NotebookOptions": "._notebook",
    "NotebookResult": "._notebook",
    "Session": "._sync",
    "run_notebook": "._notebook",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bridge' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    """Jupyter Server finds the HTTP service here: ``jupyter lab``
    ``--ServerApp.jpserver_extensions=bridge=True`` loads it into JupyterLab's server."""
    from ._server import BridgeApp

    return [{"module": "bridge._server", "app": BridgeApp}]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
