"""kernels/bridge_runtime/launch.py: what the launcher changes in the kernels it starts."""

from __future__ import annotations

import pytest

import bridge


@pytest.mark.asyncio
async def test_the_debugger_is_not_loaded_at_start_yet_debugpy_imports(
    abridge: bridge.AsyncBridge,
) -> None:
    r = await abridge.execute(
        "import ipykernel.debugger\n"
        "available = ipykernel.debugger._is_debugpy_available\n"
        "import debugpy\n"
        "return [available, debugpy.__name__]"
    )
    assert r.raise_for_error().value == [False, "debugpy"]
