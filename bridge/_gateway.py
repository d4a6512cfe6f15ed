"""Kernels on a Jupyter Kernel Gateway or Enterprise Gateway instead of on this machine.

A gateway serves Jupyter Server's kernel API: REST to start, interrupt and delete kernels, and
one websocket per kernel (``/api/kernels/{id}/channels``) that carries every channel. Here:

- ``Gateway`` is that REST API, with the token on every request. It stands where a local
  kernel's MultiKernelManager stands, so ``Kernel.shutdown()`` deletes through it, and it
  remembers every kernel it created, so closing deletes whatever is left.
- ``GatewayKernel`` is a ``Kernel`` whose transport is the websocket (token in the upgrade
  request too): the router, the execute loop, comms and the timeout and death logic are the
  local ones. Jupyter Server's own ``GatewayKernelClient`` is not used: it sends no token on
  its websocket, and takes some 48 ms per trivial execute (delayed ACKs: see ``_quickack``).
- The runtime from ``kernels/`` is not installed on the gateway's host: the first execute sends
  its sources and imports them from memory.

Frames use Jupyter Server's ``v1.kernel.websocket.jupyter.org`` protocol when the gateway
offers it (the gateway relays the kernel's frames without parsing them), else the legacy JSON
one; the (de)serializers are Jupyter Server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import getpass
import json
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from ._exceptions import (
    BridgeError,
    ExecutionTimeout,
    ExitStatus,
    InvalidRequest,
    KernelDied,
    KernelStartError,
)
from ._kernel import Kernel
from ._python import check_paths, kernel_side_dir

log = logging.getLogger("bridge.gateway")

URL_ENV, TOKEN_ENV = "JUPYTER_GATEWAY_URL", "JUPYTER_GATEWAY_AUTH_TOKEN"  # as Jupyter Server's
WS_PROTOCOL = "v1.kernel.websocket.jupyter.org"
REQUEST_TIMEOUT = 20.0  # seconds for a REST call other than a kernel start
DELETE_ATTEMPTS = 5  # a kernel the gateway is restarting cannot be deleted for a moment
POLL_INTERVAL = 2.0  # seconds between checks that the gateway still has our kernels
PING_INTERVAL = 2.5  # websocket pings: a silently dropped connection is seen within 2 of them
MAX_MESSAGE = 1 << 30  # the largest message we accept from the gateway
# The largest the gateway accepts from us: tornado's default websocket_max_message_size, which
# neither Kernel Gateway nor Enterprise Gateway lets one configure. Past it the gateway would
# drop the connection, and with it every call on the kernel: refuse the one message instead.
GATEWAY_MAX_MESSAGE = 10 * 1024 * 1024
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
_RATE_LIMITED = ("IOPub message rate exceeded", "IOPub data rate exceeded")


def gateway_settings(url: str | None, token: str | None) -> tuple[str, str]:
    """The gateway URL and token: the arguments, else Jupyter Server's environment variables.

    An empty URL means no gateway: local kernels.
    """
    if url is None:
        url = os.environ.get(URL_ENV, "")
    if token is None:
        token = os.environ.get(TOKEN_ENV, "")
    if not isinstance(url, str) or not isinstance(token, str):
        raise InvalidRequest("gateway_url and gateway_token must be str")
    url = url.strip().rstrip("/")
    if url and not url.startswith(("http://", "https://")):
        raise InvalidRequest(f"gateway_url must be an http:// or https:// URL, got {url!r}")
    return url, token


def check_server_manager(manager: Any, url: str) -> None:
    """Refuse a ``kernel_manager=`` that cannot show the bridge's gateway kernels: anything but
    Jupyter Server's ``GatewayMappingKernelManager`` for the same gateway."""
    try:
        from jupyter_server.gateway.managers import GatewayMappingKernelManager
    except ImportError:  # no Jupyter Server, so not its manager
        is_gateway = False
    else:
        is_gateway = isinstance(manager, GatewayMappingKernelManager)
    if not is_gateway:
        raise InvalidRequest(
            "with gateway_url=, kernel_manager= must be Jupyter Server's "
            "GatewayMappingKernelManager (a local MultiKernelManager starts local kernels)"
        )
    theirs = str(manager.kernels_url).rstrip("/")
    if theirs != f"{url}/api/kernels":
        raise InvalidRequest(
            f"kernel_manager= manages the kernels of {theirs}, not of the gateway {url}"
        )


class Gateway:
    """The REST side of a gateway: start, interrupt, delete kernels; the token on every call.

    Quacks like the MultiKernelManager of local kernels where ``Kernel`` uses one
    (``kernel_id in gateway``, ``await gateway.shutdown_kernel(kernel_id)``).
    """

    def __init__(self, url: str, token: str = "") -> None:
        self.url = url
        self.token = token
        self.kernel_ids: set[str] = set()  # created by us and not (yet) deleted
        self._deleting: dict[str, asyncio.Future[None]] = {}
        self._http: Any = None
        self._can_list: bool | None = None  # may we GET /api/kernels? (Kernel Gateway: opt-in)

    @property
    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"token {self.token}"
        return headers

    def kernel_url(self, kernel_id: str, suffix: str = "") -> str:
        return f"{self.url}/api/kernels/{quote(kernel_id)}{suffix}"

    async def fetch(
        self,
        method: str,
        url: str,
        body: Any = None,
        *,
        what: str,
        error: type[BridgeError] = BridgeError,
        timeout: float = REQUEST_TIMEOUT,
    ) -> tuple[int, Any]:
        """(status, JSON body) of one request; a gateway that cannot be reached is *error*.

        HTTP errors come back as a status for the caller to judge, with ``refused()``.
        """
        from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

        if self._http is None:
            self._http = AsyncHTTPClient(force_instance=True)
        request = HTTPRequest(
            url,
            method=method,
            headers=self.headers,
            body=json.dumps(body) if body is not None else (b"" if method == "POST" else None),
            connect_timeout=min(timeout, 10.0),
            request_timeout=timeout,
        )
        try:
            response = await self._http.fetch(request, raise_error=False)
        except HTTPClientError as exc:  # 599: timed out or the connection broke
            raise error(f"{what}: gateway {self.url} did not answer: {exc.message}") from None
        except OSError as exc:
            raise error(
                f"{what}: gateway {self.url} is unreachable: {exc.strerror or exc}"
            ) from None
        try:
            data = json.loads(response.body) if response.body else None
        except ValueError:
            data = None
        return response.code, data

    def refused(
        self, what: str, status: int, data: Any, error: type[BridgeError] = BridgeError
    ) -> BridgeError:
        """The error for an unexpected HTTP *status*: URL, status, the gateway's reason."""
        from http.client import responses

        detail = ""
        if isinstance(data, dict):
            detail = str(data.get("message") or data.get("reason") or "")
        hint = " (is the gateway token right?)" if status in (401, 403) else ""
        message = f"{what}: gateway {self.url} answered HTTP {status} {responses.get(status, '')}"
        return error(message.rstrip() + (f": {detail}" if detail else "") + hint)

    async def start_kernel(self, name: str | None, env: Mapping[str, str], timeout: float) -> str:
        """Start a kernel; return its id once the gateway has it."""
        what = "starting a kernel"
        body: dict[str, Any] = {"env": dict(env)}
        if name:
            body["name"] = name
        status, data = await self.fetch(
            "POST",
            f"{self.url}/api/kernels",
            body,
            what=what,
            error=KernelStartError,
            timeout=timeout,
        )
        if status not in (200, 201) or not isinstance(data, dict) or "id" not in data:
            raise self.refused(what, status, data, KernelStartError)
        kernel_id = str(data["id"])
        self.kernel_ids.add(kernel_id)
        return kernel_id

    def __contains__(self, kernel_id: object) -> bool:
        return kernel_id in self.kernel_ids

    async def interrupt_kernel(self, kernel_id: str) -> None:
        what = f"interrupting kernel {kernel_id[:8]}"
        status, data = await self.fetch("POST", self.kernel_url(kernel_id, "/interrupt"), what=what)
        if status == 404:
            raise KernelDied(f"{what}: the gateway {self.url} no longer has it")
        if status not in (200, 204):
            raise self.refused(what, status, data)

    async def shutdown_kernel(self, kernel_id: str, now: bool = False) -> None:
        """Delete a kernel (the gateway shuts it down); once, however often it is asked."""
        future = self._deleting.get(kernel_id)
        if future is None:
            future = self._deleting[kernel_id] = asyncio.ensure_future(self._delete(kernel_id))
        await asyncio.shield(future)

    async def _delete(self, kernel_id: str) -> None:
        what = f"deleting kernel {kernel_id[:8]}"
        try:
            for attempt in range(DELETE_ATTEMPTS):
                status, data = await self.fetch("DELETE", self.kernel_url(kernel_id), what=what)
                if status in (200, 204, 404):
                    self.kernel_ids.discard(kernel_id)
                    return
                if status < 500 or attempt == DELETE_ATTEMPTS - 1:
                    log.warning("%s", self.refused(what, status, data))
                    return
                # A gateway answers 500 while it restarts a kernel that died: try again.
                await asyncio.sleep(0.5 * (attempt + 1))
        except BridgeError as exc:
            log.warning("%s", exc)
        finally:
            self._deleting.pop(kernel_id, None)

    async def missing(self, kernel_ids: set[str]) -> set[str]:
        """Which of *kernel_ids* the gateway no longer has (lost, culled, deleted by others)."""
        what = "checking the kernels"
        if self._can_list is not False:  # one request for all, where the gateway allows listing
            status, data = await self.fetch("GET", f"{self.url}/api/kernels", what=what)
            if status == 200 and isinstance(data, list):
                self._can_list = True
                live = {k.get("id") for k in data if k.get("execution_state") != "dead"}
                return kernel_ids - live
            if status != 403:
                raise self.refused(what, status, data)
            self._can_list = False

        async def gone(kernel_id: str) -> bool:
            status, data = await self.fetch("GET", self.kernel_url(kernel_id), what=what)
            if status == 200 and isinstance(data, dict):
                return data.get("execution_state") == "dead"
            if status == 404:
                return True
            raise self.refused(what, status, data)

        found = await asyncio.gather(*(gone(k) for k in kernel_ids))
        return {k for k, lost in zip(kernel_ids, found, strict=True) if lost}

    async def close(self) -> None:
        """Delete every kernel we created that is still there, then close the HTTP client."""
        await asyncio.gather(*(self.shutdown_kernel(k) for k in list(self.kernel_ids)))
        if self._http is not None:
            self._http.close()
            self._http = None


def _frames() -> Any:
    """Jupyter Server's websocket frame (de)serializers (untyped, hence Any)."""
    from jupyter_server.services.kernels.connection import base

    return base


class _Channels:
    """The kernel's websocket: every channel over one connection, the token in the upgrade."""

    def __init__(self, gateway: Gateway, kernel_id: str, session: Any) -> None:
        self.gateway = gateway
        self.kernel_id = kernel_id
        # The gateway signs for the kernel (it alone has the key); the session makes headers
        # and reads messages. No signing, set here: a Session made without a key warns.
        self.session = session
        self.session.auth = None
        self.ws: Any = None
        self.v1 = True

    @property
    def endpoint(self) -> str:
        """The websocket's URL without the query (what error messages name)."""
        url = self.gateway.kernel_url(self.kernel_id, "/channels")
        return f"ws{url[len('http') :]}"

    @property
    def url(self) -> str:
        # session_id: the gateway files its replay buffer under our session, as for JupyterLab's
        return f"{self.endpoint}?session_id={quote(self.session.session)}"

    async def connect(self, name: str, timeout: float) -> None:
        from tornado.httpclient import HTTPClientError, HTTPRequest
        from tornado.iostream import StreamClosedError
        from tornado.websocket import WebSocketError, websocket_connect

        request = HTTPRequest(
            self.url,
            headers=self.gateway.headers,
            connect_timeout=min(timeout, 10.0),
            request_timeout=timeout,
        )
        what = f"connecting to {name}"
        try:
            self.ws = await websocket_connect(
                request,
                subprotocols=[WS_PROTOCOL],
                max_message_size=MAX_MESSAGE,
                ping_interval=PING_INTERVAL,
                ping_timeout=PING_INTERVAL,
            )
        except HTTPClientError as exc:
            if exc.code == 599:
                raise KernelStartError(
                    f"{what}: the websocket did not open: {exc.message}"
                ) from None
            raise self.gateway.refused(what, exc.code, None, KernelStartError) from None
        except WebSocketError:
            # A 1xx-3xx answer that is not the upgrade: a proxy (or server) in front of the
            # gateway that does not pass websockets on.
            raise KernelStartError(
                f"{what}: {self.endpoint} answered with plain HTTP, not a websocket "
                "(is a proxy in front of the gateway not passing websockets on?)"
            ) from None
        except StreamClosedError:
            raise KernelStartError(
                f"{what}: {self.endpoint} closed the connection before the websocket opened"
            ) from None
        except OSError as exc:
            raise KernelStartError(f"{what}: {self.endpoint}: {exc.strerror or exc}") from None
        self.v1 = self.ws.selected_subprotocol == WS_PROTOCOL
        self.ws.protocol.set_nodelay(True)  # our requests go out at once
        self._quickack()

    def send(self, channel: str, msg: dict[str, Any], buffers: Sequence[Any] | None) -> Any:
        """Queue *msg* on the websocket; returns tornado's write future."""
        frames = _frames()
        pack = self.session.pack
        blobs = [b if isinstance(b, bytes) else bytes(b) for b in buffers or ()]
        data: bytes | str
        if self.v1:
            parts = [pack(msg["header"]), pack(msg["parent_header"])]
            parts += [pack(msg["metadata"]), pack(msg["content"]), *blobs]
            data = frames.serialize_msg_to_ws_v1(parts, channel)
        elif blobs:
            data = frames.serialize_binary_message({**msg, "channel": channel, "buffers": blobs})
        else:
            data = pack({**msg, "channel": channel}).decode("utf-8")
        if len(data) > GATEWAY_MAX_MESSAGE:
            raise InvalidRequest(
                f"a {msg['header']['msg_type']} of {len(data):,} bytes is over the "
                f"{GATEWAY_MAX_MESSAGE:,} bytes a gateway's websocket accepts"
            )
        return self.ws.write_message(data, binary=not isinstance(data, str))

    async def recv(self) -> tuple[str, dict[str, Any]] | None:
        """The next (channel, message), or None once the websocket has closed."""
        frames = _frames()
        data = await self.ws.read_message()
        if data is None:
            return None
        self._quickack()
        if self.v1:
            channel, parts = frames.deserialize_msg_from_ws_v1(data)
            return channel, self.session.deserialize([b"", *parts])
        if isinstance(data, bytes):
            msg = frames.deserialize_binary_message(data)
        else:
            msg = json.loads(data)
        msg.setdefault("buffers", [])
        msg.setdefault("msg_id", msg["header"].get("msg_id"))
        msg.setdefault("msg_type", msg["header"].get("msg_type"))
        return str(msg.pop("channel", "")), msg

    def _quickack(self) -> None:
        """Acknowledge what arrived at once. The gateway's websocket leaves Nagle's algorithm
        on, so each of a reply's messages after the first waits for our ACK of the one before,
        and Linux delays an ACK by up to 40 ms: 45 ms per trivial execute instead of 8. Quick-ACK
        mode ends by itself, hence once per message (Linux only; a cheap setsockopt)."""
        if _QUICKACK is not None:
            with contextlib.suppress(AttributeError, OSError):
                self.ws.protocol.stream.socket.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)

    def closed_because(self) -> str:
        code = getattr(self.ws, "close_code", None)
        reason = getattr(self.ws, "close_reason", None)
        if code is None:
            return "the gateway's websocket closed"
        return f"the gateway's websocket closed (code {code}{f': {reason}' if reason else ''})"

    def stop_channels(self) -> None:
        if self.ws is not None:
            self.ws.close()


class _RemoteManager:
    """Stands where a local kernel's KernelManager stands in ``Kernel``."""

    provisioner = None  # no local process: no pid, no process group
    connection_file = ""  # nothing to hand to `jupyter console --existing`

    def __init__(self, gateway: Gateway, kernel_id: str) -> None:
        from jupyter_client.session import Session

        self.gateway = gateway
        self.kernel_id = kernel_id
        self.session = Session()  # Kernel clones it for the client

    def client(self, context: Any = None, session: Any = None) -> _Channels:
        return _Channels(self.gateway, self.kernel_id, session or self.session.clone())

    async def interrupt_kernel(self) -> None:
        await self.gateway.interrupt_kernel(self.kernel_id)


class GatewayKernel(Kernel):
    """A kernel the gateway runs; the same ``Kernel``, over the gateway's websocket."""

    client: _Channels

    def __init__(self, *, gateway: Gateway, kernel_id: str, startup_timeout: float) -> None:
        super().__init__(
            manager=_RemoteManager(gateway, kernel_id),
            multi_manager=gateway,
            kernel_id=kernel_id,
            context=None,
            pgid=None,
        )
        self.gateway = gateway
        self.startup_timeout = startup_timeout
        self.reason = ""  # why it is gone, as the gateway showed it
        self._warned_rate = False

    @property
    def name(self) -> str:
        return f"kernel {self.kernel_id[:8]} on {self.gateway.url}"

    async def _open_channels(self) -> list[asyncio.Task[None]]:
        await self.client.connect(self.name, self.startup_timeout)
        return [asyncio.create_task(self._read_websocket())]

    async def _read_websocket(self) -> None:
        while True:
            try:
                item = await self.client.recv()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a broken frame: drop it, go on
                log.warning("%s: dropped an unreadable message: %s", self.name, exc)
                continue
            if item is None:
                self.lost(self.client.closed_because())
                return
            channel, msg = item
            try:
                if channel == "shell":
                    self._on_shell(msg)
                elif channel == "iopub" and not self._gateway_event(msg):
                    self._on_iopub(msg)
            except Exception:
                log.exception("%s: error while handling %s", self.name, msg.get("msg_type"))

    def _gateway_event(self, msg: dict[str, Any]) -> bool:
        """Notice what the gateway says of the kernel itself: it died and was restarted, or
        someone else shut it down. Either way its state is gone, so it is dead to us."""
        msg_type = msg["header"].get("msg_type")
        if msg_type == "status" and not msg["parent_header"]:
            state = msg["content"].get("execution_state")
            if state in ("restarting", "autorestarting", "dead"):
                self.lost(f"the gateway reports it {state} (it died; its state is gone)")
                return True
        elif msg_type == "shutdown_reply":
            self.lost("it was shut down on the gateway")
            return True
        elif msg_type == "stream" and msg["content"].get("text", "").startswith(_RATE_LIMITED):
            # Jupyter Server's IOPub rate limit (on by default in Kernel Gateway) drops output
            # and says so on stderr: the call's output is incomplete, so it is marked truncated.
            call = self._calls.get(msg["parent_header"].get("msg_id", ""))
            if call is not None:
                call.collector.truncated = True
            if not self._warned_rate:
                self._warned_rate = True
                log.warning(
                    "%s: the gateway dropped output over its IOPub rate limit; start it with "
                    "--ZMQChannelsWebsocketConnection.limit_rate=False",
                    self.name,
                )
        return False

    def _send(self, msg: dict[str, Any], buffers: list[Any] | None = None) -> None:
        from tornado.websocket import WebSocketClosedError

        try:
            write = self.client.send("shell", msg, buffers)
        except WebSocketClosedError:
            self.lost(self.client.closed_because())
            raise self._died_error() from None
        write.add_done_callback(_retrieve)

    async def _prepare(self) -> None:
        """Load the kernel-bridge runtime into the remote kernel from sources sent with the code."""
        try:
            result = await self.execute(runtime_loader(), timeout=REQUEST_TIMEOUT)
        except ExecutionTimeout:
            raise KernelStartError(
                f"{self.name}: loading the kernel-bridge runtime timed out"
            ) from None
        if not result.success and result.error is not None:
            raise KernelStartError(
                f"{self.name}: could not load the kernel-bridge runtime: "
                f"{result.error.ename}: {result.error.evalue}\n{result.error.traceback}"
            )

    def lost(self, reason: str) -> None:
        """The kernel is gone for *reason*: fail its calls now."""
        if self.alive:
            self.reason = reason
            self._died(ExitStatus())

    async def kill(self) -> None:
        """Delete the kernel on the gateway (which kills it), without waiting for the gateway."""
        if not self.alive:
            return
        self.closing = True
        self.lost("deleted on the gateway")
        task = asyncio.ensure_future(self.gateway.shutdown_kernel(self.kernel_id))
        task.add_done_callback(_retrieve)

    def _died_error(self, call: Any = None) -> KernelDied:
        error = super()._died_error(call)
        if not self.reason or self.closing:
            return error
        return KernelDied(f"{error}: {self.reason}", status=error.status, result=error.result)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # a failed write shows as a closed websocket; no noise here


class GatewayFactory:
    """Starts kernels on a gateway and stops them; the KernelFactory of gateway mode."""

    def __init__(
        self,
        *,
        url: str,
        token: str = "",
        kernel_name: str | None = None,
        env: Mapping[str, str] | None = None,
        python_paths: Sequence[str | os.PathLike[str]] = (),
        startup_timeout: float = 60.0,
        server_manager: Any = None,
    ) -> None:
        from ._manager import _check_env

        self.gateway = Gateway(url, token)
        # Jupyter Server's GatewayMappingKernelManager, if any: our kernels are registered
        # there, so the server's /api/kernels lists them and JupyterLab can open them.
        self.server_manager = server_manager
        self.kernel_name = kernel_name
        self.env = _check_env(env)
        self.python_paths = check_paths(python_paths, absolute=False)  # on the kernel's host
        self.remote = True
        self.startup_timeout = startup_timeout
        self.python = f"the {kernel_name or 'default'} kernel spec of {url}"
        self.kernels: set[Kernel] = set()
        self._poller: asyncio.Task[None] | None = None

    def kernel_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """What the kernel start request asks for; gateways pass on KERNEL_* names and those
        their operator allows (Kernel Gateway's env_whitelist, Enterprise Gateway's client_envs)."""
        from ._manager import _check_env

        env = {
            "KERNEL_USERNAME": getpass.getuser(),  # as Jupyter Server's gateway client sends
            "KERNEL_LAUNCH_TIMEOUT": str(int(self.startup_timeout)),  # Enterprise Gateway's
            "KERNEL_BRIDGE_HOST_PID": str(os.getpid()),
        }
        if self.python_paths:
            env["KERNEL_BRIDGE_PYTHON_PATHS"] = os.pathsep.join(self.python_paths)
        env.update(self.env)
        env.update(_check_env(extra))
        return env

    async def start(
        self, *, env: Mapping[str, str] | None = None, cwd: str | None = None
    ) -> Kernel:
        """Start a kernel on the gateway; return it once it answers and runs the runtime.

        *cwd* is ignored: the gateway decides where its kernels run.
        """
        kernel_id = await self.gateway.start_kernel(
            self.kernel_name, self.kernel_env(env), self.startup_timeout
        )
        kernel = GatewayKernel(
            gateway=self.gateway, kernel_id=kernel_id, startup_timeout=self.startup_timeout
        )
        self.kernels.add(kernel)
        try:
            await kernel.connect(self.startup_timeout)
        except BaseException:
            await self.stop(kernel, now=True)
            raise
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll())
        if self.server_manager is not None:
            await self._show(kernel)
        log.debug("started %s", kernel.name)
        return kernel

    async def _show(self, kernel: Kernel) -> None:
        """Register *kernel* with the server, as Jupyter Server adopts a kernel the gateway
        already runs (``start_kernel(kernel_id=...)`` asks the gateway for it, starts nothing)."""
        try:
            await self.server_manager.start_kernel(kernel_id=kernel.kernel_id)
        except Exception as exc:  # the kernel works; only the server's listing lacks it
            log.warning("Jupyter Server will not list %s: %s", kernel.name, exc)

    async def stop(self, kernel: Kernel, *, now: bool = False) -> None:
        """Delete *kernel* on the gateway and close its websocket."""
        self.kernels.discard(kernel)
        if self.server_manager is not None:
            self.server_manager.remove_kernel(kernel.kernel_id)
        await kernel.shutdown(now=now)

    async def _poll(self) -> None:
        """The backstop for deaths the websocket does not show (a kernel deleted or culled
        by force, lost with its node): ask the gateway which of our kernels it still has."""
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            live = {k.kernel_id: k for k in self.kernels if k.alive and not k.closing}
            if not live:
                continue
            try:
                gone = await self.gateway.missing(set(live))
            except BridgeError as exc:
                log.debug("liveness check failed: %s", exc)
                continue
            for kernel_id in gone:
                kernel = live[kernel_id]
                if isinstance(kernel, GatewayKernel):
                    kernel.lost("the gateway no longer has it")

    async def close(self) -> None:
        """Stop every kernel this factory started; delete any the gateway still has."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(BaseException):
                await self._poller
        await asyncio.gather(*(self.stop(k) for k in list(self.kernels)), return_exceptions=True)
        await self.gateway.close()


# -- the runtime, sent to the kernel ---------------------------------------------------------

# Run by exec() in a namespace of its own: nothing of it is left in the user's namespace, where
# the runtime records its baseline for isolated calls.
_LOADER = """\
import importlib.abc, importlib.util, linecache, sys

class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name not in sources:
            return None
        return importlib.util.spec_from_loader(name, self, is_package=sources[name][0])

    def exec_module(self, module):
        package, filename, text = sources[module.__name__]
        # Tracebacks and inspect show the runtime's lines, though no file holds them.
        linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
        module.__file__ = filename  # the name its code objects carry, as for a file
        exec(compile(text, filename, "exec"), module.__dict__)

if "bridge_runtime" not in sys.modules:  # else the kernel came with it: keep that one
    sys.meta_path.insert(0, Finder())
get_ipython().extension_manager.load_extension("bridge_runtime")
"""


@functools.cache
def runtime_loader() -> str:
    """A cell that loads ``bridge_runtime`` (every module of it) into a kernel from memory."""
    root = kernel_side_dir()
    sources: dict[str, tuple[bool, str, str]] = {}
    for path in sorted((root / "bridge_runtime").rglob("*.py")):
        relative = path.relative_to(root)
        parts = list(relative.with_suffix("").parts)
        package = parts[-1] == "__init__"
        if package:
            parts.pop()
        filename = f"<kernel-bridge>/{relative.as_posix()}"
        sources[".".join(parts)] = (package, filename, path.read_text(encoding="utf-8"))
    names = f"{{'sources': {sources!r}, 'get_ipython': get_ipython, '__name__': 'kernel_bridge'}}"
    return f"exec({_LOADER!r}, {names})\n"
