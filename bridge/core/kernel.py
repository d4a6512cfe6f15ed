"""One kernel: the message router, the execute loop, comms, liveness; over a transport.

The transport (transport.py: local ZeroMQ sockets or a gateway's websocket) reads the shell
and IOPub channels all the time, not only during a call: a reader that falls behind lets
ZeroMQ drop IOPub messages at its high-water mark. Each message goes to the request it answers
by ``parent_header.msg_id`` (as nbclient matches them), comm messages to their comm's handler.
A call is complete when both its reply and its idle status have arrived. The transport says
when the kernel has exited (a local one sees it at once through a pidfd), and a death fails
every pending call with KernelDied instead of leaving it waiting for a reply that will never
come.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bridge.core import wire
from bridge.core.errors import (
    BridgeClosed,
    BridgeError,
    ExecutionTimeout,
    ExitStatus,
    KernelDied,
    KernelStartError,
)
from bridge.core.metrics import KERNEL_DEATHS
from bridge.core.results import (
    DEFAULT_MAX_OUTPUT,
    ExecutionResult,
    OutputCollector,
    OutputListener,
)
from bridge.core.translate import jupyter_client_errors
from bridge.core.transport import Transport, TransportClosed

if TYPE_CHECKING:
    from bridge.core.limits import KernelLimits

log = logging.getLogger("bridge.kernel")

INTERRUPT_GRACE = 1.0  # seconds an interrupted call gets before its kernel is killed
KILL_WAIT = 5.0  # seconds kill() waits for the transport to see the kernel end

CommHandler = Callable[[dict[str, Any]], None]
AttestHook = Callable[[dict[str, Any]], None]  # a listener (see bridge/core/callbacks.py)


class _Fallback(Exception):
    """The runtime cannot run this code from a comm message (top-level await)."""


class _Call:
    """One call in flight: an execute_request, or a bridge comm message run by the runtime."""

    def __init__(self, msg_id: str, code: str, collector: OutputCollector) -> None:
        self.msg_id = msg_id
        self.code = code
        self.collector = collector
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.reply: dict[str, Any] | None = None
        self.idle = False
        self.on_attest: AttestHook | None = None
        self.fallback = False
        self.reads_status = False  # an execute_request call, complete on its idle status
        self.started = time.perf_counter()

    def on_iopub(self, msg_type: str, content: dict[str, Any]) -> None:
        if msg_type == "status":
            if content.get("execution_state") == "idle":
                self.idle = True
                self._check()
        else:
            self.collector.add(msg_type, content)

    def on_reply(self, content: dict[str, Any]) -> None:
        self.reply = content
        self._check()

    def _check(self) -> None:
        if self.reply is not None and self.idle and not self.done.done():
            self.done.set_result(None)

    def fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def result(self, *, capture_variables: bool = False) -> ExecutionResult:
        return self.collector.result(
            code=self.code,
            reply=self.reply,
            duration_ms=self.elapsed_ms(),
            capture_variables=capture_variables,
        )


class Kernel:
    """A running kernel and everything the host needs to talk to it.

    Made by a factory (``KernelFactory.start()``, ``GatewayFactory.start()``) around the
    kernel's transport; callers use ``execute()``, the comm methods and ``shutdown()``.
    ``name`` is for messages (``kernel 1a2b3c4d``).
    """

    def __init__(self, transport: Transport, *, limits: KernelLimits | None = None) -> None:
        self.transport = transport
        self.kernel_id = transport.kernel_id
        self.session = transport.session
        self.limits = limits  # what its process may take: a death may be one of them
        self.kernel_info: dict[str, Any] = {}
        self.runtime_info: dict[str, Any] = {}
        self.exit_status: ExitStatus | None = None
        self.death_reason: str | None = None  # the limit it ran into, if one ended it
        self.killed_after_timeout = False
        self.closing = False
        self._calls: dict[str, _Call] = {}
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._comms: dict[str, CommHandler] = {}
        self._exit_callbacks: list[Callable[[ExitStatus], None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._iopub_live = asyncio.Event()
        # Status messages matter to the ready handshake and to execute_request calls (they
        # complete on idle); comm calls complete on the runtime's reply.
        self._status_readers = 1  # the handshake, until connect() is done
        self._handshake_ids: set[str] = set()
        self._recovery: asyncio.Task[None] | None = None
        self._bridge_comm = ""
        self._exited = asyncio.get_running_loop().create_future()

    def __repr__(self) -> str:
        state = "alive" if self.alive else f"dead ({self.exit_status})"
        return f"<Kernel {self.kernel_id[:8]} {state}>"

    @property
    def name(self) -> str:
        where = self.transport.where
        return f"kernel {self.kernel_id[:8]}{' ' + where if where else ''}"

    @property
    def alive(self) -> bool:
        return self.exit_status is None

    @property
    def connection_file(self) -> str:
        """For ``jupyter console --existing``; "" where the transport has none here."""
        return self.transport.connection_file

    @property
    def pid(self) -> int | None:
        """The kernel's process on this host; None where it runs elsewhere."""
        return self.transport.pid

    # -- start-up ------------------------------------------------------------------------------

    async def connect(self, timeout: float) -> None:
        """Open the channels and wait until the kernel answers and its IOPub delivers.

        IOPub delivers only once our subscription has reached the kernel, some 20-100 ms after
        the first reply; a call sent before that loses its first output. ipykernel 7 says so
        with an ``iopub_welcome``; older kernels show it by publishing our kernel_info status.
        """
        stage = "answer"
        try:
            async with asyncio.timeout(timeout):
                with jupyter_client_errors(f"connecting to {self.name}", KernelStartError):
                    await self.transport.connect(timeout)
                self._tasks = [
                    asyncio.create_task(self.transport.receive(self)),
                    asyncio.create_task(self._watch()),
                ]
                while not self._iopub_live.is_set():
                    msg_id = self._send_shell("kernel_info_request", {})
                    self._handshake_ids.add(msg_id)
                    self.kernel_info = await self._request_reply(msg_id)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.25):
                            await self._iopub_live.wait()
                # The runtime answers a ping on its comm: proof that it loaded, and the
                # path of every call from now on.
                stage = "load the kernel-bridge runtime"
                await self._bootstrap(timeout)
                comm_id = self.open_comm(wire.EXECUTE_COMM, {}, self._on_bridge_record)
                self.runtime_info = await self._request_reply(
                    self.send_comm(comm_id, {"kind": wire.PING})
                )
                self._bridge_comm = comm_id
                self._status_readers -= 1
        except TimeoutError:
            raise KernelStartError(
                f"{self.name} did not {stage} within {timeout:g} s of starting"
            ) from None
        except KernelDied as exc:
            raise KernelStartError(f"{self.name} exited while starting ({exc.status})") from None

    async def _bootstrap(self, timeout: float) -> None:
        """Run the transport's start-up code, if any (a gateway's kernel loads the runtime)."""
        if not self.transport.bootstrap:
            return
        try:
            result = await self.execute(self.transport.bootstrap, timeout=timeout)
        except ExecutionTimeout:
            raise KernelStartError(
                f"{self.name}: loading the kernel-bridge runtime timed out"
            ) from None
        if not result.success and result.error is not None:
            raise KernelStartError(
                f"{self.name}: could not load the kernel-bridge runtime: "
                f"{result.error.ename}: {result.error.evalue}\n{result.error.traceback}"
            )

    # -- message routing (the transport's Receiver) ------------------------------------------------

    @property
    def wants_status(self) -> bool:
        """ipykernel publishes busy and idle around every request, half of a comm call's IOPub
        messages; deserializing them was a fifth of the host's work per call. Only the ready
        handshake and execute_request calls need them."""
        return self._status_readers > 0

    def deliver(self, channel: str, msg: dict[str, Any]) -> None:
        if channel == "shell":
            self._on_shell(msg)
        elif channel == "iopub":
            self._on_iopub(msg)

    def output_dropped(self, parent_id: str) -> None:
        call = self._calls.get(parent_id)
        if call is not None:
            call.collector.truncated = True

    def _on_iopub(self, msg: dict[str, Any]) -> None:
        msg_type = msg["header"]["msg_type"]
        parent_id = msg["parent_header"].get("msg_id")
        content = msg["content"]
        if msg_type.startswith("comm_"):
            handler = self._comms.get(content.get("comm_id", ""))
            if handler is not None:
                handler(msg)
            return
        call = self._calls.get(parent_id) if parent_id else None
        if call is not None:
            call.on_iopub(msg_type, content)
        elif msg_type == "iopub_welcome" or parent_id in self._handshake_ids:
            self._iopub_live.set()

    def _on_shell(self, msg: dict[str, Any]) -> None:
        parent_id = msg["parent_header"].get("msg_id")
        call = self._calls.get(parent_id)
        if call is not None:
            call.on_reply(msg["content"])
            return
        future = self._replies.pop(parent_id, None)
        if future is not None and not future.done():
            future.set_result(msg["content"])

    def _on_bridge_record(self, msg: dict[str, Any]) -> None:
        parent_id = msg["parent_header"].get("msg_id", "")
        call = self._calls.get(parent_id)
        data = msg["content"].get("data") or {}
        if not isinstance(data, dict):
            return
        if call is None:
            future = self._replies.pop(parent_id, None)  # the ping's pong
            if future is not None and not future.done():
                future.set_result(data)
            return
        if data.get("kind") == wire.REPLY:
            if data.get("fallback"):
                call.fallback = True
                call.fail(_Fallback())
            else:
                value = data.get(wire.REPLY_VALUE)
                if isinstance(value, dict):  # the value, in the reply (see protocol.py)
                    call.collector.add("execute_result", value)
                if wire.REPLY_BINARY in data:  # bytes or arrays: the value itself, in buffers
                    call.collector.set_binary(data[wire.REPLY_BINARY], msg.get("buffers") or [])
                call.on_reply(data)
            return
        if data.get("kind") == wire.BINARY:  # the value itself, of a plain execute_request
            call.collector.set_binary(data.get("value"), msg.get("buffers") or [])
            return
        record = call.collector.add_record(data)
        if record is not None and call.on_attest is not None:
            call.on_attest(record)  # a listener: it hands the record on and returns

    def _send_shell(
        self,
        msg_type: str,
        content: dict[str, Any],
        *,
        metadata: dict[str, Any] | None = None,
        buffers: list[Any] | None = None,
    ) -> str:
        if not self.alive:
            raise self._died_error()
        msg = self.session.msg(msg_type, content, metadata=metadata)
        self._send(msg, buffers, f"sending {msg_type} to {self.name}")
        return str(msg["header"]["msg_id"])

    def _send(self, msg: dict[str, Any], buffers: list[Any] | None, what: str) -> None:
        try:
            with jupyter_client_errors(what):
                self.transport.send(msg, buffers)
        except TransportClosed:
            self._died(ExitStatus())  # out of reach: dead to us, whatever the process does
            raise self._died_error() from None

    async def _request_reply(self, msg_id: str) -> dict[str, Any]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[msg_id] = future  # _died() fails it, so a dead kernel cannot hang us
        try:
            return await future
        finally:
            self._replies.pop(msg_id, None)

    # -- comms -----------------------------------------------------------------------------------

    def open_comm(
        self, target: str, data: dict[str, Any], handler: CommHandler, *, comm_id: str | None = None
    ) -> str:
        """Open a comm to *target* in the kernel; *handler* gets its comm_msg and comm_close."""
        comm_id = comm_id or uuid.uuid4().hex
        self._comms[comm_id] = handler
        self._send_shell("comm_open", {"comm_id": comm_id, "target_name": target, "data": data})
        return comm_id

    def send_comm(
        self, comm_id: str, data: dict[str, Any], buffers: list[Any] | None = None
    ) -> str:
        return self._send_shell("comm_msg", {"comm_id": comm_id, "data": data}, buffers=buffers)

    def close_comm(self, comm_id: str, data: dict[str, Any] | None = None) -> None:
        self._comms.pop(comm_id, None)
        if self.alive:
            self._send_shell("comm_close", {"comm_id": comm_id, "data": data or {}})

    # -- execution -------------------------------------------------------------------------------

    async def execute(
        self,
        code: str,
        *,
        timeout: float,
        meta: dict[str, Any] | None = None,
        max_output: int = DEFAULT_MAX_OUTPUT,
        on_attest: AttestHook | None = None,
        capture_variables: bool = False,
        force_request: bool = False,
        as_cell: bool = False,
        on_output: OutputListener | None = None,
    ) -> ExecutionResult:
        """Run *code*; return its result, or raise ExecutionTimeout or KernelDied.

        The call goes on the bridge comm (see bridge_runtime._execute); code that awaits at
        top level comes back as a fallback and is sent as an execute_request, as is every call
        with *force_request*. ``as_cell=True`` sends *code* as a notebook front end sends a
        cell: an execute_request without the bridge's metadata (the kernel runs it as any
        IPython kernel would, no JSON value added), counted in the execution count and
        ``In``/``Out``. *on_output* hears each output as it arrives (see OutputCollector),
        on this loop, from the reader: it must not block.

        On timeout the kernel is interrupted; if it has not finished within INTERRUPT_GRACE
        (code that swallows KeyboardInterrupt, or holds the GIL in C) it is killed and
        ``ExecutionTimeout.restarted`` is True: the caller must not use this kernel again.
        """
        request = force_request or as_cell or not self._bridge_comm
        if not request:
            data = {"kind": wire.EXECUTE, "code": code, "meta": meta or {}}
            msg = self.session.msg("comm_msg", {"comm_id": self._bridge_comm, "data": data})
        else:
            content = {
                "code": code,
                "silent": False,
                # Bridge calls keep no history and no execution count; notebook cells do.
                "store_history": as_cell,
                "user_expressions": {},
                "allow_stdin": False,  # input() raises at once instead of waiting forever
                "stop_on_error": False,  # an error must not abort requests queued behind it
            }
            metadata = {} if as_cell else {wire.META_KEY: meta or {}}
            msg = self.session.msg("execute_request", content, metadata=metadata)
        msg_id = msg["header"]["msg_id"]
        call = _Call(msg_id, code, OutputCollector(max_output=max_output, on_output=on_output))
        call.on_attest = on_attest
        # On the comm path the runtime's reply comes after all of the call's output (IOPub
        # keeps order), so there is no idle status to wait for.
        call.idle = not request
        if not self.alive:
            raise self._died_error(call)
        self._calls[msg_id] = call
        if request:
            self._status_readers += 1
            call.reads_status = True
        draining = False
        try:
            self._send(msg, None, f"sending code to {self.name}")
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(call.done)
            except TimeoutError:
                raise await self._timed_out(call, timeout) from None
            except _Fallback:
                remaining = timeout - call.elapsed_ms() / 1000
                return await self.execute(
                    code,
                    timeout=max(remaining, 0.001),
                    meta=meta,
                    max_output=max_output,
                    on_attest=on_attest,
                    capture_variables=capture_variables,
                    force_request=True,
                    on_output=on_output,
                )
            except asyncio.CancelledError:
                # The caller gave up: let the kernel finish, or interrupt it, before reuse.
                if not call.done.done():
                    draining = True
                    self._recovery = asyncio.ensure_future(self._drain(call))
                raise
            return call.result(capture_variables=capture_variables)
        finally:
            if not draining:
                self._forget(call)

    def invalidate_import_caches(self) -> None:
        """Have the kernel call ``importlib.invalidate_caches()``, so packages installed since
        it started can be imported.

        A silent execute_request, sent and not waited for: the kernel runs it after what it
        is running now and before anything sent later, and it binds no name, counts no
        execution and makes no output.
        """
        if not self.alive or self.closing:
            return
        content = {
            "code": "__import__('importlib').invalidate_caches()",
            "silent": True,
            "store_history": False,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": False,
        }
        try:
            self._send_shell("execute_request", content)
        except BridgeError as exc:  # died meanwhile: nothing left to refresh
            log.debug("%s: could not invalidate import caches: %s", self.name, exc)

    async def _timed_out(self, call: _Call, timeout: float) -> BridgeError:
        try:
            # The interrupt itself counts against the grace: over a gateway it is a REST call.
            async with asyncio.timeout(INTERRUPT_GRACE):
                await self.interrupt()
                await asyncio.shield(call.done)
        except KernelDied as exc:
            return exc
        except _Fallback:
            pass  # the runtime ran nothing (top-level await) and the time is up: interrupted
        except (TimeoutError, BridgeError):
            self.killed_after_timeout = True
            await self.kill()
            return ExecutionTimeout(
                f"code ran past its timeout of {timeout:g} s and ignored the interrupt; "
                f"{self.name} was killed and is being replaced",
                timeout=timeout,
                restarted=True,
                result=call.result(),
            )
        return ExecutionTimeout(
            f"code ran past its timeout of {timeout:g} s and was interrupted",
            timeout=timeout,
            restarted=False,
            result=call.result(),
        )

    async def _drain(self, call: _Call) -> None:
        """After a cancelled call: wait for it to end, interrupting and then killing if need be."""
        try:
            async with asyncio.timeout(INTERRUPT_GRACE):
                await self.interrupt()
                await asyncio.shield(call.done)
        except _Fallback:
            pass  # nothing ran
        except (TimeoutError, BridgeError):
            self.killed_after_timeout = True
            await self.kill()
        finally:
            self._forget(call)

    def _forget(self, call: _Call) -> None:
        if self._calls.pop(call.msg_id, None) is not None and call.reads_status:
            self._status_readers -= 1
        if call.done.done() and not call.done.cancelled():
            call.done.exception()  # retrieved: no "exception was never retrieved" noise

    @property
    def settling(self) -> bool:
        """A cancelled call is still being wound down (see settle())."""
        return self._recovery is not None

    async def settle(self) -> None:
        """Wait until a cancelled call has been cleaned up, so the kernel can be reused."""
        recovery, self._recovery = self._recovery, None
        if recovery is not None:
            with contextlib.suppress(Exception):
                await recovery

    async def interrupt(self) -> None:
        if not self.alive:
            return
        with jupyter_client_errors(f"interrupting {self.name}"):
            await self.transport.interrupt()

    async def kill(self) -> None:
        """End the kernel now (a local one's whole process group, SIGKILL); no graceful
        shutdown. Returns once the transport has seen it end (at most KILL_WAIT)."""
        if not self.alive:
            return
        self.closing = True
        with contextlib.suppress(Exception):
            await self.transport.kill()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(KILL_WAIT):
                await asyncio.shield(self._exited)

    # -- liveness --------------------------------------------------------------------------------

    def on_exit(self, callback: Callable[[ExitStatus], None]) -> Callable[[], None]:
        """Call *callback* with the exit status when the kernel process ends; returns an undo."""
        if self.exit_status is not None:
            asyncio.get_running_loop().call_soon(callback, self.exit_status)
        self._exit_callbacks.append(callback)
        return lambda: (
            self._exit_callbacks.remove(callback) if callback in self._exit_callbacks else None
        )

    async def _watch(self) -> None:
        self._died(await self.transport.wait_for_exit())

    def _died(self, status: ExitStatus) -> None:
        if self.exit_status is not None:
            return
        self.exit_status = status
        if not self._exited.done():
            self._exited.set_result(None)
        if not self.closing:
            if self.limits is not None:
                self.death_reason = self.limits.death_reason(status, self.transport.log_tail())
            log.warning("%s died: %s%s", self.name, status, self._reason_text())
            KERNEL_DEATHS.labels("limit" if self.death_reason else "crash").inc()
        elif self.killed_after_timeout:
            KERNEL_DEATHS.labels("timeout_kill").inc()
        for call in list(self._calls.values()):
            call.fail(self._died_error(call))
        for future in self._replies.values():
            if not future.done():
                future.set_exception(self._died_error())
        for callback in list(self._exit_callbacks):
            try:
                callback(status)
            except Exception:
                log.exception("%s: exit callback failed", self.name)

    def _reason_text(self) -> str:
        return f": it ran into its {self.death_reason}" if self.death_reason else ""

    def _died_error(self, call: _Call | None = None) -> KernelDied:
        status = self.exit_status or ExitStatus()
        how = "was shut down" if self.closing else f"died ({status}){self._reason_text()}"
        reason = self.transport.reason
        if reason and not self.closing:
            how += f": {reason}"
        result = call.result() if call is not None else None
        if result is not None:
            result.success = False
        return KernelDied(
            f"{self.name} {how}", status=status, result=result, reason=self.death_reason
        )

    # -- shutdown --------------------------------------------------------------------------------

    async def shutdown(self, *, now: bool = False) -> None:
        """Shut the kernel down (politely unless *now*), with its process group and files."""
        self.closing = True
        # jupyter_client interrupts a kernel before shutting it down: a call in flight would
        # end as an ordinary KeyboardInterrupt result. It was cut off; say so.
        for call in list(self._calls.values()):
            call.fail(BridgeClosed(f"{self.name} was shut down during the call"))
        try:
            await self.transport.shutdown(now=now or not self.alive)
        finally:
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(BaseException):
                    await task
            with contextlib.suppress(Exception):
                self.transport.close()
            if self.exit_status is None:
                self._died(ExitStatus())
