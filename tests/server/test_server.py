"""The HTTP service as hosts see it: a real `kernel-bridge serve` process, called over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from procs import alive, descendants, kernels_below
from service_process import ServiceProcess

from bridge.server.handlers import routes
from bridge.service.dispatch import document


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The service's --root, with scripts inside and traps around it."""
    base = tmp_path_factory.mktemp("files")
    root = base / "root"
    (root / "sub").mkdir(parents=True)
    (root / "hello.py").write_text("import os\nprint('hello from', os.path.basename(__file__))\n")
    (root / "sub" / "vars.py").write_text("answer = 42\nreturn answer\n")
    (root / "latin1.py").write_bytes(b"print('caf\xe9')\n")
    (root / "inner-link.py").symlink_to(root / "hello.py")
    (base / "secret.py").write_text("print('outside the root')\n")
    (root / "outer-link.py").symlink_to(base / "secret.py")
    (root / "outer-dir").symlink_to(base)
    sibling = base / "root-evil"  # starts with the root's name: a prefix check lets it pass
    sibling.mkdir()
    (sibling / "evil.py").write_text("print('evil')\n")
    return root


@pytest.fixture(scope="module")
def service(root: Path) -> Iterator[ServiceProcess]:
    with ServiceProcess("--root", str(root)) as svc:
        yield svc


@pytest.fixture
def client(service: ServiceProcess) -> Iterator[httpx.Client]:
    with service.client() as c:
        yield c


def assert_failure(response: httpx.Response, status: int, error_type: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["success"] is False
    assert body["error_type"] == error_type
    assert body["status"] == status
    assert isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in body["error"] or error_type == "python_error"
    return body  # type: ignore[no-any-return]


# -- start-up ------------------------------------------------------------------------------------


def test_banner_curl_line_works_from_a_shell(service: ServiceProcess) -> None:
    # The banner says where the token is, never what it is; its curl line reads the file.
    assert service.token not in service.log()
    where = re.search(r"token: in (\S+)", service.banner)
    assert where is not None, service.banner
    assert Path(where.group(1)).read_text().strip() == service.token
    assert Path(where.group(1)).stat().st_mode & 0o077 == 0
    line = re.search(r"try: (curl .*)", service.banner)
    assert line is not None
    done = subprocess.run(line.group(1), shell=True, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["success"] is True
    assert body["stdout"] == "42\n"


def test_refuses_a_public_host_without_a_token() -> None:
    svc = ServiceProcess("--host", "0.0.0.0", token="")
    done = subprocess.run(svc.command(), capture_output=True, text=True, timeout=60, env=svc.env)
    assert done.returncode != 0
    assert "JUPYTER_TOKEN_FILE" in done.stderr


def test_refuses_an_empty_token() -> None:
    svc = ServiceProcess("--token", " ", token="")
    done = subprocess.run(svc.command(), capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "must not be empty" in done.stderr
    # And --token itself is a warning: `ps` shows it to every user.
    assert "JUPYTER_TOKEN_FILE" in done.stderr and "ps" in done.stderr


def test_refuses_a_missing_root() -> None:
    svc = ServiceProcess("--root", "/no/such/folder")
    done = subprocess.run(svc.command(), capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "--root /no/such/folder is not a folder" in done.stderr


def test_bad_service_settings_stop_it() -> None:
    svc = ServiceProcess("--BridgeApp.max_backends=0")
    done = subprocess.run(svc.command(), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "BridgeApp.max_backends must be at least 1, got 0" in done.stderr


def test_a_python_that_cannot_run_kernels_stops_the_service() -> None:
    svc = ServiceProcess("--python", "/no/such/python")
    done = subprocess.run(svc.command(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "could not start its kernels" in done.stderr and "/no/such/python" in done.stderr


# -- execution routes ------------------------------------------------------------------------------


def test_execute_returns_the_plugin_shape(client: httpx.Client) -> None:
    r = client.post("/execute", json={"content": "print('hi')\nreturn {'n': 6 * 7}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True
    assert body["stdout"] == "hi\n"
    assert body["stderr"] == ""
    assert body["result"] == {"n": 42}
    assert body["error"] is None
    assert body["duration_ms"] > 0
    assert [o["output_type"] for o in body["outputs"]] == ["stream", "execute_result"]
    assert body["attestations"] == []
    assert body["truncated"] is False
    assert "variables" not in body


def test_execute_takes_code_inputs_and_captures_variables(client: httpx.Client) -> None:
    r = client.post(
        "/execute",
        json={
            "code": "total = sum(xs)\nlabel = f'{name}={total}'",
            "inputs": {"xs": [1, 2, 3], "name": "sum"},
            "capture_variables": True,
            "timeout_secs": 10,
        },
    )
    body = r.json()
    assert body["success"] is True, body
    assert body["variables"]["label"] == "sum=6"
    assert body["variables"]["total"] == 6


def test_python_error_is_200_with_the_traceback(client: httpx.Client) -> None:
    r = client.post("/execute", json={"content": "print('before')\n[][1]"})
    assert r.status_code == 200
    body = r.json()
    assert body["success"] is False
    assert body["error_type"] == "python_error"
    assert "IndexError" in body["error"] and "Traceback" in body["error"]
    assert body["stdout"] == "before\n"


def test_evaluate(client: httpx.Client) -> None:
    body = client.post("/evaluate", json={"expr": "1 + 2 * 3"}).json()
    assert body["success"] is True
    assert body["result"] == 7
    body = client.post("/evaluate", json={"expr": "undefined_name"}).json()
    assert body["success"] is False and "NameError" in body["error"]


def test_timeout_is_504_with_the_output_so_far(client: httpx.Client) -> None:
    r = client.post(
        "/execute",
        json={
            "content": "import time\nprint('started', flush=True)\ntime.sleep(60)",
            "timeout_secs": 1,
        },
    )
    body = assert_failure(r, 504, "timeout")
    assert body["stdout"] == "started\n"
    assert body["restarted"] is False
    # The interrupted kernel is free again.
    assert client.post("/evaluate", json={"expr": "2 + 2"}).json()["result"] == 4


def test_killed_kernel_is_503_and_the_pool_recovers(
    client: httpx.Client, service: ServiceProcess
) -> None:
    before = {k["id"] for k in client.get("/api/kernels").json()}
    r = client.post(
        "/execute",
        json={"content": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"},
    )
    body = assert_failure(r, 503, "kernel_died")
    assert "SIGKILL" in body["error"]
    # Every later call works; the dead kernel was replaced by the bridge, not restarted by the
    # server under the same id.
    for _ in range(4):
        assert client.post("/evaluate", json={"expr": "1"}).json()["success"] is True
    for _ in range(100):
        health = client.get("/health").json()
        kernels = {k["id"] for k in client.get("/api/kernels").json()}
        if health["kernels"] == service.pool_size and len(kernels) == service.pool_size:
            break
        time.sleep(0.1)
    assert health["kernels"] == service.pool_size
    assert len(kernels) == service.pool_size
    assert len(before - kernels) == 1  # the dead one is gone from the server's list too


def test_a_gone_client_frees_its_kernel(client: httpx.Client, service: ServiceProcess) -> None:
    with pytest.raises(httpx.ReadTimeout):
        client.post("/execute", json={"content": "import time\ntime.sleep(120)"}, timeout=1)

    async def both() -> list[int]:
        async with service.async_client(timeout=30) as c:
            rs = await asyncio.gather(
                *(c.post("/evaluate", json={"expr": str(i)}) for i in range(service.pool_size))
            )
        return [r.json()["result"] for r in rs]

    # With the abandoned call still holding a kernel, one of these would wait two minutes.
    assert asyncio.run(both()) == list(range(service.pool_size))


# -- execute-file ----------------------------------------------------------------------------------


def test_execute_file_inside_the_root(client: httpx.Client, root: Path) -> None:
    body = client.post("/execute-file", json={"path": "hello.py"}).json()
    assert body["success"] is True, body
    assert body["stdout"] == "hello from hello.py\n"
    body = client.post("/execute-file", json={"path": str(root / "sub" / "vars.py")}).json()
    assert body["result"] == 42
    body = client.post(
        "/execute-file", json={"path": "sub/../sub/vars.py", "capture_variables": True}
    ).json()
    assert body["variables"] == {"answer": 42}
    body = client.post("/execute-file", json={"path": "inner-link.py"}).json()
    assert body["stdout"] == "hello from hello.py\n"


@pytest.mark.parametrize(
    "path",
    [
        "../secret.py",
        "sub/../../secret.py",
        "../root-evil/evil.py",
        "/etc/passwd",
        "outer-link.py",
        "outer-dir/secret.py",
        "..%2fsecret.py",
        "%2e%2e/secret.py",
        "%2E%2E%2Fsecret.py",
        "%252e%252e%252fsecret.py",
        "..%5c..%2f..%2fetc%2fpasswd",
    ],
)
def test_execute_file_refuses_paths_out_of_the_root(
    client: httpx.Client, root: Path, path: str
) -> None:
    r = client.post("/execute-file", json={"path": path})
    body = assert_failure(r, 403, "forbidden")
    assert "outside" in str(body["error"])


def test_execute_file_refuses_the_sibling_by_absolute_path(
    client: httpx.Client, root: Path
) -> None:
    r = client.post("/execute-file", json={"path": str(root.parent / "root-evil" / "evil.py")})
    assert_failure(r, 403, "forbidden")


def test_execute_file_missing_dir_and_bad_text(client: httpx.Client) -> None:
    assert_failure(client.post("/execute-file", json={"path": "nope.py"}), 404, "not_found")
    assert_failure(client.post("/execute-file", json={"path": "sub"}), 400, "bad_request")
    body = assert_failure(
        client.post("/execute-file", json={"path": "latin1.py"}), 400, "bad_request"
    )
    assert "UTF-8" in str(body["error"])
    assert_failure(client.post("/execute-file", json={"path": "a\x00b"}), 400, "bad_request")


# -- bad input -------------------------------------------------------------------------------------

# (body, the field the answer names, words of its message)
BAD_BODIES = [
    (b"{", "body", "not JSON"),
    (b"", "body", "empty"),
    (b"[1, 2]", "body", "Expected `object`, got `array`"),
    (b'"code"', "body", "Expected `object`, got `str`"),
    (b"\xff\xfe{}", "body", "not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "body", "nested"),
    (b'{"code": "1", "inputs": {"x": ' + b"[" * 70 + b"1" + b"]" * 70 + b"}}", "body", "nested"),
    (b'{"code": "1", "timeout_secs": NaN}', "body", "not JSON"),
    (b'{"code": "1", "timeout_secs": Infinity}', "body", "not JSON"),
    (b"{}", "body", "exactly one"),
    (b'{"code": "1", "content": "2"}', "body", "exactly one"),
    (b'{"code": 1}', "code", "Expected `str`, got `int`"),
    (b'{"code": null}', "code", "Expected `str`, got `null`"),
    (b'{"content": ["x"]}', "content", "Expected `str`, got `array`"),
    (b'{"code": "1", "timeout_secs": "10"}', "timeout_secs", "got `str`"),
    (b'{"code": "1", "timeout_secs": true}', "timeout_secs", "got `bool`"),
    (b'{"code": "1", "timeout_secs": 0}', "timeout_secs", "> 0"),
    (b'{"code": "1", "timeout_secs": -5}', "timeout_secs", "> 0"),
    (b'{"code": "1", "timeout_secs": 1e9}', "timeout_secs", "<= 86400"),
    (b'{"code": "1", "capture_variables": "yes"}', "capture_variables", "Expected `bool`"),
    (b'{"code": "1", "inputs": [1]}', "inputs", "got `array`"),
    (b'{"code": "1", "inputs": {"not a name": 1}}', None, "not a valid Python name"),
    (b'{"code": "1", "inputs": {"class": 1}}', None, "not a valid Python name"),
    (b'{"code": "1", "python_paths": ["/tmp"]}', "python_paths", "unknown field `python_paths`"),
    (b'{"code": "\\ud800"}', "body", "lone surrogate"),
    (b'{"code": "1", "inputs": {"\\udfff": 1}}', "body", "lone surrogate"),
]


@pytest.mark.parametrize(
    ("body", "field", "names"), BAD_BODIES, ids=[f"{f}: {n}" for _, f, n in BAD_BODIES]
)
def test_bad_execute_bodies_are_400_naming_the_field(
    client: httpx.Client, body: bytes, field: str | None, names: str
) -> None:
    r = client.post("/execute", content=body, headers={"Content-Type": "application/json"})
    answer = assert_failure(r, 400, "bad_request")
    assert names in str(answer["error"])
    assert answer.get("field") == field


@pytest.mark.parametrize(
    ("route", "body", "names"),
    [
        ("/evaluate", {}, "expr: Object missing required field `expr`"),
        ("/evaluate", {"expr": "1", "code": "2"}, "code: Object contains unknown field `code`"),
        ("/evaluate", {"expr": 5}, "expr: Expected `str`, got `int`"),
        ("/execute-file", {}, "path: Object missing required field `path`"),
        ("/execute-file", {"path": ""}, "path: Expected `str` of length >= 1"),
        ("/execute-file", {"path": ["a"]}, "path: Expected `str`, got `array`"),
    ],
)
def test_bad_bodies_of_other_routes(
    client: httpx.Client, route: str, body: dict[str, object], names: str
) -> None:
    error = assert_failure(client.post(route, json=body), 400, "bad_request")["error"]
    assert names in str(error)


def test_body_limit_is_413(client: httpx.Client) -> None:
    big = json.dumps({"code": "x = '" + "a" * (10 * 1024 * 1024) + "'"}).encode()
    assert_failure(client.post("/execute", content=big), 413, "too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
        yield b'{"code": "'
        for _ in range(11):
            yield b"a" * (1024 * 1024)
        yield b'"}'

    assert_failure(client.post("/execute", content=chunks()), 413, "too_large")
    # Without the token the answer is a 401, still read to the end and in the error shape.
    with httpx.Client(base_url=client.base_url, timeout=60) as anonymous:
        assert_failure(anonymous.post("/execute", content=big), 401, "unauthorized")
    # Just under the limit is fine.
    ok = json.dumps({"code": "x = '" + "a" * (1024 * 1024) + "'\nreturn len(x)"}).encode()
    assert client.post("/execute", content=ok).json()["result"] == 1024 * 1024


def test_wrong_method_is_405_in_the_error_shape(client: httpx.Client) -> None:
    r = client.get("/execute")
    assert_failure(r, 405, "method_not_allowed")
    assert r.headers["Allow"] == "POST"
    r = client.delete("/backends")
    assert_failure(r, 405, "method_not_allowed")
    assert r.headers["Allow"] == "GET, POST"


# -- auth ------------------------------------------------------------------------------------------


def _every_route() -> list[tuple[str, str]]:
    out = []
    for path, item in document()["paths"].items():
        for method in item:
            out.append((method.upper(), path.replace("{backend_id}", "0" * 32)))
    return out


@pytest.mark.parametrize(("method", "path"), _every_route())
def test_every_route_needs_the_token(service: ServiceProcess, method: str, path: str) -> None:
    with httpx.Client(base_url=service.url, timeout=30) as anonymous:
        for headers in ({}, {"Authorization": "token wrong"}, {"Authorization": "Bearer wrong"}):
            r = anonymous.request(method, path, headers=headers, json={})
            assert_failure(r, 401, "unauthorized")
        r = anonymous.request(method, path + "?token=wrong", json={})
        assert_failure(r, 401, "unauthorized")


def test_token_in_header_bearer_or_query(service: ServiceProcess) -> None:
    with httpx.Client(base_url=service.url, timeout=30) as c:
        for scheme in ("token", "Bearer", "bearer"):
            auth = {"Authorization": f"{scheme} {service.token}"}
            assert c.get("/health", headers=auth).status_code == 200
        assert c.get(f"/health?token={service.token}").status_code == 200
        r = c.post(f"/evaluate?token={service.token}", json={"expr": "3"})
        assert r.json()["result"] == 3


def test_a_foreign_host_header_is_403(client: httpx.Client) -> None:
    # DNS rebinding: a page on evil.example that resolves to 127.0.0.1 is not let in.
    r = client.get("/health", headers={"Host": "evil.example"})
    assert "evil.example" in str(assert_failure(r, 403, "forbidden")["error"])


def test_the_token_never_reaches_the_kernels(client: httpx.Client, service: ServiceProcess) -> None:
    env = client.post("/execute", json={"content": "import os\nreturn dict(os.environ)"}).json()[
        "result"
    ]
    assert env, "the kernel's environment came back empty"
    assert not [k for k, v in env.items() if service.token in v or service.token in k]
    assert "JUPYTER_TOKEN" not in env


def test_a_token_file_works_and_stays_out_of_kernels(tmp_path: Path) -> None:
    # `make run` hands the token over in a file, Jupyter's JUPYTER_TOKEN_FILE.
    token = "from-a-file-" + os.urandom(8).hex()
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    env = {"JUPYTER_TOKEN_FILE": str(token_file)}
    with ServiceProcess(token="", pool_size=1, env=env) as svc:
        assert f"token: in {token_file} " in svc.banner and token not in svc.log()
        svc.token = token
        with svc.client() as c:
            r = c.post("/execute", json={"content": "import os\nreturn dict(os.environ)"})
        env = r.json()["result"]
    assert "JUPYTER_TOKEN_FILE" not in env
    assert not [k for k, v in env.items() if token in v]


# -- information -----------------------------------------------------------------------------------


def test_version(client: httpx.Client) -> None:
    body = client.get("/version").json()
    import platform

    import bridge

    assert body["python_version"] == platform.python_version()  # the kernels run this Python
    assert body["plugin_version"] == bridge.__version__


def test_modules(client: httpx.Client) -> None:
    r = client.get("/modules", params={"names": "json,numpy,surely_not_a_module_x,os.path"})
    assert r.json() == {
        "modules": {"json": True, "numpy": True, "surely_not_a_module_x": False, "os.path": True}
    }
    default = client.get("/modules").json()["modules"]
    assert set(default) == {"numpy", "pandas", "requests", "json", "os", "sys"}
    assert_failure(client.get("/modules", params={"names": "os;rm -rf"}), 400, "bad_request")
    assert_failure(client.get("/modules", params={"names": ","}), 400, "bad_request")


def test_health(client: httpx.Client, service: ServiceProcess) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["pool_size"] == service.pool_size


def test_openapi_documents_every_route(client: httpx.Client) -> None:
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    documented = {(path, method.upper()) for path, item in doc["paths"].items() for method in item}
    served = set()
    for pattern, handler, _ in routes(service=None):  # type: ignore[arg-type]
        name = "context_id" if pattern.startswith("/contexts") else "backend_id"
        path = re.sub(r"\(\[\^/\]\+\)", "{" + name + "}", pattern).replace("(.+)", "{path}")
        served |= {(path, method) for method in handler.methods()}
    assert documented == served


# -- load ------------------------------------------------------------------------------------------


def test_fifty_concurrent_calls_each_get_their_own_output(service: ServiceProcess) -> None:
    tokens = [os.urandom(8).hex() for _ in range(50)]

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=50)
        async with service.async_client(limits=limits, timeout=120) as c:
            return await asyncio.gather(
                *(
                    c.post("/execute", json={"content": f"print({t!r})\nreturn {t!r}"})
                    for t in tokens
                )
            )

    responses = asyncio.run(run())
    for token, r in zip(tokens, responses, strict=True):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["stdout"] == token + "\n"
        assert body["result"] == token


# -- shutdown --------------------------------------------------------------------------------------


def test_ctrl_c_shuts_every_kernel_down() -> None:
    svc = ServiceProcess(pool_size=2).start()
    try:
        kernels = kernels_below(svc.pid)
        assert len(kernels) == 2  # the pool's kernels, launched or forked
        helpers = descendants(svc.pid) - kernels  # the watchdog, the fork server
    finally:
        code = svc.stop()
        svc.close()
    assert code == 0, svc.log()
    assert not [pid for pid in kernels | helpers if alive(pid)]
