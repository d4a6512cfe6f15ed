"""The service as a Jupyter Server extension: config, start-up and shutdown.

Jupyter Server owns the HTTP server, the token, the config files and the log; this extension
adds the routes and runs an AsyncBridge on the server's own MappingKernelManager, so the
bridge's kernels are the server's kernels (``/api/kernels``, JupyterLab), and each backend is
one of the server's sessions (``/api/sessions``; sessions.py), which JupyterLab lists by name
when it is installed: it is then at ``/lab`` of the same server, with the same token.

Gateway mode follows the server's own gateway settings (``GatewayClient.url`` and
``auth_token``, which Jupyter Server also reads from ``JUPYTER_GATEWAY_URL`` and
``JUPYTER_GATEWAY_AUTH_TOKEN``): the server's kernel manager is then its
GatewayMappingKernelManager, the bridge runs its kernels on that gateway through its own
client and registers them there, so ``/api/kernels`` and JupyterLab still see them.
"""

from __future__ import annotations

import logging
import os
import shlex
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Dict, Float, Int, List, TraitError, Unicode, default, validate

from bridge import InvalidRequest, KernelLimits
from bridge._version import __version__
from bridge.service.service import Service

from .activity import Activity
from .handlers import routes
from .sessions import Sessions


class BridgeApp(ExtensionApp):  # type: ignore[misc]
    """kernel-bridge's HTTP service (config section ``BridgeApp``)."""

    name = "kernel_bridge"
    description = "Run Python in managed IPython kernels over HTTP."
    load_other_extensions = True

    pool_size = Int(2, config=True, help="Warm kernels for one-off calls.")
    python = Unicode(
        None, allow_none=True, config=True, help="Interpreter of the kernels (needs ipykernel)."
    )
    python_paths = List(Unicode(), config=True, help="Folders put on the kernels' sys.path.")
    root = Unicode(config=True, help="The folder /execute-file may read scripts from.")
    timeout = Float(30.0, config=True, help="Default timeout of a call, in seconds.")
    queue_timeout = Float(
        60.0,
        config=True,
        help="Seconds a request may wait for the kernels to be ready, or for a context's "
        "previous call, before 503 overloaded.",
    )
    max_waiting = Int(
        None,
        allow_none=True,
        config=True,
        help="One-off calls that may wait for a busy pool (default: 32 per pool kernel); "
        "past it 503 overloaded at once, with Retry-After.",
    )
    kernel_limits = Dict(
        value_trait=Int(allow_none=True),
        config=True,
        help="What each kernel may take, over the defaults: memory_mb, cpu_seconds, "
        "processes, open_files, file_size_mb (None: not limited), e.g. "
        "--BridgeApp.kernel_limits=memory_mb=1024 --BridgeApp.kernel_limits=cpu_seconds=600 "
        "(docs/kernels.md#limits).",
    )
    max_backends = Int(16, config=True, help="Live backends at most; more get 429 busy.")
    max_contexts = Int(16, config=True, help="Contexts at most; more get 429 busy.")
    context_idle_timeout = Float(
        3600.0,
        config=True,
        help="Seconds a context may sit without a call before it is deleted (0: never).",
    )
    allow_install = Bool(
        True,
        config=True,
        help="Whether POST /packages/install may install into the kernels' Python "
        "(off: 403 forbidden).",
    )
    max_body_size = Int(10 * 1024 * 1024, config=True, help="Largest request body, in bytes.")
    max_output = Int(
        None,
        allow_none=True,
        config=True,
        help="Characters of output one call keeps for its answer (streams, display data; "
        "default: AsyncBridge's, 10,000,000); past it the rest is dropped and the result "
        "says it was truncated.",
    )
    max_file_bytes = Int(
        1 << 30,
        config=True,
        help="Largest file a context's files routes upload or download, in bytes (more: 413).",
    )
    max_context_bytes = Int(
        4 << 30,
        config=True,
        help="Bytes of all the files uploaded into one context that are still there (more: 413).",
    )
    gateway_kernel_name = Unicode(
        None,
        allow_none=True,
        config=True,
        help="With a gateway (GatewayClient.url): its kernel spec (default: the gateway's).",
    )
    announce = Bool(
        False, config=True, help="Print the URL, where the token is and a curl line once ready."
    )
    token_file = Unicode(
        "", config=True, help="The private file holding the token, for the banner's curl line."
    )

    @validate("kernel_limits")
    def _limits(self, proposal: Any) -> dict[str, Any]:
        value: dict[str, Any] = proposal["value"]
        try:
            KernelLimits.of(value)
        except InvalidRequest as exc:
            raise TraitError(f"BridgeApp.kernel_limits: {exc}") from None
        return value

    @validate("max_waiting")
    def _max_waiting(self, proposal: Any) -> int | None:
        value: int | None = proposal["value"]
        if value is not None and value < 0:
            raise TraitError(f"BridgeApp.max_waiting must be 0 or more, got {value}")
        return value

    @validate("max_output")
    def _max_output(self, proposal: Any) -> int | None:
        value: int | None = proposal["value"]
        if value is not None and value < 1:
            raise TraitError(f"BridgeApp.max_output must be 1 or more, got {value}")
        return value

    @validate("context_idle_timeout")
    def _not_negative(self, proposal: Any) -> float:
        value: float = proposal["value"]
        if not value >= 0:
            raise TraitError(f"BridgeApp.context_idle_timeout must be 0 or more, got {value}")
        return value

    @validate(
        "pool_size",
        "max_backends",
        "max_contexts",
        "max_body_size",
        "max_file_bytes",
        "max_context_bytes",
    )
    def _at_least_one(self, proposal: Any) -> int:
        value: int = proposal["value"]
        if value < 1:
            raise TraitError(f"BridgeApp.{proposal['trait'].name} must be at least 1, got {value}")
        return value

    @default("open_browser")
    def _default_open_browser(self) -> bool:
        return False  # the service answers JSON: a browser on it would show nothing useful

    @default("root")
    def _default_root(self) -> str:
        return os.getcwd()

    def initialize_settings(self) -> None:
        serverapp = self.serverapp
        assert serverapp is not None  # linked by Jupyter Server before settings
        _drop_unshown_records(serverapp.log)
        if not serverapp.authenticate_prometheus:
            # /metrics names the service's traffic and kernels: the token, like every route.
            serverapp.log.warning("kernel-bridge: /metrics needs the token all the same")
            serverapp.authenticate_prometheus = True
            web_app = getattr(serverapp, "web_app", None)  # its settings are read per request
            if web_app is not None:
                web_app.settings["authenticate_prometheus"] = True
        bridge_log = logging.getLogger("bridge")
        if not bridge_log.handlers:
            # The library logs to `bridge.*` without handlers; the service logs there too,
            # through the server's own handlers and level.
            for handler in serverapp.log.handlers:
                bridge_log.addHandler(handler)
            bridge_log.setLevel(serverapp.log.level)
            bridge_log.propagate = False
        self.start_error: BaseException | None = None
        gateway = serverapp.gateway_config  # Jupyter Server's GatewayClient
        self.service = Service(
            kernel_manager=serverapp.kernel_manager,
            gateway_url=(gateway.url or "") if gateway.gateway_enabled else "",
            gateway_token=gateway.auth_token or "",
            gateway_kernel_name=self.gateway_kernel_name,
            root=self.root,
            pool_size=self.pool_size,
            python=self.python,
            python_paths=self.python_paths,
            timeout=self.timeout,
            queue_timeout=self.queue_timeout,
            max_backends=self.max_backends,
            max_contexts=self.max_contexts,
            context_idle_timeout=self.context_idle_timeout,
            allow_install=self.allow_install,
            max_body_size=self.max_body_size,
            max_output=self.max_output,
            max_file_bytes=self.max_file_bytes,
            max_context_bytes=self.max_context_bytes,
            sessions=Sessions(serverapp.session_manager),
            kernel_limits=self.kernel_limits,
            max_waiting=self.max_waiting,
            # The server's activity records of the bridge's kernels, from the bridge's reader
            # instead of a second IOPub subscription per kernel (activity.py).
            on_kernel_activity=Activity(serverapp.kernel_manager),
        )

    def initialize_handlers(self) -> None:
        self.handlers.extend(routes(self.service))

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        """Warm the pool once the server's loop runs; a failure stops the server."""
        try:
            await self.service.start()
        except Exception as exc:
            self.start_error = exc
            self.log.critical("kernel-bridge could not start its kernels: %s", exc)
            serverapp.stop()
            return
        self.log.info(
            "kernel-bridge %s: %d kernels ready (%s)",
            __version__,
            self.pool_size,
            self.service.bridge.python,
        )
        if self.announce:
            print(self.banner(serverapp), flush=True)

    def banner(self, serverapp: Any) -> str:
        """Where the service is, where its token is (never the token) and a curl line that
        reads the token from there, as ``make run`` does."""
        url = f"http://{_url_host(serverapp.ip)}:{serverapp.port}{serverapp.base_url}"
        body = '{"content": "print(6 * 7)"}'
        if self.token_file:
            where = f"token: in {self.token_file} (readable by you only)"
            token = f"$(cat {shlex.quote(self.token_file)})"
        else:
            where = "token: the server's (IdentityProvider.token, JUPYTER_TOKEN)"
            token = "$JUPYTER_TOKEN"
        curl = f'curl -s -H "Authorization: token {token}" -d {shlex.quote(body)} {url}execute'
        lab_app = _lab_app(serverapp)
        if lab_app is not None:
            path = str(getattr(lab_app, "app_url", "/lab")).lstrip("/")
            lab = (
                f"lab: {url}{path} (log in with the token; every backend is a session under "
                "Running Terminals and Kernels)"
            )
        else:
            lab = "lab: JupyterLab is not installed here (pip install 'kernel-bridge[lab]')"
        return "\n".join(
            [
                f"kernel-bridge {__version__} serving at {url}",
                where,
                lab,
                f"try: {curl}",
                "Ctrl-C shuts the service and every kernel down.",
            ]
        )

    async def stop_extension(self) -> None:
        await self.service.close()


def _drop_unshown_records(logger: logging.Logger) -> None:
    """Let *logger* drop at once the records none of its handlers shows.

    traitlets leaves an application's logger at DEBUG and filters in its handlers, so every
    ``log.debug`` of Jupyter Server (one per request and several per kernel message) builds a
    LogRecord that is then thrown away. The lowest level of its handlers filters the same."""
    handlers = logger.handlers
    if logger.propagate or not handlers or any(h.level == logging.NOTSET for h in handlers):
        return
    lowest = min(h.level for h in handlers)
    if lowest > logger.level:
        logger.setLevel(lowest)


def _lab_app(serverapp: Any) -> Any:
    """JupyterLab's extension app in this server (its point is "lab"), or None."""
    point = serverapp.extension_manager.extension_points.get("lab")
    return getattr(point, "app", None)


def _url_host(ip: str) -> str:
    if not ip or ip in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{ip}]" if ":" in ip else ip
