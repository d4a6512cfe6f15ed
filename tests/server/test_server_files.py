"""A context's files over HTTP, on local kernels and on a Kernel Gateway's.

``PUT /contexts/{id}/files/{path}`` (raw body, streamed to the kernel), ``GET`` (streamed, with
Content-Length and a content type), ``GET /contexts/{id}/files?path=dir`` and ``DELETE``; the
bytes travel through the kernel, so a gateway's kernel is served the same way.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from gateways import GatewayProcess
from service_process import ServiceProcess

MAX_FILE = 12_000_000  # above the 10 MB test file, so 413 is cheap to reach


@pytest.fixture(scope="module", params=["local", "kernel_gateway"])
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    options = [f"--BridgeApp.max_file_bytes={MAX_FILE}"]
    if request.param == "kernel_gateway":
        gateway: GatewayProcess = request.getfixturevalue("kernel_gateway")
        options += ["--gateway-url", gateway.url, "--gateway-token", gateway.token]
    else:
        options += ["--root", str(tmp_path_factory.mktemp("files-root"))]
    with ServiceProcess(*options, pool_size=1) as svc:
        yield svc


@pytest.fixture(scope="module")
def client(service: ServiceProcess) -> Iterator[httpx.Client]:
    with service.client() as c:
        yield c


@pytest.fixture(scope="module")
def context(client: httpx.Client) -> Iterator[str]:
    # In the service's root (local; a gateway's kernel runs where the gateway says).
    r = client.post("/contexts", json={"cwd": "."})
    assert r.status_code == 201, r.text
    yield f"/contexts/{r.json()['id']}"
    client.delete(f"/contexts/{r.json()['id']}")


@pytest.fixture
def folder(client: httpx.Client, context: str) -> Iterator[str]:
    """A folder of this test's own (a gateway's kernels share its working folder)."""
    name = f"files-http-{uuid.uuid4().hex[:12]}"
    yield name
    run(client, context, "import shutil; shutil.rmtree(name, ignore_errors=True)", name=name)


def run(client: httpx.Client, context: str, code: str, **inputs: Any) -> Any:
    r = client.post(f"{context}/execute", json={"content": code, "inputs": inputs})
    assert r.status_code == 200 and r.json()["success"], r.text
    return r.json()["result"]


SHA256 = "import hashlib\nreturn hashlib.sha256(open(path, 'rb').read()).hexdigest()"


def test_a_10_mb_random_binary_round_trip(client: httpx.Client, context: str, folder: str) -> None:
    data = os.urandom(10 * 1024 * 1024)
    r = client.put(f"{context}/files/{folder}/random.bin", content=data)
    assert r.status_code == 201, r.text
    assert r.json() | {"modified": ""} == {
        "name": "random.bin",
        "path": f"{folder}/random.bin",
        "size": len(data),
        "kind": "file",
        "modified": "",
    }
    assert (
        run(client, context, SHA256, path=f"{folder}/random.bin")
        == hashlib.sha256(data).hexdigest()
    )
    r = client.get(f"{context}/files/{folder}/random.bin")
    assert r.status_code == 200
    assert r.headers["Content-Length"] == str(len(data))
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert hashlib.sha256(r.content).hexdigest() == hashlib.sha256(data).hexdigest()


def test_the_png_the_kernel_wrote_downloads_whole(
    client: httpx.Client, context: str, folder: str
) -> None:
    code = (
        "import hashlib, os\nos.makedirs(folder)\n"
        "data = b'\\x89PNG\\r\\n\\x1a\\n' + os.urandom(50_000)\n"
        "open(os.path.join(folder, 'out.png'), 'wb').write(data)\n"
        "return hashlib.sha256(data).hexdigest()"
    )
    sha = run(client, context, code, folder=folder)
    r = client.get(f"{context}/files/{folder}/out.png")
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/png"
    assert hashlib.sha256(r.content).hexdigest() == sha


def test_list_and_remove(client: httpx.Client, context: str, folder: str) -> None:
    assert (
        client.put(f"{context}/files/{folder}/data/in.csv", content=b"a,b\n1,2\n").status_code
        == 201
    )
    r = client.get(f"{context}/files", params={"path": folder})
    assert r.status_code == 200, r.text
    assert [(e["name"], e["kind"]) for e in r.json()["entries"]] == [("data", "directory")]
    entry = client.get(f"{context}/files", params={"path": f"{folder}/data"}).json()["entries"][0]
    assert set(entry) == {"name", "path", "size", "kind", "modified"} and entry["size"] == 8
    assert client.delete(f"{context}/files/{folder}/data/in.csv").status_code == 200
    assert client.get(f"{context}/files", params={"path": f"{folder}/data"}).json()["entries"] == []
    r = client.get(f"{context}/files/{folder}/data/in.csv")
    assert r.status_code == 404 and r.json()["error_type"] == "not_found"


def test_out_of_the_folder_is_403_and_nothing_read_or_written(
    client: httpx.Client, context: str, folder: str
) -> None:
    outside = run(
        client,
        context,
        "import os, tempfile\noutside = tempfile.mkdtemp()\n"
        "open(os.path.join(outside, 'secret'), 'w').write('s')\n"
        "os.makedirs(folder)\nos.symlink(outside, os.path.join(folder, 'out'))\nreturn outside",
        folder=folder,
    )
    state = (
        "import os\nsecret = open(os.path.join(outside, 'secret')).read()\n"
        "return [sorted(os.listdir(outside)), os.path.lexists('../x'), secret]"
    )
    before = run(client, context, state, outside=outside)
    try:
        for path in (
            "..%2Fx",
            "%2Fetc%2Fpasswd",
            f"{folder}/out/secret",
            f"{folder}/%2e%2e/%2e%2e/x",
        ):
            r = client.get(f"{context}/files/{path}")
            assert r.status_code == 403 and r.json()["error_type"] == "forbidden", (path, r.text)
            r = client.put(f"{context}/files/{path}", content=b"written")
            assert r.status_code == 403, (path, r.text)
            r = client.delete(f"{context}/files/{path}")
            assert r.status_code == 403, (path, r.text)
        for path in ("..", "/etc", f"{folder}/out"):
            r = client.get(f"{context}/files", params={"path": path})
            assert r.status_code == 403, (path, r.text)
        assert before[0] == ["secret"] and before[2] == "s"
        assert run(client, context, state, outside=outside) == before
    finally:
        run(client, context, "import shutil; shutil.rmtree(p)", p=outside)


def test_past_the_limit_is_413_and_no_partial_file(
    client: httpx.Client, context: str, folder: str
) -> None:
    r = client.put(f"{context}/files/{folder}/known.bin", content=b"x" * (MAX_FILE + 1))
    assert r.status_code == 413 and r.json()["error_type"] == "too_large", r.text

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused once the bytes pass it
        for _ in range(MAX_FILE // 1_000_000 + 1):
            yield b"y" * 1_000_000

    r = client.put(f"{context}/files/{folder}/streamed.bin", content=chunks())
    assert r.status_code == 413 and r.json()["error_type"] == "too_large", r.text
    r = client.get(f"{context}/files", params={"path": "."})
    assert r.status_code == 200
    names = [e["name"] for e in r.json()["entries"]]
    assert not any(n.startswith(".known") or n.startswith(".streamed") for n in names), names
    listed = client.get(f"{context}/files", params={"path": folder})
    assert listed.status_code in (200, 404)
    assert listed.status_code == 404 or listed.json()["entries"] == []


def peak_rss(pid: int) -> int:
    """The process's peak RSS in bytes since its counter was last reset (VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def reset_peak_rss(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the RSS now (proc(5))


def test_200_mb_up_and_down_does_not_grow_the_service_by_the_file(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    size = 200 * 1024 * 1024
    root = tmp_path_factory.mktemp("files-rss")
    with ServiceProcess("--root", str(root), pool_size=1) as service, service.client() as client:
        assert service.process is not None
        pid = service.process.pid
        r = client.post("/contexts", json={"cwd": "."})
        assert r.status_code == 201, r.text
        context = f"/contexts/{r.json()['id']}"
        block = os.urandom(1024 * 1024)
        digest = hashlib.sha256()

        def chunks() -> Iterator[bytes]:
            for _ in range(size // len(block)):
                digest.update(block)
                yield block

        reset_peak_rss(pid)
        before = peak_rss(pid)
        r = client.put(
            f"{context}/files/big.bin",
            content=chunks(),
            headers={"Content-Length": str(size)},
            timeout=120,
        )
        assert r.status_code == 201, r.text
        upload_growth = peak_rss(pid) - before
        reset_peak_rss(pid)
        before = peak_rss(pid)
        got = hashlib.sha256()
        with client.stream("GET", f"{context}/files/big.bin", timeout=120) as response:
            assert response.headers["Content-Length"] == str(size)
            for chunk in response.iter_bytes():
                got.update(chunk)
        download_growth = peak_rss(pid) - before
        assert got.hexdigest() == digest.hexdigest()
        assert (root / "big.bin").stat().st_size == size
        # A window of chunks, not the file: well under a quarter of it.
        assert upload_growth < size // 4, upload_growth
        assert download_growth < size // 4, download_growth
