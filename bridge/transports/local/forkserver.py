"""The host's end of the fork servers: one per interpreter, each forking that interpreter's kernels.

A fork server (``kernels/bridge_runtime/forkserver.py``) has imported IPython, ipykernel and
zmq once, so a kernel forked from it skips most of a kernel's start-up. This module starts one
per interpreter on first use, talks to it over a Unix socket pair (requests out, forked pids,
pidfds and exit statuses back, on a reader thread so that any event loop, or none, can use it),
and replaces it if it dies. A server exits when the host closes its end or dies (its socket
reaches end-of-file); its kernels then exit too, through ipykernel's parent poller. The bridge
holds the servers while it has kernels (``hold``/``release``), so a closed bridge leaves no
process behind; anyone else's servers live as long as the host.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import logging
import os
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from typing import Any

from bridge.core.wire import kernel_side_dir

log = logging.getLogger("bridge.kernel")

# Seconds a kernel start waits for its interpreter's fork server to finish importing before it
# launches the ordinary way instead: the server is then there for the next kernels, and a start
# stays bounded by the caller's start-up timeout (an interpreter that is slow to start at all).
READY_WAIT = 1.5
# Seconds a started server gets to answer a fork request. One request unanswered in that time
# marks its server dead: it is killed (a stopped or hung server must not fork late) and the next
# start gets a new one. Each request also carries this deadline (CLOCK_MONOTONIC, one clock for
# every process of the machine): the server never forks for a request past it, so a launch that
# has fallen back cannot meet a late fork using the same connection file and ports.
REPLY_WAIT = 10.0
MAX_MESSAGE = 65536
# A blank last argument of the server's command line this long: room in its argument area for
# each forked kernel's own command line (what `ps` shows: its module and connection file).
TITLE_ROOM = 1024
# Environment variables that act when an interpreter starts, before any code runs: a forked
# kernel inherits the server's start-up, so these must match the server's or the kernel is
# launched the ordinary way. The interpreter's (PYTHON*; PYTHONPATH is the exception: the child
# sets its sys.path from it), HOME (the user site folder), the locale and time zone (set up
# at start: Python's locale, time.tzname), and what the dynamic loader and libc read at exec
# (LD_PRELOAD, LD_LIBRARY_PATH and every LD_*, GLIBC_TUNABLES, MALLOC_*, their data paths).
_STARTUP_EXACT = frozenset(
    {"LANG", "HOME", "TZ", "TZDIR", "LOCPATH", "GCONV_PATH", "NLSPATH", "GETCONF_DIR"}
)
_STARTUP_PREFIXES = ("PYTHON", "LC_", "LD_", "GLIBC_", "MALLOC_")


def startup_vars(env: Mapping[str, str]) -> dict[str, str]:
    """The part of *env* a process reads at start-up (see _STARTUP_EXACT, _STARTUP_PREFIXES)."""
    return {
        k: v
        for k, v in env.items()
        if k in _STARTUP_EXACT or (k.startswith(_STARTUP_PREFIXES) and k != "PYTHONPATH")
    }


class ForkServerError(Exception):
    """The fork server could not fork this kernel (it died, or refused)."""


class ForkedProcess:
    """A kernel forked by a fork server: what jupyter_client and the Kernel ask of a Popen.

    Not the host's child, so it is signalled through a pidfd (the very process, whatever pid
    reuse happens) and its exit status comes from the fork server, its parent.
    """

    stdin = stdout = stderr = None

    def __init__(self, pid: int, pidfd: int | None, server: ForkServer) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.server = server
        self.returncode: int | None = None
        self.status_known = False
        self._exit: concurrent.futures.Future[int | None] = concurrent.futures.Future()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<ForkedProcess {self.pid} returncode={self.returncode}>"

    def _exited(self, waitstatus: int | None) -> None:
        """The server reported the exit (a wait status), or it died and cannot (None)."""
        with self._lock:
            if self._exit.done():
                return
            if waitstatus is not None:
                self.returncode = os.waitstatus_to_exitcode(waitstatus)
                self.status_known = True
            if self.pidfd is not None:
                os.close(self.pidfd)
                self.pidfd = None
            self._exit.set_result(self.returncode)

    @property
    def exited(self) -> bool:
        return self._exit.done()

    def poll(self) -> int | None:
        """None while it runs, else its return code (1 when the server died and took it along)."""
        if not self._exit.done():
            return None
        return self.returncode if self.status_known else 1

    def wait(self, timeout: float | None = None) -> int | None:
        """Its return code once it has exited (None if the server died before saying)."""
        try:
            return self._exit.result(timeout)
        except concurrent.futures.TimeoutError:
            raise subprocess.TimeoutExpired(str(self.pid), timeout or 0) from None

    async def wait_async(self) -> int | None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def settle() -> None:
            if not done.done():
                done.set_result(None)

        def wake(_: object) -> None:
            loop.call_soon_threadsafe(settle)

        self._exit.add_done_callback(wake)
        await done
        return self._exit.result()

    def send_signal(self, signum: int) -> None:
        with self._lock:
            if self._exit.done():
                return
            # Gone already (the server reaped it and its message is on the way): nothing to
            # signal. Popen.send_signal is as quiet (bpo-40550); jupyter_client's shutdown
            # interrupts first and, on an error here, left the kernel listed with its file.
            with contextlib.suppress(ProcessLookupError):
                if self.pidfd is not None:
                    signal.pidfd_send_signal(self.pidfd, signum)
                else:
                    os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class ForkServer:
    """One fork server process for one interpreter, and the thread that reads its messages."""

    def __init__(self, python: str, env: Mapping[str, str]) -> None:
        self.python = python
        self.startup = startup_vars(env)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        server_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
        try:
            self.process = subprocess.Popen(
                [python, "-m", "bridge_runtime.forkserver", str(theirs.fileno()), " " * TITLE_ROOM],
                pass_fds=[theirs.fileno()],
                cwd=str(kernel_side_dir()),  # sys.path[0]: where bridge_runtime is
                env=server_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C to the host's terminal is the host's
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.pid: int | None = None
        self.ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.dead = False
        self.retiring = False  # released by the bridge: exit once the last kernel has
        self._ids = itertools.count(1)
        self._pending: dict[int, concurrent.futures.Future[ForkedProcess | str]] = {}
        self._children: dict[int, ForkedProcess] = {}
        self._early: dict[int, int | None] = {}  # exits reported before their fork reply was read
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._read, name=f"kernel-bridge fork server {self.process.pid}", daemon=True
        )
        self._thread.start()

    def __repr__(self) -> str:
        return f"<ForkServer {self.python} pid {self.process.pid}>"

    @property
    def live_children(self) -> int:
        with self._lock:
            return len(self._children)

    # -- requests ------------------------------------------------------------------------------

    async def fork(
        self,
        argv: list[str],
        *,
        env: Mapping[str, str],
        cwd: str,
        stdout: int | None,
        stderr: int | None,
    ) -> ForkedProcess | str:
        """Fork a kernel running *argv*; a str is the server's reason to refuse (fall back)."""
        try:
            async with asyncio.timeout(READY_WAIT):
                await asyncio.shield(asyncio.wrap_future(self.ready))
        except TimeoutError:
            return f"the fork server has not finished starting within {READY_WAIT:g} s"
        rid = next(self._ids)
        reply: concurrent.futures.Future[ForkedProcess | str] = concurrent.futures.Future()
        fds = [fd for fd in (stdout, stderr) if fd is not None]
        if len(fds) != 2:  # both or neither: the server dups them onto 1 and 2 in order
            fds = []
        wait = REPLY_WAIT
        deadline = time.clock_gettime(time.CLOCK_MONOTONIC) + wait
        message = json.dumps(
            {
                "op": "fork",
                "id": rid,
                "argv": argv,
                "env": dict(env),
                "cwd": cwd,
                "deadline": deadline,
            }
        ).encode()
        with self._lock:
            if self.dead:
                raise ForkServerError("the fork server has exited")
            self._pending[rid] = reply
            try:
                if fds:
                    socket.send_fds(self.sock, [message], fds)
                else:
                    self.sock.send(message)
            except OSError as exc:
                self._pending.pop(rid, None)
                raise ForkServerError(f"the fork server is gone: {exc}") from None
        # Shielded: a cancelled start must not lose a forked kernel; jupyter_client's caller
        # is the one that cleans up after a cancelled start.
        try:
            async with asyncio.timeout(wait):
                return await asyncio.shield(asyncio.wrap_future(reply))
        except TimeoutError:
            reason = f"the fork server did not answer within {wait:g} s"
            with self._lock:
                self._pending.pop(rid, None)  # ours: no one else waits on it
            self.abandon(reason)
            raise ForkServerError(reason) from None

    def abandon(self, reason: str) -> None:
        """It did not answer in time (stopped, hung): dead from now on, and killed, so that it
        never acts on a request again; what waits on it falls back to an ordinary launch. Its
        kernels end with it (ipykernel's parent poller), as when it dies on its own."""
        with self._lock:
            if self.dead:
                return
            self.dead = True
            pending, self._pending = self._pending, {}
        log.warning("fork server %s: %s; killing it", self.process.pid, reason)
        for reply in pending.values():
            reply.set_exception(ForkServerError(reason))
        # Its children first: one forked for a request it had not answered yet would start
        # on the ports of the launch that falls back; the others would follow the server
        # anyway (ipykernel's parent poller). Then its own process group (start_new_session):
        # the server and whatever an interpreter wrapper ran. SIGKILL ends a stopped process.
        server = self.pid or self.process.pid
        for child in _children_of(server):
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def close(self) -> None:
        """Close our end: the server exits (its kernels with it, through their poller)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        try:
            self.process.wait(timeout=5 if self.ready.done() else 0.1)
        except subprocess.TimeoutExpired:
            # Still starting (or stuck): end its process group, which its forked kernels are
            # not in (each has a session of its own), but what an interpreter wrapper ran is.
            with contextlib.suppress(OSError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self.sock.close()

    # -- the reader thread ---------------------------------------------------------------------

    def _read(self) -> None:
        try:
            while True:
                try:
                    data, fds, _, _ = socket.recv_fds(self.sock, MAX_MESSAGE, 2)
                except OSError:
                    break
                if not data:
                    break
                try:
                    self._handle(json.loads(data), fds)
                except Exception:
                    log.exception("fork server %s: a message went wrong", self.process.pid)
                    for fd in fds:
                        os.close(fd)
        finally:
            self._gone()

    def _handle(self, message: dict[str, Any], fds: list[int]) -> None:
        if "exit" in message:
            pid, status = int(message["exit"]), int(message["status"])
            with self._lock:
                child = self._children.pop(pid, None)
                if child is None:
                    self._early[pid] = status
            if child is not None:
                child._exited(status)
            self._after_exit()
            return
        if "ready" in message:
            self.pid = int(message["pid"])
            if message.get("missing"):
                log.debug("fork server %s: not preloaded: %s", self.pid, message["missing"])
            self.ready.set_result(None)
            return
        if "error" in message and "id" not in message:
            self.ready.set_exception(ForkServerError(str(message["error"]).strip()))
            return
        with self._lock:
            reply = self._pending.pop(int(message["id"]), None)
        if reply is None:
            return
        if "pid" in message:
            pid = int(message["pid"])
            child = ForkedProcess(pid, fds[0] if fds else None, self)
            with self._lock:
                early = self._early.pop(pid, None)
                if early is None:
                    self._children[pid] = child
            if early is not None:
                child._exited(early)
            reply.set_result(child)
        elif "fallback" in message:
            reply.set_result(str(message["fallback"]))
        else:
            reply.set_exception(ForkServerError(str(message.get("error", message))))

    def _after_exit(self) -> None:
        if self.retiring and not self.live_children:
            threading.Thread(target=self.close, daemon=True).start()

    def _gone(self) -> None:
        """The server exited: fail what waits on it; its kernels follow it (ipykernel's poller),
        and each is marked exited, status unknown, when its pidfd says so."""
        with self._lock:
            self.dead = True
            pending, self._pending = self._pending, {}
            orphans, self._children = self._children, {}
        if not self.ready.done():
            self.ready.set_exception(ForkServerError("the fork server exited while starting"))
        for reply in pending.values():
            reply.set_exception(ForkServerError("the fork server exited"))
        if orphans and not self.retiring:
            log.warning("fork server %s exited; its kernels end with it", self.process.pid)
        watched = {p.pidfd: p for p in orphans.values() if p.pidfd is not None}
        for child in orphans.values():
            if child.pidfd is None:
                child._exited(None)
        while watched:
            readable, _, _ = select.select(list(watched), [], [], 5.0)
            for fd in readable:
                watched.pop(fd)._exited(None)
        with contextlib.suppress(Exception):
            self.process.wait(timeout=5)


def _children_of(pid: int) -> list[int]:
    """The processes whose parent is *pid* (from /proc)."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    if int(f.read().rsplit(b")", 1)[1].split()[1]) == pid:
                        found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return found


# -- the servers of this host ----------------------------------------------------------------------

_servers: dict[str, ForkServer] = {}
_broken: dict[str, str] = {}  # interpreter -> why its fork server could not start
_holders = 0
_registry_lock = threading.Lock()


def server_for(python: str, env: Mapping[str, str]) -> tuple[ForkServer | None, str]:
    """The fork server for *python* (started if need be), or None and why a fork cannot serve."""
    with _registry_lock:
        if python in _broken:
            return None, _broken[python]
        server = _servers.get(python)
        if server is not None and (server.dead or server.retiring):
            if server.retiring and not server.dead:
                server.retiring = False  # wanted again before it left: keep it
            else:
                del _servers[python]
                server = None
        if server is None:
            try:
                server = ForkServer(python, env)
            except OSError as exc:
                return None, f"could not start a fork server: {exc}"
            _servers[python] = server
    differs = sorted(
        k
        for k in server.startup.keys() | startup_vars(env).keys()
        if server.startup.get(k) != env.get(k)
    )
    if differs:
        return None, f"{', '.join(differs)} differ from the fork server's and act at start-up"
    return server, ""


def mark_broken(server: ForkServer, reason: str) -> None:
    """*server* could not start (no ipykernel there, an old Python): launch that interpreter's
    kernels the ordinary way from now on."""
    with _registry_lock:
        _broken[server.python] = reason
        if _servers.get(server.python) is server:
            del _servers[server.python]


def hold() -> None:
    """A bridge is using fork servers: keep them."""
    global _holders
    with _registry_lock:
        _holders += 1


def release() -> None:
    """A bridge is done: once none is left, end the servers (each after its last kernel)."""
    global _holders
    with _registry_lock:
        _holders = max(0, _holders - 1)
        if _holders:
            return
        servers = list(_servers.values())
        _servers.clear()
    for server in servers:
        server.retiring = True
        if not server.live_children:
            server.close()


def prestart(python: str, env: Mapping[str, str]) -> None:
    """Start *python*'s fork server now, so that it has imported by the time a kernel is due."""
    server_for(python, env)
