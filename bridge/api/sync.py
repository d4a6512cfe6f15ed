"""Bridge, Session and Backend: the blocking API, the async API run on a loop thread of its own.

anyio's blocking portal, as starlette's TestClient uses it: every call is a coroutine of the
async twin run on the bridge's own event loop in its own thread, so a blocking call works from
plain code and from inside a running event loop (a Jupyter cell) alike, with no nest_asyncio
and no loop rebinding. tests/api/test_twins.py holds each blocking class to its async twin's
methods and parameters. User callbacks run by the one rule of bridge/core/callbacks.py, plain
functions in a worker thread (``_off_loop``).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextlib
import functools
import inspect
import os
import threading
import weakref
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import Any, TypeVar, overload

from anyio.from_thread import BlockingPortal, start_blocking_portal

from bridge.api.bridge import AsyncBridge, AsyncSession, Limits
from bridge.api.files import DEFAULT_MAX_CONTEXT, DEFAULT_MAX_FILE
from bridge.api.outputs import AttestCallback, OutputCallback
from bridge.api.packages import InstallResult
from bridge.backends.backend import AsyncBackend, Handler
from bridge.backends.stream import DEFAULT_WINDOW, DEFAULT_WINDOW_BYTES, AsyncBackendStream
from bridge.core.errors import BridgeClosed, BridgeError
from bridge.core.files import DEFAULT_MAX_SCRIPT
from bridge.core.pool import PoolStatus
from bridge.core.results import DEFAULT_MAX_OUTPUT, ExecutionResult
from bridge.core.transfers import FileDownload, FileInfo
from bridge.core.validate import check_callable
from bridge.core.wire import Encoded

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_open_portals: weakref.WeakSet[_Portal] = weakref.WeakSet()


class _Portal:
    """anyio's ``BlockingPortal`` on an event loop in a daemon thread, started and stopped
    with the bridge. What it adds: a blocking call from the loop's own thread (a callback
    that calls the blocking API) is refused with a clear error instead of anyio's
    RuntimeError, a call after the portal stopped is BridgeClosed, and Ctrl-C during a call
    cancels it (which interrupts its kernel)."""

    def __init__(self, name: str = "kernel-bridge") -> None:
        self._context = start_blocking_portal(name=name)
        self.portal: BlockingPortal = self._context.__enter__()
        self.loop: asyncio.AbstractEventLoop = self.portal.call(asyncio.get_running_loop)
        self.thread: threading.Thread = self.portal.call(threading.current_thread)
        self._stopped = False
        _open_portals.add(self)

    def submit(
        self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        """Start ``fn(*args, **kwargs)`` on the loop; the future gives its outcome."""
        if self._stopped:
            raise BridgeClosed("the bridge is closed")
        try:
            return self.portal.start_task_soon(functools.partial(fn, *args, **kwargs))
        except RuntimeError:  # anyio: "This portal is not running"
            raise BridgeClosed("the bridge is closed") from None

    def call(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kwargs: Any) -> T:
        if threading.current_thread() is self.thread:
            raise BridgeError(
                "a blocking Bridge cannot be called from its own loop thread (an async "
                "callback); use the AsyncBridge there, or a plain callback (it runs in a "
                "worker thread)"
            )
        future = self.submit(fn, *args, **kwargs)
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()  # the call is cancelled, its kernel interrupted
            raise

    def stop(self) -> None:
        """Stop the loop (tasks still running are cancelled) and join its thread; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(RuntimeError):  # stopped already
            self.portal.call(self.portal.stop, True)
        self._context.__exit__(None, None, None)


def _off_loop(callback: F | None, what: str) -> F | None:
    """A plain *callback* made to run in a worker thread: the loop thread reads the kernel and
    must not block, and a callback there could not call the blocking API. The callback runner
    awaits each in turn, so they still run one at a time, in order; a coroutine function runs
    on the loop, as in the async API."""
    if callback is None or inspect.iscoroutinefunction(callback):
        return callback
    check_callable(callback, what)
    plain: Callable[..., Any] = callback

    async def in_thread(*args: Any) -> Any:
        outcome = await asyncio.to_thread(plain, *args)
        if inspect.isawaitable(outcome):
            outcome = await outcome
        return outcome

    return in_thread  # type: ignore[return-value]


class _BlockingCalls:
    """execute, evaluate and execute_file, shared by Bridge and Session: each runs the async
    twin's method on the bridge's loop thread and waits.

    *on_output* (see ``AsyncBridge.execute``) hears each output as the kernel makes it. A plain
    function runs in a worker thread, one output at a time in order, and the call returns once
    it has handled the last, so it may block, print, or use the Bridge (not the Session that is
    running the call: it waits for the callback). A coroutine function runs on the loop thread.
    The rule is bridge/core/callbacks.py's, for every callback of the API.
    """

    _async: AsyncBridge | AsyncSession

    def _call(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kwargs: Any) -> T:
        raise NotImplementedError

    def execute(
        self,
        code: str,
        *,
        timeout: float | None = None,
        capture_variables: bool = False,
        inputs: Mapping[str, Any] | None = None,
        on_output: OutputCallback | None = None,
    ) -> ExecutionResult:
        """Run *code*; a top-level ``return X`` gives the value X.

        >>> b.execute("print(1); import time; time.sleep(1); print(2)",
        ...           on_output=lambda o: print(o["text"], end=""))   # doctest: +SKIP
        """
        return self._call(
            self._async.execute,
            code,
            timeout=timeout,
            capture_variables=capture_variables,
            inputs=inputs,
            on_output=_off_loop(on_output, "on_output"),
        )

    def evaluate(
        self, expr: str, *, timeout: float | None = None, on_output: OutputCallback | None = None
    ) -> ExecutionResult:
        """The value of one expression: ``b.evaluate("1 + 2 * 3").value == 7``."""
        return self._call(
            self._async.evaluate, expr, timeout=timeout, on_output=_off_loop(on_output, "on_output")
        )

    def execute_file(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float | None = None,
        capture_variables: bool = False,
        inputs: Mapping[str, Any] | None = None,
        root: str | os.PathLike[str] | None = None,
        max_size: int = DEFAULT_MAX_SCRIPT,
        on_output: OutputCallback | None = None,
    ) -> ExecutionResult:
        """Run the script at *path* (read by the host) as ``__main__`` with ``__file__`` set;
        only a regular file of at most *max_size* bytes, inside *root* if given."""
        return self._call(
            self._async.execute_file,
            path,
            timeout=timeout,
            capture_variables=capture_variables,
            inputs=inputs,
            root=root,
            max_size=max_size,
            on_output=_off_loop(on_output, "on_output"),
        )


class Bridge(_BlockingCalls):
    """The blocking twin of ``AsyncBridge``; same arguments, same methods.

    >>> with bridge.Bridge(pool_size=2) as b:                  # doctest: +SKIP
    ...     print(b.execute("print('hi')").stdout)
    hi

    A plain *on_attest* runs in a worker thread (see ``_BlockingCalls``).
    """

    def __init__(
        self,
        *,
        pool_size: int = 2,
        python: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        python_paths: Sequence[str | os.PathLike[str]] = (),
        timeout: float = 30.0,
        max_output: int = DEFAULT_MAX_OUTPUT,
        on_attest: AttestCallback | None = None,
        startup_timeout: float = 60.0,
        kernel_manager: Any = None,
        gateway_url: str | None = None,
        gateway_token: str | None = None,
        gateway_kernel_name: str | None = None,
        fork_server: bool = True,
        on_kernel_activity: Callable[[str, str, str | None, str | None], None] | None = None,
        max_file_bytes: int = DEFAULT_MAX_FILE,
        max_context_bytes: int = DEFAULT_MAX_CONTEXT,
        limits: Limits | None = None,
        max_waiting: int | None = None,
    ) -> None:
        self._async: AsyncBridge = AsyncBridge(
            pool_size=pool_size,
            python=python,
            env=env,
            python_paths=python_paths,
            timeout=timeout,
            max_output=max_output,
            on_attest=_off_loop(on_attest, "on_attest"),
            startup_timeout=startup_timeout,
            kernel_manager=kernel_manager,
            gateway_url=gateway_url,
            gateway_token=gateway_token,
            gateway_kernel_name=gateway_kernel_name,
            fork_server=fork_server,
            on_kernel_activity=on_kernel_activity,  # in the reader, on the portal's loop
            max_file_bytes=max_file_bytes,
            max_context_bytes=max_context_bytes,
            limits=limits,
            max_waiting=max_waiting,
        )
        self._portal: _Portal | None = None
        self._closing = False
        self._lock = threading.Lock()

    @property
    def async_bridge(self) -> AsyncBridge:
        """The AsyncBridge underneath (its coroutines run on ``self.loop``)."""
        return self._async

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._get_portal().loop

    def _get_portal(self) -> _Portal:
        with self._lock:
            if self._portal is None:
                if self._async._closed or self._closing:
                    raise BridgeClosed("the bridge is closed")
                self._portal = _Portal()
            return self._portal

    def call(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on the bridge's loop and wait for it."""
        return self._get_portal().call(fn, *args, **kwargs)

    _call = call

    def submit(
        self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        """Start ``fn(*args, **kwargs)`` on the bridge's loop without waiting: several calls at
        once from one thread.

        >>> futures = [b.submit(b.async_bridge.evaluate, f"{n} ** 2") for n in range(4)]
        >>> [f.result().value for f in futures]                    # doctest: +SKIP
        [0, 1, 4, 9]
        """
        return self._get_portal().submit(fn, *args, **kwargs)

    def __enter__(self) -> Bridge:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        try:
            self.call(self._async.start)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Shut every kernel down and stop the loop thread; idempotent."""
        with self._lock:
            # Closing from now on: a call racing in from another thread must not build a
            # second loop thread for a bridge that is going away.
            self._closing = True
            portal, self._portal = self._portal, None
        if portal is None:
            # Never started: closing still goes through the async API (on a loop of its own).
            portal = _Portal()
        try:
            portal.call(self._async.aclose)
        finally:
            portal.stop()

    @property
    def python(self) -> str:
        return self._async.python

    def status(self) -> PoolStatus:
        """The pool's kernels now (see ``AsyncBridge.status``)."""
        status: PoolStatus = self.call(_on_loop, self._async.status)
        return status

    @property
    def kernel_info(self) -> dict[str, Any]:
        """A pool kernel's ``kernel_info_reply`` content; {} if no kernel is live."""
        return self.call(_on_loop, lambda: self._async.kernel_info)

    def limits_in_force(self) -> dict[str, Any]:
        """What bounds each kernel, and how (see ``AsyncBridge.limits_in_force``)."""
        return self.call(_on_loop, self._async.limits_in_force)

    def kernel_language(self, name: str) -> str | None:
        """The language of the kernel spec *name*: ``b.kernel_language("python3") == "python"``."""
        return self._call(self._async.kernel_language, name)

    def session(
        self,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        root: str | os.PathLike[str] | None = None,
        max_file_bytes: int | None = None,
        max_context_bytes: int | None = None,
        limits: Limits | None = None,
    ) -> Session:
        """A blocking session: ``with b.session() as s: s.execute("x = 1")`` (arguments as
        for ``AsyncBridge.session``)."""
        return Session(
            self,
            self._async.session(
                env=env,
                cwd=cwd,
                root=root,
                max_file_bytes=max_file_bytes,
                max_context_bytes=max_context_bytes,
                limits=limits,
            ),
        )

    def install(
        self,
        packages: Sequence[str],
        *,
        upgrade: bool = False,
        timeout: float | None = None,
        root: str | os.PathLike[str] | None = None,
    ) -> InstallResult:
        """Install *packages* into the kernels' Python (see ``AsyncBridge.install``).

        >>> b.install(["requests>=2"]).success        # doctest: +SKIP
        True
        """
        return self.call(self._async.install, packages, upgrade=upgrade, timeout=timeout, root=root)

    def spawn(
        self,
        script: str | os.PathLike[str],
        *,
        env: Mapping[str, str] | None = None,
        python_paths: Sequence[str | os.PathLike[str]] = (),
        timeout: float | None = None,
        restart: bool = False,
        name: str | None = None,
        limits: Limits | None = None,
    ) -> Backend:
        """A blocking backend: ``b.spawn("echo_backend.py").call("echo", {"data": 1})``."""
        backend = self.call(
            self._async.spawn,
            script,
            env=env,
            python_paths=python_paths,
            timeout=timeout,
            restart=restart,
            name=name,
            limits=limits,
        )
        return Backend(self, backend)


class Session(_BlockingCalls):
    """The blocking twin of ``AsyncSession``."""

    def __init__(self, bridge: Bridge, session: AsyncSession) -> None:
        self._bridge = bridge
        self._async: AsyncSession = session

    def _call(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kwargs: Any) -> T:
        return self._bridge.call(fn, *args, **kwargs)

    def __enter__(self) -> Session:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        """Take the session's kernel (``with`` does this)."""
        self._bridge.call(self._async.start)

    def close(self, *, wait: bool = True) -> None:
        """Shut the session's kernel down (see ``AsyncSession.aclose``)."""
        self._bridge.call(self._async.aclose, wait=wait)

    def restart(self) -> None:
        self._bridge.call(self._async.restart)

    @property
    def async_session(self) -> AsyncSession:
        """The AsyncSession underneath (for what only it has: ``download_stream``, an upload
        from an async iterable); its coroutines run on the bridge's loop (``Bridge.call``)."""
        return self._async

    @property
    def kernel_id(self) -> str:
        return self._async.kernel_id

    @property
    def connection_file(self) -> str:
        return self._async.connection_file

    @property
    def kernel_info(self) -> dict[str, Any]:
        """The session kernel's ``kernel_info_reply`` content."""
        return self._async.kernel_info

    @property
    def alive(self) -> bool:
        """Whether the next call can run (see ``AsyncSession.alive``)."""
        return self._async.alive

    @property
    def busy(self) -> bool:
        """A call is running (or waiting for the one before it)."""
        return self._async.busy

    def run_cell(self, source: str, *, timeout: float | None = None) -> ExecutionResult:
        """Run a notebook cell as a notebook front end does (see ``AsyncSession.run_cell``)."""
        return self._bridge.call(self._async.run_cell, source, timeout=timeout)

    def upload(
        self,
        source: bytes | bytearray | memoryview | str | os.PathLike[str] | Iterable[bytes],
        path: str,
        *,
        size: int | None = None,
        timeout: float | None = None,
    ) -> FileInfo:
        """Write *source* (bytes, a local file's path, or an iterable of byte chunks, read in
        a worker thread) to *path* in the kernel's working folder (see
        ``AsyncSession.upload``)."""
        given: Any = source
        if isinstance(source, Iterable) and not isinstance(
            source, bytes | bytearray | memoryview | str
        ):
            given = _chunks_in_thread(iter(source))
        return self._bridge.call(self._async.upload, given, path, size=size, timeout=timeout)

    def download_stream(self, path: str, *, timeout: float | None = None) -> DownloadStream:
        """The file at *path*, chunk by chunk (see ``AsyncSession.download_stream``).

        >>> with s.download_stream("out.png") as d:            # doctest: +SKIP
        ...     for chunk in d:
        ...         sink.write(chunk)
        """
        return DownloadStream(self._bridge, self._async.download_stream(path, timeout=timeout))

    @overload
    def download(self, path: str, dest: None = None, *, timeout: float | None = None) -> bytes: ...

    @overload
    def download(
        self, path: str, dest: str | os.PathLike[str], *, timeout: float | None = None
    ) -> FileInfo: ...

    def download(
        self,
        path: str,
        dest: str | os.PathLike[str] | None = None,
        *,
        timeout: float | None = None,
    ) -> bytes | FileInfo:
        """The file at *path*: its bytes, or written to the local *dest* (streamed) and its
        FileInfo (see ``AsyncSession.download``)."""
        result: bytes | FileInfo = self._bridge.call(
            self._async.download, path, dest, timeout=timeout
        )
        return result

    def list_files(self, path: str = ".", *, timeout: float | None = None) -> list[FileInfo]:
        """What the folder *path* holds (see ``AsyncSession.list_files``)."""
        return self._bridge.call(self._async.list_files, path, timeout=timeout)

    def remove(self, path: str, *, timeout: float | None = None) -> None:
        """Remove the file, empty folder or symlink at *path*."""
        self._bridge.call(self._async.remove, path, timeout=timeout)


class Backend:
    """The blocking twin of ``AsyncBackend``. A plain event handler runs in a worker thread,
    one event at a time in order of arrival (bridge/core/callbacks.py), so a handler may block
    and call the backend itself."""

    def __init__(self, bridge: Bridge, backend: AsyncBackend) -> None:
        self._bridge = bridge
        self._async = backend

    def __repr__(self) -> str:
        return repr(self._async).replace("AsyncBackend", "Backend", 1)

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()

    @property
    def async_backend(self) -> AsyncBackend:
        return self._async

    @property
    def name(self) -> str:
        return self._async.name

    @property
    def kernel_id(self) -> str:
        return self._async.kernel_id

    @property
    def connection_file(self) -> str:
        return self._async.connection_file

    @property
    def alive(self) -> bool:
        return self._async.alive

    @property
    def terminated(self) -> bool:
        return self._async.terminated

    to_json = staticmethod(AsyncBackend.to_json)

    def call(
        self,
        method: str,
        params: Mapping[str, Any] | Encoded | None = None,
        *,
        timeout: float | None = None,
        encoded: bool = False,
    ) -> Any:
        return self._bridge.call(self._async.call, method, params, timeout=timeout, encoded=encoded)

    def methods(self, *, timeout: float | None = None) -> dict[str, dict[str, Any]]:
        return self._bridge.call(self._async.methods, timeout=timeout)

    def stream(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        window: int = DEFAULT_WINDOW,
        window_bytes: int = DEFAULT_WINDOW_BYTES,
    ) -> BackendStream:
        """A generator method's items as it yields them (see ``AsyncBackend.stream``).

        >>> for n in backend.stream("count", {"n": 5}):            # doctest: +SKIP
        ...     print(n)
        """
        stream = self._async.stream(
            method, params, timeout=timeout, window=window, window_bytes=window_bytes
        )
        return BackendStream(self._bridge, stream)

    def restart(self) -> None:
        self._bridge.call(self._async.restart)

    def terminate(self) -> None:
        """Shut the backend down; idempotent, and a no-op once the bridge is closed."""
        try:
            self._bridge.call(self._async.terminate)
        except BridgeClosed:
            pass  # the bridge is closed, and closing it terminated its backends

    def on(self, event: str, handler: Handler) -> Callable[[], None]:
        """Call ``handler(data)`` for every *event*; returns a function that unsubscribes."""
        check_callable(handler, "the handler")  # the async API's check, before wrapping
        undo = self._bridge.call(_on_loop, self._async.on, event, _off_loop(handler, "the handler"))
        return lambda: self._bridge.call(_on_loop, undo)

    def on_any(self, handler: Callable[[str, Any], Any]) -> Callable[[], None]:
        """Call ``handler(event, data)`` for every event of every type."""
        check_callable(handler, "the handler")
        undo = self._bridge.call(_on_loop, self._async.on_any, _off_loop(handler, "the handler"))
        return lambda: self._bridge.call(_on_loop, undo)


class BackendStream:
    """The blocking twin of ``AsyncBackendStream``: an iterator of a generator method's items.

    Each trip to the bridge's loop brings every item already there. ``close()`` (or leaving
    ``with``, or dropping the iterator after ``break``) closes the generator in the kernel.
    """

    def __init__(self, bridge: Bridge, stream: AsyncBackendStream) -> None:
        self._bridge = bridge
        self._async = stream
        self._batch: collections.deque[Any] = collections.deque()

    def __repr__(self) -> str:
        return repr(self._async).replace("AsyncBackendStream", "BackendStream", 1)

    def __iter__(self) -> BackendStream:
        return self

    def __next__(self) -> Any:
        if not self._batch:
            self._batch.extend(self._bridge.call(self._async.take))
            if not self._batch:
                raise StopIteration
        return self._batch.popleft()

    def __enter__(self) -> BackendStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the generator in the kernel and wait until its finally has run."""
        self._batch.clear()
        try:
            self._bridge.call(self._async.aclose)
        except BridgeClosed:
            pass  # the bridge is closed, and with it the backend


class DownloadStream:
    """The blocking twin of ``FileDownload``: ``with`` opens it (``info`` is then known),
    iterating gives the file's chunks; leaving ``with`` ends the transfer."""

    def __init__(self, bridge: Bridge, download: FileDownload) -> None:
        self._bridge = bridge
        self._async = download
        self._chunks: Any = None

    @property
    def info(self) -> FileInfo | None:
        return self._async.info

    def __enter__(self) -> DownloadStream:
        self._bridge.call(self._async.__aenter__)
        self._chunks = self._async.__aiter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bridge.call(self._async.__aexit__, exc_type, exc, tb)

    def __iter__(self) -> DownloadStream:
        return self

    def __next__(self) -> bytes:
        if self._chunks is None:
            raise BridgeError("enter the download with `with` first")
        try:
            chunk: bytes = self._bridge.call(self._chunks.__anext__)
        except StopAsyncIteration:
            raise StopIteration from None
        return chunk


async def _chunks_in_thread(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """A blocking iterator's chunks, each taken in a worker thread (it may read a file)."""
    while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
        yield chunk


async def _on_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run a plain function on the bridge's loop thread, where the async objects live."""
    return fn(*args)


@atexit.register
def _stop_portals() -> None:
    # A Bridge left open at exit: its daemon loop thread would die mid-shutdown. The reaper
    # would still end the kernels; stopping the loops here just keeps exit quiet.
    for portal in list(_open_portals):
        portal.stop()
