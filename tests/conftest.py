"""Shared fixtures, and the check that no kernel process outlives the test run.

Every process started during the run (kernels, reapers, CLI hosts, servers) inherits a tag in
its environment. When the session ends, any tagged process still alive is a leak: the run
fails and names it (and the process, which this run started, is ended by PID).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from gateways import GATEWAY_KINDS, GatewayProcess, bridge_options

import bridge

TAG_NAME = "KERNEL_BRIDGE_TEST_RUN"
TAG = os.environ.setdefault(TAG_NAME, uuid.uuid4().hex)
_TAG_BYTES = f"{TAG_NAME}={TAG}".encode()


def tagged_processes() -> list[tuple[int, str]]:
    """(pid, command line) of every live process of this test run except pytest itself."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if _TAG_BYTES not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue  # a zombie is already dead; its parent reaps it
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        found.append((int(entry), cmd))
    return found


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
