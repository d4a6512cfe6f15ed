"""The TypeScript client's own tests (clients/typescript/test/), run under Node and under Bun.

Each TS test file runs as one test here, once per runtime: ``node --test`` for Node (the
system's, >= 18) and ``bun test`` for Bun (the npm package, a devDependency). The files start
their services with ``KernelBridge.start`` on this venv's Python; every process they start
inherits this run's tag, so conftest's leak check covers them too.

``contexts``, ``streaming``, ``packages`` and ``files`` use the routes of issues 11 and 24
(contexts, streamed executions, package installation, a context's files).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "typescript"
BUN = CLIENT / "node_modules" / ".bin" / "bun"
TSC = CLIENT / "node_modules" / ".bin" / "tsc"

SUITES = ["quickstart", "python", "faults", "values"]
NEEDS_ISSUE_11 = ["contexts", "streaming", "packages", "files"]
TIMEOUT = 280  # seconds for one file under one runtime


def _node() -> str:
    node = shutil.which("node")
    assert node, "Node >= 18 is needed for the TypeScript client's tests"
    major = int(
        subprocess.check_output([node, "--version"], text=True).strip().lstrip("v").split(".")[0]
    )
    assert major >= 18, f"Node >= 18 is needed, found {major}"
    return node


@pytest.fixture(scope="module")
def built() -> None:
    """The client built (`make ts-client` does npm ci; this compiles what changed since)."""
    assert TSC.exists() and BUN.exists(), (
        "the TypeScript client's packages are not installed: run `make ts-client`"
    )
    result = subprocess.run(
        [str(TSC), "-p", "tsconfig.json"], cwd=CLIENT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"tsc failed:\n{result.stdout}{result.stderr}"


def _command(runtime: str, path: Path) -> list[str]:
    if runtime == "node":
        return [_node(), "--test", "--test-concurrency=1", str(path)]
    return [str(BUN), "test", "--timeout", "120000", f"./{path.relative_to(ROOT)}"]


@pytest.mark.timeout(TIMEOUT + 20)
@pytest.mark.parametrize("suite", SUITES + NEEDS_ISSUE_11)
@pytest.mark.parametrize("runtime", ["node", "bun"])
def test_typescript(built: None, runtime: str, suite: str) -> None:
    path = CLIENT / "dist" / "test" / f"{suite}.test.js"
    env = {**os.environ, "KERNEL_BRIDGE_PYTHON": sys.executable}
    try:
        result = subprocess.run(
            _command(runtime, path),
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        pytest.fail(f"{runtime} {suite}: no end within {TIMEOUT} s\n{out[-5000:]}")
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{runtime} {suite} failed:\n{output[-15000:]}"
    # It ran tests, and none failed (the runners' own summary lines).
    if runtime == "node":
        assert "# fail 0" in output and "# pass 0" not in output, output[-3000:]
    else:
        assert " 0 fail" in output and " 0 pass" not in output, output[-3000:]
