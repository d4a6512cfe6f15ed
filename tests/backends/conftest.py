"""The backend tests' shared fixtures: a bridge on local kernels and on each kind of gateway,
and the toolbox backend on it, serial and concurrent (module-scoped: each module has its own
kernels, shared by its tests). ``pytest.mark.parametrize("backend_bridge", ["local"],
indirect=True)`` keeps a test to local kernels."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from gateways import GATEWAY_KINDS, bridge_options
from paths import TOOLBOX

import bridge


@pytest_asyncio.fixture(scope="module", params=["local", *GATEWAY_KINDS])
async def backend_bridge(request: pytest.FixtureRequest) -> AsyncIterator[bridge.AsyncBridge]:
    """Backends on local kernels and on each kind of gateway (tests/gateways.py)."""
    options = bridge_options(request, request.param)
    async with bridge.AsyncBridge(pool_size=0, timeout=30, **options) as b:  # type: ignore[arg-type]
        yield b


@pytest_asyncio.fixture(scope="module")
async def toolbox(backend_bridge: bridge.AsyncBridge) -> AsyncIterator[bridge.AsyncBackend]:
    async with await backend_bridge.spawn(TOOLBOX) as backend:
        yield backend


@pytest_asyncio.fixture(scope="module")
async def concurrent_toolbox(
    backend_bridge: bridge.AsyncBridge,
) -> AsyncIterator[bridge.AsyncBackend]:
    async with await backend_bridge.spawn(TOOLBOX, env={"CONCURRENT": "1"}) as backend:
        yield backend
