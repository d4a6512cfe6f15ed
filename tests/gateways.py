"""Real gateways for the tests: Jupyter Kernel Gateway and Enterprise Gateway on 127.0.0.1.

Kernel Gateway runs from the project's venv (jupyter_server 2, ipykernel 7). Enterprise Gateway
3 pins jupyter_client < 7 and jupyter_server < 2, so it has a venv of its own, ``.venv/eg``
(``make test`` builds it): its kernels run ipykernel 6 from there, like a gateway host that
has never seen kernel-bridge.

Each gateway is started with a token, its kernels are its own children, and ``stop()`` ends the
gateway and checks that none of its kernels outlived it (killing any that did, and saying so).
Their kernels use IPC transport: with TCP, a kernel launched as another process on this busy
machine takes its port dies at start, and the gateway waits 60 s before it says so.
``KB_GATEWAY_LOGS=DIR`` keeps each gateway's log in DIR.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from procs import alive, children

ROOT = Path(__file__).resolve().parent.parent
KG_EXE = Path(sys.executable).parent / "jupyter-kernelgateway"
EG_EXE = ROOT / ".venv" / "eg" / "bin" / "jupyter-enterprisegateway"
GATEWAY_KINDS = ("kernel_gateway", "enterprise_gateway")
# Environment names the gateways pass on to kernels besides KERNEL_*, as an operator allows
# them: those the backend tests' scripts read.
CLIENT_ENVS = ("MODE", "CONCURRENT")


def bridge_options(request: pytest.FixtureRequest, kind: str) -> dict[str, object]:
    """AsyncBridge arguments for local kernels or for kernels on the gateway fixture *kind*."""
    if kind == "local":
        return {"gateway_url": ""}  # local, whatever the environment says
    gateway = request.getfixturevalue(kind)
    options: dict[str, object] = {"gateway_url": gateway.url, "gateway_token": gateway.token}
    tag = "KERNEL_BRIDGE_TEST_RUN"  # conftest.py's leak check: the gateway's kernels carry it
    if tag in os.environ:  # too (a KERNEL_* name, which any gateway passes on)
        options["env"] = {tag: os.environ[tag]}
    return options


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GatewayProcess:
    """One gateway of *kind* on a free loopback port with a fresh token."""

    def __init__(self, kind: str, *, legacy_protocol: bool = False) -> None:
        if kind not in GATEWAY_KINDS:
            raise ValueError(kind)
        self.kind = kind
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.legacy_protocol = legacy_protocol
        self.proc: subprocess.Popen[bytes] | None = None
        self.kernel_pids: set[int] = set()
        self._dir = tempfile.TemporaryDirectory(prefix=f"kb-{kind}-")
        self.log_path = Path(self._dir.name) / "gateway.log"

    def command(self) -> list[str]:
        common = ["--ip=127.0.0.1", f"--port={self.port}", "--port_retries=0"]
        if self.kind == "kernel_gateway":
            if not KG_EXE.exists():
                raise RuntimeError(f"{KG_EXE} is missing: run `make .venv/.installed`")
            cmd = [
                str(KG_EXE),
                *common,
                f"--KernelGatewayApp.auth_token={self.token}",
                "--KernelManager.transport=ipc",
                "--JupyterWebsocketPersonality.list_kernels=True",
                # Its IOPub rate limit drops output past 1,000 msg/s or 1 MB/s (docs/scale.md).
                "--ZMQChannelsWebsocketConnection.limit_rate=False",
                *(f"--JupyterWebsocketPersonality.env_whitelist={name}" for name in CLIENT_ENVS),
            ]
            if self.legacy_protocol:
                cmd.append("--ZMQChannelsWebsocketConnection.kernel_ws_protocol=")
            return cmd
        if not EG_EXE.exists():
            raise RuntimeError(f"{EG_EXE} is missing: run `make .venv/eg/.installed`")
        return [
            str(EG_EXE),
            *common,
            f"--EnterpriseGatewayApp.auth_token={self.token}",
            "--RemoteKernelManager.transport=ipc",
            # It refuses kernels for user root unless told who is unauthorized instead.
            "--EnterpriseGatewayApp.unauthorized_users=nobody",
            *(f"--EnterpriseGatewayApp.client_envs={name}" for name in CLIENT_ENVS),
        ]

    def start(self, timeout: float = 60.0) -> GatewayProcess:
        env = dict(os.environ)
        for name in ("JUPYTER_GATEWAY_URL", "JUPYTER_GATEWAY_AUTH_TOKEN", "PYTHONPATH"):
            env.pop(name, None)
        env["JUPYTER_RUNTIME_DIR"] = self._dir.name  # its connection files, not ~/.local
        env["JUPYTER_DATA_DIR"] = self._dir.name
        log = open(self.log_path, "wb")  # noqa: SIM115 (the gateway holds it)
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self._dir.name,
            env=env,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited at start:\n{self.log()}")
            with contextlib.suppress(OSError):
                if self.get("/api")[0] == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.kind} did not answer within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-5000:]
        return ""

    def request(self, method: str, path: str, token: str | None = None) -> tuple[int, object]:
        request = urllib.request.Request(self.url + path, method=method, data=None)
        request.add_header("Authorization", f"token {self.token if token is None else token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = response.read()
                return response.status, json.loads(body) if body else None
        except urllib.error.HTTPError as exc:
            return exc.code, None

    def get(self, path: str) -> tuple[int, object]:
        return self.request("GET", path)

    def kernel_ids(self) -> set[str]:
        """The ids of the kernels the gateway has now (Kernel Gateway: listing is enabled)."""
        status, data = self.get("/api/kernels")
        assert status == 200 and isinstance(data, list), status
        return {k["id"] for k in data}

    def has_kernel(self, kernel_id: str) -> bool:
        status, _ = self.get(f"/api/kernels/{kernel_id}")
        assert status in (200, 404), status
        return status == 200

    def kernel_processes(self) -> set[int]:
        assert self.proc is not None
        pids = children(self.proc.pid)
        self.kernel_pids |= pids
        return pids

    def stop(self) -> list[int]:
        """Stop the gateway (SIGTERM: it shuts its kernels down); return kernels that outlived
        it, which are then killed."""
        if self.proc is None:
            return []
        if self.proc.poll() is None:
            self.kernel_processes()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        deadline = time.monotonic() + 10
        while any(alive(p) for p in self.kernel_pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        leaked = sorted(p for p in self.kernel_pids if alive(p))
        for pid in leaked:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        keep = os.environ.get("KB_GATEWAY_LOGS")
        if keep:  # the log, for a post-mortem
            import shutil

            shutil.copy(self.log_path, Path(keep) / f"{self.kind}-{self.port}.log")
        self._dir.cleanup()
        return leaked
