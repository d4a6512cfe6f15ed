"""Which gateway, if any: the arguments, else Jupyter Server's environment variables."""

from __future__ import annotations

import os
from typing import Any

from bridge.core.errors import InvalidRequest

URL_ENV, TOKEN_ENV = "JUPYTER_GATEWAY_URL", "JUPYTER_GATEWAY_AUTH_TOKEN"  # as Jupyter Server's


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


def check_gateway_manager(manager: Any, url: str) -> None:
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
