"""The local transport: a kernel on this host, over ZeroMQ, its process under our control.

jupyter_client's manager and provisioner launched the kernel (factory.py); this transport reads
its shell and IOPub sockets, signals it (interrupt, SIGKILL to its whole process group), sees
its exit at once through a pidfd, and has jupyter_client shut it down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from bridge.core.errors import ExitStatus
from bridge.core.transport import Receiver
from bridge.transports.local.watchdog import kill_group

log = logging.getLogger("bridge.kernel")

POLL_INTERVAL = 0.5  # seconds between liveness checks where there is no pidfd
DELIMITER = b"<IDS|MSG>"

# Hears every IOPub message of a kernel: (kernel_id, msg_type, the parent's msg_type, the
# execution_state of a status message or None). Called from the reader: it must be quick.
ActivityHook = Callable[[str, str, str | None, str | None], None]


class _Typed(msgspec.Struct):
    """The one field of a parent header the activity hook needs (the rest is skipped)."""

    msg_type: str | None = None


class _Status(msgspec.Struct):
    execution_state: str | None = None


_read_parent = msgspec.json.Decoder(_Typed).decode
_read_status = msgspec.json.Decoder(_Status).decode


class KernelOwner(Protocol):
    """What started the kernel and shuts it down: a jupyter_client MultiKernelManager (the
    bridge's own or Jupyter Server's)."""

    def __contains__(self, kernel_id: object) -> bool: ...

    async def shutdown_kernel(self, kernel_id: str, now: bool = False) -> None: ...

    def remove_kernel(self, kernel_id: str) -> Any: ...


class LocalTransport:
    """One local kernel's sockets and process: the ``Transport`` of ``KernelFactory``.

    *manager* is the kernel's jupyter_client KernelManager, *kernel_manager* the
    MultiKernelManager that owns it, *pgid* its process group and *group_started* the group
    leader's start time (see ``watchdog.kill_group``); *log_path* its log, removed at the end.
    """

    where = ""
    bootstrap = ""  # the runtime is on the kernel's PYTHONPATH and loads at start-up
    reason = ""

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
        on_activity: ActivityHook | None = None,
    ) -> None:
        self.manager = manager
        self.on_activity = on_activity
        self.kernel_manager = kernel_manager
        self.kernel_id = kernel_id
        self.pgid = pgid  # None once the kernel is dead and its group ended: never reused
        self.group_started = group_started
        self.log_path = log_path
        # A Session of our own: one shared with another client of this kernel (km.client()
        # hands out the manager's) means one ZeroMQ identity, so replies can go to the other
        # socket, and one replay-check history, so each client rejects the other's messages.
        session = manager.session.clone()
        session.session = uuid.uuid4().hex
        self.client = manager.client(context=context, session=session)
        self.session = self.client.session

    @property
    def name(self) -> str:
        return f"kernel {self.kernel_id[:8]}"

    @property
    def connection_file(self) -> str:
        return str(self.manager.connection_file)

    @property
    def process(self) -> Any:
        """The provisioner's process (a Popen, or the fork server's ForkedProcess), if any."""
        return getattr(self.manager.provisioner, "process", None)

    @property
    def pid(self) -> int | None:
        return getattr(self.process, "pid", None)

    async def connect(self, timeout: float) -> None:
        self.client.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=False)

    def send(self, msg: dict[str, Any], buffers: list[Any] | None = None) -> None:
        self.session.send(self.client.shell_channel.socket, msg, buffers=buffers)

    async def receive(self, receiver: Receiver) -> None:
        await asyncio.gather(
            self._read(self.client.iopub_channel.socket, "iopub", receiver),
            self._read(self.client.shell_channel.socket, "shell", receiver),
        )

    async def _read(self, socket: Any, channel: str, receiver: Receiver) -> None:
        session = self.session
        activity = self.on_activity if channel == "iopub" else None
        while True:
            try:
                frames = await socket.recv_multipart()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # socket closed under us: the kernel is being shut down
                log.debug("%s: reader stopped: %s", self.name, exc)
                return
            status = frames[0].endswith(b".status")
            if status and not receiver.wants_status:
                # The topic frame says what it is: no signature check, no dateutil; the
                # activity hook gets the state and the parent's type from two small frames.
                if activity is not None:
                    self._status_activity(frames, activity)
                continue
            try:
                _, frames = session.feed_identities(frames)
                msg = session.deserialize(frames)
            except Exception as exc:  # a bad signature or a broken message: drop it, go on
                log.warning("%s: dropped an unreadable message: %s", self.name, exc)
                continue
            if activity is not None:
                state = msg["content"].get("execution_state") if status else None
                parent = msg["parent_header"].get("msg_type")
                self._activity(activity, msg["msg_type"], parent, state)
            try:
                receiver.deliver(channel, msg)
            except Exception:
                log.exception("%s: error while handling %s", self.name, msg["msg_type"])
            # recv_multipart() does not suspend while messages are queued: without this, a
            # burst (a backend's stream of event batches) holds the loop until it is all read,
            # and whatever consumes the messages (an event stream's writer) waits behind it.
            await asyncio.sleep(0)

    def _status_activity(self, frames: list[bytes], activity: ActivityHook) -> None:
        """A status message the Kernel does not read, for the activity hook: its parent header
        and content frames parsed as they are (the socket only carries the kernel's own
        publications; a broken one is dropped)."""
        try:
            start = frames.index(DELIMITER)
            parent = _read_parent(frames[start + 3]).msg_type
            state = _read_status(frames[start + 5]).execution_state
        except (ValueError, IndexError, msgspec.DecodeError):
            return
        self._activity(activity, "status", parent, state)

    def _activity(
        self, activity: ActivityHook, msg_type: str, parent: str | None, state: str | None
    ) -> None:
        try:
            activity(self.kernel_id, msg_type, parent, state)
        except Exception:
            log.exception("%s: the activity hook failed on %s", self.name, msg_type)

    async def interrupt(self) -> None:
        await self.manager.interrupt_kernel()

    async def kill(self) -> None:
        """SIGKILL the kernel's whole process group."""
        with contextlib.suppress(Exception):
            await self.manager.provisioner.kill()
        if self.pgid is not None:
            kill_group(self.pgid, signal.SIGKILL, self.group_started)

    async def wait_for_exit(self) -> ExitStatus:
        process = self.process
        if process is not None and hasattr(os, "pidfd_open"):
            try:
                fd = os.pidfd_open(process.pid)
            except OSError:
                fd = -1
            if fd >= 0:
                await _readable(fd)
                # Not reaped yet: the group's id is still ours. End what the kernel left.
                self._end_group()
                return ExitStatus.from_returncode(await asyncio.to_thread(process.wait))
        while await self.manager.is_alive():  # no pidfd (or not a process of ours): poll
            await asyncio.sleep(POLL_INTERVAL)
        self._end_group()
        return ExitStatus.from_returncode(None if process is None else process.poll())

    def _end_group(self) -> None:
        """The kernel exited: kill what is left of its group now and forget the id, which
        may later name a group that is not ours."""
        pgid, self.pgid = self.pgid, None
        if pgid is not None:
            kill_group(pgid, signal.SIGKILL, self.group_started)

    async def shutdown(self, *, now: bool) -> None:
        """jupyter_client's shutdown, run to its end even if our caller is cancelled: one cut
        half-way leaves jupyter_client's kernel "pending" for good, and Jupyter Server's own
        shutdown then fails on it (and the server hangs). Then the group's leftovers."""
        try:
            if self.kernel_id in self.kernel_manager:
                failed = await _to_the_end(
                    self.kernel_manager.shutdown_kernel(self.kernel_id, now=now)
                )
                if failed is not None and self.kernel_id in self.kernel_manager:
                    await self._forget(failed)
        finally:
            self._end_group()  # children the kernel started, if any are left

    async def _forget(self, failed: BaseException) -> None:
        """jupyter_client's shutdown failed half-way, which leaves the kernel listed (at
        /api/kernels too) with its connection file for good: kill it, remove its files, and
        take it off the list."""
        log.warning("%s: shutdown failed (%r); removing what is left of it", self.name, failed)
        self._end_group()
        with contextlib.suppress(Exception):
            await self.manager.provisioner.kill()
        with contextlib.suppress(Exception):
            await self.manager.cleanup_resources(restart=False)
        with contextlib.suppress(Exception):
            self.kernel_manager.remove_kernel(self.kernel_id)

    def log_tail(self, limit: int = 4000) -> str:
        if not self.log_path:
            return ""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - limit))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.stop_channels()
        if self.log_path:
            with contextlib.suppress(OSError):
                os.unlink(self.log_path)


async def _readable(fd: int) -> None:
    """Wait until *fd* (a pidfd: the process exited) is readable; close it."""
    ready = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(fd, ready.set)
    try:
        await ready.wait()
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def _to_the_end(coro: Any) -> Exception | None:
    """Await *coro* in a task of its own that a cancelled caller does not cut short; its
    failure is returned, not raised (the group is ended after it either way)."""
    task = asyncio.ensure_future(coro)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await asyncio.shield(task)
        raise
    except Exception as exc:
        return exc
    return None
