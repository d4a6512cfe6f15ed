"""What the plugin does, on the service layer the HTTP service shares (imported once it listens).

``Plugin`` holds the settings Initialize gave, the Service (a pool of warm kernels) and the
forwarder that stores attest() records in QNTX; the gRPC methods in servicer.py call it.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import bridge
from bridge.service import dispatch
from bridge.service import models as m
from bridge.service.errors import ApiError, bad_request, internal, to_api_error
from bridge.service.service import Service

from . import signa
from .ats import AtsForwarder
from .protocol import MAX_MESSAGE

log = logging.getLogger("bridge.qntx")

SCRIPT_HANDLER = "python.script"
JOB_TIMEOUT = 300.0  # seconds a job without a timeout of its own gets, as QNTX's plugin gave
EXECUTE_TIMEOUT = 30.0  # seconds of a PythonService.Execute

CONFIG_FIELDS: dict[str, tuple[str, str, str]] = {
    # name: (type, default, description)
    "python_paths": (
        "string",
        "",
        "Folders put first on the kernels' sys.path, separated by colons.",
    ),
    "default_modules": (
        "string",
        "",
        "Modules every kernel imports as it starts, separated by commas.",
    ),
    "pool_size": ("number", "2", "Warm kernels for calls."),
    "timeout": ("number", "30", "Default timeout of a call, in seconds."),
    "root": ("string", "", "The folder /execute-file reads scripts from (default: the cwd)."),
    "python": ("string", "", "The interpreter of the kernels (default: the plugin's own)."),
}


@dataclass
class Settings:
    """The plugin's settings, from Initialize's config map (every value a string)."""

    python_paths: list[str] = field(default_factory=list)
    default_modules: list[str] = field(default_factory=list)
    pool_size: int = 2
    timeout: float = 30.0
    root: str = ""
    python: str | None = None
    ats_endpoint: str = ""
    auth_token: str = ""

    @classmethod
    def from_config(
        cls, config: Mapping[str, str], *, ats_endpoint: str = "", auth_token: str = ""
    ) -> Settings:
        """Raise ValueError naming the setting that is wrong."""
        unknown = sorted(set(config) - set(CONFIG_FIELDS))
        if unknown:
            log.info("settings kernel-bridge does not use: %s", ", ".join(unknown))
        paths = [os.path.abspath(p) for p in config.get("python_paths", "").split(":") if p]
        modules = [m.strip() for m in config.get("default_modules", "").split(",") if m.strip()]
        for name in modules:
            if not all(part.isidentifier() for part in name.split(".")):
                raise ValueError(f"default_modules: {name!r} is not a module name")
        try:
            pool_size = int(float(config.get("pool_size", "2")))
            timeout = float(config.get("timeout", "30"))
        except ValueError as exc:
            raise ValueError(f"pool_size and timeout must be numbers: {exc}") from None
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {pool_size}")
        if not 0 < timeout <= 86_400:
            raise ValueError(f"timeout must be between 0 and 86400 seconds, got {timeout:g}")
        root = config.get("root", "") or os.getcwd()
        if not os.path.isdir(root):
            raise ValueError(f"root {root!r} is not a folder")
        return cls(
            python_paths=paths,
            default_modules=modules,
            pool_size=pool_size,
            timeout=timeout,
            root=root,
            python=config.get("python") or None,
            ats_endpoint=ats_endpoint,
            auth_token=auth_token,
        )


_STARTUP = """\
# Written by kernel-bridge's QNTX plugin: the default modules, imported as each kernel starts.
def _kernel_bridge_preload(names, previous):
    import importlib
    import os
    import sys

    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:
            print(f"kernel-bridge: default module {{name}} was not imported: {{exc!r}}",
                  file=sys.stderr)
    if previous and os.path.isfile(previous):
        with open(previous) as f:
            exec(compile(f.read(), previous, "exec"), globals())


_kernel_bridge_preload({names!r}, {previous!r})
del _kernel_bridge_preload
"""


class Plugin:
    """The plugin's state: its settings, its Service, its attestation forwarder."""

    def __init__(self) -> None:
        self.settings = Settings(root=os.getcwd())
        self.service: Service | None = None
        self.ats: AtsForwarder | None = None
        self._lock = asyncio.Lock()
        self._folder = tempfile.mkdtemp(prefix="kernel-bridge-qntx-")

    # -- lifecycle -------------------------------------------------------------------------------

    async def configure(self, settings: Settings) -> None:
        """Stop what runs, then start kernels with *settings* (Initialize, again or not)."""
        async with self._lock:
            await self._stop()
            self.settings = settings
            await self._start()

    async def running(self) -> Service:
        """The Service, started with the current settings if it is not running."""
        if self.service is None:
            async with self._lock:
                if self.service is None:
                    await self._start()
        assert self.service is not None
        return self.service

    async def stop(self) -> None:
        async with self._lock:
            await self._stop()

    async def close(self) -> None:
        await self.stop()
        shutil.rmtree(self._folder, ignore_errors=True)

    def _kernel_env(self) -> dict[str, str]:
        if not self.settings.default_modules:
            return {}
        path = os.path.join(self._folder, "startup.py")
        with open(path, "w") as f:
            f.write(
                _STARTUP.format(
                    names=self.settings.default_modules,
                    previous=os.environ.get("PYTHONSTARTUP", ""),
                )
            )
        return {"PYTHONSTARTUP": path}

    async def _start(self) -> None:
        s = self.settings
        ats = AtsForwarder(s.ats_endpoint, s.auth_token) if s.ats_endpoint else None
        service = Service(
            kernel_manager=None,
            root=s.root or os.getcwd(),
            pool_size=s.pool_size,
            python=s.python,
            python_paths=s.python_paths,
            env=self._kernel_env(),
            on_attest=ats,
            timeout=s.timeout,
        )
        try:
            await service.start()
        except BaseException:
            await service.close()
            if ats is not None:
                await ats.close()
            raise
        self.service, self.ats = service, ats
        log.info(
            "%d kernels ready (%s), python_paths %s, default modules %s, ATS %s",
            s.pool_size,
            service.bridge.python,
            s.python_paths or "none",
            s.default_modules or "none",
            s.ats_endpoint or "none",
        )

    async def _stop(self) -> None:
        service, ats = self.service, self.ats
        self.service = self.ats = None
        if service is not None:
            await service.close()
        if ats is not None:
            await ats.close()

    async def flush(self) -> None:
        """Wait for the attestations of the calls answered so far to reach QNTX."""
        if self.ats is not None:
            await self.ats.flush()

    # -- the calls -------------------------------------------------------------------------------

    async def http(self, method: str, path: str, body: bytes, host: str) -> dispatch.Answer:
        """A tunnelled request, answered by the route table the HTTP service serves."""
        try:
            service = await self.running()
        except Exception as exc:
            return dispatch.failure(to_api_error(exc) or internal())
        # A downloaded file travels in one gRPC message: leave room for the rest of it.
        answer = await dispatch.respond(
            service, method, path, body, host=host, max_answer=MAX_MESSAGE - 64 * 1024
        )
        await self.flush()
        return answer

    async def job(
        self, payload: bytes, timeout: float | None
    ) -> tuple[dispatch.Answer, list[tuple[str, str, str, str]]]:
        """A python.script job: ``{"content": code}`` (or ``code``), as /execute runs it; the
        answer, and a log entry (timestamp, level, line, stage) for each line the code wrote,
        stamped when the kernel sent it."""
        try:
            data = json.loads(payload or b"null")
        except ValueError as exc:
            raise bad_request(f"the payload is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise bad_request("the payload must be a JSON object")
        code = data.get("content", data.get("code"))
        if not isinstance(code, str) or not code:
            raise bad_request("the payload has no code: give it as 'content' (or 'code')")
        service = await self.running()
        lines = JobLog()
        answer = await dispatch.outcome(
            service.execute(
                m.ExecuteRequest(
                    code=code, timeout_secs=JOB_TIMEOUT if timeout is None else timeout
                ),
                on_output=lines.add,
            )
        )
        await self.flush()
        return answer, lines.entries()

    async def execute(self, code: str, upstream: Any) -> dispatch.Answer:
        """PythonService.Execute: the code sees the upstream attestation as ``upstream``."""
        service = await self.running()
        answer = await dispatch.outcome(
            service.execute(
                m.ExecuteRequest(
                    code=code, timeout_secs=EXECUTE_TIMEOUT, inputs={"upstream": upstream}
                )
            )
        )
        await self.flush()
        return answer

    def health(self) -> tuple[bool, str, dict[str, str]]:
        details = {"plugin_version": bridge.__version__}
        service = self.service
        if service is None:
            return False, "no kernels: not initialized, or shut down", details
        status = service.pool_status()
        details.update(
            pool_size=str(status["pool_size"]),
            kernels=str(status["kernels"]),
            kernels_ready=str(status["ready"]),
            kernels_busy=str(status["busy"]),
            backends=str(status["backends"]),
            python_version=service.kernel_python_version,
        )
        if self.ats is not None:
            details.update(
                attestations_sent=str(self.ats.sent), attestations_failed=str(self.ats.failed)
            )
        healthy = status["kernels"] > 0
        message = (
            f"{status['ready']} of {status['kernels']} kernels ready, {status['busy']} busy"
            if healthy
            else "no live kernel"
        )
        return healthy, message, details


@functools.cache
def declared_signa() -> list[Any]:
    """InitializeResponse.signa: the operations QNTX serves as endpoints and MCP tools."""
    return signa.signa(dispatch.document())


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


class JobLog:
    """A job's stdout and stderr as log lines, each stamped when its end reached the plugin
    (QNTX writes them to task_logs at those times, after the job returns)."""

    _LEVELS = {"stdout": "info", "stderr": "warn"}

    def __init__(self) -> None:
        self._lines: list[tuple[str, str, str, str]] = []
        self._partial = {"stdout": "", "stderr": ""}

    def add(self, output: dict[str, Any]) -> None:
        """The execute call's on_output: stream chunks are split into lines."""
        if output.get("output_type") != "stream":
            return
        stream = "stderr" if output.get("name") == "stderr" else "stdout"
        *done, rest = (self._partial[stream] + str(output.get("text", ""))).split("\n")
        self._partial[stream] = rest
        stamp = _now()
        self._lines += [(stamp, self._LEVELS[stream], line, stream) for line in done]

    def entries(self) -> list[tuple[str, str, str, str]]:
        """Every line, the unterminated last ones of each stream included."""
        stamp = _now()
        tail = [(stamp, self._LEVELS[s], text, s) for s, text in self._partial.items() if text]
        return self._lines + tail


__all__ = ["ApiError", "JobLog", "Plugin", "Settings", "declared_signa"]
