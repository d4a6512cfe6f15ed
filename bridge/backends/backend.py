"""Persistent backends, host side: a user's script in a kernel of its own, called by method name.

``AsyncBridge.spawn()`` starts a kernel (outside the warm pool: a backend owns its kernel for
life), runs the script in it as ``__main__``, and opens a comm to the backend the script
registered with ``run()``. Calls, replies and events then travel on that comm; the protocol
and the kernel side are in ``kernels/bridge_runtime/_backend.py``, and both ends encode
values with the same file, ``kernels/bridge_runtime/_wire.py``.

Every call has a request id, so a reply reaches its own caller however many tasks call at
once, and a reply that comes after its call gave up is dropped. A dead kernel fails the
pending calls at once (the Kernel sees the death through a pidfd), fires the ``exit`` event
and, with ``restart=True``, is replaced by a fresh kernel running the script again.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import functools
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from bridge.backends.stream import (
    DEFAULT_WINDOW,
    DEFAULT_WINDOW_BYTES,
    AsyncBackendStream,
    StreamChannel,
)
from bridge.core import wire
from bridge.core.callbacks import CallbackRunner
from bridge.core.errors import (
    BackendError,
    BackendLost,
    BackendStartError,
    BridgeClosed,
    BridgeError,
    CallTimeout,
    ExecutionTimeout,
    ExitStatus,
    InvalidRequest,
    KernelDied,
    KernelStartError,
)
from bridge.core.kernel import Kernel
from bridge.core.limits import KernelLimits
from bridge.core.pool import Factory
from bridge.core.validate import (
    check_callable,
    check_env,
    check_name,
    check_paths,
    check_timeout,
)

log = logging.getLogger("bridge.backend")

EVENT_BACKLOG = 1000  # events kept per type until a handler for it is registered
RESTART_LIMIT = 5  # automatic restarts within RESTART_WINDOW before giving up
RESTART_WINDOW = 60.0

Handler = Callable[[Any], Any]


class AsyncBackend:
    """A backend script running in its own kernel; made by ``AsyncBridge.spawn()``.

    >>> async with await b.spawn("kernels/examples/echo_backend.py") as backend:  # doctest: +SKIP
    ...     await backend.call("echo", {"data": "hi"})
    {'echo': 'hi', 'timestamp': ...}

    Events: what the script sends with ``send_event(type, data)``, plus ``stdout`` and
    ``stderr`` (what its methods print, line by line), ``exit`` (its kernel died, or closed
    the backend's connection: ``code``, ``signal``, ``reason``, ``restarting``) and ``restart``
    (``ok``, ``kernel_id`` or ``error``).
    """

    def __init__(
        self,
        factory: Factory,
        path: str,
        *,
        source: str,
        env: Mapping[str, str] | None = None,
        python_paths: Sequence[str | os.PathLike[str]] = (),
        timeout: float,
        restart: bool = False,
        max_output: int,
        name: str | None = None,
        limits: KernelLimits | None = None,
    ) -> None:
        # Read by the caller, in a thread (spawn(): files.read_script blocks).
        self.source, self.path = source, path
        self.limits = limits  # None: the bridge's
        # What people see it as (JupyterLab's session, the messages): the script's file name.
        self.name = Path(self.path).name if name is None else check_name(name)
        self.timeout = timeout
        self.restart_on_exit = bool(restart)
        self._env = check_env(env)
        self._python_paths = check_paths(python_paths)
        self._max_output = max_output
        self._factory = factory
        self._kernel: Kernel | None = None
        self._last_kernel: Kernel | None = None
        self._comm_id = ""
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future[Any], str]] = {}
        self._streams: dict[int, StreamChannel] = {}  # open streams' items, by request id
        self._encoded: set[int] = set()  # calls whose result is relayed as it travelled
        self._handlers: dict[str, list[CallbackRunner]] = {}
        self._any_handlers: list[CallbackRunner] = []
        self._backlog: dict[str, collections.deque[Any]] = {}
        self._lost: BridgeError | None = None  # why calls cannot be served now
        self._restarting: asyncio.Task[None] | None = None
        self._restart_times: collections.deque[float] = collections.deque()
        self._terminating: asyncio.Task[None] | None = None
        self._on_terminate: list[Callable[[], None]] = []
        self.info: dict[str, Any] = {}  # the kernel side's hello: class, name, pid, concurrent
        self.restarts = 0

    def __repr__(self) -> str:
        state = "alive" if self.alive else "terminated" if self.terminated else "down"
        return f"<AsyncBackend {self._label} {state}>"

    @property
    def _label(self) -> str:
        return f"backend {self.name}"

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncBackend:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.terminate()

    async def start(self) -> None:
        """Start the kernel and run the script (``spawn`` does this)."""
        await self._launch()

    @property
    def kernel(self) -> Kernel:
        """The kernel the backend runs in now (the last one, once it is gone)."""
        kernel = self._kernel or self._last_kernel
        if kernel is None:
            raise BridgeClosed(f"{self._label} is not started")
        return kernel

    @property
    def kernel_id(self) -> str:
        return self.kernel.kernel_id

    @property
    def connection_file(self) -> str:
        """For ``jupyter console --existing FILE``: attach and look at the live backend.

        "" for a kernel on a gateway, which keeps its connection file to itself."""
        path = self.kernel.connection_file
        return os.path.abspath(path) if path else ""

    @property
    def alive(self) -> bool:
        """True while calls can be served: started, not terminated, kernel alive."""
        kernel = self._kernel
        return (
            kernel is not None
            and kernel.alive
            and self._lost is None
            and self._restarting is None
            and not self.terminated
        )

    @property
    def terminated(self) -> bool:
        return self._terminating is not None

    async def terminate(self) -> None:
        """Shut the kernel down with its process group; pending calls fail. Idempotent."""
        if self._terminating is None:
            self._terminating = asyncio.ensure_future(self._terminate())
        await asyncio.shield(self._terminating)

    async def _terminate(self) -> None:
        restarting = self._restarting
        if restarting is not None:
            restarting.cancel()
            await asyncio.gather(restarting, return_exceptions=True)
        self._fail_pending(
            lambda method: BridgeClosed(f"{self._label} was terminated during {method}()")
        )
        kernel, self._kernel = self._kernel, None
        try:
            if kernel is not None:
                if kernel.alive:
                    try:
                        kernel.close_comm(self._comm_id)  # the script sees _running = False
                    except BridgeError:
                        pass
                await self._factory.stop(kernel)
        finally:
            for callback in self._on_terminate:
                try:
                    callback()
                except Exception:
                    log.exception("%s: terminate callback failed", self._label)

    async def restart(self) -> None:
        """Replace the kernel with a fresh one running the script again; state starts anew."""
        if self.terminated:
            raise BridgeClosed(f"{self._label} was terminated")
        if self._restarting is None:
            self._restarting = asyncio.ensure_future(
                self._relaunch("restarted by the host", automatic=False)
            )
        await self._restart_over(self._restarting)
        if self.terminated:
            raise BridgeClosed(f"{self._label} was terminated during its restart")
        if self._lost is not None:
            raise copy.copy(self._lost)

    async def _restart_over(self, task: asyncio.Task[None]) -> None:
        """Wait for a restart to end, however it ends: terminate() cancels it, which is no
        cancellation of ours (the caller then finds the backend terminated)."""
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not task.cancelled() or (current is not None and current.cancelling()):
                raise  # our caller was cancelled, not (only) the restart

    # -- start-up --------------------------------------------------------------------------------

    def _kernel_env(self) -> dict[str, str]:
        # As `python script.py` does: the script's folder first on sys.path, then python_paths
        # (but not on a gateway's kernel: the script's folder is on the host, not there).
        local = not self._factory.remote
        paths = [str(Path(self.path).parent)] if local else []
        paths += self._python_paths
        env = dict(self._env)
        base = self._factory.kernel_env()
        pythonpath = [*paths, env.get("PYTHONPATH", ""), base.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in pythonpath if p)
        env["KERNEL_BRIDGE_PYTHON_PATHS"] = os.pathsep.join([*paths, *self._factory.python_paths])
        return env

    async def _launch(self) -> None:
        try:
            kernel = await self._factory.start(env=self._kernel_env(), limits=self.limits)
        except KernelStartError as exc:
            raise BackendStartError(f"{self._label}: its kernel did not start: {exc}") from exc
        try:
            await self._run_script(kernel)
            self._comm_id = await self._connect(kernel)
            if self.terminated:  # terminate() (or the bridge's close) came while we started
                raise BridgeClosed(f"{self._label} was terminated while starting")
        except BaseException:
            await self._factory.stop(kernel, now=True)
            raise
        self._kernel = self._last_kernel = kernel
        self._lost = None
        kernel.on_exit(functools.partial(self._on_exit, kernel))

    async def _run_script(self, kernel: Kernel) -> None:
        meta = {"mode": "exec", "isolate": False, "file": self.path}
        try:
            result = await kernel.execute(
                self.source, timeout=self.timeout, meta=meta, max_output=self._max_output
            )
        except ExecutionTimeout:
            raise BackendStartError(
                f"{self._label}: the script did not finish within {self.timeout:g} s "
                "(in a kernel, run() returns at once; is there a loop at the top level?)"
            ) from None
        except KernelDied as exc:
            output = (exc.result.stdout + exc.result.stderr) if exc.result else ""
            raise BackendStartError(
                f"{self._label}: the kernel died while running the script ({exc.status})"
                + (f"\n{output.rstrip()}" if output.strip() else "")
            ) from None
        for name in ("stdout", "stderr"):
            text = getattr(result, name)
            if text:
                self._dispatch(name, text)
        if result.error is not None:
            err = result.error
            raise BackendStartError(
                f"{self._label}: the script raised {err.ename}: {err.evalue}\n{err.traceback}",
                ename=err.ename,
                evalue=err.evalue,
                traceback=err.traceback,
            )

    async def _connect(self, kernel: Kernel) -> str:
        hello: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def on_exit(status: ExitStatus) -> None:
            if not hello.done():
                hello.set_exception(
                    BackendStartError(f"{self._label}: the kernel died while connecting ({status})")
                )

        undo = kernel.on_exit(on_exit)
        comm_id = kernel.open_comm(
            wire.BACKEND_COMM, {}, functools.partial(self._on_comm, kernel, hello)
        )
        try:
            async with asyncio.timeout(self.timeout):
                self.info = await hello
        except TimeoutError:
            raise BackendStartError(
                f"{self._label}: the kernel did not answer the backend connection within "
                f"{self.timeout:g} s"
            ) from None
        finally:
            undo()
        return comm_id

    # -- messages from the kernel ----------------------------------------------------------------

    def _on_comm(
        self, kernel: Kernel, hello: asyncio.Future[dict[str, Any]], msg: dict[str, Any]
    ) -> None:
        if msg["header"]["msg_type"] == "comm_close":
            if not hello.done():
                hello.set_exception(
                    BackendStartError(f"{self._label}: the kernel closed the backend connection")
                )
            else:
                self._on_closed(kernel)
            return
        data = msg["content"].get("data") or {}
        buffers = msg.get("buffers") or []
        if "events" in data:
            self._on_events(data["events"], buffers)
        elif "id" in data:
            self._on_reply(data, buffers)
        elif hello.done():
            if "hello" in data:  # run() again in the kernel: a new backend took the connection
                self.info = data["hello"] or {}
        else:
            if "hello" in data:
                hello.set_result(data["hello"] or {})
            else:
                error = data.get("error") or {}
                hello.set_exception(
                    BackendStartError(f"{self._label}: {error.get('evalue', 'no backend')}")
                )

    def _on_reply(self, data: dict[str, Any], buffers: list[Any]) -> None:
        entry = self._pending.pop(data["id"], None)
        self._streams.pop(data["id"], None)
        if entry is None:
            log.debug("%s: dropped a reply to call %s, which gave up", self._label, data["id"])
            return
        future, method = entry
        if future.done():
            return
        error = data.get("error")
        if error is not None:
            future.set_exception(
                BackendError(
                    method,
                    str(error.get("ename", "Error")),
                    str(error.get("evalue", "")),
                    str(error.get("traceback", "")),
                )
            )
            return
        if "end" in data or "closed" in data:  # a stream's last word: how many items it sent
            future.set_result(data.get("end"))
            return
        try:
            value = data.get("result")
            if data["id"] in self._encoded:
                future.set_result(wire.Encoded(value, list(buffers)) if buffers else value)
                return
            future.set_result(wire.codec.decode(value, buffers) if buffers else value)
        except Exception as exc:
            future.set_exception(BridgeError(f"the reply of {method}() is unreadable: {exc}"))

    def _on_events(self, events: list[dict[str, Any]], buffers: list[Any]) -> None:
        offset = 0
        for item in events:
            data = item.get("data")
            count = int(item.get("nbuf") or 0)
            if count:
                data = wire.codec.decode(data, buffers[offset : offset + count])
                offset += count
            if "stream" in item:  # an item of a generator method's stream
                channel = self._streams.get(item["stream"])
                if channel is not None:  # else a stream the host closed: dropped
                    channel.put(data)
                continue
            self._dispatch(str(item.get("event")), data)

    # -- events ----------------------------------------------------------------------------------

    @staticmethod
    def to_json(value: Any) -> Any:
        """A value as plain JSON data, binary parts (bytes, arrays) as base64 placeholders, as
        an HTTP answer carries it; TypeError or ValueError if it has no JSON form."""
        return json.loads(wire.codec.dumps(value))

    def on_terminate(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once the backend is terminated (after its kernel is stopped)."""
        check_callable(callback, "the callback")
        self._on_terminate.append(callback)

    def on(self, event: str, handler: Handler) -> Callable[[], None]:
        """Call ``handler(data)`` for every *event*; returns a function that unsubscribes.

        *handler* may be sync or async; it runs on the bridge's event loop, one event at a time
        in order (bridge/core/callbacks.py), so keep a sync one short. Events that came before
        the first handler for their type are delivered to it now (the last 1,000 of each type).
        """
        if not isinstance(event, str) or not event:
            raise InvalidRequest(f"the event type must be a non-empty str, got {event!r}")
        check_callable(handler, "the handler")
        runner = CallbackRunner(handler, f"{self._label}: the handler of {event!r}")
        handlers = self._handlers.setdefault(event, [])
        handlers.append(runner)
        for data in self._backlog.pop(event, ()):
            runner(data)

        def unsubscribe() -> None:
            if runner in handlers:
                handlers.remove(runner)
                runner.cancel()

        return unsubscribe

    def on_any(self, handler: Callable[[str, Any], Any]) -> Callable[[], None]:
        """Call ``handler(event, data)`` for every event of every type (what an event stream
        relays), one at a time in order; returns a function that unsubscribes.

        Events kept for lack of a handler are delivered to it first, type by type.
        """
        check_callable(handler, "the handler")
        runner = CallbackRunner(handler, f"{self._label}: an event handler")
        self._any_handlers.append(runner)
        backlog, self._backlog = self._backlog, {}
        for event, items in backlog.items():
            for data in items:
                runner(event, data)

        def unsubscribe() -> None:
            if runner in self._any_handlers:
                self._any_handlers.remove(runner)
                runner.cancel()

        return unsubscribe

    def _dispatch(self, event: str, data: Any) -> None:
        if event in ("stdout", "stderr") and isinstance(data, str):
            log.info("%s %s: %s", self._label, event, data.rstrip("\n"))
        for any_handler in list(self._any_handlers):
            any_handler(event, data)
        handlers = self._handlers.get(event)
        if not handlers and self._any_handlers:
            return  # delivered: nothing to keep for a later handler
        if not handlers:
            backlog = self._backlog.get(event)
            if backlog is None:
                backlog = self._backlog[event] = collections.deque(maxlen=EVENT_BACKLOG)
            backlog.append(data)
            return
        for handler in list(handlers):
            handler(data)

    # -- calls -----------------------------------------------------------------------------------

    async def call(
        self,
        method: str,
        params: Mapping[str, Any] | wire.Encoded | None = None,
        *,
        timeout: float | None = None,
        encoded: bool = False,
    ) -> Any:
        """Call *method* with *params* as keyword arguments and return its result.

        With *encoded*, the result comes as it travelled, a ``bridge.core.wire.Encoded``
        (JSON with placeholders, and its buffers): what a front end relays without decoding
        it; *params* may be one too.

        Raises ``BackendError`` if it raised, ``CallTimeout`` past *timeout* (the method is
        interrupted), ``KernelDied`` if the kernel dies, ``BridgeClosed`` once terminated.
        """
        data, buffers = self._request(method, params)
        seconds = check_timeout(timeout, self.timeout)
        rid = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        sent: tuple[Kernel, str] | None = None
        try:
            async with asyncio.timeout(seconds):
                kernel, comm_id = await self._connection()
                self._pending[rid] = (future, method)
                if encoded:
                    self._encoded.add(rid)
                request = {"id": rid, "method": method, "params": data}
                kernel.send_comm(comm_id, request, buffers or None)
                sent = kernel, comm_id
                return await future
        except TimeoutError:
            self._cancel(sent, rid)
            raise CallTimeout(
                f"{self._label}: {method}() ran past its timeout of {seconds:g} s "
                "and was interrupted",
                method=method,
                timeout=seconds,
            ) from None
        except asyncio.CancelledError:
            self._cancel(sent, rid)
            raise
        finally:
            self._pending.pop(rid, None)
            self._encoded.discard(rid)

    def stream(
        self,
        method: str,
        params: Mapping[str, Any] | wire.Encoded | None = None,
        *,
        timeout: float | None = None,
        window: int = DEFAULT_WINDOW,
        window_bytes: int = DEFAULT_WINDOW_BYTES,
    ) -> AsyncBackendStream:
        """The items of the generator method *method*, as it yields them.

        >>> async for n in backend.stream("count", {"n": 5}):      # doctest: +SKIP
        ...     print(n)

        *timeout* bounds the wait for each item; *window* and *window_bytes* bound how far
        the generator runs ahead of the consumer. ``break`` (once the stream is dropped),
        ``aclose()``, leaving ``async with`` or cancelling closes the generator in the
        kernel, so its ``finally`` runs. Nothing is sent until the first item is asked for.
        """
        data, buffers = self._request(method, params)
        for name, value in (("window", window), ("window_bytes", window_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidRequest(f"{method}(): {name} must be a positive int, got {value!r}")
        return AsyncBackendStream(
            self,
            method,
            data,
            buffers,
            timeout=check_timeout(timeout, self.timeout),
            window=min(window, 10_000),
            window_bytes=min(window_bytes, 1 << 30),
        )

    def _request(
        self, method: str, params: Mapping[str, Any] | wire.Encoded | None
    ) -> tuple[Any, list[Any]]:
        """A call's checked method name and its params, encoded (binary parts as buffers)."""
        if not isinstance(method, str) or not method:
            raise InvalidRequest(f"the method name must be a non-empty str, got {method!r}")
        if isinstance(params, wire.Encoded):
            if not isinstance(params.value, dict):
                raise InvalidRequest(f"{method}(): params must be an object of arguments")
            return params.value, list(params.buffers)
        if params is None:
            params = {}
        elif not isinstance(params, Mapping):
            raise InvalidRequest(
                f"{method}(): params must be a mapping of argument names to values, "
                f"got {type(params).__name__}"
            )
        try:
            data, buffers = wire.codec.encode(dict(params))
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"{method}(): params cannot travel: {exc}") from None
        return data, buffers

    async def _start_stream(
        self,
        method: str,
        params: Any,
        buffers: list[Any],
        *,
        timeout: float,
        window: tuple[int, int],
    ) -> tuple[int, StreamChannel]:
        """Send a stream's call; its items and its end then land in the channel."""
        try:
            async with asyncio.timeout(timeout):
                kernel, comm_id = await self._connection()
        except TimeoutError:
            raise CallTimeout(
                f"{self._label}: {method}() could not start within {timeout:g} s",
                method=method,
                timeout=timeout,
            ) from None
        rid = next(self._ids)
        channel = StreamChannel(asyncio.get_running_loop())
        self._pending[rid] = (channel.end, method)
        self._streams[rid] = channel
        stream = {"items": window[0], "bytes": window[1]}
        request = {"id": rid, "method": method, "params": params, "stream": stream}
        try:
            kernel.send_comm(comm_id, request, buffers or None)
        except BaseException:
            self._drop_stream(rid, cancel=False)
            raise
        return rid, channel

    def _ack_stream(self, rid: int, taken: int) -> None:
        if rid in self._streams:
            self._send_quietly({"ack": rid, "taken": taken})

    def _drop_stream(self, rid: int, cancel: bool, keep_end: bool = False) -> None:
        """Forget a stream (unless *keep_end*: its end is awaited); with *cancel*, close its
        generator in the kernel if it has not ended."""
        entry = self._pending.get(rid)
        if cancel and entry is not None and not entry[0].done():
            self._send_quietly({"cancel": rid})
        if not keep_end:
            self._pending.pop(rid, None)
            self._streams.pop(rid, None)

    def _send_quietly(self, data: dict[str, Any]) -> None:
        kernel = self._kernel
        if kernel is not None and kernel.alive:
            try:
                kernel.send_comm(self._comm_id, data)
            except BridgeError:
                pass  # the kernel is going: its death fails what is pending

    def _cancel(self, sent: tuple[Kernel, str] | None, rid: int) -> None:
        if sent is not None and sent[0].alive:
            try:
                sent[0].send_comm(sent[1], {"cancel": rid})
            except BridgeError:
                pass

    async def methods(self, *, timeout: float | None = None) -> dict[str, dict[str, Any]]:
        """The methods the host can call: ``{name: {"signature", "doc", "async", "stream"}}``
        (``stream``: a generator method, for ``stream()``)."""
        result: dict[str, dict[str, Any]] = await self.call(wire.METHODS, timeout=timeout)
        return result

    async def _connection(self) -> tuple[Kernel, str]:
        while True:
            if self.terminated:
                raise BridgeClosed(f"{self._label} was terminated")
            if self._restarting is not None:
                await self._restart_over(self._restarting)
                continue
            if self._lost is not None:
                raise copy.copy(self._lost)  # a fresh exception each time, not one re-raised
            if self._kernel is None:
                raise BridgeClosed(f"{self._label} is not started")
            return self._kernel, self._comm_id

    def _fail_pending(self, error: Callable[[str], BaseException]) -> None:
        pending = list(self._pending.values())
        self._pending.clear()
        for future, method in pending:
            if not future.done():
                future.set_exception(error(method))

    # -- death and restart -----------------------------------------------------------------------

    def _on_exit(self, kernel: Kernel, status: ExitStatus) -> None:
        if kernel is not self._kernel or self.terminated:
            return  # replaced on purpose, or being terminated
        limit = kernel.death_reason
        how = f"{status}: it ran into its {limit}" if limit else str(status)
        self._lost = KernelDied(
            f"{self._label}: its kernel died ({how})"
            + ("; restarting" if self.restart_on_exit else ""),
            status=status,
            reason=limit,
        )
        self._fail_pending(
            lambda method: KernelDied(
                f"{self._label}: its kernel died ({how}) during {method}()",
                status=status,
                reason=limit,
            )
        )
        self._dispatch(
            "exit",
            {
                "code": status.code,
                "signal": status.signal,
                "reason": limit or str(status),
                "restarting": self.restart_on_exit,
            },
        )
        if self.restart_on_exit and self._restarting is None:
            self._restarting = asyncio.ensure_future(self._relaunch(str(status), automatic=True))

    def _on_closed(self, kernel: Kernel) -> None:
        """The kernel closed the comm (code run there did): no calls can be served, though the
        kernel lives on. Not restarted automatically: that was done in the kernel on purpose."""
        if kernel is not self._kernel or self.terminated or self._lost is not None:
            return
        reason = "the kernel closed the backend's connection"
        self._lost = BackendLost(f"{self._label}: {reason}; restart() starts it anew")
        self._fail_pending(lambda method: BackendLost(f"{self._label}: {reason} during {method}()"))
        status = {"code": None, "signal": None, "reason": reason, "restarting": False}
        self._dispatch("exit", status)

    async def _relaunch(self, reason: str, *, automatic: bool) -> None:
        """Stop the current kernel, start a fresh one with the script; say how in an event."""
        try:
            now = time.monotonic()
            times = self._restart_times
            while times and now - times[0] > RESTART_WINDOW:
                times.popleft()
            if automatic and len(times) >= RESTART_LIMIT:  # a crash loop: stop feeding it
                self._lost = KernelDied(
                    f"{self._label} died {len(times) + 1} times within {RESTART_WINDOW:g} s; "
                    "not restarting it again"
                )
                self._dispatch("restart", {"ok": False, "error": str(self._lost)})
                return
            times.append(now)
            old, self._kernel = self._kernel, None
            self._fail_pending(
                lambda method: KernelDied(f"{self._label} was restarted during {method}()")
            )
            if old is not None:
                await self._factory.stop(old, now=True)
            try:
                await self._launch()
            except BridgeError as exc:
                self._lost = exc
                log.error("%s could not be restarted: %s", self._label, exc)
                self._dispatch("restart", {"ok": False, "error": str(exc)})
                return
            self.restarts += 1
            log.info("%s restarted (%s)", self._label, reason)
            self._dispatch(
                "restart",
                {
                    "ok": True,
                    "kernel_id": self.kernel_id,
                    "reason": reason,
                    "restarts": self.restarts,
                },
            )
        finally:
            self._restarting = None
