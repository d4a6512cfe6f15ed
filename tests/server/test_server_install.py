"""POST /packages/install over HTTP: into the kernels' environment, seen at once by running
kernels and contexts; refused when off, when it would break the service, and for options.

No network: the wheels are written by the test and the installers get no index.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service_process import ServiceProcess
from wheels import OFFLINE, kernel_env, make_wheel


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("root")
    make_wheel(folder, "kb_http_pkg", source="VALUE = 'over http'\n")
    make_wheel(folder, "kb_needs_tornado", requires=["tornado>=999"])
    make_wheel(folder.parent, "kb_outside_root")
    return folder


@pytest.fixture(scope="module")
def own_env_service(root: Path) -> Iterator[ServiceProcess]:
    """Kernels in the service's own environment: its dependencies are guarded."""
    with ServiceProcess("--root", str(root), pool_size=1, env=OFFLINE) as svc:
        yield svc


@pytest.mark.timeout(240)
def test_an_install_is_imported_by_running_kernels_and_contexts(root: Path, tmp_path: Path) -> None:
    python = kernel_env(tmp_path / "venv")
    with (
        ServiceProcess("--root", str(root), "--python", python, pool_size=1, env=OFFLINE) as svc,
        svc.client(timeout=180) as c,
    ):
        context = c.post("/contexts", json={"name": "importer"}).json()
        base = f"/contexts/{context['id']}"
        assert c.get("/modules?names=kb_http_pkg").json()["modules"] == {"kb_http_pkg": False}
        missing = c.post(f"{base}/execute", json={"content": "import kb_http_pkg"}).json()
        assert "ModuleNotFoundError" in missing["error"]
        wheel = "./kb_http_pkg-1.0-py3-none-any.whl"
        r = c.post("/packages/install", json={"packages": [wheel]})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["success"] is True, answer["stderr"]
        assert answer["installed"] == ["kb_http_pkg"]
        assert set(answer) >= {"success", "installed", "stdout", "stderr", "duration_ms"}
        assert c.get("/modules?names=kb_http_pkg").json()["modules"] == {"kb_http_pkg": True}
        r = c.post("/execute", json={"content": "import kb_http_pkg\nreturn kb_http_pkg.VALUE"})
        assert r.json()["result"] == "over http"
        r = c.post(f"{base}/evaluate", json={"expr": "__import__('kb_http_pkg').VALUE"})
        assert r.json()["result"] == "over http"
        # Not the service's environment: anything goes there, tornado included.
        needy = "./kb_needs_tornado-1.0-py3-none-any.whl"
        r = c.post("/packages/install", json={"packages": [needy]})
        assert r.status_code == 200 and r.json()["success"] is False  # no index: no tornado 999
    __import__("importlib").invalidate_caches()
    assert "kb_http_pkg" not in sys.modules


def test_the_services_own_dependencies_are_guarded(own_env_service: ServiceProcess) -> None:
    with own_env_service.client(timeout=180) as c:
        r = c.post("/packages/install", json={"packages": ["tornado==1.0"]})
        assert r.status_code == 409, r.text
        body = r.json()
        assert body["error_type"] == "conflict" and body["conflicts"] == ["tornado"]
        assert "tornado==1.0 would change tornado" in body["error"]
        r = c.post("/packages/install", json={"packages": ["pyzmq"], "upgrade": True})
        assert r.status_code == 409 and r.json()["conflicts"] == ["pyzmq"]
        r = c.post(
            "/packages/install", json={"packages": ["./kb_needs_tornado-1.0-py3-none-any.whl"]}
        )
        assert r.status_code == 409 and r.json()["conflicts"] == ["tornado"], r.text
        assert c.get("/health").json()["status"] == "ok"


@pytest.mark.parametrize(
    ("packages", "word"),
    [
        (["--index-url=http://evil.example"], "options"),
        (["requests", "-r/etc/passwd"], "options"),
        (["x @ https://evil.example/x.whl"], "URL"),
        (["../kb_outside_root-1.0-py3-none-any.whl"], "outside"),
        (["./missing.whl"], "no such file"),
        ([], "at least one"),
    ],
)
def test_bad_requirements_are_400_naming_them(
    own_env_service: ServiceProcess, packages: list[str], word: str
) -> None:
    with own_env_service.client() as c:
        r = c.post("/packages/install", json={"packages": packages})
    assert r.status_code == 400, r.text
    assert word in r.json()["error"]


def test_installs_can_be_turned_off(root: Path) -> None:
    with (
        ServiceProcess(
            "--root", str(root), "--BridgeApp.allow_install=False", pool_size=1, env=OFFLINE
        ) as svc,
        svc.client() as c,
    ):
        for path in ("/packages/install", "/uv/install", "/pip/install"):
            r = c.post(path, json={"packages": ["./kb_http_pkg-1.0-py3-none-any.whl"]})
            assert r.status_code == 403, r.text
            assert "allow_install" in r.json()["error"]
        r = httpx.post(
            f"{svc.url}/packages/install", json={"packages": ["x"]}
        )  # no token: 401 first, as everywhere
        assert r.status_code == 401
