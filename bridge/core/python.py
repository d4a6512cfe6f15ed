"""Which interpreter runs the kernels, and where the kernel-side runtime lives."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from bridge.core.errors import KernelStartError


def resolve_python(python: str | os.PathLike[str] | None) -> str:
    """The interpreter path for kernels: *python* (a name on PATH or a path), or this one."""
    if python is None:
        return sys.executable
    name = os.fspath(python)
    found = shutil.which(name)
    if found is None:
        raise KernelStartError(f"no Python interpreter {name!r}: not found on PATH or on disk")
    return found


def has_python(python: str | os.PathLike[str] = "python3") -> bool:
    """True if *python* exists and can run an IPython kernel (it imports ipykernel).

    >>> bridge.has_python("python3")   # doctest: +SKIP
    True
    """
    try:
        exe = resolve_python(python)
    except KernelStartError:
        return False
    try:
        done = subprocess.run(
            [exe, "-c", "import ipykernel"],
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def python_version(python: str | os.PathLike[str] = "python3") -> str:
    """The version line of *python*, such as ``"Python 3.11.7"``.

    Raises ``bridge.KernelStartError`` if there is no such interpreter.
    """
    exe = resolve_python(python)
    try:
        done = subprocess.run(
            [exe, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelStartError(f"cannot run {exe} --version: {exc}") from exc
    text = (done.stdout or done.stderr).strip()
    if done.returncode != 0 or not text:
        raise KernelStartError(f"{exe} --version failed: {text or done.returncode}")
    return text


def diagnose(python: str) -> str:
    """Why *python* cannot run a kernel, as a sentence with the fix; "" if it looks fine."""
    try:
        done = subprocess.run(
            [python, "-c", "import ipykernel"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python} cannot be run: {exc}"
    if done.returncode != 0:
        return (
            f"{python} cannot import ipykernel, which runs the kernels. "
            f"Install it with: {python} -m pip install ipykernel"
        )
    return ""
