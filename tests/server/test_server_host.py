"""What a host that starts the service itself relies on (the TypeScript client does):
``serve --watch-stdin`` stops with the host, and a failed backend call carries the
exception's parts (ename, evalue, traceback) apart."""

from __future__ import annotations

import subprocess
import time

from procs import alive, descendants, kernels_below
from service_process import KERNEL_BRIDGE, ServiceProcess

FAILING = """\
from bridge_runtime import PythonBridge


class Failing(PythonBridge):
    def divide(self, a, b):
        return a / b


if __name__ == "__main__":
    backend = Failing()
    backend.run()
"""


def test_watch_stdin_stops_the_service_and_its_kernels_when_the_host_goes() -> None:
    service = ServiceProcess("--watch-stdin", pool_size=1, stdin=subprocess.PIPE)
    try:
        service.start()
        with service.client() as client:
            created = client.post("/backends", json={"script": FAILING})
            assert created.status_code == 201, created.text
        kernels = kernels_below(service.pid)
        assert len(kernels) == 2  # the pool's kernel and the backend's
        kernels |= descendants(service.pid)  # and the watchdog, the fork server
        assert service.process is not None and service.process.stdin is not None
        service.process.stdin.close()  # what the host's exit does, even a SIGKILL
        service.process.wait(30)
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in kernels) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in kernels if alive(pid)]
    finally:
        service.close()


def test_without_watch_stdin_a_closed_stdin_changes_nothing() -> None:
    # --log-level warning too: the host's client starts the service with it.
    service = ServiceProcess("--log-level", "warning", pool_size=1, stdin=subprocess.PIPE)
    try:
        service.start()
        assert service.process is not None and service.process.stdin is not None
        service.process.stdin.close()
        # Nothing reads stdin without --watch-stdin, so no event says "end seen and ignored":
        # a window is the only way to observe that the service does not stop.
        time.sleep(1)
        assert service.process.poll() is None
        with service.client() as client:
            assert client.get("/health").json()["status"] == "ok"
    finally:
        service.close()


def test_a_failed_call_carries_the_exception_as_ename_evalue_and_traceback() -> None:
    with ServiceProcess(pool_size=1) as service, service.client() as client:
        created = client.post("/backends", json={"script": FAILING}).json()
        body = client.post(
            f"/backends/{created['id']}/call", json={"cmd": "divide", "params": {"a": 1, "b": 0}}
        ).json()
        assert body["success"] is False and body["error_type"] == "python_error"
        raised = body["exception"]
        assert raised["ename"] == "ZeroDivisionError"
        assert raised["evalue"] == "division by zero"
        assert raised["traceback"].startswith("Traceback")
        assert "return a / b" in raised["traceback"]
        assert "ZeroDivisionError: division by zero" in body["error"]
        ok = client.post(
            f"/backends/{created['id']}/call", json={"cmd": "divide", "params": {"a": 1, "b": 2}}
        ).json()
        assert ok["success"] is True and ok["result"] == 0.5 and ok["exception"] is None
        assert client.delete(f"/backends/{created['id']}").status_code == 200


def test_serve_help_names_watch_stdin() -> None:
    out = subprocess.run(
        [KERNEL_BRIDGE, "serve", "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "--watch-stdin" in out
