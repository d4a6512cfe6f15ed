"""Packages to install without a network: wheels written here, and environments for kernels.

``make_wheel`` writes a real wheel (a zip with the module, METADATA, WHEEL and a RECORD with
hashes), as a build backend would. ``kernel_env`` makes a virtual environment of its own
whose site-packages also sees this checkout's (a .pth file), so its Python runs kernels at
once and an install into it changes nothing of the test run's own environment.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Sequence
from pathlib import Path

# The installers never reach an index while a test installs: only local files.
OFFLINE = {"PIP_NO_INDEX": "1", "UV_OFFLINE": "1", "UV_NO_INDEX": "1"}


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def make_wheel(
    folder: Path,
    name: str,
    version: str = "1.0",
    *,
    source: str = "VALUE = 42\n",
    requires: Sequence[str] = (),
) -> Path:
    """A pure-Python wheel of module *name* (``import name; name.VALUE``) in *folder*."""
    info = f"{name}-{version}.dist-info"
    metadata = "".join(
        [
            "Metadata-Version: 2.1\n",
            f"Name: {name}\n",
            f"Version: {version}\n",
            *(f"Requires-Dist: {r}\n" for r in requires),
        ]
    )
    wheel_meta = "Wheel-Version: 1.0\nGenerator: tests/wheels.py\nRoot-Is-Purelib: true\n"
    wheel_meta += "Tag: py3-none-any\n"
    files = {
        f"{name}/__init__.py": source.encode(),
        f"{info}/METADATA": metadata.encode(),
        f"{info}/WHEEL": wheel_meta.encode(),
    }
    record = [_record_line(p, d) for p, d in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in files.items():
            zf.writestr(member, data)
    return path


def kernel_env(folder: Path) -> str:
    """A virtual environment in *folder* for kernels; returns its python."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=60
    )
    python = folder / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    # ipykernel, pip and the rest come from the test run's environment, read-only.
    Path(purelib, "test-run-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return str(python)
