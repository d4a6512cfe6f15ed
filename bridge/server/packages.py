"""Installing packages into the kernels' Python: one operation for every route that asks for it.

``install(python, packages, upgrade=...)`` runs ``uv pip install --python PYTHON`` when uv is on
PATH, else ``PYTHON -m pip install``, with the requirement strings after ``--``: each is checked
first (a name, extras, version specifiers, a marker; no URL, no path, no option), so nothing a
request sends can become an installer option.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import Sequence
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from .errors import ApiError, bad_request

MAX_PACKAGES = 50
MAX_REQUIREMENT = 200  # characters of one requirement string
DEFAULT_TIMEOUT = 300.0
_OUTPUT_LIMIT = 64 * 1024  # characters of the installer's stdout and stderr kept, each


def check_requirements(packages: Sequence[str]) -> list[str]:
    """The requirement strings, stripped, or 400 naming the first that is not a plain one."""
    if not packages:
        raise bad_request("give at least one package")
    if len(packages) > MAX_PACKAGES:
        raise bad_request(f"install at most {MAX_PACKAGES} packages at once")
    out = []
    for raw in packages:
        text = raw.strip()
        if not text or len(text) > MAX_REQUIREMENT:
            raise bad_request(f"{raw!r} is not a requirement (1 to {MAX_REQUIREMENT} characters)")
        if text.startswith("-") or any(c in text for c in "\n\r\0"):
            raise bad_request(f"{raw!r} is not a requirement: options are not accepted")
        try:
            requirement = Requirement(text)
        except InvalidRequirement as exc:
            raise bad_request(f"{raw!r} is not a requirement: {exc}") from None
        if requirement.url:
            raise bad_request(f"{raw!r} names a URL: only index packages are installed")
        out.append(text)
    return out


def _tail(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace")
    return text if len(text) <= _OUTPUT_LIMIT else text[-_OUTPUT_LIMIT:]


def command(python: str, packages: Sequence[str], *, upgrade: bool) -> tuple[str, list[str]]:
    """(installer, argv) that installs *packages* into *python*'s environment."""
    uv = shutil.which("uv")
    flags = ["--upgrade"] if upgrade else []
    if uv is not None:
        return "uv", [uv, "pip", "install", "--python", python, *flags, "--", *packages]
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
    return "pip", [*pip, *flags, "--", *packages]


async def install(
    python: str,
    packages: Sequence[str],
    *,
    upgrade: bool = False,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Install *packages* into *python*'s environment: ``{success, installed, installer,
    stdout, stderr, duration_ms}``. A failed install is ``success: false`` with the
    installer's output; one that runs past *timeout* is killed and answered 504."""
    packages = check_requirements(packages)
    installer, argv = command(python, packages, upgrade=upgrade)
    started = time.perf_counter()
    env = {**os.environ, "PIP_NO_INPUT": "1"}
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    limit = DEFAULT_TIMEOUT if timeout is None else timeout
    try:
        async with asyncio.timeout(limit):
            out, err = await proc.communicate()
    except BaseException as exc:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        if isinstance(exc, TimeoutError):
            raise ApiError(
                504, "timeout", f"{installer} did not finish within {limit:g} s"
            ) from None
        raise
    success = proc.returncode == 0
    return {
        "success": success,
        "installed": [Requirement(p).name for p in packages] if success else [],
        "installer": installer,
        "stdout": _tail(out),
        "stderr": _tail(err),
        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
    }
