"""bridge.install: local wheels into the kernels' own environment, running kernels see them at
once, the host's own distributions are guarded, and no requirement becomes an option.

No network: the wheels are written by the test (tests/wheels.py) and the installers get no
index.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from wheels import OFFLINE, kernel_env, make_wheel

import bridge
from bridge.api import packages

KERNEL_BRIDGE = str(Path(sys.executable).with_name("kernel-bridge"))


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="module")
def env_python(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield kernel_env(tmp_path_factory.mktemp("kernel-env") / "venv")


COUNT_INVALIDATIONS = """\
import sys, types
counter = sys.modules['kb_counter'] = types.ModuleType('kb_counter')
counter.calls = 0

class _Counter:
    @staticmethod
    def find_spec(*args):
        return None

    @staticmethod
    def invalidate_caches():
        __import__('sys').modules['kb_counter'].calls += 1  # one-off globals do not last

sys.meta_path.append(_Counter)
"""


@pytest.mark.asyncio
@pytest.mark.timeout(180)
async def test_a_local_wheel_is_importable_in_kernels_already_running(
    env_python: str, tmp_path: Path, offline: None
) -> None:
    wheel = make_wheel(tmp_path, "kb_fresh_pkg", source="VALUE = 'installed'\n")
    async with (
        bridge.AsyncBridge(pool_size=1, python=env_python) as b,
        b.session() as s,
        b.session(env={"OWN": "1"}) as own,
    ):
        # Each kernel looks first, so its import system has cached the folder's contents,
        # and counts the calls of importlib.invalidate_caches() from now on.
        for where in (b, s, own):
            missing = await where.execute(COUNT_INVALIDATIONS + "import kb_fresh_pkg")
            assert missing.error is not None and missing.error.ename == "ModuleNotFoundError"
        result = await b.install([str(wheel)])
        assert result.success, result.stderr
        assert result.installed == ["kb_fresh_pkg"]
        assert result.installer in ("uv", "pip") and result.duration_ms > 0
        for where in (b, s, own):
            found = await where.execute(
                "import sys, kb_fresh_pkg\n"
                "return kb_fresh_pkg.VALUE, sys.modules['kb_counter'].calls"
            )
            assert found.value == ["installed", 1], found.error
        assert (await s.evaluate("'kb_fresh_pkg' in dir()")).value is True
    assert importlib.util.find_spec("kb_fresh_pkg") is None


@pytest.mark.asyncio
async def test_a_failed_install_is_success_false_with_the_installers_words(
    env_python: str, tmp_path: Path, offline: None
) -> None:
    b = bridge.AsyncBridge(pool_size=0, python=env_python)  # installs need no kernel
    try:
        result = await b.install(["kb-surely-not-on-any-index-0000"])
    finally:
        await b.aclose()
    assert result.success is False and result.installed == []
    assert "kb-surely-not-on-any-index-0000" in (result.stderr + result.stdout).lower()


@pytest.mark.parametrize(
    "entry",
    [
        "--index-url=http://evil.example",
        "-e.",
        "requests; --pre",
        "x @ https://evil.example/x.whl",
        "a\nb",
        "",
        "./no-such-file.whl",
        "./README.md",
        "not a requirement!",
    ],
)
def test_no_entry_becomes_an_option_and_bad_ones_are_named(entry: str) -> None:
    with pytest.raises(bridge.InvalidRequest):
        packages.check_requirements([entry])


def test_local_paths_become_absolute_and_stay_inside_a_root(tmp_path: Path) -> None:
    inside = tmp_path / "root"
    inside.mkdir()
    wheel = make_wheel(inside, "kb_local")
    project = inside / "proj"
    project.mkdir()
    (project / "pyproject.toml").write_text("[project]\nname = 'proj'\n")
    outside = make_wheel(tmp_path, "kb_outside")
    got = packages.check_requirements(
        [f"./{wheel.name}", "./proj", "requests>=2"], root=str(inside)
    )
    assert got == [str(wheel), str(project), "requests>=2"]
    with pytest.raises(bridge.InvalidRequest, match="outside"):
        packages.check_requirements([f"../{outside.name}"], root=str(inside))
    with pytest.raises(bridge.InvalidRequest, match="not a Python project"):
        packages.check_requirements([str(tmp_path)])


def test_the_guarded_set_is_kernel_bridge_and_what_it_requires() -> None:
    own = packages.guarded()
    for name in ("kernel-bridge", "jupyter-server", "jupyter-client", "ipykernel", "pyzmq"):
        assert name in own
    assert "tornado" in own and own["tornado"].required_by  # required by someone, said so
    assert "traitlets" in own  # two levels down: jupyter-client requires it
    assert "grpcio" in own  # the QNTX plugin's, an extra the service runs with
    assert "hypothesis" not in own  # a test tool, not the service's


@pytest.mark.asyncio
async def test_the_hosts_own_environment_is_guarded(tmp_path: Path, offline: None) -> None:
    b = bridge.AsyncBridge(pool_size=0)  # kernels in this very environment
    try:
        tornado = packages.guarded()["tornado"].version
        with pytest.raises(bridge.PackageConflict) as info:
            await b.install(["tornado==1.0"])
        assert info.value.conflicts == ["tornado"]
        assert f"tornado {tornado}" in str(info.value)
        with pytest.raises(bridge.PackageConflict):
            await b.install(["Jupyter_Client"], upgrade=True)  # any spelling of the name
        # What is installed already and not upgraded changes nothing: allowed.
        same = await b.install([f"tornado=={tornado}"])
        assert same.success, same.stderr
        # An indirect change: the installer, bound by constraints, refuses; so do we.
        needy = make_wheel(tmp_path, "kb_needy", requires=["tornado>=999"])
        with pytest.raises(bridge.PackageConflict) as indirect:
            await b.install([str(needy)])
        assert indirect.value.conflicts == ["tornado"]
    finally:
        await b.aclose()
    assert packages.guarded()["tornado"].version == tornado


@pytest.mark.asyncio
async def test_refused_on_a_gateway_and_after_close() -> None:
    b = bridge.AsyncBridge(pool_size=0, gateway_url="http://127.0.0.1:9")
    with pytest.raises(bridge.InvalidRequest, match="gateway"):
        await b.install(["requests"])
    await b.aclose()
    with pytest.raises(bridge.BridgeClosed):
        await b.install(["requests"])


@pytest.mark.asyncio
async def test_an_install_past_its_timeout_is_killed(
    env_python: str, tmp_path: Path, offline: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A "pip" that hangs: a sitecustomize in a folder on PYTHONPATH sleeps before pip runs.
    hang = tmp_path / "hang"
    hang.mkdir()
    (hang / "sitecustomize.py").write_text(
        "import sys, time\nif 'pip' in sys.argv[0] or sys.argv[1:2] == ['install']:\n"
        "    time.sleep(60)\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(hang))
    which = packages.shutil.which
    monkeypatch.setattr(  # pip, not uv
        packages.shutil, "which", lambda name, *a: None if name == "uv" else which(name, *a)
    )
    b = bridge.AsyncBridge(pool_size=0, python=env_python)
    try:
        with pytest.raises(bridge.InstallTimeout):
            async with asyncio.timeout(30):
                await b.install([str(make_wheel(tmp_path, "kb_slow"))], timeout=1)
    finally:
        await b.aclose()


def test_the_blocking_twin_and_the_command(env_python: str, tmp_path: Path, offline: None) -> None:
    with bridge.Bridge(pool_size=1, python=env_python) as b:
        result = b.install([str(make_wheel(tmp_path, "kb_sync_pkg"))])
        assert result.success, result.stderr
        assert b.evaluate("__import__('kb_sync_pkg').VALUE").value == 42
    wheel = make_wheel(tmp_path, "kb_cli_pkg")
    done = subprocess.run(
        [KERNEL_BRIDGE, "install", str(wheel), "--python", env_python],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **OFFLINE},
    )
    assert done.returncode == 0, done.stderr
    assert "installed: kb_cli_pkg" in done.stdout
    refused = subprocess.run(
        [KERNEL_BRIDGE, "install", "tornado==1.0"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **OFFLINE},
    )
    assert refused.returncode == 2
    assert "PackageConflict" in refused.stderr and "tornado" in refused.stderr
    check = subprocess.run(
        [env_python, "-c", "import kb_cli_pkg, kb_sync_pkg"], capture_output=True, timeout=60
    )
    assert check.returncode == 0, check.stderr


@pytest.mark.asyncio
async def test_another_environment_is_not_this_one(env_python: str) -> None:
    # Both pythons are links to one base interpreter; their environments differ.
    assert await packages.shares_host_environment(env_python) is False
    assert await packages.shares_host_environment(sys.executable) is True


def _fake_project(folder: Path, name: str, version: str) -> Path:
    """A project folder that calls itself *name* at *version* and holds another package; its
    build backend does not exist, so no installer could ever build it."""
    folder.mkdir()
    (folder / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["kb-no-such-backend"]\nbuild-backend = "kb_none"\n'
        f'[project]\nname = "{name}"\nversion = "{version}"\n'
    )
    (folder / "kb_fake_inside.py").write_text("VALUE = 1\n")
    return folder


@pytest.mark.asyncio
async def test_a_local_folder_or_sdist_of_a_guarded_name_is_refused_before_installing(
    tmp_path: Path, offline: None
) -> None:
    """pip would reinstall a local project of a guarded name at its version (the constraint
    holds) and replace the real one: refused from its own metadata, the installer never run."""
    traitlets = packages.guarded()["traitlets"].version
    folder = _fake_project(tmp_path / "fake", "Traitlets", traitlets)
    sdist = tmp_path / f"traitlets-{traitlets}.tar.gz"
    with tarfile.open(sdist, "w:gz") as tf:
        tf.add(folder, arcname=f"fake_sdist-{traitlets}")  # the archive's name says nothing
        info = tarfile.TarInfo(f"fake_sdist-{traitlets}/PKG-INFO")
        data = f"Metadata-Version: 2.2\nName: traitlets\nVersion: {traitlets}\n".encode()
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "setup.py").write_text("raise SystemExit('never built')\n")
    b = bridge.AsyncBridge(pool_size=0)  # kernels in this very environment
    try:
        for entry in (folder, sdist):
            with pytest.raises(bridge.PackageConflict) as info_:
                await b.install([str(entry)])
            assert info_.value.conflicts == ["traitlets"], entry
        with pytest.raises(bridge.InvalidRequest, match="without building it"):
            await b.install([str(legacy)])
    finally:
        await b.aclose()
    assert packages.guarded()["traitlets"].version == traitlets
    assert packages.local_name(str(make_wheel(tmp_path, "kb_named"))) == "kb_named"
