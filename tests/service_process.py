"""The real service, `kernel-bridge serve`, as a separate process on a free port, for tests."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from tornado.websocket import websocket_connect

KERNEL_BRIDGE = str(Path(sys.executable).with_name("kernel-bridge"))


class ServiceProcess:
    """`kernel-bridge serve --port 0 ...`; ``url`` and ``token`` once ``start()`` returns."""

    def __init__(
        self,
        *args: str,
        token: str | None = None,
        pool_size: int = 2,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        stdin: int | None = None,
    ) -> None:
        self.token = token if token is not None else secrets.token_hex(16)
        self.args: Sequence[str] = args
        self.pool_size = pool_size
        self.env = {**os.environ, **(env or {})}
        if self.token:  # as Jupyter reads it: not on the command line, where `ps` shows it
            self.env["JUPYTER_TOKEN"] = self.token
        self.cwd = cwd
        self.stdin = stdin  # subprocess.PIPE: the test holds the service's stdin, as a host does
        self.url = ""
        self.banner = ""
        self.process: subprocess.Popen[bytes] | None = None
        self._out = tempfile.NamedTemporaryFile(prefix="kb-serve-", suffix=".out")  # noqa: SIM115
        self._err = tempfile.NamedTemporaryFile(prefix="kb-serve-", suffix=".err")  # noqa: SIM115

    def command(self) -> list[str]:
        cmd = [KERNEL_BRIDGE, "serve", "--port", "0", "--pool-size", str(self.pool_size)]
        return [*cmd, *self.args]

    def start(self, timeout: float = 90) -> ServiceProcess:
        self.process = subprocess.Popen(
            self.command(),
            stdin=self.stdin,
            stdout=self._out,
            stderr=self._err,
            env=self.env,
            cwd=self.cwd,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = Path(self._out.name).read_text()
            match = re.search(r"serving at (\S+)", text)
            if match and "Ctrl-C" in text:
                self.url = match.group(1).rstrip("/")
                self.banner = text
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited early:\n{self.log()}")
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the service did not start in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return Path(self._out.name).read_text() + Path(self._err.name).read_text()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def _options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        headers = {"Authorization": f"token {self.token}"}
        return {"base_url": self.url, "headers": headers, "timeout": 60, **kwargs}

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(**self._options(kwargs))

    def async_client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(**self._options(kwargs))

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int | None:
        """Stop it as Ctrl-C does; kill it (and say so) if it does not stop in time."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise RuntimeError(f"the service ignored signal {sig}:\n{self.log()}") from None
        return self.process.returncode

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self._out.close()
            self._err.close()

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_events(lines: Iterator[str], count: int) -> list[tuple[int, dict[str, Any]]]:
    """The next *count* events of an SSE stream, as (id, {type, data})."""
    events: list[tuple[int, dict[str, Any]]] = []
    seq = 0
    for line in lines:
        if line.startswith("id: "):
            seq = int(line[4:])
        elif line.startswith("data: "):
            events.append((seq, json.loads(line[6:])))
            if len(events) == count:
                break
    return events


class KernelSocket:
    """A Jupyter client's websocket to a kernel through the service (/api/kernels/{id}/channels),
    as JupyterLab's console has: send execute requests, read what comes back for each."""

    def __init__(self, service: ServiceProcess, kernel_id: str) -> None:
        ws_url = service.url.replace("http://", "ws://")
        self.url = f"{ws_url}/api/kernels/{kernel_id}/channels?token={service.token}"
        self.session = uuid.uuid4().hex
        self.ws: Any = None
        self.unread: list[dict[str, Any]] = []  # come while reading for another request

    async def __aenter__(self) -> KernelSocket:
        self.ws = await websocket_connect(self.url)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.ws.close()

    def send(self, msg_type: str, content: dict[str, Any]) -> str:
        """Send a shell message; returns its msg_id, the parent of every message it causes."""
        msg_id = uuid.uuid4().hex
        header = {
            "msg_id": msg_id,
            "msg_type": msg_type,
            "username": "test",
            "session": self.session,
            "version": "5.3",
            "date": "",
        }
        message = {
            "header": header,
            "parent_header": {},
            "metadata": {},
            "content": content,
            "channel": "shell",
            "buffers": [],
        }
        self.ws.write_message(json.dumps(message))
        return msg_id

    def execute(self, code: str) -> str:
        """Send *code* to run; returns the request's msg_id."""
        return self.send("execute_request", {"code": code, "silent": False, "store_history": True})

    async def read(self, msg_id: str, until: Any, timeout: float = 60) -> list[dict[str, Any]]:
        """The messages whose parent is *msg_id*, up to the first for which ``until(msg)``."""
        seen: list[dict[str, Any]] = []
        kept, self.unread = self.unread, []
        for i, msg in enumerate(kept):
            if msg["parent_header"].get("msg_id") != msg_id:
                self.unread.append(msg)
                continue
            seen.append(msg)
            if until(msg):
                self.unread += kept[i + 1 :]
                return seen
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.ws.read_message()
                assert raw is not None, "the server closed the websocket"
                msg = json.loads(raw)
                if msg["parent_header"].get("msg_id") != msg_id:
                    self.unread.append(msg)
                    continue
                seen.append(msg)
                if until(msg):
                    return seen

    async def run(self, code: str) -> str:
        """Execute *code*; its result's text/plain ("" if none). Its error raises."""
        msg_id = self.execute(code)
        messages = await self.read(msg_id, idle)
        result = ""
        for msg in messages:
            kind = msg["header"]["msg_type"]
            if kind == "execute_result":
                result = msg["content"]["data"]["text/plain"]
            elif kind == "error":
                raise AssertionError(msg["content"]["evalue"])
        return result


def idle(msg: dict[str, Any]) -> bool:
    return msg["header"]["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"


async def execute_over_websocket(service: ServiceProcess, kernel_id: str, code: str) -> str:
    """Run *code* in a kernel through /api/kernels/{id}/channels, as JupyterLab does."""
    async with KernelSocket(service, kernel_id) as socket:
        return await socket.run(code)
