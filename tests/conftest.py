"""Shared fixtures, and the check that no kernel process outlives the test run.

Every process started during the run (kernels, reapers, CLI hosts, servers) inherits a tag in
its environment. When the session ends, any tagged process still alive is a leak: the run
fails and names it (and the process, which this run started, is ended by PID).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from gateways import GATEWAY_KINDS, GatewayProcess, bridge_options
from procs import tagged_processes

import bridge


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    deadline = time.monotonic() + 10  # reapers of killed test hosts need a moment
    left = tagged_processes()
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = tagged_processes()
    if not left:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"  pid {pid}: {cmd[:200]}" for pid, cmd in left]
    message = "processes of this test run are still alive (a leak):\n" + "\n".join(lines)
    if reporter is not None:
        reporter.write_line(message, red=True)
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _gateway(kind: str) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(kind).start()
    yield gateway
    assert gateway.stop() == [], f"kernels outlived the {kind}"


@pytest.fixture(scope="session")
def kernel_gateway() -> Iterator[GatewayProcess]:
    """A Jupyter Kernel Gateway on 127.0.0.1 with a token (tests/gateways.py)."""
    yield from _gateway("kernel_gateway")


@pytest.fixture(scope="session")
def enterprise_gateway() -> Iterator[GatewayProcess]:
    """A Jupyter Enterprise Gateway on 127.0.0.1 with a token, ipykernel 6 kernels."""
    yield from _gateway("enterprise_gateway")


@pytest.fixture(scope="session", params=["local", *GATEWAY_KINDS])
def shared_bridge(request: pytest.FixtureRequest) -> Iterator[bridge.Bridge]:
    """A blocking bridge with two warm kernels, for tests where isolation is not the point.

    The same checks run on local kernels and on kernels of each kind of gateway.
    """
    with bridge.Bridge(pool_size=2, timeout=60, **bridge_options(request, request.param)) as b:
        yield b


@pytest.fixture(scope="module", params=["fork", "local"])
def launch(request: pytest.FixtureRequest) -> dict[str, bool]:
    """Both ways a local kernel is launched, for the fault tests: forked from the fork server
    (the default) and started as a new interpreter by jupyter_client's LocalProvisioner."""
    return {"fork_server": request.param == "fork"}


@pytest_asyncio.fixture(scope="session")
async def abridge() -> AsyncIterator[bridge.AsyncBridge]:
    """An AsyncBridge with two warm kernels on the session's event loop."""
    async with bridge.AsyncBridge(pool_size=2, timeout=60) as b:
        yield b
