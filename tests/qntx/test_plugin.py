"""kernel-bridge as QNTX's Python plugin, driven as QNTX's core drives it.

One plugin process serves the module: launched with --port, its port read from stdout,
Metadata polled, Initialize'd with config, then every call QNTX makes, against a fake
ATSStoreService (QNTX's side, a real gRPC server here) and, for HandleHTTP, against the HTTP
service itself; the last test stops it with SIGTERM and checks nothing is left.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from plugin_process import PLUGIN, PluginProcess, Socket, free_port
from procs import alive, descendants, kernels_below
from service_process import ServiceProcess

import bridge
from bridge.qntx.protocol import ats_pb, ats_rpc, domain_pb

TOKEN = "qntx-auth-" + os.urandom(4).hex()
WS = domain_pb.WebSocketMessage


class FakeATSStore(ats_rpc.ATSStoreServiceServicer):  # type: ignore[misc]
    """QNTX's ATSStoreService, as far as the plugin uses it: it keeps what it is sent."""

    def __init__(self) -> None:
        self.received: list[Any] = []

    def CreateAttestation(self, request: Any, context: Any) -> Any:
        self.received.append(request)
        return ats_pb.CreateAttestationResponse(success=request.auth_token == TOKEN)

    def wait_for(self, count: int, timeout: float = 10) -> list[Any]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.received


@pytest.fixture(scope="module")
def ats() -> Iterator[tuple[FakeATSStore, str]]:
    store = FakeATSStore()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    ats_rpc.add_ATSStoreServiceServicer_to_server(store, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield store, f"127.0.0.1:{port}"
    server.stop(0)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("qntx")
    paths = base / "lib"
    paths.mkdir()
    (paths / "qntx_probe.py").write_text("VALUE = 42\n")
    root = base / "root"
    root.mkdir()
    (root / "hello.py").write_text("print('hello')\nreturn 6 * 7\n")
    return {"paths": paths, "root": root}


def config(files: dict[str, Path], **extra: str) -> dict[str, str]:
    return {
        "python_paths": f"{files['paths']}:/nonexistent-second",
        "default_modules": "qntx_probe",
        "root": str(files["root"]),
        **extra,
    }


@pytest.fixture(scope="module")
def plugin(ats: tuple[FakeATSStore, str], files: dict[str, Path]) -> Iterator[PluginProcess]:
    p = PluginProcess().start()
    try:
        reply = p.domain.Initialize(
            domain_pb.InitializeRequest(
                ats_store_endpoint=ats[1], auth_token=TOKEN, config=config(files)
            ),
            timeout=120,
        )
        p.initialized = reply  # type: ignore[attr-defined]
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def service(files: dict[str, Path]) -> Iterator[ServiceProcess]:
    """The HTTP service, whose answers HandleHTTP must give."""
    with ServiceProcess("--root", str(files["root"]), pool_size=1) as svc:
        yield svc


# -- launch ----------------------------------------------------------------------------------------


def test_announces_its_port_and_name(plugin: PluginProcess) -> None:
    assert plugin.port == plugin.requested
    assert plugin.announced_after < 2.0
    meta = plugin.domain.Metadata(domain_pb.Empty(), timeout=5)
    assert (meta.name, meta.version) == ("python", bridge.__version__)
    assert "QNTX_PLUGIN_PORT" not in plugin.log()  # stdout has the port, stderr the log


def test_a_taken_port_makes_it_try_the_next() -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        p = PluginProcess(port)
        try:
            p.start()
            assert p.port > port
            assert f"port {port} is taken" in p.log()
        finally:
            p.close()


# QNTX's plugin/grpc/protocol/domain.proto and sigil.proto as they are today (InitializeResponse
# has signa at 10, InitializeRequest endpoints up to mail_endpoint at 13): each message's fields
# as name -> (number, type). The plugin's protos must have these names at these numbers.
QNTX_MESSAGES: dict[str, dict[str, tuple[int, str]]] = {
    "MetadataResponse": {
        "name": (1, "string"),
        "version": (2, "string"),
        "qntx_version": (3, "string"),
        "description": (4, "string"),
        "author": (5, "string"),
        "license": (6, "string"),
    },
    "InitializeRequest": {
        "ats_store_endpoint": (1, "string"),
        "queue_endpoint": (2, "string"),
        "auth_token": (3, "string"),
        "config": (4, "map"),
        "schedule_endpoint": (5, "string"),
        "file_service_endpoint": (6, "string"),
        "llm_endpoint": (7, "string"),
        "embedding_endpoint": (8, "string"),
        "vector_search_endpoint": (9, "string"),
        "ground_endpoint": (10, "string"),
        "search_endpoint": (11, "string"),
        "fetch_endpoint": (12, "string"),
        "mail_endpoint": (13, "string"),
    },
    "InitializeResponse": {
        "handler_names": (1, "repeated string"),
        "schedules": (2, "repeated ScheduleInfo"),
        "llm_provider": (3, "bool"),
        "watchers": (4, "repeated WatcherRegistration"),
        "vector_search_provider": (5, "bool"),
        "search_provider": (6, "bool"),
        "embedding_provider": (7, "bool"),
        "python_provider": (9, "bool"),
        "signa": (10, "repeated Signum"),
    },
    "HTTPHeader": {"name": (1, "string"), "values": (2, "repeated string")},
    "HTTPRequest": {
        "method": (1, "string"),
        "path": (2, "string"),
        "headers": (3, "repeated HTTPHeader"),
        "body": (4, "bytes"),
    },
    "HTTPResponse": {
        "status_code": (1, "int32"),
        "headers": (2, "repeated HTTPHeader"),
        "body": (3, "bytes"),
    },
    "WebSocketMessage": {
        "type": (1, "Type"),
        "data": (2, "bytes"),
        "headers": (3, "map"),
        "timestamp": (4, "int64"),
    },
    "HealthResponse": {"healthy": (1, "bool"), "message": (2, "string"), "details": (3, "map")},
    "ConfigSchemaResponse": {"fields": (1, "map")},
    "ConfigFieldSchema": {
        "type": (1, "string"),
        "description": (2, "string"),
        "default_value": (3, "string"),
        "required": (4, "bool"),
        "min_value": (5, "string"),
        "max_value": (6, "string"),
        "pattern": (7, "string"),
        "element_type": (8, "string"),
    },
    "ElementDefResponse": {"elements": (1, "repeated ElementDef")},
    "ExecuteJobRequest": {
        "job_id": (1, "string"),
        "handler_name": (2, "string"),
        "payload": (3, "bytes"),
        "timeout_secs": (4, "int64"),
    },
    "ExecuteJobResponse": {
        "success": (1, "bool"),
        "error": (2, "string"),
        "result": (3, "bytes"),
        "progress_current": (4, "int32"),
        "progress_total": (5, "int32"),
        "cost_actual": (6, "double"),
        "log_entries": (7, "repeated JobLogEntry"),
        "plugin_version": (8, "string"),
    },
    "JobLogEntry": {
        "timestamp": (1, "string"),
        "level": (2, "string"),
        "message": (3, "string"),
        "stage": (4, "string"),
        "metadata": (5, "string"),
    },
    "ParseAxQueryRequest": {"query": (1, "string")},
    "ParseAxQueryResponse": {"result": (1, "bytes"), "error": (2, "string")},
    # sigil.proto
    "Signum": {
        "name": (1, "string"),
        "sigils": (2, "repeated Sigil"),
        "follows": (3, "repeated Follows"),
        "description": (4, "string"),
        "tags": (5, "repeated string"),
    },
    "Sigil": {
        "name": (1, "string"),
        "does": (2, "string"),
        "takes": (3, "repeated Param"),
        "gives": (4, "repeated Field"),
        "http": (5, "Endpoint"),
    },
    "Param": {
        "name": (1, "string"),
        "says": (2, "string"),
        "required": (3, "bool"),
        "one_of": (4, "repeated string"),
        "kind": (5, "string"),
    },
    "Field": {"name": (1, "string"), "says": (2, "string"), "message": (3, "string")},
    "Endpoint": {"method": (1, "string"), "path": (2, "string")},
}
# Left out on purpose: messages the plugin never sends or reads (proto3 skips them on the wire).
LEFT_OUT = {
    ("InitializeResponse", "schedules"),
    ("InitializeResponse", "watchers"),
    ("ElementDefResponse", "elements"),
}
QNTX_METHODS = [
    "Metadata",
    "Initialize",
    "Shutdown",
    "HandleHTTP",
    "HandleWebSocket",
    "Health",
    "ConfigSchema",
    "RegisterElements",
    "ExecuteJob",
    "ParseAxQuery",
]

_SCALARS = {1: "double", 3: "int64", 5: "int32", 8: "bool", 9: "string", 12: "bytes"}


def _served_files(plugin: PluginProcess, symbol: str) -> dict[str, Any]:
    """The served FileDescriptorProtos (by file name) of *symbol* and those it imports."""
    from google.protobuf import descriptor_pb2
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(plugin.channel)
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
    reply = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=10)))
    files = {}
    for raw in reply.file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
        files[proto.name] = proto
    return files


def _field_type(field: Any) -> str:
    kind = _SCALARS.get(field.type) or field.type_name.rsplit(".", 1)[-1]
    if kind == "".join(part.capitalize() for part in field.name.split("_")) + "Entry":
        return "map"  # protoc's nested entry message of a map field
    return f"repeated {kind}" if field.label == field.LABEL_REPEATED else kind


def test_serves_reflection_with_qntx_field_names_and_numbers(plugin: PluginProcess) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(plugin.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    reply = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=10)))
    names = {s.name for s in reply.list_services_response.service}
    assert {"protocol.DomainPluginService", "protocol.PythonService"} <= names
    files = _served_files(plugin, "protocol.DomainPluginService")
    assert any(name.endswith("sigil.proto") for name in files)  # signa's file comes along
    messages = {m.name: m for f in files.values() for m in f.message_type}
    for message, fields in QNTX_MESSAGES.items():
        served = {f.name: (f.number, _field_type(f)) for f in messages[message].field}
        wanted = {k: v for k, v in fields.items() if (message, k) not in LEFT_OUT}
        assert served == wanted, message
    service = next(s for f in files.values() for s in f.service if s.name == "DomainPluginService")
    assert [m.name for m in service.method] == QNTX_METHODS
    with pytest.raises(grpc.RpcError) as caught:  # declared as QNTX does; not a parser
        plugin.domain.ParseAxQuery(domain_pb.ParseAxQueryRequest(query="a is b"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


# -- Initialize -----------------------------------------------------------------------------------


def test_initialize_declares_the_python_handler(plugin: PluginProcess) -> None:
    reply = plugin.initialized  # type: ignore[attr-defined]
    assert list(reply.handler_names) == ["python.script"]
    assert reply.python_provider is True


def test_initialize_declares_the_operations_as_signa_that_handle_http_answers(
    plugin: PluginProcess,
) -> None:
    signa = {s.name: s for s in plugin.initialized.signa}  # type: ignore[attr-defined]
    assert set(signa) == {"python", "contexts", "packages", "version", "backends"}
    assert all(s.description and s.tags for s in signa.values())
    sigils = {(s.name, g.name): g for s in signa.values() for g in s.sigils}
    execute = sigils[("python", "execute")]
    assert (execute.http.method, execute.http.path) == ("POST", "/api/python/execute")
    assert execute.does == "Run code in a fresh namespace on a pool kernel"
    takes = {p.name: p for p in execute.takes}
    assert {"content", "timeout_secs", "inputs"} <= set(takes)
    assert takes["timeout_secs"].kind == "number" and takes["content"].says
    assert {"success", "stdout", "result", "error"} <= {f.name for f in execute.gives}
    call = sigils[("backends", "call")]
    assert call.http.path == "/api/python/backends/{backend_id}/call"
    assert [(p.name, p.required) for p in call.takes][:2] == [("backend_id", True), ("cmd", True)]
    # Every sigil's endpoint is a route HandleHTTP answers (an unknown id: 404 of that id, or
    # a 400 for the missing body; never "no route"). Only bodiless GETs and DELETEs are sent,
    # and POSTs without a body: nothing runs and nothing is made.
    for (signum, name), sigil in sorted(sigils.items()):
        assert sigil.http.path.startswith("/api/python/"), (signum, name)
        path = sigil.http.path.removeprefix("/api/python")
        path = path.replace("{context_id}", "0123").replace("{backend_id}", "0123")
        if (sigil.http.method, path) == ("POST", "/contexts"):
            continue  # the one POST whose body is optional: it would start a kernel
        r = plugin.http(sigil.http.method, path, b"" if sigil.http.method != "POST" else b"[]")
        body = json.loads(r.body)
        assert "no route" not in str(body.get("error")), (signum, name, body)
        assert r.status_code != 405, (signum, name)


def test_python_paths_come_first_and_default_modules_are_imported(
    plugin: PluginProcess, files: dict[str, Path]
) -> None:
    code = "import sys\nreturn [sys.path[:2], 'qntx_probe' in sys.modules]"
    r = plugin.http("POST", "/execute", json.dumps({"content": code}).encode())
    assert r.status_code == 200, r.body
    paths, imported = json.loads(r.body)["result"]
    assert paths == [str(files["paths"]), "/nonexistent-second"]
    assert imported is True  # imported as the kernel started: the code never imported it


def test_bad_config_is_invalid_argument(plugin: PluginProcess) -> None:
    for bad in ({"pool_size": "none"}, {"default_modules": "os;rm"}, {"root": "/no/such/dir"}):
        with pytest.raises(grpc.RpcError) as caught:
            plugin.domain.Initialize(domain_pb.InitializeRequest(config=bad), timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A refused Initialize leaves the running kernels as they were.
    r = plugin.http("POST", "/evaluate", b'{"expr": "1 + 1"}')
    assert json.loads(r.body)["result"] == 2


def test_config_schema_names_the_settings(plugin: PluginProcess) -> None:
    fields = plugin.domain.ConfigSchema(domain_pb.Empty(), timeout=5).fields
    assert {"python_paths", "default_modules", "pool_size", "timeout", "root"} <= set(fields)


# -- HandleHTTP: the HTTP service's answers --------------------------------------------------------

_VARYING = ("duration_ms",)


def _same(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in _VARYING}


CASES: list[tuple[str, str, Any]] = [
    ("POST", "/execute", {"content": "print('hi')\nreturn {'n': 6 * 7}"}),
    ("POST", "/execute", {"code": "import sys; print('e', file=sys.stderr); 1/0"}),
    ("POST", "/execute", {"content": "return 1", "inputs": {"x": 1}, "capture_variables": True}),
    ("POST", "/execute", {"content": "while True: pass", "timeout_secs": 0.5}),
    ("POST", "/execute", {"content": "1", "code": "2"}),
    ("POST", "/execute", b"{not json"),
    ("POST", "/execute", b""),
    ("POST", "/evaluate", {"expr": "1 + 2 * 3"}),
    ("POST", "/evaluate", {"expr": 3}),
    ("POST", "/execute-file", {"path": "hello.py"}),
    ("POST", "/execute-file", {"path": "../outside.py"}),
    ("POST", "/execute-file", {"path": "missing.py"}),
    ("GET", "/version", None),
    ("GET", "/modules", None),
    ("GET", "/modules?names=json,surely_not_a_module_x,os.path", None),
    ("GET", "/modules?names=os;rm", None),
    ("GET", "/modules", {"modules": ["json", "nope_not_here"]}),
    ("GET", "/uv/check", {"module": "json"}),
    ("GET", "/pip/check?module=surely_not_a_module_x", None),
    ("GET", "/uv/check", None),
    ("POST", "/uv/install", {"package": "--index-url=http://evil.example"}),
    ("POST", "/pip/install", {"packages": ["x @ https://evil.example/x.whl"]}),
    ("POST", "/packages/install", {"packages": []}),
    ("GET", "/execute", None),
    ("GET", "/backends/0123/events", None),
    ("DELETE", "/backends/0123", None),
    ("GET", "/contexts", None),
    ("GET", "/contexts/0123", None),
    ("POST", "/contexts/0123/execute", {"content": "1"}),
    ("POST", "/contexts", {"cwd": "/"}),
    ("POST", "/contexts", {"name": "no spaces allowed"}),
    ("POST", "/packages/install", {"packages": ["tornado==1.0"]}),
]


@pytest.mark.parametrize(("method", "path", "body"), CASES)
def test_handle_http_answers_as_the_http_service(
    plugin: PluginProcess, service: ServiceProcess, method: str, path: str, body: Any
) -> None:
    raw = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    tunnelled = plugin.http(method, path, raw)
    with service.client() as c:
        direct = c.request(method, path, content=raw)
    headers = {h.name: list(h.values) for h in tunnelled.headers}
    assert headers["Content-Type"] == ["application/json"]
    if path.endswith("/events"):  # a stream: HTTP only, not tunnelled
        assert tunnelled.status_code == 404
        assert json.loads(tunnelled.body)["error_type"] == "not_found"
        return
    assert tunnelled.status_code == direct.status_code, (tunnelled.body, direct.text)
    assert _same(json.loads(tunnelled.body)) == _same(direct.json())
    if direct.status_code == 405:
        assert headers["Allow"] == [direct.headers["Allow"]]


def test_a_contexts_files_through_the_tunnel(plugin: PluginProcess, files: dict[str, Path]) -> None:
    created = plugin.http("POST", "/contexts", json.dumps({"cwd": "."}).encode())
    assert created.status_code == 201, created.body
    base = f"/contexts/{json.loads(created.body)['id']}"
    try:
        data = os.urandom(300_000)
        put = plugin.http("PUT", f"{base}/files/charts/out.png", data)
        assert put.status_code == 201, put.body
        assert json.loads(put.body)["size"] == len(data)
        assert (files["root"] / "charts" / "out.png").read_bytes() == data
        got = plugin.http("GET", f"{base}/files/charts/out.png", b"")
        assert got.status_code == 200 and got.body == data
        headers = {h.name: list(h.values) for h in got.headers}
        assert headers["Content-Type"] == ["image/png"]
        listed = json.loads(plugin.http("GET", f"{base}/files?path=charts", b"").body)
        assert [e["name"] for e in listed["entries"]] == ["out.png"]
        refused = plugin.http("GET", f"{base}/files/..%2Fhello.py", b"")
        assert refused.status_code == 403, refused.body
        assert plugin.http("DELETE", f"{base}/files/charts/out.png", b"").status_code == 200
        assert not (files["root"] / "charts" / "out.png").exists()
    finally:
        plugin.http("DELETE", base, b"")


def test_the_installer_answers_as_over_http(plugin: PluginProcess, service: ServiceProcess) -> None:
    # An installed package: the installer runs for real and changes nothing.
    raw = json.dumps({"package": "packaging"}).encode()
    tunnelled = plugin.http("POST", "/uv/install", raw, timeout=300)
    with service.client(timeout=300) as c:
        direct = c.post("/packages/install", content=raw)
    a, b = json.loads(tunnelled.body), direct.json()
    assert tunnelled.status_code == direct.status_code == 200, (a, b)
    assert a["success"] is b["success"] is True, (a["stderr"], b["stderr"])
    assert a["installed"] == b["installed"] == ["packaging"]
    assert a["installer"] == b["installer"]


def test_unknown_paths_are_404_json(plugin: PluginProcess) -> None:
    for path in ("/nope", "/api/python/execute", "/", ""):
        r = plugin.http("POST", path, b"{}")
        assert r.status_code == 404
        assert json.loads(r.body)["error_type"] == "not_found"


def test_backends_work_through_the_tunnel(plugin: PluginProcess) -> None:
    script = (
        "from bridge_runtime import PythonBridge\n\n"
        "class Calc(PythonBridge):\n    def add(self, a, b):\n        return a + b\n\n"
        "if __name__ == '__main__':\n    Calc().run()\n"
    )
    made = plugin.http("POST", "/backends", json.dumps({"script": script}).encode())
    assert made.status_code == 201, made.body
    backend = json.loads(made.body)["id"]
    call = {"cmd": "add", "params": {"a": 2, "b": 3}}
    r = plugin.http("POST", f"/backends/{backend}/call", json.dumps(call).encode())
    assert json.loads(r.body)["result"] == 5
    assert plugin.http("DELETE", f"/backends/{backend}").status_code == 200


def test_messages_past_4_mb_pass(plugin: PluginProcess) -> None:
    blob = "x" * (6 * 1024 * 1024)  # gRPC's default limit is 4 MB
    body = json.dumps({"content": "return len(blob)", "inputs": {"blob": blob}}).encode()
    r = plugin.http("POST", "/execute", body)
    assert r.status_code == 200, r.body[:300]
    assert json.loads(r.body)["result"] == len(blob)


# -- the gate: only the plugin's own user ---------------------------------------------------------

NOBODY = 65534

# Run as another user: a HandleHTTP that would run code (when given a body), then Metadata
# and Health; the status code of each.
_AS_ANOTHER_USER = """
import json, sys, grpc
from bridge.qntx.protocol import domain_pb, domain_rpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    stub = domain_rpc.DomainPluginServiceStub(channel)
    calls = [(stub.Metadata, domain_pb.Empty()), (stub.Health, domain_pb.Empty())]
    if sys.argv[2]:
        http = domain_pb.HTTPRequest(method="POST", path="/execute", body=sys.argv[2].encode())
        calls.insert(0, (stub.HandleHTTP, http))
    codes = []
    for call, request in calls:
        try:
            call(request, timeout=30)
            codes.append("OK")
        except grpc.RpcError as exc:
            codes.append(exc.code().name)
print(json.dumps(codes))
"""


def as_another_user(port: int, body: bytes = b"") -> list[str]:
    """The status codes the plugin gave `nobody` (setpriv: this test runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("calling as another user needs root (setpriv), and this test is not root")
    done = subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            sys.executable,
            "-c",
            _AS_ANOTHER_USER,
            f"127.0.0.1:{port}",
            body.decode(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def test_another_local_user_is_refused_before_any_service(plugin: PluginProcess) -> None:
    marker = Path(tempfile.mkdtemp(prefix="qntx-gate-")) / "ran"
    code = f"import os\nopen({str(marker)!r}, 'w').write(str(os.getuid()))\nreturn os.getuid()"
    body = json.dumps({"content": code}).encode()
    try:
        assert as_another_user(plugin.port, body) == ["PERMISSION_DENIED"] * 3
        assert not marker.exists()  # refused before HandleHTTP: no code ran
        log = plugin.log()
        assert "refused /protocol.DomainPluginService/HandleHTTP from ipv4:127.0.0.1:" in log
        assert f"(uid {NOBODY}): this plugin answers only its own user (uid 0)" in log
        # The plugin's own user (QNTX's core that launched it) is unaffected.
        r = plugin.http("POST", "/execute", body)
        assert json.loads(r.body)["result"] == os.getuid()
        assert marker.read_text() == str(os.getuid())
    finally:
        shutil.rmtree(marker.parent, ignore_errors=True)


def test_allow_any_local_user_lets_another_user_in() -> None:
    p = PluginProcess(None, "--allow-any-local-user").start()
    try:
        assert as_another_user(p.port) == ["OK", "OK"]
        assert "--allow-any-local-user: every local user" in p.log()
    finally:
        p.close()


def test_a_non_loopback_interface_needs_asking_for() -> None:
    refused = subprocess.run(
        [PLUGIN, "--host", "0.0.0.0", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1
    assert refused.stdout == ""  # no port announced
    assert "'0.0.0.0' is not a loopback interface: give --allow-non-loopback" in refused.stderr
    p = PluginProcess(None, "--host", "0.0.0.0", "--allow-non-loopback").start()
    try:
        assert "listening on 0.0.0.0, not on loopback: the port (which runs code) is open" in (
            p.log()
        )
        assert as_another_user(p.port) == ["PERMISSION_DENIED"] * 2  # the gate still holds
    finally:
        p.close()


# -- ExecuteJob, PythonService, attest() -----------------------------------------------------------


def _job(plugin: PluginProcess, payload: Any, timeout: int | None = None, handler: str = "") -> Any:
    request = domain_pb.ExecuteJobRequest(
        job_id="job-1",
        handler_name=handler or "python.script",
        payload=json.dumps(payload).encode(),
        timeout_secs=timeout,
    )
    return plugin.domain.ExecuteJob(request, timeout=60)


def test_execute_job_runs_a_script(plugin: PluginProcess) -> None:
    code = "import sys\nprint('one')\nprint('two')\nprint('oops', file=sys.stderr)\nreturn 7"
    reply = _job(plugin, {"content": code})
    assert reply.success is True and reply.error == ""
    answer = json.loads(reply.result)
    assert (answer["result"], answer["stdout"]) == (7, "one\ntwo\n")
    lines = [(e.level, e.message, e.stage) for e in reply.log_entries]
    assert lines == [
        ("info", "one", "stdout"),
        ("info", "two", "stdout"),
        ("warn", "oops", "stderr"),
    ]
    assert reply.plugin_version == bridge.__version__
    assert _job(plugin, {"code": "return 'old field'"}).success is True
    # Each line is stamped when the kernel sent it, not when the job ended.
    code = "import time\nprint('early', flush=True)\ntime.sleep(0.6)\nprint('late', end='')"
    entries = _job(plugin, {"content": code}).log_entries
    assert [e.message for e in entries] == ["early", "late"]
    early, late = (datetime.datetime.fromisoformat(e.timestamp) for e in entries)
    assert (late - early).total_seconds() > 0.4


def test_execute_job_failures(plugin: PluginProcess) -> None:
    failed = _job(plugin, {"content": "raise ValueError('bad input')"})
    assert failed.success is False and "ValueError: bad input" in failed.error
    started = time.monotonic()
    timed_out = _job(plugin, {"content": "import time\nwhile True: time.sleep(0.05)"}, timeout=1)
    assert time.monotonic() - started < 5
    assert timed_out.success is False and "1" in timed_out.error
    assert json.loads(timed_out.result)["error_type"] == "timeout"
    for payload, handler, code in (
        ({"content": "1"}, "python.other", grpc.StatusCode.NOT_FOUND),
        ({"nothing": 1}, "", grpc.StatusCode.INVALID_ARGUMENT),
        (["content"], "", grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            _job(plugin, payload, handler=handler)
        assert caught.value.code() == code


def test_python_service_sees_the_upstream_attestation_and_attest_reaches_qntx(
    plugin: PluginProcess, ats: tuple[FakeATSStore, str]
) -> None:
    store, _ = ats
    before = len(store.received)
    upstream = {"id": "up-1", "subjects": ["doc:7"], "predicates": ["uploaded"]}
    code = (
        "print('from', upstream['subjects'][0])\n"
        "rec = attest(['doc:7'], ['reviewed'], ['qntx-test'], attributes={'score': 3})\n"
        "return {'upstream': upstream['id'], 'attested': rec['id']}"
    )
    reply = plugin.execute(code, json.dumps(upstream).encode())
    assert reply.success is True, reply.error
    assert reply.output == "from doc:7\n"
    value = json.loads(reply.result)
    assert value["upstream"] == "up-1"
    received = store.wait_for(before + 1)[before:]
    assert len(received) == 1
    sent = received[0]
    assert sent.auth_token == TOKEN
    a = sent.attestation
    assert (a.id, list(a.subjects), list(a.predicates)) == (
        value["attested"],
        ["doc:7"],
        ["reviewed"],
    )
    assert list(a.contexts) == ["qntx-test"] and json.loads(a.attributes) == {"score": 3}
    assert a.source == "python" and abs(a.timestamp - time.time()) < 60
    # No upstream: `upstream` is None; code that fails says why.
    assert json.loads(plugin.execute("return upstream").result) is None
    failed = plugin.execute("1/0")
    assert failed.success is False and "ZeroDivisionError" in failed.error
    with pytest.raises(grpc.RpcError) as caught:
        plugin.execute("return 1", b"{not json")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_attestations_of_every_transport_reach_qntx(
    plugin: PluginProcess, ats: tuple[FakeATSStore, str]
) -> None:
    store, _ = ats
    before = len(store.received)
    code = "attest('s', 'p', 'c')\nreturn 1"
    plugin.http("POST", "/execute", json.dumps({"content": code}).encode())
    _job(plugin, {"content": code})
    assert len(store.wait_for(before + 2)) == before + 2


# -- websocket, keepalive, health ------------------------------------------------------------------


def test_websocket_answers_ping_with_pong_and_ends_on_close(plugin: PluginProcess) -> None:
    sent = [
        WS(type=WS.CONNECT),
        WS(type=WS.PING, timestamp=123456789),
        WS(type=WS.PING, timestamp=987654321),
        WS(type=WS.CLOSE),
    ]
    replies = list(plugin.domain.HandleWebSocket(iter(sent), timeout=10))
    assert [(r.type, r.timestamp) for r in replies] == [
        (WS.PONG, 123456789),
        (WS.PONG, 987654321),
    ]


def test_websocket_streams_output_as_it_is_made_with_pongs_meanwhile(
    plugin: PluginProcess,
) -> None:
    ws = Socket(plugin)
    code = "import time\nprint(1)\ntime.sleep(1)\nprint(2)"
    started = time.monotonic()
    ws.send({"ref": "r1", "op": "run", "path": "/execute", "body": {"content": code}})
    first = ws.next()
    first_after = time.monotonic() - started
    assert first == {"ref": "r1", "event": "stdout", "data": {"text": "1\n"}}
    assert first_after < 0.3, first_after
    ws.ping(42)  # QNTX's keepalive goes on while the call runs
    pong = ws.next()
    assert (pong.type, pong.timestamp) == (WS.PONG, 42)
    second = ws.next()
    second_after = time.monotonic() - started
    assert second == {"ref": "r1", "event": "stdout", "data": {"text": "2\n"}}
    # About 1 s after the call began, as the code prints it; the first waited for ipykernel's
    # output flush (every 0.2 s), so the two are some 0.8 s apart, never batched together.
    assert 0.9 < second_after < 1.6 and second_after - first_after > 0.6, (
        first_after,
        second_after,
    )
    end = ws.next()
    assert (end["ref"], end["event"]) == ("r1", "end")
    assert end["data"]["success"] is True and end["data"]["stdout"] == "1\n2\n"
    ws.close()


def _sse(service: ServiceProcess, path: str, body: dict[str, Any]) -> list[tuple[str, Any]]:
    """(event, data) of the HTTP service's Server-Sent Events for the same call."""
    got, name = [], ""
    with (
        service.client() as c,
        c.stream("POST", path, json=body, headers={"Accept": "text/event-stream"}) as r,
    ):
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                got.append((name, json.loads(line[6:])))
    return got


def test_websocket_frames_are_the_http_services_events(
    plugin: PluginProcess, service: ServiceProcess
) -> None:
    code = (
        "import sys\nfrom IPython.display import display\n"
        "print('out', flush=True)\nprint('err', file=sys.stderr, flush=True)\n"
        "display({'text/plain': 'shown'}, raw=True)\n"
        "x = 6 * 7\nx"
    )
    failing = "print('before', flush=True)\n1/0"
    ws = Socket(plugin)
    for ref, path, body in (
        ("ok", "/execute", {"content": code}),
        ("raises", "/execute", {"content": failing}),
        ("value", "/evaluate", {"expr": "6 * 7"}),
    ):
        ws.send({"ref": ref, "op": "run", "path": path, "body": body})
        frames = [(f["event"], f["data"]) for f in ws.until_end(ref)]
        http = _sse(service, path, body)
        assert [e for e, _ in frames] == [e for e, _ in http], ref
        assert [d for e, d in frames[:-1]] == [d for e, d in http[:-1]], ref
        assert _same(frames[-1][1]) == _same(http[-1][1]), ref
    ws.close()


def test_websocket_refusals_end_their_request(plugin: PluginProcess) -> None:
    ws = Socket(plugin)
    for request, status, words in (
        ({"ref": "a", "op": "run", "path": "/version"}, 400, "does not stream"),
        ({"ref": "b", "op": "run", "path": "/nope", "body": {}}, 404, "no route POST /nope"),
        ({"ref": "c", "op": "run", "path": "/execute", "body": []}, 400, "Expected `object`"),
        ({"ref": "d", "op": "dance"}, 400, "op must be run, subscribe or cancel"),
        ({"ref": "e", "op": "cancel"}, 404, "no request 'e'"),
        ({"ref": "f", "op": "subscribe", "backend": "0123"}, 404, "no backend '0123'"),
        ({"ref": "g", "op": "subscribe", "backend": "x", "last_event_id": "-1"}, 400, "Last"),
    ):
        ws.send(request)
        (end,) = ws.until_end(str(request["ref"]))
        assert end["event"] == "end" and end["data"]["status"] == status, end
        assert words in end["data"]["error"], end
    ws.send({"op": "run"})  # no ref: its end has none either
    end = ws.next()
    assert (end["ref"], end["data"]["status"]) == (None, 400)
    # A ref in use is refused; once its request ended, it may be used again.
    slow = {
        "ref": "dup",
        "op": "run",
        "path": "/evaluate",
        "body": {"expr": "__import__('time').sleep(0.3)"},
    }
    ws.send(slow)
    ws.send(slow)
    (refused,) = ws.until_end("dup")
    assert (refused["data"]["status"], refused["data"]["error_type"]) == (409, "conflict")
    assert ws.until_end("dup")[-1]["data"]["success"] is True
    ws.send(slow)
    assert ws.until_end("dup")[-1]["data"]["success"] is True
    ws.close()


def test_websocket_cancel_and_a_dropped_stream_interrupt_the_call(plugin: PluginProcess) -> None:
    made = plugin.http("POST", "/contexts", b'{"name": "ws-cancel"}')
    assert made.status_code == 201, made.body
    context = json.loads(made.body)["id"]
    path = f"/contexts/{context}/execute"
    slow = "import time\nprint('started', flush=True)\ntime.sleep(30)\n{name} = True"
    try:
        ws = Socket(plugin)
        ws.send(
            {"ref": "c1", "op": "run", "path": path, "body": {"content": slow.format(name="a")}}
        )
        assert ws.next()["data"] == {"text": "started\n"}
        ws.send({"ref": "c1", "op": "cancel"})
        assert ws.next() == {"ref": "c1", "event": "cancelled", "data": {}}
        ask = {"content": "return ['a' in globals(), 'b' in globals()]"}
        ws.send({"ref": "c2", "op": "run", "path": path, "body": ask})
        end = ws.until_end("c2")[-1]
        assert end["data"]["result"] == [False, False]  # interrupted: `a = True` never ran
        ws.send(
            {"ref": "c3", "op": "run", "path": path, "body": {"content": slow.format(name="b")}}
        )
        assert ws.next()["data"] == {"text": "started\n"}
        ws.drop()  # the core's stream gone, as when the browser vanishes
        started = time.monotonic()
        r = plugin.http("POST", f"/contexts/{context}/execute", json.dumps(ask).encode())
        assert json.loads(r.body)["result"] == [False, False]
        assert time.monotonic() - started < 10  # the context was free: its call interrupted
    finally:
        plugin.http("DELETE", f"/contexts/{context}")


def test_websocket_backend_events_resume_from_the_last_id(plugin: PluginProcess) -> None:
    script = (
        "from bridge_runtime import PythonBridge\n\n"
        "class Ticker(PythonBridge):\n"
        "    def emit(self, n, start):\n"
        "        for i in range(start, start + n):\n"
        "            self.send_event('tick', {'i': i})\n"
        "        return n\n\n"
        "if __name__ == '__main__':\n    Ticker().run()\n"
    )
    made = plugin.http("POST", "/backends", json.dumps({"script": script}).encode())
    assert made.status_code == 201, made.body
    backend = json.loads(made.body)["id"]

    def emit(n: int, start: int) -> None:
        call = {"cmd": "emit", "params": {"n": n, "start": start}}
        r = plugin.http("POST", f"/backends/{backend}/call", json.dumps(call).encode())
        assert json.loads(r.body)["result"] == n

    try:
        ws = Socket(plugin)
        ws.send({"ref": "s1", "op": "subscribe", "backend": backend})
        emit(5, 0)
        seen = [ws.next() for _ in range(3)]
        assert [(f["ref"], f["event"], f["data"]) for f in seen] == [
            ("s1", "message", {"type": "tick", "data": {"i": i}}) for i in range(3)
        ]
        last = seen[-1]["id"]
        assert [f["id"] for f in seen] == [last - 2, last - 1, last]
        ws.drop()
        emit(4, 5)  # while nobody listens
        # Reconnect as a browser does through QNTX: ?backend=...&last_event_id=... (metadata).
        again = Socket(plugin, metadata=(("backend", backend), ("last_event_id", str(last))))
        resumed = [again.next() for _ in range(6)]
        assert [f["data"]["data"]["i"] for f in resumed] == [3, 4, 5, 6, 7, 8]
        assert [f["id"] for f in resumed] == list(range(last + 1, last + 7))
        assert {f["ref"] for f in resumed} == {backend}
        assert plugin.http("DELETE", f"/backends/{backend}").status_code == 200
        frames = again.until_end(backend)
        assert frames[-1] == {"ref": backend, "event": "end", "data": {}}
        again.close()
    finally:
        plugin.http("DELETE", f"/backends/{backend}")


def test_keepalive_pings_with_no_call_in_flight_are_accepted(plugin: PluginProcess) -> None:
    # As the core dials: pings with no call in flight (every second here, 30 s in QNTX). A
    # server that refused them would answer GOAWAY (too_many_pings) and the channel would drop.
    options = [
        ("grpc.keepalive_time_ms", 1000),
        ("grpc.keepalive_timeout_ms", 1000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    states: list[grpc.ChannelConnectivity] = []
    with grpc.insecure_channel(f"127.0.0.1:{plugin.port}", options=options) as channel:
        from bridge.qntx.protocol import domain_rpc

        stub = domain_rpc.DomainPluginServiceStub(channel)
        stub.Metadata(domain_pb.Empty(), timeout=5)
        channel.subscribe(states.append)
        # The window is the test: no event tells that a ping went out and was accepted; five
        # idle seconds hold about five pings, and a GOAWAY would show as a change of state.
        time.sleep(5)
        assert stub.Metadata(domain_pb.Empty(), timeout=5).name == "python"
        channel.unsubscribe(states.append)
    assert states and set(states) == {grpc.ChannelConnectivity.READY}, states


def test_health_reports_the_pool(plugin: PluginProcess, tmp_path: Path) -> None:
    health = plugin.domain.Health(domain_pb.Empty(), timeout=5)
    assert health.healthy is True
    details = dict(health.details)
    assert details["kernels_ready"] == details["pool_size"] == "2"
    assert details["kernels_busy"] == "0"
    assert details["attestations_failed"] == "0"
    # A call that holds its kernel until the test lets it go: Health is read while it runs.
    gate = tmp_path / "go"
    code = f"import os, time\nwhile not os.path.exists({str(gate)!r}):\n    time.sleep(0.01)\n"
    body = json.dumps({"content": code + "return 'held'"}).encode()
    replies: list[Any] = []
    slow = threading.Thread(target=lambda: replies.append(plugin.http("POST", "/execute", body)))
    slow.start()
    try:
        deadline = time.monotonic() + 30
        while (busy := dict(plugin.domain.Health(domain_pb.Empty(), timeout=5).details))[
            "kernels_busy"
        ] != "1":
            assert time.monotonic() < deadline, f"the call never held a kernel: {busy}"
            time.sleep(0.05)
    finally:
        gate.touch()
        slow.join()
    assert (busy["kernels_busy"], busy["kernels_ready"]) == ("1", "1")
    assert json.loads(replies[0].body)["result"] == "held"


# -- a second Initialize, Shutdown, SIGTERM --------------------------------------------------------


def test_an_unreachable_ats_store_is_logged_and_changes_no_result(
    plugin: PluginProcess, files: dict[str, Path], ats: tuple[FakeATSStore, str]
) -> None:
    kernels = descendants(plugin.pid)
    dead = f"127.0.0.1:{free_port()}"
    plugin.domain.Initialize(
        domain_pb.InitializeRequest(
            ats_store_endpoint=dead, auth_token=TOKEN, config=config(files, pool_size="1")
        ),
        timeout=120,
    )
    assert not [pid for pid in kernels - descendants(plugin.pid) if alive(pid)]  # old ones gone
    r = plugin.http("POST", "/execute", b"{\"content\": \"attest('s', 'p')\\nreturn 5\"}")
    body = json.loads(r.body)
    assert (r.status_code, body["success"], body["result"]) == (200, True, 5)
    assert len(body["attestations"]) == 1
    record = body["attestations"][0]["id"]
    assert f"attestation {record} was not stored in QNTX ({dead})" in plugin.log()
    details = dict(plugin.domain.Health(domain_pb.Empty(), timeout=5).details)
    assert (details["pool_size"], details["attestations_failed"]) == ("1", "1")


def test_shutdown_stops_the_kernels(plugin: PluginProcess) -> None:
    before = kernels_below(plugin.pid)
    assert before
    plugin.domain.Shutdown(domain_pb.Empty(), timeout=30)
    assert plugin.domain.Health(domain_pb.Empty(), timeout=5).healthy is False
    deadline = time.monotonic() + 10
    while [pid for pid in before if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in before if alive(pid)]
    # The next call brings kernels back, with the same settings.
    r = plugin.http("POST", "/evaluate", b'{"expr": "2 + 2"}')
    assert json.loads(r.body)["result"] == 4


def test_sigterm_leaves_no_process(plugin: PluginProcess) -> None:
    plugin.http("POST", "/evaluate", b'{"expr": "1"}')
    group = descendants(plugin.pid)
    assert kernels_below(plugin.pid), group
    took = plugin.terminate()
    assert took < 3.0
    deadline = time.monotonic() + 1
    while [pid for pid in group if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in group if alive(pid)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_over_http_the_qntx_paths_still_need_the_token(service: ServiceProcess) -> None:
    with httpx.Client(base_url=service.url, timeout=30) as anonymous:
        assert anonymous.get("/uv/check?module=json").status_code == 401  # still token-gated
