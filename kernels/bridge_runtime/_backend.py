"""Persistent backends, kernel side: ``PythonBridge`` and the comm that carries its calls.

A backend script defines a subclass of ``PythonBridge`` and calls ``run()``:

    class MyBackend(PythonBridge):
        def increment(self):
            self.counter += 1
            return {"count": self.counter}

    if __name__ == "__main__":
        backend = MyBackend()
        backend.run()

In a kernel, ``run()`` registers the backend and returns at once: the kernel stays free, and
``backend`` stays in its namespace for anyone who attaches to look at it. The host then opens
a comm to target ``kernel-bridge.backend``; on it travel (``data`` of each comm message):

    host -> kernel  {"id": 7, "method": "increment", "params": {...}}    a call
                    {"cancel": 7}                                      its timeout passed
                    {"id": 8, "method": "count", "params": {...},
                     "stream": {"items": 128, "bytes": 8388608}}        a stream's call
                    {"ack": 8, "taken": 5}           the host's consumer has taken 5 items
    kernel -> host  {"hello": {"class": ..., "name": ..., "pid": ...}}  answer to comm_open,
                    and again when run() is called anew: the new backend takes the comm
                    {"id": 7, "result": ...}  or  {"id": 7, "error": {"ename", "evalue",
                    "traceback"}}
                    {"events": [{"event": type, "data": ..., "nbuf": n}, ...]}
                    (with a stream's items among them: {"stream": 8, "data": ..., "nbuf": n})
                    {"id": 8, "end": 5}  a stream's generator finished after 5 items, or
                    {"id": 8, "closed": true}  closed at the host's request (its finally ran)

A generator method (sync or async) called with ``"stream"`` sends its items as it makes
them, never more than the window ahead of what the host has taken: the generator is not
advanced until the host acknowledges. Called without it, its items come back as one list.

Binary values travel as comm buffers (see ``_wire``); an event with ``nbuf`` owns the next *n*
buffers of its message. Events are batched: under load many go in one message.

Outside a kernel (``python script.py``) ``run()`` serves the same requests as newline JSON
on stdin/stdout, as the older subprocess bridge did, one JSON object a line, events as
``{"event": type, "data": ...}``.

Sync methods run on a worker thread (``concurrent = True``: a pool of them), so the kernel's
shell stays free to answer a person inspecting the backend during a long call; async methods
run on the kernel's event loop.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import ctypes
import inspect
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from . import _wire
from .protocol import BACKEND_COMM, METHODS

PENDING_EVENTS = 10_000  # events kept while no host is connected (oldest dropped first)
BATCH_BYTES = 4 << 20  # a batch of events and stream items is split past this many bytes
STREAM_ITEMS = (1, 10_000)  # the range of a stream's window, in items ...
STREAM_BYTES = (1, 1 << 30)  # ... and in bytes
INTERRUPT_GRACE = 1.0  # seconds a timed-out call on a thread gets before its worker is replaced
LINE_LIMIT = 8192  # output without a newline is sent once this long
BATCH_WINDOW = 0.002  # under a stream of events, gather them this long into one message

log = logging.getLogger("bridge_runtime.backend")

_HERE = (__file__, _wire.__file__)  # frames left out of tracebacks sent to the host
# Called with (type, data) for every event a backend of this kernel sends, before it goes to
# the host; each must be quick and never raise (``_magic``'s watches, see ``add_tap``).
_TAPS: tuple[Callable[[str, Any], None], ...] = ()  # replaced whole, never changed in place
_CURRENT: contextvars.ContextVar[_Call | None] = contextvars.ContextVar(
    "bridge_backend_call", default=None
)


class CallInterrupted(BaseException):
    """Raised in a method's thread when the host gave up on the call (its timeout passed).

    A BaseException, so the method's own ``except Exception`` does not swallow it.
    """


def _raise_in_thread(ident: int, exc: type[BaseException] | None) -> None:
    # CPython delivers it at the thread's next bytecode: a pure-Python loop stops at once, a
    # blocking C call (time.sleep, a socket read) only when it returns. None clears a pending one.
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(exc) if exc is not None else None
    )


class _Call:
    """One request being served."""

    __slots__ = (
        "flow",
        "fn",
        "future",
        "id",
        "is_async",
        "kwargs",
        "lock",
        "name",
        "state",
        "thread",
    )

    def __init__(
        self,
        id: Any,
        name: str,
        fn: Callable[..., Any],
        kwargs: dict[str, Any],
        flow: _Flow | None = None,
    ):
        self.id = id
        self.name = name
        self.fn = fn
        self.kwargs = kwargs
        self.flow = flow  # a stream's window; None for a plain call
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)
        self.lock = threading.Lock()
        self.state = "queued"  # queued -> running -> done; or cancelled at any point
        self.thread: int | None = None
        self.future: Any = None  # the asyncio task or concurrent future of an async method


class _Flow:
    """A stream's window: how far the generator may run ahead of the host's consumer.

    The host says how many items it has taken (``{"ack": id, "taken": n}``); the generator is
    advanced only while fewer than *items* items and fewer than *size* bytes are sent and not
    yet taken (one item always may be in flight, however big). So a slow consumer holds the
    generator back instead of letting its items pile up in memory on either side.
    """

    def __init__(self, items: int, size: int) -> None:
        self.items = items
        self.size = size
        self.sent = 0
        self.taken = 0
        self.in_flight: collections.deque[int] = collections.deque()  # sizes, sent not taken
        self.in_flight_bytes = 0
        self.cancelled = False
        self.cond = threading.Condition()
        self.waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def _open(self) -> bool:  # with self.cond held
        ahead = self.sent - self.taken
        return ahead == 0 or (ahead < self.items and self.in_flight_bytes < self.size)

    def sent_one(self, size: int) -> None:
        with self.cond:
            self.sent += 1
            self.in_flight.append(size)
            self.in_flight_bytes += size

    def take(self, taken: int) -> None:
        """The host has taken *taken* items in all (from the comm's thread)."""
        with self.cond:
            while self.taken < min(taken, self.sent):
                self.taken += 1
                self.in_flight_bytes -= self.in_flight.popleft()
            self._wake()

    def cancel(self) -> None:
        with self.cond:
            self.cancelled = True
            self._wake()

    def _wake(self) -> None:  # with self.cond held
        self.cond.notify_all()
        waiters, self.waiters = self.waiters, []
        for loop, future in waiters:
            loop.call_soon_threadsafe(_resolve, future)

    def wait(self) -> None:
        """In a sync generator's thread: until the window is open."""
        with self.cond:
            while not self._open():
                if self.cancelled:
                    raise CallInterrupted()
                self.cond.wait()

    async def wait_async(self) -> None:
        """In an async generator's task: until the window is open."""
        while True:
            with self.cond:
                if self.cancelled:
                    raise asyncio.CancelledError()
                if self._open():
                    return
                future = asyncio.get_running_loop().create_future()
                self.waiters.append((future.get_loop(), future))
            await future


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # a cancelled task's wait may be cancelled already
        future.set_result(None)


class _Ended:
    """What a stream's call ends with: its reply says how many items it sent."""

    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count


# -- what a backend sends ---------------------------------------------------------------------


class _Outbox:
    """Replies and events, in the order they were made, from any thread.

    In a kernel, events wait in a list that a sender thread flushes as one comm message, so
    a burst of events costs one message per batch, not one per event; a reply first flushes
    the events made before it, so a method's events always arrive before its result.
    """

    def __init__(self, *, lines: bool) -> None:
        self.lines = lines  # newline JSON (stdio) rather than comm messages
        self.lock = threading.Lock()
        self.send: Callable[[dict[str, Any], list[Any]], None] | None = None
        self._events: collections.deque[tuple[dict[str, Any], list[Any]]] = collections.deque()
        self.dropped = 0  # events dropped while no host was connected
        self._wake = threading.Event()
        self._sender: threading.Thread | None = None
        self._local = threading.local()

    @property
    def sending(self) -> bool:
        """True in a thread that is sending: what it prints now must not become an event."""
        return bool(getattr(self._local, "sending", False))

    def attach(
        self,
        send: Callable[[dict[str, Any], list[Any]], None],
        first: dict[str, Any] | None = None,
    ) -> None:
        def guarded(data: dict[str, Any], buffers: list[Any]) -> None:
            # A warning printed while sending (by jupyter_client, say) would come back here
            # as an event and wait for the lock this thread holds.
            self._local.sending = True
            try:
                send(data, buffers)
            finally:
                self._local.sending = False

        with self.lock:
            self.send = guarded
            if first is not None:
                guarded(first, [])
            self._flush()

    def detach(self) -> None:
        with self.lock:
            self.send = None

    def event(self, type_: str, data: Any) -> None:
        if self.lines:
            line = _wire.dumps({"event": type_, "data": data})  # encoded now: a later change
            with self.lock:  # to *data* must not change what was sent
                if self.send is not None:
                    self._flush()
                    self.send({"line": line}, [])
                else:
                    self._keep(({"line": line}, []))
            return
        value, buffers = _wire.encode(data)
        item = {"event": type_, "data": value}
        if buffers:
            item["nbuf"] = len(buffers)
        with self.lock:
            if self.send is None:
                self._keep((item, buffers))
            else:
                self._events.append((item, buffers))
        if self._sender is None:
            self._start_sender()
        self._wake.set()

    def encode_item(self, rid: Any, value: Any) -> tuple[dict[str, Any], list[Any], int]:
        """A stream's item, ready to go, and its size; TypeError or ValueError if it cannot
        travel. Encoded now: a later change to *value* must not change what is sent."""
        if self.lines:
            line = _wire.dumps({"id": rid, "item": value})
            return {"line": line}, [], len(line)
        data, buffers, size = _wire.encode_sized(value)
        entry: dict[str, Any] = {"stream": rid, "data": data}
        if buffers:
            entry["nbuf"] = len(buffers)
        return entry, buffers, size

    def item(self, entry: dict[str, Any], buffers: list[Any]) -> None:
        """Send a stream's item after the events made before it (batched with them)."""
        with self.lock:
            if self.send is None:
                return  # the host has gone: the call is being cancelled
            if self.lines:
                self._flush()
                self.send(entry, [])
                return
            self._events.append((entry, buffers))
        if self._sender is None:
            self._start_sender()
        self._wake.set()

    def reply(self, data: dict[str, Any]) -> None:
        if self.lines:
            line = _wire.dumps(data)
            with self.lock:
                if self.send is not None:
                    self._flush()
                    self.send({"line": line}, [])
            return
        value, buffers = _wire.encode(data)
        with self.lock:
            if self.send is not None:
                self._flush()
                self.send(value, buffers)

    def _keep(self, item: tuple[dict[str, Any], list[Any]]) -> None:  # with self.lock held
        # No host yet (or any more): keep the latest PENDING_EVENTS for when one connects.
        if len(self._events) >= PENDING_EVENTS:
            self._events.popleft()
            self.dropped += 1
        self._events.append(item)

    def _flush(self) -> None:  # with self.lock held
        if self.send is None or not self._events:
            return
        if self.lines:
            while self._events:
                self.send(*self._events.popleft())
            return
        while self._events:  # in messages of at most BATCH_BYTES (and one item at least)
            items: list[dict[str, Any]] = []
            buffers: list[Any] = []
            size = 0
            while self._events and (not items or size < BATCH_BYTES):
                item, bufs = self._events.popleft()
                items.append(item)
                buffers.extend(bufs)
                size += sum(memoryview(b).nbytes for b in bufs)
            self.send({"events": items}, buffers)

    def _start_sender(self) -> None:
        with self.lock:
            if self._sender is None:
                self._sender = threading.Thread(
                    target=self._send_loop, name="bridge-backend-events", daemon=True
                )
                self._sender.start()

    def _send_loop(self) -> None:
        last = 0.0
        while True:
            self._wake.wait()
            if time.monotonic() - last < BATCH_WINDOW:
                # Events are coming fast: wait a moment and send them all in one message.
                # A lone event goes at once, so a slow stream keeps its latency.
                time.sleep(BATCH_WINDOW)
            self._wake.clear()
            with self.lock:
                try:
                    self._flush()
                except Exception:
                    log.exception("could not send events")
            last = time.monotonic()


# -- where print() goes -----------------------------------------------------------------------


class _Output:
    """Stands in for sys.stdout/sys.stderr: what a backend method prints becomes an event.

    Output belongs to a backend when it is written during a call (a context variable follows
    the call into its thread or task) or from any thread but the kernel's own (threads a
    backend started, such as a streaming loop). Cells run by a person who attached to the
    kernel print as in any kernel. Lines are kept whole: one event per line, not per write().
    """

    def __init__(self, name: str, original: Any, core: _Core, *, everything: bool) -> None:
        self._name = name
        self._original = original
        self._core = core
        self._everything = everything
        self._local = threading.local()

    def _ours(self) -> bool:
        if self._everything or _CURRENT.get() is not None:
            return True
        thread = threading.current_thread()
        return thread is not threading.main_thread() and not _kernel_thread(thread)

    def write(self, text: str) -> int:
        if self._core.outbox.sending:
            # stdout is the protocol itself in a subprocess: keep it clean there.
            stream = sys.__stderr__ if self._everything else self._original
            return int(stream.write(text)) if stream is not None else len(text)
        if not self._ours():
            return int(self._original.write(text))
        pending = getattr(self._local, "text", "") + text
        cut = pending.rfind("\n") + 1
        if cut == 0 and len(pending) >= LINE_LIMIT:
            cut = len(pending)
        if cut:
            self._core.emit(self._name, pending[:cut])
            pending = pending[cut:]
        self._local.text = pending
        return len(text)

    def flush(self) -> None:
        self.send_pending()
        if not self._ours():
            self._original.flush()

    def send_pending(self) -> None:
        """Send this thread's unfinished line. Not the kernel's stream: ipykernel's flush
        waits on its IOPub thread, a cost every call would pay for output it never made."""
        pending = getattr(self._local, "text", "")
        if pending:
            self._local.text = ""
            self._core.emit(self._name, pending)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


def _kernel_thread(thread: threading.Thread) -> bool:
    """A thread of ipykernel's own (its shell channel, control, subshells, IOPub, heartbeat):
    what it prints is the kernel's (say, the "No such comm" warning when a JupyterLab console
    closes a comm the kernel never had), never the backend's."""
    return type(thread).__module__.startswith("ipykernel.") or thread.name == "IOPub"


def _flush_output() -> None:
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, _Output):
            stream.send_pending()


# -- serving calls ----------------------------------------------------------------------------


class _Workers:
    """Threads that run sync methods (and, one at a time, async ones) off the kernel's shell.

    A timed-out call is interrupted in its thread; if it is stuck in C code and does not end
    within INTERRUPT_GRACE, its thread is left to finish alone and a new one takes its place,
    so the calls behind it are not held up.
    """

    def __init__(self, core: _Core, size: int) -> None:
        self.core = core
        self.size = size
        self.queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self.threads: set[threading.Thread] = set()
        self.retired: set[threading.Thread] = set()  # replaced while stuck in a call
        self.lock = threading.Lock()

    def submit(self, call: _Call) -> None:
        with self.lock:
            while len(self.threads) < self.size:
                self._add()
        self.queue.put(call)

    def _add(self) -> None:
        thread = threading.Thread(target=self._loop, name="bridge-backend-worker", daemon=True)
        self.threads.add(thread)
        thread.start()

    def replace(self, ident: int) -> None:
        with self.lock:
            for thread in self.threads:
                if thread.ident == ident:
                    self.threads.discard(thread)
                    self.retired.add(thread)
                    self._add()
                    return

    def stop(self) -> list[threading.Thread]:
        """Let every worker go once its current call is done; returns them, to join."""
        with self.lock:
            threads = list(self.threads)
            self.threads.clear()
            for _ in threads:
                self.queue.put(None)
        return threads

    def _loop(self) -> None:
        me = threading.current_thread()
        while me not in self.retired:
            try:
                call = self.queue.get()
                if call is None:
                    if me not in self.threads:
                        return  # stopped, after the calls queued before the stop
                    continue  # a stop meant for a worker that was retired meanwhile
                self.core.run_in_thread(call)
            except CallInterrupted:
                pass  # a cancel that landed between calls
            except BaseException:
                log.exception("backend worker error")
        self.retired.discard(me)


class _Core:
    """Everything ``PythonBridge`` does for a backend, kept off the user's class namespace."""

    def __init__(self, backend: PythonBridge, *, lines: bool) -> None:
        self.backend = backend
        self.outbox = _Outbox(lines=lines)
        self.calls: dict[Any, _Call] = {}
        self.calls_lock = threading.Lock()
        self.concurrent = bool(getattr(type(backend), "concurrent", False))
        size = int(getattr(type(backend), "max_workers", 8)) if self.concurrent else 1
        self.workers = _Workers(self, max(1, size))
        self.loop: asyncio.AbstractEventLoop | None = None
        self._public: dict[str, tuple[Callable[..., Any], inspect.Signature | None]] | None = None

    # -- requests --

    def handle(self, data: Any, buffers: list[Any]) -> None:
        """One message from the host."""
        if not isinstance(data, dict):
            return
        if "cancel" in data:
            self.cancel(data["cancel"])
            return
        if "ack" in data:
            with self.calls_lock:
                call = self.calls.get(data["ack"])
            if call is not None and call.flow is not None:
                call.flow.take(int(data.get("taken") or 0))
            return
        rid = data.get("id")
        name = data.get("method")
        try:
            if name == METHODS:
                self.outbox.reply({"id": rid, "result": self.methods()})
                return
            fn, signature = self.resolve(name)
            # Placeholders become bytes and arrays: buffers of this message, or base64 inline
            # (what a host with no binary channel, such as curl over HTTP, sends).
            params = _wire.decode(data.get("params"), buffers)
            kwargs = self.bind(name, signature, {} if params is None else params)
            flow = _stream_flow(name, data.get("stream"))
        except Exception as exc:
            self.outbox.reply({"id": rid, "error": _wire.error_info(exc, skip=_HERE)})
            return
        call = _Call(rid, name, fn, kwargs, flow)
        with self.calls_lock:
            self.calls[rid] = call
        if call.is_async and self.concurrent:
            self.loop_or_fail().call_soon_threadsafe(self.start_task, call)
        else:
            self.workers.submit(call)

    def public(self) -> dict[str, tuple[Callable[..., Any], inspect.Signature | None]]:
        """The methods a host may call: the public functions the subclass defines."""
        if self._public is None:
            out = {}
            cls = type(self.backend)
            for name in dir(cls):
                if name.startswith("_") or hasattr(PythonBridge, name):
                    continue
                attr = inspect.getattr_static(cls, name)
                if isinstance(attr, (staticmethod, classmethod)) or inspect.isfunction(attr):
                    fn = getattr(self.backend, name)
                    try:
                        signature: inspect.Signature | None = inspect.signature(fn)
                    except (TypeError, ValueError):
                        signature = None
                    out[name] = (fn, signature)
            self._public = out
        return self._public

    def methods(self) -> dict[str, dict[str, Any]]:
        return {
            name: {
                "signature": _signature(sig),
                "doc": inspect.getdoc(fn) or "",
                "async": inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn),
                "stream": inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn),
            }
            for name, (fn, sig) in sorted(self.public().items())
        }

    def resolve(self, name: Any) -> tuple[Callable[..., Any], inspect.Signature | None]:
        methods = self.public()
        if isinstance(name, str) and name in methods:
            return methods[name]
        listing = ", ".join(f"{n}{_signature(sig)}" for n, (_, sig) in sorted(methods.items()))
        raise AttributeError(
            f"{type(self.backend).__name__} has no method {name!r}; "
            f"its methods are: {listing or '(none)'}"
        )

    @staticmethod
    def bind(name: str, signature: inspect.Signature | None, params: Any) -> dict[str, Any]:
        if not isinstance(params, dict):
            raise TypeError(
                f"{name}{_signature(signature)}: params must be an object of keyword "
                f"arguments, got {type(params).__name__}"
            )
        if signature is not None:
            try:
                signature.bind(**params)
            except TypeError as exc:
                raise TypeError(f"{name}{_signature(signature)}: {exc}") from None
        return params

    # -- running --

    def _begin(self, call: _Call) -> bool:  # with call.lock held
        if call.state == "cancelled":
            self.dropped(call)
            return False
        call.state = "running"
        return True

    def run_in_thread(self, call: _Call) -> None:
        with call.lock:
            if not self._begin(call):
                return
            call.thread = threading.get_ident()
        token = _CURRENT.set(call)
        try:
            try:
                if call.is_async:  # one at a time: this thread waits for it on the loop
                    value = self._wait_on_loop(call)
                else:
                    value = call.fn(**call.kwargs)
                    if inspect.isgenerator(value):
                        value = self._drain(call, value)
                    elif call.flow is not None:
                        raise _not_a_generator(call, value)
            finally:
                with call.lock:  # from here on, a cancel cannot raise in this thread
                    if call.state == "running":
                        call.state = "done"
                    call.thread = None
                    _raise_in_thread(threading.get_ident(), None)  # one that came too late
        except (CallInterrupted, concurrent.futures.CancelledError, asyncio.CancelledError):
            self.dropped(call)
        except BaseException as exc:
            self.finish(call, error=exc)
        else:
            self.finish(call, value)
        finally:
            _CURRENT.reset(token)
            _flush_output()

    def _wait_on_loop(self, call: _Call) -> Any:
        """Run an async method as a task on the loop and wait until it has ended, however:
        a cancelled one too (so its finally has run before the next call starts)."""
        loop = self.loop_or_fail()
        ended: concurrent.futures.Future[asyncio.Task[Any]] = concurrent.futures.Future()

        def start() -> None:  # on the loop; the task inherits this thread's context (_CURRENT)
            task = loop.create_task(self._run_async(call))
            with call.lock:
                call.future = task  # cancel() cancels it on the loop
                if call.state == "cancelled":
                    task.cancel()
            task.add_done_callback(ended.set_result)

        loop.call_soon_threadsafe(start)
        return ended.result().result()

    async def _run_async(self, call: _Call) -> Any:
        """An async method's value, or an async generator's items (sent, or as a list)."""
        outcome = call.fn(**call.kwargs)
        if inspect.isasyncgen(outcome):
            return await self._drain_async(call, outcome)
        if call.flow is not None:
            outcome.close()  # a coroutine never awaited: no warning about it
            raise _not_a_generator(call, "a coroutine")
        return await outcome

    def _drain(self, call: _Call, gen: Any) -> Any:
        """On the call's thread: a generator's items, sent as a stream or gathered in a list.
        However it ends (done, failed, interrupted), the generator is closed: its finally runs."""
        try:
            if call.flow is None:
                return list(gen)
            count = 0
            while True:
                call.flow.wait()
                try:
                    item = next(gen)
                except StopIteration:
                    return _Ended(count)
                self._send_item(call, item)
                count += 1
        finally:
            gen.close()

    async def _drain_async(self, call: _Call, agen: Any) -> Any:
        """``_drain`` for an async generator, on the loop."""
        try:
            if call.flow is None:
                return [item async for item in agen]
            count = 0
            while True:
                await call.flow.wait_async()
                try:
                    item = await agen.__anext__()
                except StopAsyncIteration:
                    return _Ended(count)
                self._send_item(call, item)
                count += 1
        finally:
            await agen.aclose()

    def _send_item(self, call: _Call, item: Any) -> None:
        assert call.flow is not None
        _flush_output()  # what the generator printed goes before its item
        try:
            entry, buffers, size = self.outbox.encode_item(call.id, item)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{call.name}() yielded a value that cannot travel: {exc}") from None
        call.flow.sent_one(size)  # before it can be acknowledged
        self.outbox.item(entry, buffers)

    def start_task(self, call: _Call) -> None:
        """On the loop: run an async method as a task of its own (``concurrent = True``)."""
        with call.lock:
            if not self._begin(call):
                return
            context = contextvars.copy_context()
            context.run(_CURRENT.set, call)
            call.future = asyncio.get_running_loop().create_task(self._await(call), context=context)

    async def _await(self, call: _Call) -> None:
        try:
            value = await self._run_async(call)
        except asyncio.CancelledError:
            self.dropped(call)
        except BaseException as exc:
            self.finish(call, error=exc)
        else:
            self.finish(call, value)
        finally:
            call.state = "done" if call.state == "running" else call.state
            _flush_output()

    def finish(self, call: _Call, value: Any = None, *, error: BaseException | None = None):
        _flush_output()  # what the method printed goes before its result
        self.forget(call)
        if call.state == "cancelled":
            return  # the host has given up on it: a late reply must reach no one
        if error is None:
            if isinstance(value, _Ended):
                self.outbox.reply({"id": call.id, "end": value.count})
                return
            try:
                self.outbox.reply({"id": call.id, "result": value})
                return
            except (TypeError, ValueError) as exc:
                error = TypeError(f"{call.name}() returned a value that cannot travel: {exc}")
        self.outbox.reply({"id": call.id, "error": _wire.error_info(error, skip=_HERE)})

    def forget(self, call: _Call) -> None:
        with self.calls_lock:
            self.calls.pop(call.id, None)

    def dropped(self, call: _Call) -> None:
        """The host gave up on *call*: no reply, but a stream's host hears that it is closed
        (its generator's finally has run), which ``aclose()`` on the host waits for."""
        self.forget(call)
        if call.flow is not None:
            self.outbox.reply({"id": call.id, "closed": True})

    def cancel(self, rid: Any) -> None:
        with self.calls_lock:
            call = self.calls.get(rid)
        if call is None:
            return
        with call.lock:
            was = call.state
            call.state = "cancelled"
            future, ident = call.future, call.thread
            if was != "running":
                return
            if isinstance(future, asyncio.Future):
                future.get_loop().call_soon_threadsafe(future.cancel)
            elif future is not None:
                future.cancel()  # the loop cancels the task; the waiting thread is let go
            elif ident is not None:
                _raise_in_thread(ident, CallInterrupted)
        if call.flow is not None:
            call.flow.cancel()  # a generator waiting for the host's window stops waiting
        if ident is not None and future is None:
            timer = threading.Timer(INTERRUPT_GRACE, self._unstick, (call, ident))
            timer.daemon = True
            timer.start()

    def _unstick(self, call: _Call, ident: int) -> None:
        if call.thread == ident:  # still in the method: blocked in C, deaf to the interrupt
            log.warning("%s() ignored its interrupt; its thread is left to finish", call.name)
            self.workers.replace(ident)

    def loop_or_fail(self) -> asyncio.AbstractEventLoop:
        if self.loop is None:
            raise RuntimeError("async methods need run() to have been called")
        return self.loop

    # -- events and output --

    def emit(self, type_: str, data: Any) -> None:
        for tap in _TAPS:  # a person watching (``%bridge events``): a look, not a detour
            tap(type_, data)
        self.outbox.event(type_, data)

    def capture_output(self, *, everything: bool) -> None:
        import logging as logging_

        for name in ("stdout", "stderr"):
            current = getattr(sys, name)
            if isinstance(current, _Output):
                continue
            proxy = _Output(name, current, self, everything=everything)
            setattr(sys, name, proxy)
            # Handlers made before run() (logging.basicConfig) hold the stream itself.
            loggers = [logging_.getLogger(), *logging_.Logger.manager.loggerDict.values()]
            for logger in loggers:
                for handler in getattr(logger, "handlers", ()):
                    if getattr(handler, "stream", None) is current:
                        handler.setStream(proxy)

    # -- connections --

    def hello(self) -> dict[str, Any]:
        return {
            "hello": {
                "class": type(self.backend).__name__,
                "name": _name_in_main(self.backend),
                "pid": os.getpid(),
                "concurrent": self.concurrent,
            }
        }

    def detach(self, reason: str | None = None) -> None:
        """Stop serving: the host left, or (with *reason*) a new backend took the connection;
        its pending calls then fail with *reason* rather than waiting for their timeout."""
        with self.calls_lock:
            pending = list(self.calls)
        for rid in pending:
            self.cancel(rid)  # first: a cancelled call sends no reply of its own
            if reason is not None:
                self.outbox.reply({"id": rid, "error": _wire.error_info(RuntimeError(reason))})
        self.outbox.detach()
        self.backend._running = False
        self.workers.stop()


def _stream_flow(name: str, stream: Any) -> _Flow | None:
    """The window a stream's call asks for, checked; None for a plain call."""
    if stream is None:
        return None
    if not isinstance(stream, dict):
        raise TypeError(f"{name}(): stream must be an object, got {type(stream).__name__}")
    window = []
    for key, (low, high) in (("items", STREAM_ITEMS), ("bytes", STREAM_BYTES)):
        value = stream.get(key, high if key == "bytes" else 128)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ValueError(f"{name}(): stream.{key} must be an int from {low} to {high}")
        window.append(value)
    return _Flow(*window)


def _not_a_generator(call: _Call, value: Any) -> TypeError:
    kind = value if isinstance(value, str) else type(value).__name__
    return TypeError(
        f"{call.name}() is not a generator method (it gave {kind}): only a method that "
        "yields can be streamed; call it instead"
    )


def _signature(signature: inspect.Signature | None) -> str:
    return "(...)" if signature is None else str(signature)


def _name_in_main(obj: Any) -> str | None:
    main = sys.modules.get("__main__")
    shell = _kernel_shell()
    namespaces = [getattr(shell, "user_ns", None), getattr(main, "__dict__", None)]
    for ns in namespaces:
        for name, value in list((ns or {}).items()):
            if value is obj and not name.startswith("_"):
                return str(name)
    return None


# -- the class users subclass -----------------------------------------------------------------


class PythonBridge:
    """Base class of a backend: its public methods are what the host can call.

    Class attributes: ``concurrent = True`` runs sync methods on a pool of ``max_workers``
    threads, so a slow call does not hold up the others (default: one at a time, in order).
    ``self._running`` is True until the backend is terminated.

    >>> class Echo(PythonBridge):
    ...     def echo(self, data):
    ...         return {"echo": data}
    """

    concurrent = False
    max_workers = 8

    def __init__(self) -> None:
        self._running = True
        self.__core: _Core | None = None

    def _bridge_core(self) -> _Core:
        core = self.__dict__.get("_PythonBridge__core")
        if core is None:  # a subclass that never called super().__init__()
            if "_running" not in self.__dict__:
                self._running = True
            core = self.__core = _Core(self, lines=_kernel_shell() is None)
        return core

    def send_event(self, type: str, data: Any = None) -> None:
        """Push an event to the host; safe from any thread. *data* is JSON (binary allowed)."""
        if not isinstance(type, str):
            raise TypeError(f"send_event(): the event type must be a str, got {type!r}")
        self._bridge_core().emit(type, data)

    def run(self) -> None:
        """Serve the host: register with the kernel (returns at once), or serve stdin/stdout."""
        core = self._bridge_core()
        shell = _kernel_shell()
        if shell is None:
            _serve_lines(self, core)
            return
        try:
            core.loop = asyncio.get_running_loop()
        except RuntimeError:
            core.loop = shell.kernel.io_loop.asyncio_loop
        core.capture_output(everything=False)
        previous, _REGISTRY.backend = _REGISTRY.backend, self
        if previous is not None and previous is not self:
            # Run again (a person re-running the script in an attached kernel): the host's
            # connection passes to the new backend, which the host serves from now on.
            previous._bridge_core().detach(
                f"{type(self).__name__}.run() replaced the backend during this call"
            )
            if _REGISTRY.send is not None:
                core.outbox.attach(_REGISTRY.send, core.hello())
        install()


def add_tap(tap: Callable[[str, Any], None]) -> Callable[[], None]:
    """Have ``tap(type, data)`` called for every event sent from now on, on the sending
    thread, alongside its delivery to the host; returns a function that removes it."""
    global _TAPS
    _TAPS = (*_TAPS, tap)

    def remove() -> None:
        global _TAPS
        _TAPS = tuple(t for t in _TAPS if t is not tap)

    return remove


def current_backend() -> PythonBridge | None:
    """The backend that called run() last in this kernel: the one the host's calls reach."""
    return _REGISTRY.backend


def host_connected() -> bool:
    """True while a host's comm is open to this kernel's backend."""
    return _REGISTRY.send is not None


# -- in a kernel ------------------------------------------------------------------------------


class _Registry:
    backend: PythonBridge | None = None  # the one run() last, which the host's calls reach
    send: Callable[[dict[str, Any], list[Any]], None] | None = None  # to the host's comm


_REGISTRY = _Registry()


def _kernel_shell() -> Any:
    """The IPython shell of the ipykernel we run in, or None outside a kernel."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return None
    shell = ipython.get_ipython()
    return shell if getattr(shell, "kernel", None) is not None else None


def _on_comm_open(comm: Any, msg: Any) -> None:
    backend = _REGISTRY.backend
    if backend is None:
        error = RuntimeError(
            "no backend here: the script did not call run() on a PythonBridge "
            "(under `if __name__ == '__main__':`?)"
        )
        comm.send({"error": _wire.error_info(error)})
        comm.close()
        return

    def current() -> _Core | None:  # whichever backend run() last: calls go to it
        return _REGISTRY.backend._bridge_core() if _REGISTRY.backend is not None else None

    def on_msg(msg: Any) -> None:
        core = current()
        if core is not None:
            core.handle(msg["content"].get("data"), msg.get("buffers") or [])

    def send(data: dict[str, Any], buffers: list[Any]) -> None:
        comm.send(data, buffers=buffers or None)

    def on_close(msg: Any) -> None:
        core = current()
        if _REGISTRY.send is send and core is not None:  # not an older comm, long replaced
            _REGISTRY.send = None
            core.detach()

    comm.on_msg(on_msg)
    comm.on_close(on_close)
    _REGISTRY.send = send
    core = backend._bridge_core()
    core.outbox.attach(send, core.hello())


def install() -> None:
    """Listen for the host's backend comm (idempotent; the extension calls it at start-up)."""
    import comm

    manager = comm.get_comm_manager()
    if manager.targets.get(BACKEND_COMM) is not _on_comm_open:
        manager.register_target(BACKEND_COMM, _on_comm_open)


# -- outside a kernel: newline JSON on stdin/stdout -------------------------------------------


def _serve_lines(backend: PythonBridge, core: _Core) -> None:
    """The older bridge's protocol: requests on stdin, replies and events on stdout."""
    out = sys.stdout
    loop = asyncio.new_event_loop()  # async methods run here, on a thread of their own
    threading.Thread(target=loop.run_forever, name="bridge-backend-loop", daemon=True).start()
    core.loop = loop
    core.capture_output(everything=True)  # stdout is the protocol: print() becomes events

    def send(data: dict[str, Any], buffers: list[Any]) -> None:
        out.write(data["line"] + "\n")
        out.flush()

    core.outbox.attach(send)  # no greeting: an old host reads replies and events only
    try:
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            try:
                request = _wire.loads(line)
            except ValueError as exc:
                core.outbox.reply({"id": None, "error": _wire.error_info(exc)})
                continue
            core.handle(request, [])
    finally:
        backend._running = False
        for thread in core.workers.stop():
            thread.join()  # replies to what was asked before stdin closed
        _flush_output()
