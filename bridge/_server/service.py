"""What the HTTP routes do, without HTTP: the service's bridge, its limits, its root folder.

Handlers parse and validate a request, call one method here and write what it returns; every
call goes through the same AsyncBridge as the Python API, on Jupyter Server's own
MultiKernelManager, so the server's ``/api/kernels`` lists every kernel the service runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from .._bridge import AsyncBridge
from .._exceptions import BackendError, BridgeClosed, KernelStartError
from .._result import ExecutionResult
from .._version import __version__
from .backends import HostedBackend, to_json
from .errors import ApiError, bad_request, not_found

log = logging.getLogger("bridge.server")

T = TypeVar("T")

MAX_MODULES = 100
DEFAULT_MODULES = ("numpy", "pandas", "requests", "json", "os", "sys")

# Runs in a pool kernel: which of `names` (an input) the kernel can import, without importing.
_MODULES_CODE = """\
import importlib.util

def _findable(name):
    try:
        return importlib.util.find_spec(name) is not None
    except Exception:
        return False

return {name: _findable(name) for name in names}
"""


def result_body(result: ExecutionResult) -> dict[str, Any]:
    """The QNTX plugin's answer shape, plus error_type when the code raised."""
    body = result.to_dict()
    if body["variables"] is None:
        del body["variables"]
    body["error_type"] = None if result.success else "python_error"
    return body


def resolve_inside(root: str, path: str) -> str:
    """The real path of *path* (relative to *root* or absolute) if it lies inside *root*.

    The resolved path (symlinks followed) must equal the root or start with the root plus a
    separator: a bare prefix check would let ``/srv/data-evil`` pass for ``/srv/data``.
    Percent-encoded forms are decoded and checked too, so ``..%2f`` is refused like ``../``,
    and so are forms with backslashes read as separators (``..\\``, as Windows would).
    """
    prefix = root if root.endswith(os.sep) else root + os.sep
    forms = [path]
    while len(forms) < 4:
        decoded = urllib.parse.unquote(forms[-1])
        if decoded == forms[-1]:
            break
        forms.append(decoded)
    forms += [form.replace("\\", "/") for form in forms if "\\" in form]
    resolved = ""
    for form in forms:
        if "\x00" in form:
            raise bad_request("path must not contain a NUL character")
        real = os.path.realpath(os.path.join(root, form))
        if real != root and not real.startswith(prefix):
            raise ApiError(403, "forbidden", f"path {path!r} is outside the service's root")
        resolved = resolved or real
    return resolved


def script_in(root: str, path: str) -> str:
    """The real path of the script *path* inside *root*: 403, 404 or 400 otherwise."""
    resolved = resolve_inside(root, path)
    if not os.path.exists(resolved):
        raise not_found(f"no such file in the service's root: {path}")
    if not os.path.isfile(resolved):
        raise bad_request(f"{path} is not a file")
    return resolved


class Service:
    """The service's state: a bridge over the server's kernel manager, its root and limits."""

    def __init__(
        self,
        *,
        kernel_manager: Any,
        root: str,
        pool_size: int = 2,
        python: str | None = None,
        python_paths: Sequence[str] = (),
        timeout: float = 30.0,
        queue_timeout: float = 60.0,
        max_backends: int = 16,
        max_body_size: int = 10 * 1024 * 1024,
        gateway_url: str = "",
        gateway_token: str = "",
        gateway_kernel_name: str | None = None,
    ) -> None:
        self.root = os.path.realpath(root)
        self.pool_size = pool_size
        self.timeout = timeout
        self.queue_timeout = queue_timeout
        self.max_backends = max_backends
        self.max_body_size = max_body_size
        self.bridge = AsyncBridge(
            pool_size=pool_size,
            python=python,
            python_paths=python_paths,
            timeout=timeout,
            kernel_manager=kernel_manager,
            gateway_url=gateway_url,
            gateway_token=gateway_token,
            gateway_kernel_name=gateway_kernel_name,
        )
        self.kernel_python_version = ""
        self._ready: asyncio.Future[None] | None = None
        self._slots: asyncio.Semaphore | None = None
        self.backends: dict[str, HostedBackend] = {}
        self._starting_backends = 0

    # -- lifecycle -------------------------------------------------------------------------------

    def _ready_future(self) -> asyncio.Future[None]:
        if self._ready is None:
            self._ready = asyncio.get_running_loop().create_future()
        return self._ready

    async def start(self) -> None:
        """Warm the pool; requests that come earlier wait for this."""
        ready = self._ready_future()
        self._slots = asyncio.Semaphore(max(self.pool_size, 1))
        try:
            await self.bridge.start()
            kernels = self.bridge.pool.kernels
            if kernels:
                info = kernels[0].kernel_info.get("language_info") or {}
                self.kernel_python_version = str(info.get("version", ""))
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
                ready.exception()  # retrieved here; callers of wait_ready() see it again
            raise
        if not ready.done():
            ready.set_result(None)

    async def wait_ready(self) -> None:
        ready = self._ready_future()
        if not ready.done():
            try:
                async with asyncio.timeout(self.queue_timeout):
                    await asyncio.shield(ready)
            except TimeoutError:
                raise ApiError(503, "busy", "the service's kernels are still starting") from None
        if ready.exception() is not None:
            raise KernelStartError(f"the service could not start: {ready.exception()}")

    async def close(self) -> None:
        ready = self._ready_future()
        if not ready.done():
            ready.set_exception(BridgeClosed("the service was stopped"))
            ready.exception()
        await asyncio.gather(
            *(hosted.terminate() for hosted in list(self.backends.values())),
            return_exceptions=True,
        )
        self.backends.clear()
        await self.bridge.aclose()

    # -- one-off calls ---------------------------------------------------------------------------

    async def _oneoff(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run *call* once a pool kernel is free; 503 busy if none frees up in time."""
        await self.wait_ready()
        assert self._slots is not None
        try:
            async with asyncio.timeout(self.queue_timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise ApiError(
                503, "busy", f"no kernel became free within {self.queue_timeout:g} s"
            ) from None
        try:
            return await call()
        finally:
            self._slots.release()

    async def execute(
        self,
        code: str,
        *,
        timeout: float | None,
        capture_variables: bool,
        inputs: dict[str, Any] | None,
    ) -> dict[str, Any]:
        result = await self._oneoff(
            lambda: self.bridge.execute(
                code, timeout=timeout, capture_variables=capture_variables, inputs=inputs
            )
        )
        return result_body(result)

    async def evaluate(self, expr: str, *, timeout: float | None) -> dict[str, Any]:
        result = await self._oneoff(lambda: self.bridge.evaluate(expr, timeout=timeout))
        return result_body(result)

    async def execute_file(
        self, path: str, *, timeout: float | None, capture_variables: bool
    ) -> dict[str, Any]:
        resolved = script_in(self.root, path)
        result = await self._oneoff(
            lambda: self.bridge.execute_file(
                resolved, timeout=timeout, capture_variables=capture_variables
            )
        )
        return result_body(result)

    async def modules(self, names: Sequence[str]) -> dict[str, Any]:
        for name in names:
            if not all(part.isidentifier() for part in name.split(".")):
                raise bad_request(f"{name!r} is not a module name")
        if len(names) > MAX_MODULES:
            raise bad_request(f"ask for at most {MAX_MODULES} modules at once")
        result = await self._oneoff(
            lambda: self.bridge.execute(_MODULES_CODE, inputs={"names": list(names)})
        )
        if not result.success or not isinstance(result.value, dict):
            raise ApiError(503, "busy", f"could not check the modules: {result.error}")
        return {"modules": {name: bool(result.value.get(name)) for name in names}}

    # -- information -----------------------------------------------------------------------------

    async def version(self) -> dict[str, Any]:
        await self.wait_ready()
        import jupyter_server

        return {
            "python_version": self.kernel_python_version,
            "plugin_version": __version__,
            "kernel_python": self.bridge.python,
            "server_python_version": sys.version.split()[0],
            "jupyter_server_version": jupyter_server.__version__,
        }

    async def health(self) -> dict[str, Any]:
        await self.wait_ready()
        return {
            "status": "ok",
            "version": __version__,
            "pool_size": self.pool_size,
            "kernels": sum(1 for k in self.bridge.pool.kernels if k.alive),
            "backends": len(self.backends),
        }

    # -- backends --------------------------------------------------------------------------------

    def backend(self, backend_id: str) -> HostedBackend:
        hosted = self.backends.get(backend_id)
        if hosted is None:
            raise not_found(f"no backend {backend_id!r}")
        return hosted

    async def create_backend(
        self,
        script: str,
        *,
        env: dict[str, str] | None,
        timeout: float | None,
        restart: bool,
    ) -> dict[str, Any]:
        await self.wait_ready()
        live = sum(1 for h in self.backends.values() if h.backend.alive)
        if live + self._starting_backends >= self.max_backends:
            raise ApiError(
                429,
                "busy",
                f"{self.max_backends} backends are running, the service's limit: delete one first",
            )
        self._starting_backends += 1
        folder, path = HostedBackend.write_script(script)
        try:
            backend = await self.bridge.spawn(path, env=env, timeout=timeout, restart=restart)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            self._starting_backends -= 1
        try:
            methods = sorted(await backend.methods())
        except BaseException:
            await backend.terminate()
            shutil.rmtree(folder, ignore_errors=True)
            raise
        hosted = HostedBackend(backend, folder, methods)
        self.backends[hosted.id] = hosted
        log.info("backend %s started in kernel %s", hosted.id, backend.kernel_id)
        return hosted.info()

    async def list_backends(self) -> dict[str, Any]:
        return {"backends": [hosted.info() for hosted in self.backends.values()]}

    async def backend_info(self, backend_id: str) -> dict[str, Any]:
        return self.backend(backend_id).info()

    async def call(
        self, backend_id: str, method: str, params: dict[str, Any] | None, timeout: float | None
    ) -> dict[str, Any]:
        hosted = self.backend(backend_id)
        if method not in hosted.methods:
            raise bad_request(
                f"the backend has no method {method!r}; it has: {', '.join(hosted.methods)}"
            )
        started = time.perf_counter()
        error = None
        value: Any = None
        try:
            value = await hosted.backend.call(method, params, timeout=timeout)
        except BackendError as exc:
            error = exc
        duration = round((time.perf_counter() - started) * 1000, 3)
        if error is not None:
            return {
                "success": False,
                "result": None,
                "error": str(error),
                "error_type": "python_error",
                "duration_ms": duration,
                # The parts apart, for clients that rebuild the exception (the TypeScript one).
                "ename": error.ename,
                "evalue": error.evalue,
                "traceback": error.traceback,
            }
        return {
            "success": True,
            "result": to_json(value),
            "error": None,
            "error_type": None,
            "duration_ms": duration,
        }

    async def delete_backend(self, backend_id: str) -> dict[str, Any]:
        hosted = self.backends.pop(backend_id, None)
        if hosted is None:
            raise not_found(f"no backend {backend_id!r}")
        await hosted.terminate()
        return {"id": backend_id, "deleted": True}
