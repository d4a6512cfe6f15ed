"""Bridge and Session: the blocking API, a thin layer over AsyncBridge on a loop thread it owns.

The way starlette's TestClient uses a blocking portal: every call is a coroutine run on the
bridge's own event loop in its own thread, so a blocking call works from plain code and from
inside a running event loop (a Jupyter cell) alike, with no nest_asyncio and no loop rebinding.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import functools
import inspect
import logging
import os
import queue
import threading
import weakref
from collections.abc import Callable, Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from bridge.api.bridge import AsyncBridge, AsyncSession, AttestCallback, Limits
from bridge.api.outputs import OutputCallback
from bridge.api.packages import InstallResult
from bridge.backends.backend import AsyncBackend, Handler
from bridge.core.errors import BridgeClosed, BridgeError
from bridge.core.files import DEFAULT_MAX_SCRIPT
from bridge.core.results import DEFAULT_MAX_OUTPUT, ExecutionResult
from bridge.core.validate import check_callable

T = TypeVar("T")

_open_portals: weakref.WeakSet[Portal] = weakref.WeakSet()


class Portal:
    """An event loop in a daemon thread, and a way to run coroutines on it and wait."""

    def __init__(self, name: str = "kernel-bridge") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        _open_portals.add(self)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(
        self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        """Start ``fn(*args, **kwargs)`` on the loop; the future gives its outcome."""
        if self.loop.is_closed():
            raise BridgeClosed("the bridge is closed")
        return asyncio.run_coroutine_threadsafe(fn(*args, **kwargs), self.loop)

    def call(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kwargs: Any) -> T:
        if threading.current_thread() is self._thread:
            raise BridgeError(
                "a blocking Bridge cannot be called from its own callbacks; "
                "use the AsyncBridge inside callbacks, or hand the work to another thread"
            )
        future = self.submit(fn, *args, **kwargs)
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()  # the call is cancelled, its kernel interrupted
            raise

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


def _off_loop(callback: OutputCallback | None) -> OutputCallback | None:
    """A plain *callback* made to run in a worker thread: the loop thread reads the kernel
    and must not block, and a callback there could not call the blocking API. The relay
    awaits each in turn, so they still run one at a time, in order."""
    if callback is None or inspect.iscoroutinefunction(callback):
        return callback
    check_callable(callback, "on_output")

    async def in_thread(output: dict[str, Any]) -> Any:
        return await asyncio.to_thread(callback, output)

    return in_thread


class _BlockingCalls:
    """execute, evaluate and execute_file, shared by Bridge and Session: each runs the async
    twin's method on the bridge's loop thread and waits.

    *on_output* (see ``AsyncBridge.execute``) hears each output as the kernel makes it. A plain
    function runs in a worker thread, one output at a time in order, and the call returns once
    it has handled the last, so it may block, print, or use the Bridge (not the Session that is
    running the call: it waits for the callback). A coroutine function runs on the loop thread.
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
            on_output=_off_loop(on_output),
        )

    def evaluate(
        self, expr: str, *, timeout: float | None = None, on_output: OutputCallback | None = None
    ) -> ExecutionResult:
        """The value of one expression: ``b.evaluate("1 + 2 * 3").value == 7``."""
        return self._call(
            self._async.evaluate, expr, timeout=timeout, on_output=_off_loop(on_output)
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
            on_output=_off_loop(on_output),
        )


class Bridge(_BlockingCalls):
    """The blocking twin of ``AsyncBridge``; same arguments, same methods.

    >>> with bridge.Bridge(pool_size=2) as b:                  # doctest: +SKIP
    ...     print(b.execute("print('hi')").stdout)
    hi
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
        gateway_url: str | None = None,
        gateway_token: str | None = None,
        gateway_kernel_name: str | None = None,
        fork_server: bool = True,
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
            on_attest=on_attest,
            startup_timeout=startup_timeout,
            gateway_url=gateway_url,
            gateway_token=gateway_token,
            gateway_kernel_name=gateway_kernel_name,
            fork_server=fork_server,
            limits=limits,
            max_waiting=max_waiting,
        )
        self._portal: Portal | None = None
        self._closing = False
        self._lock = threading.Lock()

    @property
    def async_bridge(self) -> AsyncBridge:
        """The AsyncBridge underneath (its coroutines run on ``self.loop``)."""
        return self._async

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._get_portal().loop

    def _get_portal(self) -> Portal:
        with self._lock:
            if self._portal is None:
                if self._async._closed or self._closing:
                    raise BridgeClosed("the bridge is closed")
                self._portal = Portal()
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
            portal = Portal()
        try:
            portal.call(self._async.aclose)
        finally:
            portal.stop()

    @property
    def python(self) -> str:
        return self._async.python

    def kernel_language(self, name: str) -> str | None:
        """The language of the kernel spec *name*: ``b.kernel_language("python3") == "python"``."""
        return self._call(self._async.kernel_language, name)

    def session(
        self,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        root: str | os.PathLike[str] | None = None,
        limits: Limits | None = None,
    ) -> Session:
        """A blocking session: ``with b.session() as s: s.execute("x = 1")`` (*env*, *cwd*,
        *root* and *limits* as for ``AsyncBridge.session``)."""
        return Session(self, self._async.session(env=env, cwd=cwd, root=root, limits=limits))

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
        self._bridge.call(self._async.start)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self, *, wait: bool = True) -> None:
        """Shut the session's kernel down (see ``AsyncSession.aclose``)."""
        self._bridge.call(self._async.aclose, wait=wait)

    def restart(self) -> None:
        self._bridge.call(self._async.restart)

    @property
    def kernel_id(self) -> str:
        return self._async.kernel_id

    @property
    def connection_file(self) -> str:
        return self._async.connection_file

    def run_cell(self, source: str, *, timeout: float | None = None) -> ExecutionResult:
        """Run a notebook cell as a notebook front end does (see ``AsyncSession.run_cell``)."""
        return self._bridge.call(self._async.run_cell, source, timeout=timeout)


class Backend:
    """The blocking twin of ``AsyncBackend``. Event handlers run on a thread of the backend's
    own, one at a time in order of arrival, so a handler may call the backend itself."""

    def __init__(self, bridge: Bridge, backend: AsyncBackend) -> None:
        self._bridge = bridge
        self._async = backend
        self._events: queue.SimpleQueue[tuple[Handler, Any] | None] | None = None
        self._lock = threading.Lock()
        bridge.call(_on_loop, backend.on_terminate, self._stop_events)

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

    def call(
        self, method: str, params: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        return self._bridge.call(self._async.call, method, params, timeout=timeout)

    def methods(self, *, timeout: float | None = None) -> dict[str, dict[str, Any]]:
        return self._bridge.call(self._async.methods, timeout=timeout)

    def restart(self) -> None:
        self._bridge.call(self._async.restart)

    def terminate(self) -> None:
        """Shut the backend down; idempotent, and a no-op once the bridge is closed."""
        try:
            self._bridge.call(self._async.terminate)
        except BridgeClosed:
            pass  # the bridge is closed, and closing it terminated its backends
        self._stop_events()

    def on(self, event: str, handler: Handler) -> Callable[[], None]:
        """Call ``handler(data)`` on the backend's handler thread for every *event*; returns a
        function that unsubscribes."""
        check_callable(handler, "the handler")  # the async API's check, before wrapping
        events = self._event_queue()

        def forward(data: Any) -> None:
            events.put((handler, data))

        undo = self._bridge.call(_on_loop, self._async.on, event, forward)
        return lambda: self._bridge.call(_on_loop, undo)

    def on_any(self, handler: Callable[[str, Any], Any]) -> Callable[[], None]:
        """Call ``handler(event, data)`` on the handler thread for every event of every type."""
        check_callable(handler, "the handler")
        events = self._event_queue()

        def forward(event: str, data: Any) -> None:
            events.put((functools.partial(handler, event), data))

        undo = self._bridge.call(_on_loop, self._async.on_any, forward)
        return lambda: self._bridge.call(_on_loop, undo)

    def _event_queue(self) -> queue.SimpleQueue[tuple[Handler, Any] | None]:
        with self._lock:
            if self._events is None:
                self._events = queue.SimpleQueue()
                thread = threading.Thread(
                    target=_run_handlers,
                    args=(self._events,),
                    name="kernel-bridge-backend-events",
                    daemon=True,
                )
                thread.start()
            return self._events

    def _stop_events(self) -> None:
        with self._lock:
            events, self._events = self._events, None
        if events is not None:
            events.put(None)


async def _on_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run a plain function on the bridge's loop thread, where the async objects live."""
    return fn(*args)


def _run_handlers(events: queue.SimpleQueue[tuple[Handler, Any] | None]) -> None:
    while True:
        item = events.get()
        if item is None:
            return
        handler, data = item
        try:
            outcome = handler(data)
            if inspect.iscoroutine(outcome):
                asyncio.run(outcome)
        except Exception:
            logging.getLogger("bridge.backend").exception("an event handler failed")


@atexit.register
def _stop_portals() -> None:
    # A Bridge left open at exit: its daemon loop thread would die mid-shutdown. The reaper
    # would still end the kernels; stopping the loops here just keeps exit quiet.
    for portal in list(_open_portals):
        portal.stop()
