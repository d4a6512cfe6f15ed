"""A gateway's REST API: start, interrupt and delete kernels, with the token on every call."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from bridge.core.errors import BridgeError, KernelDied, KernelStartError
from bridge.transports.gateway.errors import redirected, refused, tornado_errors

log = logging.getLogger("bridge.gateway")

REQUEST_TIMEOUT = 20.0  # seconds for a REST call other than a kernel start
DELETE_ATTEMPTS = 5  # a kernel the gateway is restarting cannot be deleted for a moment


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
        """(status, JSON body) of one request; a gateway that cannot be reached is *error*,
        and so is a redirect, which is never followed.

        HTTP errors come back as a status for the caller to judge, with ``refused()``.
        """
        from tornado.httpclient import AsyncHTTPClient, HTTPRequest

        if self._http is None:
            self._http = AsyncHTTPClient(force_instance=True)
        request = HTTPRequest(
            url,
            method=method,
            headers=self.headers,
            body=json.dumps(body) if body is not None else (b"" if method == "POST" else None),
            connect_timeout=min(timeout, 10.0),
            request_timeout=timeout,
            # A redirect would re-send the token and a start's env to wherever it points.
            follow_redirects=False,
        )
        with tornado_errors(self.url, what, error):
            response = await self._http.fetch(request, raise_error=False)
        if 300 <= response.code < 400:
            raise redirected(self.url, what, response.code, response.headers.get("Location"), error)
        try:
            data = json.loads(response.body) if response.body else None
        except ValueError:
            data = None
        return response.code, data

    def refused(
        self, what: str, status: int, data: Any, error: type[BridgeError] = BridgeError
    ) -> BridgeError:
        """The error for an unexpected HTTP *status*: URL, status, the gateway's reason."""
        return refused(self.url, what, status, data, error)

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

    async def kernel_language(self, name: str) -> str | None:
        """The language of the gateway's kernel spec *name*; None if it has none by that name."""
        what = f"looking up the kernel spec {name!r}"
        url = f"{self.url}/api/kernelspecs/{quote(name, safe='')}"
        status, data = await self.fetch("GET", url, what=what)
        if status == 404:
            return None
        spec = data.get("spec") if isinstance(data, dict) else None
        if status != 200 or not isinstance(spec, dict):
            raise self.refused(what, status, data)
        return str(spec.get("language") or "")

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
