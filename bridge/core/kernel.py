"""One kernel: its manager and client, the message router, the execute loop, comms, liveness.

Two reader tasks drain the shell and IOPub sockets all the time, not only during a call: a
reader that falls behind lets ZeroMQ drop IOPub messages at its high-water mark. Each message
goes to the request it answers by ``parent_header.msg_id`` (as nbclient matches them), comm
messages to their comm's handler. A call is complete when both its reply and its idle status
have arrived. The kernel process is watched (a pidfd, so a death is seen at once), and a death
fails every pending call with KernelDied instead of leaving it waiting for a reply that will
never come.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

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

if TYPE_CHECKING:
    from bridge.core.limits import KernelLimits

log = logging.getLogger("bridge.kernel")

INTERRUPT_GRACE = 1.0  # seconds an interrupted call gets before its kernel is killed

CommHandler = Callable[[dict[str, Any]], None]
AttestHook = Callable[[dict[str, Any]], Any]


class KernelOwner(Protocol):
    """What started a kernel and shuts it down: a jupyter_client MultiKernelManager (the
    bridge's own or Jupyter Server's), or a gateway's REST API."""

    def __contains__(self, kernel_id: object) -> bool: ...

    async def shutdown_kernel(self, kernel_id: str, now: bool = False) -> None: ...


def group_leader_started(pgid: int) -> int | None:
    """The start time of the process whose pid is *pgid* (the kernel that leads the group),
    from /proc; None where it is gone or there is no /proc."""
    try:
        with open(f"/proc/{pgid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def kill_group(pgid: int, sig: int, started: int | None = None) -> None:
    """Signal a kernel's process group (the kernel and whatever it started), if it is there
    and still ours: a leader with another start time than *started* means the id was reused."""
    if started is not None:
        now = group_leader_started(pgid)
        if now is not None and now != started:
            return
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


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

    Made by ``KernelFactory.start()``; callers use ``execute()``, the comm methods and
    ``shutdown()``. ``name`` is for messages (``kernel 1a2b3c4d``).
    """

    def __init__(
        self,
        *,
        manager: Any,
        kernel_manager: KernelOwner,
        kernel_id: str,
        context: Any,
        pgid: int | None,
        group_started: int | None = None,
        log_path: str | None = None,
        limits: KernelLimits | None = None,
    ) -> None:
        self.manager = manager
        self.kernel_manager = kernel_manager
        self.kernel_id = kernel_id
        self.pgid = pgid  # None once the kernel is dead and its group ended: never reused
        self.group_started = group_started  # the leader's start time (see kill_group)
        self.log_path = log_path
        self.limits = limits  # what its process may take: a death may be one of them
        # A Session of our own: one shared with another client of this kernel (km.client()
        # hands out the manager's) means one ZeroMQ identity, so replies can go to the other
        # socket, and one replay-check history, so each client rejects the other's messages.
        session = manager.session.clone()
        session.session = uuid.uuid4().hex
        self.client = manager.client(context=context, session=session)
        self.session = self.client.session
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
        self._background: set[asyncio.Future[Any]] = set()
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
        return f"kernel {self.kernel_id[:8]}"

    @property
    def alive(self) -> bool:
        return self.exit_status is None

    @property
    def connection_file(self) -> str:
        return str(self.manager.connection_file)

    @property
    def pid(self) -> int | None:
        process = getattr(self.manager.provisioner, "process", None)
        return getattr(process, "pid", None)

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
                self._tasks = await self._open_channels()
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
                await self._prepare()
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

    # -- transport: what a kernel elsewhere (a gateway's, see _gateway.py) does differently --------

    async def _open_channels(self) -> list[asyncio.Task[None]]:
        """Connect shell and IOPub; return the tasks that read them and watch the kernel."""
        with jupyter_client_errors(f"connecting to {self.name}", KernelStartError):
            self.client.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=False)
        return [
            asyncio.create_task(self._read(self.client.iopub_channel.socket, self._on_iopub)),
            asyncio.create_task(self._read(self.client.shell_channel.socket, self._on_shell)),
            asyncio.create_task(self._watch()),
        ]

    def _send(self, msg: dict[str, Any], buffers: list[Any] | None = None) -> None:
        """Send *msg* on the shell channel."""
        self.session.send(self.client.shell_channel.socket, msg, buffers=buffers)

    async def _prepare(self) -> None:
        """Make the kernel ready for bridge calls once it answers (the runtime is loaded here)."""

    # -- message routing -------------------------------------------------------------------------

    async def _read(self, socket: Any, handle: Callable[[dict[str, Any]], None]) -> None:
        session = self.session
        while True:
            try:
                frames = await socket.recv_multipart()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # socket closed under us: the kernel is being shut down
                log.debug("%s: reader stopped: %s", self.name, exc)
                return
            if self._ignore_status and frames[0].endswith(b".status"):
                # ipykernel publishes busy and idle around every request, half of a comm
                # call's IOPub messages; deserializing them (signature, JSON, dateutil) was a
                # fifth of the host's work per call. Its topic frame says what it is.
                continue
            try:
                _, frames = session.feed_identities(frames)
                msg = session.deserialize(frames)
            except Exception as exc:  # a bad signature or a broken message: drop it, go on
                log.warning("%s: dropped an unreadable message: %s", self.name, exc)
                continue
            try:
                handle(msg)
            except Exception:
                log.exception("%s: error while handling %s", self.name, msg["msg_type"])
            # recv_multipart() does not suspend while messages are queued: without this, a
            # burst (a backend's stream of event batches) holds the loop until it is all read,
            # and whatever consumes the messages (an event stream's writer) waits behind it.
            await asyncio.sleep(0)

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
                call.on_reply(data)
            return
        record = call.collector.add_record(data)
        if record is not None and call.on_attest is not None:
            try:
                outcome = call.on_attest(record)
                if asyncio.iscoroutine(outcome):
                    task = asyncio.ensure_future(outcome)
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)
            except Exception:
                log.exception("on_attest callback failed")

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
        with jupyter_client_errors(f"sending {msg_type} to {self.name}"):
            self._send(msg, buffers)
        return str(msg["header"]["msg_id"])

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
            with jupyter_client_errors(f"sending code to {self.name}"):
                self._send(msg)
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

    @property
    def _ignore_status(self) -> bool:
        return self._status_readers == 0

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
            await self.manager.interrupt_kernel()

    async def kill(self) -> None:
        """Kill the kernel's whole process group now (SIGKILL); no graceful shutdown."""
        if not self.alive:
            return
        self.closing = True
        with contextlib.suppress(Exception):
            await self.manager.provisioner.kill()
        if self.pgid is not None:
            kill_group(self.pgid, signal.SIGKILL, self.group_started)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
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
        process = getattr(self.manager.provisioner, "process", None)
        if process is not None and hasattr(os, "pidfd_open"):
            try:
                fd = os.pidfd_open(process.pid)
            except OSError:
                fd = -1
            if fd >= 0:
                exited = asyncio.Event()
                loop = asyncio.get_running_loop()
                loop.add_reader(fd, exited.set)
                try:
                    await exited.wait()
                finally:
                    loop.remove_reader(fd)
                    os.close(fd)
                # Not reaped yet: the group's id is still ours. End what the kernel left.
                self._end_group()
                self._died(ExitStatus.from_returncode(await asyncio.to_thread(process.wait)))
                return
        while await self.manager.is_alive():  # no pidfd (or not a local process): poll
            await asyncio.sleep(0.5)
        code = None if process is None else process.poll()
        self._end_group()
        self._died(ExitStatus.from_returncode(code))

    def _end_group(self) -> None:
        """The kernel exited: kill what is left of its group now and forget the id, which
        may later name a group that is not ours."""
        pgid, self.pgid = self.pgid, None
        if pgid is not None:
            kill_group(pgid, signal.SIGKILL, self.group_started)

    def _died(self, status: ExitStatus) -> None:
        if self.exit_status is not None:
            return
        self.exit_status = status
        if not self._exited.done():
            self._exited.set_result(None)
        if not self.closing:
            if self.limits is not None:
                self.death_reason = self.limits.death_reason(status, self._log_tail())
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

    def _log_tail(self, limit: int = 4000) -> str:
        """The end of the kernel's own output (what a C library said as it failed)."""
        if not self.log_path:
            return ""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - limit))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _died_error(self, call: _Call | None = None) -> KernelDied:
        status = self.exit_status or ExitStatus()
        how = "was shut down" if self.closing else f"died ({status}){self._reason_text()}"
        result = call.result() if call is not None else None
        if result is not None:
            result.success = False
        return KernelDied(
            f"{self.name} {how}", status=status, result=result, reason=self.death_reason
        )

    # -- shutdown --------------------------------------------------------------------------------

    async def _shutdown_in_manager(self, *, now: bool) -> None:
        """The manager's shutdown, run to its end even if our caller is cancelled: one cut
        half-way leaves jupyter_client's kernel "pending" for good, and Jupyter Server's own
        shutdown then fails on it (and the server hangs)."""
        task = asyncio.ensure_future(self.kernel_manager.shutdown_kernel(self.kernel_id, now=now))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                await asyncio.shield(task)
            raise
        except Exception:
            pass

    async def shutdown(self, *, now: bool = False) -> None:
        """Shut the kernel down (politely unless *now*), with its process group and files."""
        self.closing = True
        # jupyter_client interrupts a kernel before shutting it down: a call in flight would
        # end as an ordinary KeyboardInterrupt result. It was cut off; say so.
        for call in list(self._calls.values()):
            call.fail(BridgeClosed(f"{self.name} was shut down during the call"))
        try:
            if self.kernel_id in self.kernel_manager:
                await self._shutdown_in_manager(now=now or not self.alive)
        finally:
            if self.pgid is not None:  # children the kernel started, if any are left
                kill_group(self.pgid, signal.SIGKILL, self.group_started)
                self.pgid = None
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(BaseException):
                    await task
            with contextlib.suppress(Exception):
                self.client.stop_channels()
            if self.exit_status is None:
                self._died(ExitStatus())
            if self.log_path:
                with contextlib.suppress(OSError):
                    os.unlink(self.log_path)
