"""The kernel side's fork server, spoken to directly over its socket (no bridge in between)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import cast

import pytest
from procs import children

from bridge.core.wire import kernel_side_dir
from bridge.transports.local.forkserver import ForkedProcess, ForkServer


def test_the_fork_server_never_forks_past_a_requests_deadline() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server = subprocess.Popen(
        [sys.executable, "-m", "bridge_runtime.forkserver", str(theirs.fileno())],
        pass_fds=[theirs.fileno()],
        cwd=str(kernel_side_dir()),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    theirs.close()
    try:
        assert json.loads(ours.recv(65536))["ready"] is True
        request = {
            "op": "fork",
            "id": 1,
            "argv": [sys.executable, "-m", "bridge_runtime.launch", "-f", "/nonexistent.json"],
            "env": dict(os.environ),
            "cwd": "/",
            "deadline": time.clock_gettime(time.CLOCK_MONOTONIC) - 0.001,
        }
        ours.send(json.dumps(request).encode())
        reply = json.loads(ours.recv(65536))
        assert reply == {"id": 1, "error": "the request's deadline has passed"}
        assert children(server.pid) == set()
    finally:
        ours.close()
        server.wait(timeout=10)


def test_signalling_a_forked_kernel_that_is_gone_is_quiet() -> None:
    """Between the server reaping a kernel and its message saying so, a signal finds no
    process: as with Popen, nothing is raised (jupyter_client's shutdown signals first, and
    an error there left the kernel listed with its connection file)."""
    process = subprocess.Popen(["true"])
    pidfd = os.pidfd_open(process.pid)
    process.wait()  # reaped: the pidfd names a process that is no more
    forked = ForkedProcess(process.pid, pidfd, cast("ForkServer", None))
    with pytest.raises(ProcessLookupError):
        signal.pidfd_send_signal(pidfd, signal.SIGINT)  # what the fork server's child meets
    forked.send_signal(signal.SIGINT)
    forked.kill()
    assert forked.poll() is None  # not marked exited: the server's message does that
    forked._exited(0)
    assert forked.poll() == 0
