"""A watchdog process that ends our kernels when the host dies without closing them.

ipykernel's parent poller does not cover a kernel busy in C code, the children a kernel
started, or the connection file with its key. So each host with local kernels keeps one small
reaper process: the host tells it (over a pipe) which process groups and files are live; when
the pipe reaches end-of-file, because the host closed it or because the host is gone (even
after SIGKILL, the kernel closes its descriptors), the reaper ends those groups, SIGTERM and then
SIGKILL, and removes the files (connection files, kernel logs).

What holds:

- A group is signalled only while it is still ours: its leader (the kernel, whose pid is the
  group's id) has the start time it had when it was registered, or is gone while members are
  left (an id is not reused while its group has members). The reaper looks at its groups twice
  a second and forgets a group as soon as its leader has died, after killing what is left of it,
  so an id reused later is never touched.
- The reaper is restarted if it dies (it is told every live group again), so a host killed
  after its reaper still leaves nothing behind.

The host's API, for every way of launching a kernel (the kernel provisioners in this package)::

    reaper.watch(pgid, start_time(pid), [connection_file, log_file])  # the moment it exists
    reaper.forget(pgid)                                               # once it is cleaned up
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Sequence

log = logging.getLogger("bridge.kernel")

TICK = 0.5  # seconds between the reaper's looks at its groups' leaders

_REAPER = r"""
import os, select, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C to the host's terminal is the host's
TICK = float(sys.argv[1])

def started(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None

def ours(pgid, start):
    # The leader as registered, or gone (its group, if any is left, is still ours).
    now = started(pgid)
    return now is None or start is None or now == start

def kill(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass

groups = {}  # pgid -> [start time or None, files]; pgid < 0: files only, the group is gone
dead = -1
stdin = sys.stdin.buffer
while True:
    ready, _, _ = select.select([stdin], [], [], TICK)
    if ready:
        line = stdin.readline()
        if not line:
            break
        op, *fields = line.decode().rstrip("\n").split("\t")
        if op == "+":
            start = int(fields[1]) if fields[1] else None
            groups[int(fields[0])] = [start, [f for f in fields[2:] if f]]
        elif op == "-":
            groups.pop(int(fields[0]), None)
    for pgid, (start, files) in list(groups.items()):
        if pgid > 0 and started(pgid) != start and start is not None:
            # The kernel died: end what it left in its group now, while the id is still
            # ours, and keep only its files (the host removes them, or we do at the end).
            if started(pgid) is None:
                kill(pgid, signal.SIGKILL)
            del groups[pgid]
            groups[dead] = [None, files]
            dead -= 1
live = [g for g, (start, _) in groups.items() if g > 0 and ours(g, start)]
for pgid in live:
    kill(pgid, signal.SIGTERM)
deadline = time.monotonic() + 2.0
def alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except OSError:
        return False
while time.monotonic() < deadline and any(alive(g) for g in live):
    time.sleep(0.05)
for pgid in live:
    if ours(pgid, groups[pgid][0]):
        kill(pgid, signal.SIGKILL)
for start, files in groups.values():
    for path in files:
        try:
            os.unlink(path)
        except OSError:
            pass
"""


def start_time(pid: int) -> int | None:
    """When process *pid* started (clock ticks since boot, from /proc), or None if unknown.

    With the pid it names one process for good: a reused pid has a later start time."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def kill_group(pgid: int, sig: int, started: int | None = None) -> None:
    """Signal a kernel's process group (the kernel and whatever it started), if it is there
    and still ours: a leader with another start time than *started* means the id was reused."""
    if started is not None:
        now = start_time(pgid)
        if now is not None and now != started:
            return
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Reaper:
    """The host's end of the watchdog pipe. Thread-safe; starts the process on first use and
    again whenever it dies, telling it every live group anew."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._groups: dict[int, str] = {}  # pgid -> its "+" line, to tell a new reaper
        self._closed = False
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        """The reaper process's pid (for tests and diagnostics), if it is running."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def _spawn(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-c", _REAPER, str(TICK)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # outlives the host's process group on purpose
            close_fds=True,
        )
        threading.Thread(
            target=self._supervise, args=(proc,), name="kernel-bridge-reaper", daemon=True
        ).start()
        return proc

    def _supervise(self, proc: subprocess.Popen[bytes]) -> None:
        """Wait for *proc* to end; if it was not closed, start a new one with every group."""
        proc.wait()
        with self._lock:
            if self._closed or self._proc is not proc:
                return
            log.warning("the kernel reaper died (%s); starting it again", proc.returncode)
            self.restarts += 1
            self._proc = None
            if self._groups:
                self._send_locked("")

    def _send_locked(self, line: str) -> None:
        """Send *line* ("" for none); a new reaper first learns every live group."""
        if self._proc is None or self._proc.poll() is not None:
            self._proc = self._spawn()
            lines = list(self._groups.values())
        else:
            lines = []
        if line:
            lines.append(line)
        if not lines:
            return
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write("".join(f"{x}\n" for x in lines).encode())
            self._proc.stdin.flush()
        except OSError as exc:  # it died just now: its supervisor starts another
            log.warning("kernel reaper is gone: %s", exc)

    def watch(self, pgid: int, started: int | None, files: Sequence[str] = ()) -> None:
        """Kill group *pgid* (its leader started at *started*, see start_time()) and remove
        *files* if the host dies; call it the moment the kernel's process exists."""
        line = "\t".join(["+", str(pgid), "" if started is None else str(started), *files])
        with self._lock:
            if self._closed:
                return
            self._groups[pgid] = line
            self._send_locked(line)

    def forget(self, pgid: int) -> None:
        """The group is ended and its files removed (or its kernel is gone): stop watching."""
        with self._lock:
            if self._groups.pop(pgid, None) is not None and self._proc is not None:
                self._send_locked(f"-\t{pgid}")

    def close(self) -> None:
        """End the watchdog; it ends every group it still knows, so forget closed ones first."""
        with self._lock:
            self._closed = True
            proc, self._proc = self._proc, None
            self._groups.clear()
        if proc is None:
            return
        try:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
