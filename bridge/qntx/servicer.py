"""The gRPC methods QNTX's core calls: DomainPluginService and PythonService.

This module stays light, so the plugin listens and announces its port at once; the service
layer (bridge.qntx.core, which imports Jupyter Server) is loaded right after, and the calls
that need it wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import threading
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

import bridge

from .protocol import domain_pb, domain_rpc, python_pb, python_rpc

if TYPE_CHECKING:
    from .core import Plugin

log = logging.getLogger("bridge.qntx")

NAME = "python"  # the name QNTX enables the plugin by, and checks Metadata against
DESCRIPTION = "Python in managed IPython kernels (kernel-bridge)"


class Core:
    """bridge.qntx.core, imported in a thread once the server listens, and its Plugin."""

    def __init__(self) -> None:
        self._plugin: asyncio.Future[Plugin] | None = None

    def load(self) -> asyncio.Future[Plugin]:
        if self._plugin is None:
            self._plugin = asyncio.ensure_future(self._load())
        return self._plugin

    async def _load(self) -> Plugin:
        # A daemon thread, not asyncio.to_thread: a plugin stopped while the import still runs
        # (a slow disk, a busy machine) exits at once instead of waiting for it to finish.
        loop = asyncio.get_running_loop()
        loaded: asyncio.Future[Any] = loop.create_future()

        def settle(core: Any, error: BaseException | None) -> None:
            if loaded.done():
                return
            if error is not None:
                loaded.set_exception(error)
            else:
                loaded.set_result(core)

        def load() -> None:
            core: Any = None
            error: BaseException | None = None
            try:
                core = importlib.import_module("bridge.qntx.core")
                importlib.import_module("bridge.qntx.websocket")
            except BaseException as exc:
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(settle, core, error)

        threading.Thread(target=load, name="bridge-qntx-load", daemon=True).start()
        core = await loaded
        plugin: Plugin = core.Plugin()
        return plugin

    async def plugin(self) -> Plugin:
        return await asyncio.shield(self.load())

    def loaded(self) -> Plugin | None:
        if self._plugin is not None and self._plugin.done() and not self._plugin.exception():
            return self._plugin.result()
        return None

    async def close(self) -> None:
        # Not loaded yet: no kernel can have started (every call that starts one waits for it).
        plugin = self.loaded()
        if plugin is not None:
            await plugin.close()


def _json(value: Any) -> bytes:
    return json.dumps(value, default=str).encode()


class DomainPlugin(domain_rpc.DomainPluginServiceServicer):  # type: ignore[misc]
    def __init__(self, core: Core) -> None:
        self.core = core

    async def Metadata(self, request: Any, context: Any) -> Any:
        return domain_pb.MetadataResponse(
            name=NAME,
            version=bridge.__version__,
            qntx_version=">=0.1.0",
            description=DESCRIPTION,
            author="kernel-bridge",
            license="BSD-3-Clause",
        )

    async def Initialize(self, request: Any, context: Any) -> Any:
        from .core import SCRIPT_HANDLER, Settings, declared_signa

        plugin = await self.core.plugin()
        try:
            settings = Settings.from_config(
                dict(request.config),
                ats_endpoint=request.ats_store_endpoint,
                auth_token=request.auth_token,
            )
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            await plugin.configure(settings)
        except bridge.BridgeError as exc:
            await context.abort(grpc.StatusCode.INTERNAL, f"the kernels did not start: {exc}")
        return domain_pb.InitializeResponse(
            handler_names=[SCRIPT_HANDLER], python_provider=True, signa=declared_signa()
        )

    async def Shutdown(self, request: Any, context: Any) -> Any:
        plugin = self.core.loaded()
        if plugin is not None:
            await plugin.stop()
        return domain_pb.Empty()

    async def HandleHTTP(self, request: Any, context: Any) -> Any:
        plugin = await self.core.plugin()
        host = "127.0.0.1"
        for header in request.headers:
            if header.name.lower() == "host" and header.values:
                host = header.values[0]
        answer = await plugin.http(request.method, request.path, request.body, host)
        # JSON, but for a file's bytes (a download), whose own type the answer says.
        fields = {"Content-Type": "application/json", **answer.headers}
        headers = [domain_pb.HTTPHeader(name=k, values=[v]) for k, v in fields.items()]
        return domain_pb.HTTPResponse(
            status_code=answer.status, headers=headers, body=answer.encode()
        )

    async def HandleWebSocket(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        """Runs with their output as it is made, backends' events, cancel: websocket.py."""
        from .websocket import Session

        plugin = await self.core.plugin()
        metadata = {key: value for key, value in context.invocation_metadata() or ()}
        async for message in Session(plugin.running).serve(request_iterator, metadata):
            yield message

    async def Health(self, request: Any, context: Any) -> Any:
        plugin = self.core.loaded()
        if plugin is None:
            return domain_pb.HealthResponse(
                healthy=False,
                message="starting",
                details={"plugin_version": bridge.__version__},
            )
        healthy, message, details = plugin.health()
        return domain_pb.HealthResponse(healthy=healthy, message=message, details=details)

    async def ConfigSchema(self, request: Any, context: Any) -> Any:
        from .core import CONFIG_FIELDS

        fields = {
            name: domain_pb.ConfigFieldSchema(
                type=kind, description=text, default_value=default, required=False
            )
            for name, (kind, default, text) in CONFIG_FIELDS.items()
        }
        return domain_pb.ConfigSchemaResponse(fields=fields)

    async def RegisterElements(self, request: Any, context: Any) -> Any:
        return domain_pb.ElementDefResponse()

    async def ExecuteJob(self, request: Any, context: Any) -> Any:
        from .core import SCRIPT_HANDLER, ApiError

        if request.handler_name != SCRIPT_HANDLER:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"unknown handler {request.handler_name!r}: this plugin serves {SCRIPT_HANDLER}",
            )
        plugin = await self.core.plugin()
        timeout = float(request.timeout_secs) if request.HasField("timeout_secs") else None
        if timeout is not None and timeout <= 0:
            timeout = None
        try:
            answer, lines = await plugin.job(request.payload, timeout)
        except ApiError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
        body = answer.data()
        success = answer.status == 200 and bool(body.get("success"))
        log.info("job %s: %s", request.job_id or "-", "done" if success else "failed")
        return domain_pb.ExecuteJobResponse(
            success=success,
            error="" if success else str(body.get("error") or ""),
            result=answer.encode(),
            log_entries=[
                domain_pb.JobLogEntry(timestamp=t, level=level, message=text, stage=stage)
                for t, level, text, stage in lines
            ],
            plugin_version=bridge.__version__,
        )


class PythonService(python_rpc.PythonServiceServicer):  # type: ignore[misc]
    def __init__(self, core: Core) -> None:
        self.core = core

    async def Execute(self, request: Any, context: Any) -> Any:
        if not request.code:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Missing 'code' field")
        upstream = None
        if request.upstream_attestation:
            try:
                upstream = json.loads(request.upstream_attestation)
            except ValueError as exc:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"upstream attestation is not valid JSON: {exc}",
                )
        plugin = await self.core.plugin()
        answer = await plugin.execute(request.code, upstream)
        body = answer.data()
        ok = answer.status == 200
        success = ok and bool(body.get("success"))
        return python_pb.PythonExecuteResponse(
            success=success,
            output=str(body.get("stdout") or ""),
            error="" if success else str(body.get("error") or ""),
            result=_json(body.get("result")) if ok else b"",
        )
