"""The contract is generated, and what is committed is what a fresh generation gives.

``make ts-types`` writes ``clients/typescript/openapi.json`` (``python -m bridge.service``:
the document from the route table and the models, no server) and generates
``clients/typescript/src/generated/openapi.ts`` from it with openapi-typescript. These tests
fail when a model or a route changed and ``make ts-types`` was not run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.service.errors import ErrorType

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "typescript"
DOCUMENT = CLIENT / "openapi.json"
GENERATED = CLIENT / "src" / "generated" / "openapi.ts"
STALE = "stale: run `make ts-types` and commit what it changes"


def test_the_committed_openapi_document_is_a_fresh_one() -> None:
    fresh = subprocess.run(
        [sys.executable, "-m", "bridge.service"], capture_output=True, text=True, check=True
    ).stdout
    assert DOCUMENT.read_text(encoding="utf-8") == fresh, f"{DOCUMENT.name} is {STALE}"


def test_the_committed_typescript_types_are_generated_from_it() -> None:
    npm = shutil.which("npm")
    assert npm, "npm is needed to check the generated TypeScript types"
    assert (CLIENT / "node_modules" / ".bin" / "openapi-typescript").exists(), (
        "openapi-typescript is not installed: run `make ts-client`"
    )
    # openapi-typescript --check: generate from openapi.json, compare with the committed file.
    done = subprocess.run(
        [npm, "run", "--silent", "types", "--", "--check"],
        cwd=CLIENT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{GENERATED.name} is {STALE}:\n{done.stdout}{done.stderr}"


def test_the_typescript_error_types_are_the_services() -> None:
    line = re.search(r"errorTypeValues\b.*= (\[.*\]);", GENERATED.read_text(encoding="utf-8"))
    assert line is not None, "openapi.ts exports no errorTypeValues"
    assert set(re.findall(r'"([a-z_]+)"', line.group(1))) == {e.value for e in ErrorType}


@pytest.mark.parametrize("name", ["ErrorType", "Failure", "PythonError", "ExecutionEvents"])
def test_the_document_names_the_shapes_clients_build_on(name: str) -> None:
    assert f'"{name}": {{' in DOCUMENT.read_text(encoding="utf-8")
