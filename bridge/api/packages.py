"""Installing packages into the kernels' Python: the checks, the installer, the guard.

``install(python, packages)`` runs ``uv pip install --python PYTHON`` when uv is on PATH, else
``PYTHON -m pip install``, with every requirement after ``--``. Each is checked first: a
requirement (a name, extras, version specifiers, a marker; no URL, no option) or a local
wheel, sdist or project folder that exists, passed on as its absolute path, so nothing a
caller sends can become an installer option.

When the kernels run in the host's own environment, the host's own distributions
(kernel-bridge and everything it requires, recursively) are guarded: a requirement that
would change one is refused with ``PackageConflict`` before the installer runs (a local
wheel, sdist or folder by the name its own metadata declares, whatever its version: pip
would reinstall it; one whose name only a build would tell is refused), and the
installer gets them as constraints (``name==installed version``), so an indirect change
fails the install instead of breaking the running host.
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import email.parser
import importlib.metadata
import os
import shutil
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from bridge.core.errors import InstallTimeout, InvalidRequest, PackageConflict

MAX_PACKAGES = 50
MAX_REQUIREMENT = 200  # characters of one requirement string
DEFAULT_TIMEOUT = 300.0
ARCHIVES = (".whl", ".tar.gz", ".tgz", ".zip", ".tar.bz2")
# The host's own distribution: the guard protects it and what it requires.
SELF = "kernel-bridge"
# The extras the service runs with (the HTTP service, QNTX's plugin); not the test tools.
SERVICE_EXTRAS = ("server", "qntx")
# Always guarded (the list), whatever the metadata says.
CORE = ("kernel-bridge", "jupyter-server", "jupyter-client", "ipykernel", "pyzmq", "tornado")
_OUTPUT_LIMIT = 64 * 1024  # characters of the installer's stdout and stderr kept, each


@dataclass
class InstallResult:
    """What an install did: ``success``, the ``installed`` names, the installer's output.

    >>> r = await b.install(["requests>=2"])          # doctest: +SKIP
    >>> (r.success, r.installed, r.installer)         # doctest: +SKIP
    (True, ['requests'], 'pip')
    """

    success: bool
    installed: list[str]
    installer: str  # "uv" or "pip"
    stdout: str
    stderr: str
    duration_ms: float

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``POST /packages/install``."""
        return {
            "success": self.success,
            "installed": list(self.installed),
            "installer": self.installer,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "duration_ms": self.duration_ms,
        }


def is_local(text: str) -> bool:
    """Whether a requirement string names a local path: ``./pkg.whl``, ``/src/proj``, ``x.zip``
    (not ``name @ URL``, a requirement, refused for its URL)."""
    if "@" in text or "://" in text:
        return False
    return text.startswith((".", "/", "~")) or "/" in text or text.lower().endswith(ARCHIVES)


def _local(raw: str, text: str, root: str | None) -> str:
    base = root if root is not None else os.getcwd()
    path = os.path.realpath(os.path.join(base, os.path.expanduser(text)))
    if root is not None:
        real_root = os.path.realpath(root)
        prefix = real_root if real_root.endswith(os.sep) else real_root + os.sep
        if path != real_root and not path.startswith(prefix):
            raise InvalidRequest(f"{raw!r} is outside the folder local packages are read from")
    if os.path.isdir(path):
        markers = ("pyproject.toml", "setup.py", "setup.cfg")
        if not any(os.path.isfile(os.path.join(path, f)) for f in markers):
            raise InvalidRequest(f"{raw!r} is a folder but not a Python project (no pyproject)")
        return path
    if not os.path.isfile(path):
        raise InvalidRequest(f"{raw!r}: no such file")
    if not path.lower().endswith(ARCHIVES):
        raise InvalidRequest(
            f"{raw!r} is not a wheel or an sdist (a file ending in {', '.join(ARCHIVES)})"
        )
    return path


def check_requirements(packages: Sequence[str], *, root: str | None = None) -> list[str]:
    """The requirements as the installer gets them: requirement strings stripped, local paths
    made absolute (relative ones read from *root*, or the current folder, and kept inside
    *root* when it is given). InvalidRequest names the first that is neither."""
    if isinstance(packages, str):
        raise InvalidRequest("packages must be a list of requirements, not one string")
    if not packages:
        raise InvalidRequest("give at least one package")
    if len(packages) > MAX_PACKAGES:
        raise InvalidRequest(f"install at most {MAX_PACKAGES} packages at once")
    out = []
    for raw in packages:
        if not isinstance(raw, str):
            raise InvalidRequest(f"a requirement must be a str, got {raw!r}")
        text = raw.strip()
        if not text or len(text) > MAX_REQUIREMENT:
            raise InvalidRequest(
                f"{raw!r} is not a requirement (1 to {MAX_REQUIREMENT} characters)"
            )
        if text.startswith("-") or any(c in text for c in "\n\r\0"):
            raise InvalidRequest(f"{raw!r} is not a requirement: options are not accepted")
        if is_local(text):
            out.append(_local(raw, text, root))
            continue
        try:
            requirement = Requirement(text)
        except InvalidRequirement as exc:
            raise InvalidRequest(f"{raw!r} is not a requirement: {exc}") from None
        if requirement.url:
            raise InvalidRequest(f"{raw!r} names a URL: install index packages or local files")
        out.append(text)
    return out


def _name_of(entry: str) -> str:
    """The project name of a requirement, or of a local wheel, sdist or folder as its own
    metadata declares it (the path itself when it declares none: see local_name())."""
    if not os.path.isabs(entry):
        return Requirement(entry).name
    return local_name(entry) or entry


def local_name(path: str) -> str | None:
    """The project name a local wheel, sdist or project folder declares in its own metadata,
    read without building it: a wheel's ``.dist-info/METADATA``, an sdist's ``PKG-INFO``, a
    folder's (or an sdist's) ``pyproject.toml`` ``[project] name``, else its ``setup.cfg``
    ``[metadata] name`` when no ``setup.py`` could say otherwise. None when it declares none
    (a name only a build would tell) or cannot be read."""
    try:
        if os.path.isdir(path):
            return _folder_name(lambda member: _read_file(os.path.join(path, member)))
        lower = path.lower()
        if lower.endswith((".whl", ".zip")):
            with zipfile.ZipFile(path) as zf:
                return _archive_name(zf.namelist(), zf.read, wheel=lower.endswith(".whl"))
        with tarfile.open(path, "r:*") as tf:
            members = {m.name: m for m in tf.getmembers() if m.isfile()}

            def read(member: str) -> bytes:
                f = tf.extractfile(members[member])
                return f.read(_METADATA_LIMIT) if f is not None else b""

            return _archive_name(list(members), read, wheel=False)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, tarfile.TarError):
        return None


_METADATA_LIMIT = 1024 * 1024  # bytes read of one metadata file


def _read_file(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(_METADATA_LIMIT)
    except FileNotFoundError:
        return None


def _archive_name(names: list[str], read: Any, *, wheel: bool) -> str | None:
    """The name in a wheel's METADATA, or an sdist's PKG-INFO or project files (one folder
    down: ``name-1.0/PKG-INFO``)."""
    depth1 = {n.split("/", 1)[1]: n for n in names if n.count("/") == 1}
    if wheel:
        found = [n for n in names if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
        return _metadata_name(read(found[0])) if len(found) == 1 else None
    if "PKG-INFO" in depth1:
        return _metadata_name(read(depth1["PKG-INFO"]))
    return _folder_name(lambda member: read(depth1[member]) if member in depth1 else None)


def _metadata_name(data: bytes) -> str | None:
    name = email.parser.BytesHeaderParser().parsebytes(data).get("Name")
    return str(name).strip() or None if name else None


def _folder_name(read: Any) -> str | None:
    pyproject = read("pyproject.toml")
    if pyproject is not None:
        project = tomllib.loads(pyproject.decode()).get("project", {})
        if isinstance(project.get("name"), str) and "name" not in project.get("dynamic", []):
            return str(project["name"])
    if read("setup.py") is not None:
        return None  # setup() may name it anything
    setup_cfg = read("setup.cfg")
    if setup_cfg is None:
        return None
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(setup_cfg.decode())
    return parser.get("metadata", "name", fallback=None) or None


# -- the guard ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Guarded:
    """A distribution of the host's own: its version and who requires it."""

    name: str
    version: str
    required_by: str


def guarded() -> dict[str, Guarded]:
    """The host's own distributions (normalized name -> Guarded): kernel-bridge, what it
    requires (with its service extras, when installed), and theirs, recursively."""
    found: dict[str, Guarded] = {}
    todo: list[tuple[str, str, bool]] = [
        (name, "" if name == SELF else SELF, name == SELF) for name in CORE
    ]
    while todo:
        name, by, top = todo.pop()
        key = canonicalize_name(name)
        if key in found:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        own = dist.metadata["Name"] or name
        found[key] = Guarded(own, dist.version, by)
        # kernel-bridge's service extras count (what of them is installed is guarded, what
        # is not is skipped); further down, only what a distribution needs without extras.
        extras = ["", *SERVICE_EXTRAS] if top else [""]
        for line in dist.requires or ():
            try:
                requirement = Requirement(line)
            except InvalidRequirement:
                continue
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": e}) for e in extras):
                todo.append((requirement.name, own, False))
    return found


def conflicts(
    requirements: Sequence[str], own: dict[str, Guarded], *, upgrade: bool
) -> list[tuple[str, str]]:
    """(name, why) of each distribution of *own* a requirement would change."""
    out = []
    for entry in requirements:
        if os.path.isabs(entry):
            name = local_name(entry)
            if name is None:
                # Only a build would tell which project it is, and the constraints do not
                # stop a local project of a guarded name (pip reinstalls it at that version).
                raise InvalidRequest(
                    f"packages: cannot tell which project {entry} is without building it (no "
                    "name in its metadata, pyproject.toml [project] or setup.cfg), and the "
                    "kernels run in kernel-bridge's own environment: give it a [project] name, "
                    "or install a wheel of it"
                )
            requirement = Requirement(name)
        else:
            requirement = Requirement(entry)
        key = canonicalize_name(requirement.name)
        mine = own.get(key)
        if mine is None:
            continue
        satisfied = not os.path.isabs(entry) and requirement.specifier.contains(
            mine.version, prereleases=True
        )
        if satisfied and not upgrade:
            continue  # the installer leaves it as it is
        why = f" (required by {mine.required_by})" if mine.required_by else ""
        out.append((mine.name, f"{entry} would change {mine.name} {mine.version}{why}"))
    return out


_PREFIX = "import sys; print(sys.prefix)"


async def shares_host_environment(python: str) -> bool:
    """Whether *python* runs in this process's own environment (the same ``sys.prefix``)."""
    # Not by realpath: every virtual environment's python links to one base interpreter.
    if python == sys.executable:
        return True
    try:
        proc = await asyncio.create_subprocess_exec(
            python,
            "-c",
            _PREFIX,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        return True  # cannot tell: guard, as if it were
    try:
        async with asyncio.timeout(30):
            out, _ = await proc.communicate()
    except BaseException as exc:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        if isinstance(exc, TimeoutError):
            return True
        raise
    prefix = out.decode(errors="replace").strip()
    return not prefix or await asyncio.to_thread(_same_path, prefix, sys.prefix)


def _same_path(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


# -- the installer -----------------------------------------------------------------------------


def _tail(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace")
    return text if len(text) <= _OUTPUT_LIMIT else text[-_OUTPUT_LIMIT:]


def command(
    python: str, packages: Sequence[str], *, upgrade: bool, constraints: str | None = None
) -> tuple[str, list[str]]:
    """(installer, argv) that installs *packages* into *python*'s environment."""
    uv = shutil.which("uv")
    flags = ["--upgrade"] if upgrade else []
    if constraints is not None:
        flags += ["--constraint", constraints]
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
    root: str | None = None,
) -> InstallResult:
    """Install *packages* into *python*'s environment (see the module's docstring).

    A failed install is ``success=False`` with the installer's output; one that would change
    the host's own distributions raises PackageConflict; one that runs past *timeout* is
    killed and raises InstallTimeout.
    """
    shared = await shares_host_environment(python)
    entries, own, folder = await asyncio.to_thread(_prepare, packages, root, shared, upgrade)
    try:
        constraints = None if folder is None else os.path.join(folder, "constraints.txt")
        return await _run(python, entries, upgrade, timeout, constraints, own)
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def _prepare(
    packages: Sequence[str], root: str | None, shared: bool, upgrade: bool
) -> tuple[list[str], dict[str, Guarded], str | None]:
    """(entries, guarded distributions, a folder with their constraints.txt) for an install;
    PackageConflict if a requirement would change a guarded distribution."""
    entries = check_requirements(packages, root=root)
    if not shared:
        return entries, {}, None
    own = guarded()
    found = conflicts(entries, own, upgrade=upgrade)
    if found:
        raise PackageConflict(
            "refused: the kernels run in kernel-bridge's own environment, and "
            + "; ".join(why for _, why in found)
            + ". Run the kernels in another environment (--python) to install it there.",
            conflicts=sorted({name for name, _ in found}),
        )
    folder = tempfile.mkdtemp(prefix="kernel-bridge-install-")
    with open(os.path.join(folder, "constraints.txt"), "w") as f:
        f.writelines(f"{g.name}=={g.version}\n" for g in own.values())
    return entries, own, folder


async def _run(
    python: str,
    entries: list[str],
    upgrade: bool,
    timeout: float | None,
    constraints: str | None,
    own: dict[str, Guarded],
) -> InstallResult:
    installer, argv = command(python, entries, upgrade=upgrade, constraints=constraints)
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
            raise InstallTimeout(
                f"{installer} did not finish within {limit:g} s", timeout=limit
            ) from None
        raise
    success = proc.returncode == 0
    result = InstallResult(
        success=success,
        installed=[_name_of(e) for e in entries] if success else [],
        installer=installer,
        stdout=_tail(out),
        stderr=_tail(err),
        duration_ms=round((time.perf_counter() - started) * 1000, 3),
    )
    if not success and constraints is not None:
        # The resolver refused because a guarded distribution would have had to change.
        said = (result.stdout + result.stderr).lower().replace("_", "-")
        named = sorted(g.name for key, g in own.items() if _refused(said, key))
        if named:
            raise PackageConflict(
                "refused: the kernels run in kernel-bridge's own environment and the install "
                f"would change {', '.join(named)}; the installer said:\n"
                + result.stderr.strip()[-2000:],
                conflicts=named,
            )
    return result


def _refused(said: str, key: str) -> bool:
    """Whether the installer's message says the constraint on *key* blocked it."""
    # pip: "The user requested (constraint) tornado==6.4.1"; uv: "you require tornado==6.4.1",
    # or (uv 0.13) "kb-needy==1.0 depends on tornado>=999 and tornado==6.4.1".
    return any(f"{how} {key}==" in said for how in ("(constraint)", "you require", "and"))
