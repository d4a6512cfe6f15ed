"""What the routes do, whatever the transport: the service's bridge, its limits, its root.

Front ends (HTTP, gRPC) decode a request into its model (models.py), call one method here and
write the answer model it returns; every call goes through the same AsyncBridge as the Python
API (on Jupyter Server's own MultiKernelManager under the HTTP service, so the server's
``/api/kernels`` lists every kernel the service runs).

Execute, evaluate and execute-file exist once: ``context`` names where they run (None: a pool
kernel), resolved in one place (``_run``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

import msgspec

from bridge import (
    AsyncBackendStream,
    AsyncBridge,
    AsyncSession,
    BackendError,
    BridgeClosed,
    Encoded,
    ExecutionResult,
    KernelStartError,
)
from bridge._version import __version__

from . import metrics
from . import models as m
from .backends import HostedBackend
from .contexts import HostedContext
from .errors import ApiError, ErrorType, bad_request, not_found
from .files import FileStream, file_info
from .sessions import NoSessions, SessionRegistry

log = logging.getLogger("bridge.server")

T = TypeVar("T")
OutputListener = Callable[[dict[str, Any]], None]

MAX_MODULES = m.MAX_MODULES
DEFAULT_MODULES = ("numpy", "pandas", "requests", "json", "os", "sys")

# Runs in a pool kernel: which of `names` (an input) the kernel can import, importing nothing
# (a GET has no side effects): a top-level name by find_spec, which imports nothing for it; a
# dotted one by finding each part in its parent package's folders, not by importing the
# parent as find_spec("a.b") would. A module imported already is simply there.
_MODULES_CODE = """\
import importlib.machinery
import importlib.util
import sys

def _findable(name):
    if name in sys.modules:
        return True
    top, *rest = name.split(".")
    try:
        spec = importlib.util.find_spec(top)
        found = top
        for part in rest:
            if spec is None or spec.submodule_search_locations is None:
                return False
            found += "." + part
            module = sys.modules.get(found)
            if module is not None:
                spec = module.__spec__
                continue
            places = list(spec.submodule_search_locations)
            spec = importlib.machinery.PathFinder.find_spec(found, places)
        return spec is not None
    except Exception:
        return False

return {name: _findable(name) for name in names}
"""


def _params(req: m.CallRequest, buffers: Sequence[Any]) -> Any:
    """A call's params: with a multipart request's parts, as they came (undecoded)."""
    if buffers:
        return Encoded(req.params or {}, list(buffers))
    return req.params


def call_failure(exc: BackendError, started: float) -> m.CallAnswer:
    """The answer of a call whose method raised (a stream's end, too)."""
    return m.CallAnswer(
        success=False,
        result=None,
        error=str(exc),
        error_type="python_error",
        exception=m.PythonError(exc.ename, exc.evalue, exc.traceback),
        duration_ms=since(started),
    )


def execute_answer(result: ExecutionResult) -> m.ExecuteAnswer:
    """The answer of an execute, evaluate or execute-file."""
    error = result.error
    return m.ExecuteAnswer(
        success=result.success,
        stdout=result.stdout,
        stderr=result.stderr,
        result=Encoded.of(result.value),  # bytes and arrays: JSON or parts, as asked
        error=None if error is None else error.traceback,
        error_type=None if result.success else "python_error",
        exception=None
        if error is None
        else m.PythonError(error.ename, error.evalue, error.traceback),
        duration_ms=result.duration_ms,
        outputs=cast("list[m.Output]", result.outputs),  # nbformat outputs, as dicts
        attestations=result.attestations,
        truncated=result.truncated,
        variables=msgspec.UNSET if result.variables is None else result.variables,
    )


# Where a call runs: the pool (AsyncBridge) or a context's session; both take the same calls.
Runner = AsyncBridge | AsyncSession


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
        env: Mapping[str, str] | None = None,
        on_attest: Callable[[dict[str, Any]], Any] | None = None,
        timeout: float = 30.0,
        queue_timeout: float = 60.0,
        max_backends: int = 16,
        max_contexts: int = 16,
        context_idle_timeout: float = 3600.0,
        allow_install: bool = True,
        max_body_size: int = 10 * 1024 * 1024,
        max_output: int | None = None,
        max_file_bytes: int = 1 << 30,
        max_context_bytes: int = 4 << 30,
        gateway_url: str = "",
        gateway_token: str = "",
        gateway_kernel_name: str | None = None,
        sessions: SessionRegistry | None = None,
        kernel_limits: Mapping[str, Any] | None = None,
        max_waiting: int | None = None,
        on_kernel_activity: Callable[[str, str, str | None, str | None], None] | None = None,
    ) -> None:
        self.root = os.path.realpath(root)
        # The front end's listing (Jupyter Server's sessions: JupyterLab lists each by name).
        self.sessions: SessionRegistry = sessions or NoSessions()
        self.pool_size = pool_size
        self.timeout = timeout
        self.queue_timeout = queue_timeout
        self.max_backends = max_backends
        self.max_contexts = max_contexts
        self.context_idle_timeout = context_idle_timeout
        self.allow_install = allow_install
        self.max_body_size = max_body_size
        self.max_file_bytes = max_file_bytes
        # None: the bridge's own default
        output_cap: dict[str, Any] = {} if max_output is None else {"max_output": max_output}
        self.bridge = AsyncBridge(
            pool_size=pool_size,
            python=python,
            python_paths=python_paths,
            env=env,
            on_attest=on_attest,
            timeout=timeout,
            kernel_manager=kernel_manager,
            gateway_url=gateway_url,
            gateway_token=gateway_token,
            gateway_kernel_name=gateway_kernel_name,
            on_kernel_activity=on_kernel_activity,
            max_file_bytes=max_file_bytes,
            max_context_bytes=max_context_bytes,
            # On a gateway, its operator bounds the kernels: no defaults to refuse there.
            limits=kernel_limits if kernel_limits or not gateway_url else None,
            max_waiting=max_waiting,
            **output_cap,
        )
        self.kernel_python_version = ""
        self._ready: asyncio.Future[None] | None = None
        self.backends: dict[str, HostedBackend] = {}
        self._starting_backends = 0
        self._busy = 0  # one-off calls running on a pool kernel
        self.contexts: dict[str, HostedContext] = {}
        self._starting_contexts = 0
        self._culler: asyncio.Task[None] | None = None
        self._dropping: set[asyncio.Future[None]] = set()  # contexts' kernels shutting down
        # Names of contexts that exist or are starting: taken the moment a creation asks for
        # one, so that two creations of one name cannot both start.
        self._context_names: set[str] = set()
        self._closed = False
        metrics.watch_service(self)

    # -- lifecycle -------------------------------------------------------------------------------

    def _ready_future(self) -> asyncio.Future[None]:
        if self._ready is None:
            self._ready = asyncio.get_running_loop().create_future()
        return self._ready

    async def start(self) -> None:
        """Warm the pool; requests that come earlier wait for this."""
        ready = self._ready_future()
        try:
            await self.bridge.start()
            info = self.bridge.kernel_info.get("language_info") or {}
            self.kernel_python_version = str(info.get("version", ""))
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
                ready.exception()  # retrieved here; callers of wait_ready() see it again
            raise
        if not ready.done():
            ready.set_result(None)
        if self.context_idle_timeout > 0 and self._culler is None:
            self._culler = asyncio.ensure_future(self._cull_idle_contexts())

    async def wait_ready(self) -> None:
        ready = self._ready_future()
        if not ready.done():
            try:
                async with asyncio.timeout(self.queue_timeout):
                    await asyncio.shield(ready)
            except TimeoutError:
                raise ApiError(
                    ErrorType.OVERLOADED, "the service's kernels are still starting"
                ) from None
        if ready.exception() is not None:
            raise KernelStartError(f"the service could not start: {ready.exception()}")

    async def close(self) -> None:
        self._closed = True  # a context or backend still starting is stopped once started
        ready = self._ready_future()
        if not ready.done():
            ready.set_exception(BridgeClosed("the service was stopped"))
            ready.exception()
        if self._culler is not None:
            self._culler.cancel()
        await asyncio.gather(
            *(hosted.terminate() for hosted in list(self.backends.values())),
            *(self._drop_context(context_id) for context_id in list(self.contexts)),
            *self._dropping,  # those a cancelled request or the culler left shutting down
            return_exceptions=True,
        )
        self.backends.clear()
        await self.bridge.aclose()

    # -- execute, evaluate, execute-file: on a pool kernel or in a context ----------------------

    async def _oneoff(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run *call* on a pool kernel. It waits for a free one in the pool's bounded queue
        (the wait counts against its timeout); past the queue's bound it is refused at once,
        503 overloaded with Retry-After (bridge.Overloaded)."""
        await self.wait_ready()
        self._busy += 1
        try:
            return await call()
        finally:
            self._busy -= 1

    async def _run(
        self,
        context: str | None,
        call: Callable[[Runner, float | None], Awaitable[ExecutionResult]],
    ) -> m.ExecuteAnswer:
        """Run *call* on its target: a free pool kernel (*context* None), or the context's
        session once its previous call is over; with the target's default timeout."""
        if context is None:
            result = await self._oneoff(lambda: call(self.bridge, None))
        else:
            result = await self._in_context(context, call)
        return execute_answer(result)

    async def execute(
        self,
        req: m.ExecuteRequest,
        *,
        context: str | None = None,
        on_output: OutputListener | None = None,
    ) -> m.ExecuteAnswer:
        return await self._run(
            context,
            lambda runner, default: runner.execute(
                req.source,
                timeout=default if req.timeout_secs is None else req.timeout_secs,
                capture_variables=req.capture_variables,
                inputs=req.inputs,
                on_output=on_output,
            ),
        )

    async def evaluate(
        self,
        req: m.EvaluateRequest,
        *,
        context: str | None = None,
        on_output: OutputListener | None = None,
    ) -> m.ExecuteAnswer:
        return await self._run(
            context,
            lambda runner, default: runner.evaluate(
                req.expr,
                timeout=default if req.timeout_secs is None else req.timeout_secs,
                on_output=on_output,
            ),
        )

    async def execute_file(
        self,
        req: m.ExecuteFileRequest,
        *,
        context: str | None = None,
        on_output: OutputListener | None = None,
    ) -> m.ExecuteAnswer:
        if context is not None:
            self.context(context)  # 404 before the path's 403 or 404
        # Opened, checked and read in one go, in a thread (execute_file): a file swapped for
        # a FIFO or a symlink after any check of ours cannot stall or escape.
        return await self._run(
            context,
            lambda runner, default: runner.execute_file(
                req.path,
                root=self.root,
                max_size=self.max_body_size,
                timeout=default if req.timeout_secs is None else req.timeout_secs,
                capture_variables=req.capture_variables,
                on_output=on_output,
            ),
        )

    async def modules(self, names: Sequence[str]) -> m.ModulesAnswer:
        for name in names:
            if not all(part.isidentifier() for part in name.split(".")):
                raise bad_request(f"{name!r} is not a module name", field="modules")
        if len(names) > MAX_MODULES:
            raise bad_request(f"ask for at most {MAX_MODULES} modules at once", field="modules")
        result = await self._oneoff(
            lambda: self.bridge.execute(_MODULES_CODE, inputs={"names": list(names)})
        )
        if not result.success or not isinstance(result.value, dict):
            # Our own check failed in the kernel: no fault of the request.
            raise ApiError(ErrorType.UNAVAILABLE, f"could not check the modules: {result.error}")
        return m.ModulesAnswer({name: bool(result.value.get(name)) for name in names})

    # -- packages --------------------------------------------------------------------------------

    async def install_packages(self, req: m.InstallRequest) -> m.InstallAnswer:
        """Install the request's packages into the kernels' Python (AsyncBridge.install);
        local paths are read from the service's root and must lie inside it."""
        if not self.allow_install:
            raise ApiError(
                ErrorType.FORBIDDEN,
                "installing packages is turned off on this service (BridgeApp.allow_install)",
            )
        await self.wait_ready()
        result = await self.bridge.install(
            req.names, upgrade=req.upgrade, timeout=req.timeout_secs, root=self.root
        )
        return m.InstallAnswer(
            success=result.success,
            installed=list(result.installed),
            installer=cast(Any, result.installer),
            stdout=result.stdout,
            stderr=result.stderr,
            duration_ms=result.duration_ms,
        )

    # -- information -----------------------------------------------------------------------------

    async def version(self) -> m.VersionAnswer:
        await self.wait_ready()
        import jupyter_server

        return m.VersionAnswer(
            python_version=self.kernel_python_version,
            plugin_version=__version__,
            kernel_python=self.bridge.python,
            server_python_version=sys.version.split()[0],
            jupyter_server_version=jupyter_server.__version__,
        )

    async def health(self) -> m.HealthAnswer:
        await self.wait_ready()
        pool = self.bridge.status()
        return m.HealthAnswer(
            status="ok",
            version=__version__,
            pool_size=self.pool_size,
            kernels=pool.ready,
            backends=len(self.backends),
            contexts=len(self.contexts),
            waiting=pool.waiting,
            max_waiting=pool.max_waiting,
            limits=m.LimitsInForce(**self.bridge.limits_in_force()),
        )

    def pool_status(self) -> dict[str, int]:
        """The pool as it is now: live kernels, those running a call, those free for one."""
        try:
            kernels = sum(1 for k in self.bridge.pool.kernels if k.alive)
        except BridgeClosed:
            kernels = 0
        busy = min(self._busy, kernels)
        return {
            "pool_size": self.pool_size,
            "kernels": kernels,
            "busy": busy,
            "ready": kernels - busy,
            "backends": sum(1 for h in self.backends.values() if h.backend.alive),
        }

    # -- backends --------------------------------------------------------------------------------

    def backend_count(self) -> int:
        """Backends whose kernel may exist: starting, alive, restarting, or whose connection
        closed while the kernel runs on. Only the dead (cleaned up) free their slot."""
        return self._starting_backends + sum(1 for h in self.backends.values() if not h.dead)

    def backend(self, backend_id: str) -> HostedBackend:
        hosted = self.backends.get(backend_id)
        if hosted is None:
            raise not_found(f"no backend {backend_id!r}")
        return hosted

    async def create_backend(self, req: m.BackendRequest) -> m.BackendInfo:
        await self.wait_ready()
        if self.backend_count() >= self.max_backends:
            raise ApiError(
                ErrorType.LIMIT_REACHED,
                f"{self.max_backends} backends are running, the service's limit: delete one first",
            )
        self._starting_backends += 1  # counted until it is listed, or gone
        try:
            folder, path = HostedBackend.write_script(req.script)
            try:
                backend = await self.bridge.spawn(
                    path,
                    env=req.env,
                    timeout=req.timeout_secs,
                    restart=req.restart,
                    name=req.name,
                    limits=m.limits_of(req.limits),
                )
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            try:
                methods = sorted(await backend.methods())
                if self._closed:
                    raise BridgeClosed("the service was stopped while the backend started")
            except BaseException:
                await asyncio.shield(asyncio.ensure_future(backend.terminate()))
                shutil.rmtree(folder, ignore_errors=True)
                raise
            if (
                req.name is None
            ):  # the script's file here is ours, "backend.py": its class says more
                backend.name = str(backend.info.get("class") or backend.name)
            hosted = HostedBackend(backend, folder, methods, sessions=self.sessions)
            self.backends[hosted.id] = hosted
        finally:
            self._starting_backends -= 1
        await hosted.open_session()
        log.info("backend %s (%s) started in kernel %s", hosted.id, hosted.name, backend.kernel_id)
        return hosted.info()

    async def list_backends(self) -> m.BackendList:
        return m.BackendList([hosted.info() for hosted in self.backends.values()])

    async def backend_info(self, backend_id: str) -> m.BackendInfo:
        return self.backend(backend_id).info()

    def _callable(self, backend_id: str, req: m.CallRequest) -> HostedBackend:
        hosted = self.backend(backend_id)
        if hosted.gone:
            raise ApiError(
                ErrorType.KERNEL_DIED,
                f"backend {backend_id} is dead (its kernel exited): delete it",
            )
        if req.cmd not in hosted.methods:
            raise bad_request(
                f"the backend has no method {req.cmd!r}; it has: {', '.join(hosted.methods)}",
                field="cmd",
            )
        return hosted

    async def call(
        self, backend_id: str, req: m.CallRequest, buffers: Sequence[Any] = ()
    ) -> m.CallAnswer:
        """Call a method; its value is relayed as it travelled (bytes and arrays undecoded).
        *buffers*: the parts a multipart request's params name."""
        hosted = self._callable(backend_id, req)
        started = time.perf_counter()
        try:
            value = await hosted.backend.call(
                req.cmd, _params(req, buffers), timeout=req.timeout_secs, encoded=True
            )
        except BackendError as exc:
            return call_failure(exc, started)
        return m.CallAnswer(
            success=True,
            result=value,  # as it travelled: JSON, or an Encoded with its buffers
            error=None,
            error_type=None,
            exception=None,
            duration_ms=since(started),
        )

    def stream_call(
        self, backend_id: str, req: m.CallRequest, buffers: Sequence[Any] = ()
    ) -> AsyncBackendStream:
        """The items of a generator method, as it yields them (not sent until read)."""
        hosted = self._callable(backend_id, req)
        return hosted.backend.stream(req.cmd, _params(req, buffers), timeout=req.timeout_secs)

    async def delete_backend(self, backend_id: str) -> m.Deleted:
        hosted = self.backends.pop(backend_id, None)
        if hosted is None:
            raise not_found(f"no backend {backend_id!r}")
        await hosted.terminate()
        return m.Deleted(id=backend_id, deleted=True)

    # -- contexts --------------------------------------------------------------------------------

    def context(self, context_id: str) -> HostedContext:
        hosted = self.contexts.get(context_id)
        if hosted is None:
            raise not_found(f"no context {context_id!r}")
        return hosted

    async def create_context(self, req: m.ContextRequest) -> m.ContextInfo:
        """Start a context: a session with a kernel of its own (the one place contexts are
        made; ``_drop_context`` is the one place they go)."""
        # A bad cwd (outside the root, missing, not a folder) is refused before anything waits.
        session = self.bridge.session(
            env=req.env, cwd=req.cwd, root=self.root, limits=m.limits_of(req.limits)
        )
        await self.wait_ready()
        hosted = HostedContext(session, name=req.name, timeout=req.timeout_secs, cwd=session.cwd)
        # Checked and taken in one step (nothing runs between them): the name is this
        # creation's until it fails or the context is deleted.
        if hosted.name in self._context_names:
            raise ApiError(ErrorType.CONFLICT, f"a context named {hosted.name!r} exists already")
        if len(self.contexts) + self._starting_contexts >= self.max_contexts:
            raise ApiError(
                ErrorType.LIMIT_REACHED,
                f"{self.max_contexts} contexts exist, the service's limit: delete one first",
            )
        self._context_names.add(hosted.name)
        self._starting_contexts += 1
        try:
            try:
                await self._start_session(session, req.timeout_secs)
                if self._closed:
                    raise BridgeClosed("the service was stopped while the context started")
            except BaseException:
                await asyncio.shield(asyncio.ensure_future(session.aclose()))
                raise
        except BaseException:
            self._context_names.discard(hosted.name)
            raise
        finally:
            self._starting_contexts -= 1
        self.contexts[hosted.id] = hosted
        hosted.session_id = await self.sessions.register(session.kernel_id, hosted.session_name)
        log.info("context %s (%s) started in kernel %s", hosted.id, hosted.name, session.kernel_id)
        return hosted.info()

    @staticmethod
    async def _start_session(session: AsyncSession, timeout: float | None) -> None:
        """Start *session*'s kernel, within *timeout* if one was given (504 past it)."""
        if timeout is None:
            await session.start()
            return
        try:
            async with asyncio.timeout(timeout):
                await session.start()
        except TimeoutError:
            raise ApiError(
                ErrorType.TIMEOUT, f"the context's kernel did not start within {timeout:g} s"
            ) from None

    async def _drop_context(self, context_id: str) -> HostedContext | None:
        """Forget a context and shut its kernel down, once a restart under way is over."""
        hosted = self.contexts.get(context_id)
        if hosted is None or hosted.deleted:
            return None
        hosted.deleted = True  # a second deletion, or a restart that comes next, finds it gone
        # A task of its own: a request that goes away must not cut a kernel's shutdown short,
        # which would leave it half-known to the server's kernel manager.
        closing = asyncio.ensure_future(self._close_context(hosted))
        self._dropping.add(closing)
        closing.add_done_callback(self._dropping.discard)
        await asyncio.shield(closing)
        log.info("context %s (%s) deleted", hosted.id, hosted.name)
        return hosted

    async def _close_context(self, hosted: HostedContext) -> None:
        async with hosted.owner:
            self.contexts.pop(hosted.id, None)
            session_id, hosted.session_id = hosted.session_id, None
            await self.sessions.unregister(session_id)  # before its kernel goes, as backends do
            try:
                await hosted.session.aclose()
            finally:
                self._context_names.discard(hosted.name)

    async def list_contexts(self) -> m.ContextList:
        return m.ContextList([hosted.info() for hosted in self.contexts.values()])

    async def context_info(self, context_id: str) -> m.ContextInfo:
        return self.context(context_id).info()

    async def delete_context(self, context_id: str) -> m.Deleted:
        if await self._drop_context(context_id) is None:
            raise not_found(f"no context {context_id!r}")
        return m.Deleted(id=context_id, deleted=True)

    async def restart_context(self, context_id: str) -> m.ContextInfo:
        """A fresh kernel for the context, same id, name, env and cwd; its state is gone."""
        hosted = self.context(context_id)
        hosted.calls += 1
        try:
            # Shielded as a deletion is: a client gone mid-restart leaves a whole kernel.
            await asyncio.shield(asyncio.ensure_future(self._restart_context(hosted)))
        finally:
            hosted.calls -= 1
            hosted.touch()
        log.info("context %s (%s) restarted", hosted.id, hosted.name)
        return hosted.info()

    async def _restart_context(self, hosted: HostedContext) -> None:
        """Restart under the context's owner lock: one restart at a time, none after (or
        during) its deletion."""
        async with hosted.owner:
            if hosted.deleted:
                raise not_found(f"context {hosted.id!r} was deleted")
            session_id, hosted.session_id = hosted.session_id, None
            await self.sessions.unregister(session_id)
            await hosted.session.restart()
            hosted.session_id = await self.sessions.register(
                hosted.session.kernel_id, hosted.session_name
            )

    async def _in_context(
        self, context_id: str, call: Callable[[AsyncSession, float | None], Awaitable[T]]
    ) -> T:
        """Run *call* on the context's session once its previous call is over (503
        overloaded if that takes longer than queue_timeout)."""
        hosted = self.context(context_id)
        hosted.calls += 1
        try:
            try:
                async with asyncio.timeout(self.queue_timeout):
                    await hosted.lock.acquire()
            except TimeoutError:
                raise ApiError(
                    ErrorType.OVERLOADED,
                    f"the context ran another call for longer than {self.queue_timeout:g} s",
                ) from None
            try:
                return await call(hosted.session, hosted.timeout)
            finally:
                hosted.lock.release()
        finally:
            hosted.calls -= 1
            hosted.touch()

    # -- a context's files (through its kernel) ---------------------------------------------------

    def _using(self, context_id: str) -> tuple[HostedContext, Callable[[], None]]:
        """The context, counted busy (never culled as idle) until the function is called."""
        hosted = self.context(context_id)
        hosted.calls += 1

        def done() -> None:
            hosted.calls -= 1
            hosted.touch()

        return hosted, done

    def _file_timeout(self, hosted: HostedContext) -> float:
        """How long a transfer may wait for the kernel without progress (busy running code)."""
        return hosted.timeout or self.timeout

    async def upload_file(
        self,
        context_id: str,
        path: str,
        chunks: AsyncIterable[bytes],
        *,
        size: int | None,
    ) -> m.FileInfo:
        """Write *chunks* to *path* in the context's working folder, whole or not at all.

        The file's limits (``max_file_bytes``, ``max_context_bytes``) are the bridge's; a
        *size* known beforehand past them is refused before a byte travels."""
        hosted, done = self._using(context_id)
        try:
            info = await hosted.session.upload(
                chunks, path, size=size, timeout=self._file_timeout(hosted)
            )
        finally:
            done()
        return file_info(info)

    async def download_file(self, context_id: str, path: str) -> FileStream:
        """The file at *path*, its info known and its bytes to come: the caller iterates it
        and must ``aclose()`` it (the context is busy until then)."""
        hosted, done = self._using(context_id)
        try:
            download = hosted.session.download_stream(path, timeout=self._file_timeout(hosted))
            await download.__aenter__()
        except BaseException:
            done()
            raise
        return FileStream(download, done)

    async def list_files(self, context_id: str, path: str) -> m.FileList:
        hosted, done = self._using(context_id)
        try:
            entries = await hosted.session.list_files(path, timeout=self._file_timeout(hosted))
        finally:
            done()
        folder = "/".join(part for part in path.split("/") if part not in ("", "."))
        return m.FileList(path=folder, entries=[file_info(entry) for entry in entries])

    async def remove_file(self, context_id: str, path: str) -> m.FileRemoved:
        hosted, done = self._using(context_id)
        try:
            await hosted.session.remove(path, timeout=self._file_timeout(hosted))
        finally:
            done()
        return m.FileRemoved(path=path, removed=True)

    async def _cull_idle_contexts(self) -> None:
        """Delete contexts idle for longer than context_idle_timeout, checking a few times
        per period (at most once a minute, at least every half second)."""
        idle = self.context_idle_timeout
        every = max(0.5, min(60.0, idle / 4))
        while True:
            await asyncio.sleep(every)
            for hosted in list(self.contexts.values()):
                if hosted.idle_for() > idle:
                    log.info("context %s (%s) idle for %g s: culled", hosted.id, hosted.name, idle)
                    try:
                        await self._drop_context(hosted.id)
                    except Exception:
                        log.exception("culling context %s failed", hosted.id)


def since(started: float) -> float:
    """Milliseconds since *started* (a perf_counter reading)."""
    return round((time.perf_counter() - started) * 1000, 3)
