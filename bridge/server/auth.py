"""Token-only authentication for the bridge's routes, on a lean path through Jupyter Server.

Jupyter Server's own ``prepare()`` authenticates a request by token *or* login cookie, mints
a login cookie for every token-authenticated request, checks XSRF and origin, and its request
log formats a line per request. The bridge's routes are called by programs with a token, so
they take only what that needs from Jupyter Server: its Host check, and its identity
provider's token logic (``IdentityProvider.get_user_token``: the comparison and whatever a
configured provider does), and nothing else: a cookie never authenticates them and none is
set. Token-authenticated requests skip XSRF and origin checks in Jupyter Server too.

>>> user = await token_user(handler)   # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from tornado import web

_HOSTS_KEPT = 64  # Host headers whose verdict is remembered (the check is a regex and a parse)


async def token_user(handler: Any) -> Any:
    """The user a request's token (``Authorization: token T``, ``Bearer T``, ``?token=T``)
    authenticates through the server's identity provider, or None."""
    found = handler.identity_provider.get_user_token(handler)
    if inspect.isawaitable(found):
        found = await found
    return found


def host_allowed(handler: Any) -> bool:
    """Jupyter Server's Host check (``allow_remote_access``), remembered per Host header."""
    verdicts: dict[str, bool] = handler.settings.setdefault("kernel_bridge_hosts", {})
    host = handler.request.host
    verdict = verdicts.get(host)
    if verdict is None:
        verdict = bool(handler.check_host())
        if len(verdicts) < _HOSTS_KEPT:
            verdicts[host] = verdict
    return verdict


async def authenticate(handler: Any) -> None:
    """Prepare a request of ours: Host check, then token only; 403 (answered 401) otherwise.

    A CORS preflight (OPTIONS) carries no token by design: it passes, and learns only which
    methods and headers the route takes."""
    handler.current_user = handler._jupyter_current_user = None
    if not host_allowed(handler):
        raise web.HTTPError(403)
    if handler.request.method == "OPTIONS":
        handler.set_cors_headers()
        return
    user = await token_user(handler)
    if user is None:
        raise web.HTTPError(403)
    handler.current_user = handler._jupyter_current_user = user
    handler._token_authenticated = True  # what Jupyter Server's CORS and XSRF logic reads
    handler.set_cors_headers()


def quiet_success(handler: Any) -> bool:
    """Log a request only as Jupyter Server would show it: successes are debug-level there,
    so at info and above they are not formatted at all (only their metrics are kept)."""
    if handler.get_status() >= 300 or handler.log.isEnabledFor(logging.DEBUG):
        return False
    record_metrics(handler)
    return True


def record_metrics(handler: Any) -> None:
    """What Jupyter Server's request log records besides the line: the request's metrics."""
    serverapp = handler.settings.get("serverapp")
    if serverapp is None or serverapp.record_http_request_metrics:
        from jupyter_server.prometheus.log_functions import prometheus_log_method

        prometheus_log_method(handler)  # type: ignore[no-untyped-call,unused-ignore]
