"""Tornado's errors (HTTP client, websocket) turned into the BridgeError tree, here and only here.

tornado is imported when a gateway is used, not when ``bridge`` is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from http.client import responses
from typing import Any

from bridge.core.errors import BridgeError, KernelStartError


def refused(
    url: str, what: str, status: int, data: Any, error: type[BridgeError] = BridgeError
) -> BridgeError:
    """The error for an unexpected HTTP *status*: URL, status, the gateway's reason."""
    detail = ""
    if isinstance(data, dict):
        detail = str(data.get("message") or data.get("reason") or "")
    hint = " (is the gateway token right?)" if status in (401, 403) else ""
    message = f"{what}: gateway {url} answered HTTP {status} {responses.get(status, '')}"
    return error(message.rstrip() + (f": {detail}" if detail else "") + hint)


def redirected(
    url: str, what: str, status: int, location: str | None, error: type[BridgeError]
) -> BridgeError:
    """A gateway that redirected: not followed, since the request carries the token (and a
    kernel start its env); the error names where it pointed."""
    return error(
        f"{what}: gateway {url} answered HTTP {status} redirecting to "
        f"{location or '(no Location)'}; redirects are not followed (they would carry the "
        "token): set the gateway URL to where it should be"
    )


@contextlib.contextmanager
def tornado_errors(url: str, what: str, error: type[BridgeError]) -> Iterator[None]:
    """A REST call that got no HTTP answer: *error* naming the gateway. HTTP errors are not
    raised (the caller judges the status, with ``refused()``)."""
    from tornado.httpclient import HTTPClientError

    try:
        yield
    except HTTPClientError as exc:  # 599: timed out or the connection broke
        raise error(f"{what}: gateway {url} did not answer: {exc.message}") from None
    except OSError as exc:
        raise error(f"{what}: gateway {url} is unreachable: {exc.strerror or exc}") from None


@contextlib.contextmanager
def websocket_errors(url: str, endpoint: str, what: str) -> Iterator[None]:
    """Opening a kernel's websocket: every way it fails is a KernelStartError naming it."""
    from tornado.httpclient import HTTPClientError
    from tornado.iostream import StreamClosedError
    from tornado.websocket import WebSocketError

    try:
        yield
    except HTTPClientError as exc:
        if exc.code == 599:
            raise KernelStartError(f"{what}: the websocket did not open: {exc.message}") from None
        raise refused(url, what, exc.code, None, KernelStartError) from None
    except WebSocketError:
        # A 1xx-3xx answer that is not the upgrade: a proxy (or server) in front of the
        # gateway that does not pass websockets on.
        raise KernelStartError(
            f"{what}: {endpoint} answered with plain HTTP, not a websocket "
            "(is a proxy in front of the gateway not passing websockets on?)"
        ) from None
    except StreamClosedError:
        raise KernelStartError(
            f"{what}: {endpoint} closed the connection before the websocket opened"
        ) from None
    except OSError as exc:
        raise KernelStartError(f"{what}: {endpoint}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def websocket_closed(on_closed: Any) -> Iterator[None]:
    """A write to a websocket that has closed: ``on_closed()`` gives the error to raise."""
    from tornado.websocket import WebSocketClosedError

    try:
        yield
    except WebSocketClosedError:
        raise on_closed() from None
