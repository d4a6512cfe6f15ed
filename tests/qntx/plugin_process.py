"""`qntx-python-plugin` started as QNTX's core starts it (plugin/grpc/discovery.go), for tests.

The core launches the binary with ``--port N`` in a process group of its own, reads
``QNTX_PLUGIN_PORT=N`` from its stdout (waiting 2 s at most), then polls ``Metadata`` until the
name matches; to stop it, it sends SIGTERM to the group and SIGKILL 3 s later.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from bridge.qntx.protocol import domain_pb, domain_rpc, python_pb, python_rpc

PLUGIN = str(Path(sys.executable).with_name("qntx-python-plugin"))
MAX_MESSAGE = 100 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PluginProcess:
    def __init__(self, port: int | None = None, *args: str) -> None:
        self.requested = port or free_port()
        self.args = args  # more options of the plugin's
        self.port = 0
        self.announced_after = 0.0
        self.process: subprocess.Popen[bytes] | None = None
        self._err = tempfile.NamedTemporaryFile(prefix="qntx-plugin-", suffix=".err")  # noqa: SIM115
        self.channel: grpc.Channel | None = None

    def start(self) -> PluginProcess:
        started = time.monotonic()
        self.process = subprocess.Popen(
            [PLUGIN, "--port", str(self.requested), *self.args],
            stdout=subprocess.PIPE,
            stderr=self._err,
            start_new_session=True,  # QNTX's Setpgid: the plugin leads a group of its own
        )
        line: list[bytes] = []
        reader = threading.Thread(
            target=lambda: line.append(self.process.stdout.readline()),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        reader.join(2.0)  # the core waits 2 s for the announcement
        assert line and line[0].startswith(b"QNTX_PLUGIN_PORT="), (line, self.log())
        self.announced_after = time.monotonic() - started
        self.port = int(line[0].split(b"=", 1)[1])
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{self.port}",
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
            ],
        )
        self.wait_for_metadata()
        return self

    def wait_for_metadata(self, timeout: float = 5.0) -> None:
        """waitForPlugin: Metadata, every 100 ms, until it answers with the name 'python'."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.domain.Metadata(domain_pb.Empty(), timeout=1).name == "python":
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, f"no Metadata from the plugin:\n{self.log()}"
            time.sleep(0.1)

    @property
    def domain(self) -> Any:
        return domain_rpc.DomainPluginServiceStub(self.channel)

    @property
    def python(self) -> Any:
        return python_rpc.PythonServiceStub(self.channel)

    def http(self, method: str, path: str, body: bytes = b"", timeout: float = 60) -> Any:
        request = domain_pb.HTTPRequest(method=method, path=path, body=body)
        return self.domain.HandleHTTP(request, timeout=timeout)

    def execute(self, code: str, upstream: bytes = b"") -> Any:
        request = python_pb.PythonExecuteRequest(code=code, upstream_attestation=upstream)
        return self.python.Execute(request, timeout=60)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return Path(self._err.name).read_text()

    def terminate(self, within: float = 3.0) -> float:
        """The core's stop(): SIGTERM to the group; seconds until the plugin was gone."""
        assert self.process is not None
        started = time.monotonic()
        os.killpg(self.pid, signal.SIGTERM)
        try:
            self.process.wait(within)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.process.wait()
            raise AssertionError(
                f"the plugin outlived SIGTERM by {within} s:\n{self.log()}"
            ) from None
        return time.monotonic() - started

    def close(self) -> None:
        try:
            if self.channel is not None:
                self.channel.close()
            if self.process is not None and self.process.poll() is None:
                self.terminate(10)
        finally:
            self._err.close()
            if self.process is not None and self.process.stdout is not None:
                self.process.stdout.close()


class Socket:
    """A HandleWebSocket stream as QNTX's core drives it: frames in from a queue, out as read.

    ``send`` writes a DATA frame (a JSON object), ``ping`` a PING; ``next`` is the next frame
    the plugin sent (JSON-decoded for DATA); ``close`` sends CLOSE and ends the stream as the
    core does when the browser goes; ``drop`` cancels the call (the core's side vanishing).
    """

    def __init__(self, plugin: PluginProcess, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        import queue

        self._out: queue.Queue[Any] = queue.Queue()
        ws = domain_pb.WebSocketMessage
        self._out.put(ws(type=ws.CONNECT, timestamp=time.time_ns()))
        self.call = plugin.domain.HandleWebSocket(
            iter(self._out.get, None), metadata=metadata, timeout=120
        )
        self._replies = iter(self.call)

    def send(self, request: dict[str, Any]) -> None:
        ws = domain_pb.WebSocketMessage
        data = json.dumps(request).encode()
        self._out.put(ws(type=ws.DATA, data=data, timestamp=time.time_ns()))

    def ping(self, stamp: int) -> None:
        ws = domain_pb.WebSocketMessage
        self._out.put(ws(type=ws.PING, timestamp=stamp))

    def next(self) -> Any:
        """The next frame: a DATA frame's JSON object, else the WebSocketMessage itself."""
        message = next(self._replies)
        if message.type == domain_pb.WebSocketMessage.DATA:
            return json.loads(message.data)
        return message

    def until_end(self, ref: str) -> list[dict[str, Any]]:
        """Frames of *ref* up to and with its end (or cancelled); others are dropped."""
        frames = []
        while True:
            f = self.next()
            if isinstance(f, dict) and f.get("ref") == ref:
                frames.append(f)
                if f["event"] in ("end", "cancelled"):
                    return frames

    def close(self) -> None:
        ws = domain_pb.WebSocketMessage
        self._out.put(ws(type=ws.CLOSE, timestamp=time.time_ns()))
        self._out.put(None)

    def drop(self) -> None:
        self.call.cancel()
        self._out.put(None)
