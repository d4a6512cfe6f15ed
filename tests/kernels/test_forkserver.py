"""The kernel side's fork server, spoken to directly over its socket (no bridge in between)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from procs import children

from bridge.core.wire import kernel_side_dir


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
