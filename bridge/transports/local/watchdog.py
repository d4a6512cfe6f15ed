"""A watchdog process that ends our kernels when the host dies without closing them.

ipykernel's parent poller does not cover a kernel busy in C code, the children a kernel
started, or the connection file with its key. So each host with local kernels keeps one small
reaper process: the host tells it (over a pipe) which process groups and files are live; when
the pipe reaches end-of-file, because the host closed it or because the host is gone (even
after SIGKILL, the kernel closes its descriptors), the reaper ends those groups, SIGTERM and then
SIGKILL, and removes the files.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading

log = logging.getLogger("bridge.kernel")

_REAPER = r"""
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C to the host's terminal is the host's
groups = {}
for line in sys.stdin:
    op, _, rest = line.rstrip("\n").partition("\t")
    if op == "+":
        pgid, _, files = rest.partition("\t")
        groups[int(pgid)] = [f for f in files.split("\t") if f]
    elif op == "-":
        groups.pop(int(rest), None)
def alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except OSError:
        return False
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGTERM)
    except OSError:
        pass
deadline = time.monotonic() + 2.0
while time.monotonic() < deadline and any(alive(g) for g in groups):
    time.sleep(0.05)
for pgid, files in groups.items():
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
    for path in files:
        try:
            os.unlink(path)
        except OSError:
            pass
"""


class Reaper:
    """The host's end of the watchdog pipe. Thread-safe; starts the process on first use."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def _write(self, line: str) -> None:
        with self._lock:
            if self._proc is None:
                self._proc = subprocess.Popen(
                    [sys.executable, "-c", _REAPER],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,  # outlives the host's process group on purpose
                    close_fds=True,
                )
            assert self._proc.stdin is not None
            try:
                self._proc.stdin.write(line.encode() + b"\n")
                self._proc.stdin.flush()
            except OSError as exc:  # the reaper died; the kernels still get shut down on close
                log.warning("kernel reaper is gone: %s", exc)

    def watch(self, pgid: int, files: list[str]) -> None:
        self._write("\t".join(["+", str(pgid), *files]))

    def forget(self, pgid: int) -> None:
        if self._proc is not None:
            self._write(f"-\t{pgid}")

    def close(self) -> None:
        """End the watchdog; it ends every group it still knows, so forget closed ones first."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
