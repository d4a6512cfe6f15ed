"""Property-based tests of the service from its own /openapi.json: no input gets a 5xx.

Bounded: a few dozen generated requests per route (valid and invalid ones), no deadline.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from service_process import ServiceProcess

from bridge.service.dispatch import document

# The shortest timeout a generated request keeps: below it a legitimate 504 would be a
# matter of machine load, not of the input (tests/test_server.py covers timeouts).
MIN_TIMEOUT = 10.0
EXAMPLES = 25  # per route and mode
# Each valid POST /backends or /contexts starts a kernel (half a second of CPU), each valid
# install runs pip or uv (a second or more): fewer of those.
EXAMPLES_OF = {
    "POST /backends": 6,
    "POST /contexts": 6,
    "POST /contexts/{context_id}/restart": 6,
    "POST /packages/install": 4,
    "POST /uv/install": 4,
    "POST /pip/install": 4,
}
# Generated requirements must never install anything: the installers get no index.
OFFLINE = {"PIP_NO_INDEX": "1", "UV_OFFLINE": "1", "UV_NO_INDEX": "1"}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    root = tmp_path_factory.mktemp("root")
    (root / "script.py").write_text("print('a script')\n")
    # Few contexts: past the limit a valid POST /contexts is a quick 429, not another kernel.
    with ServiceProcess("--root", str(root), "--BridgeApp.max_contexts=2", env=OFFLINE) as svc:
        yield svc


SCHEMA = schemathesis.openapi.from_dict(document())
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_the_served_document_is_the_one_tested(service: ServiceProcess) -> None:
    with service.client() as c:
        served = c.get("/openapi.json").json()
    assert served["paths"] == document()["paths"]
    assert served["components"] == document()["components"]


def _prepare(case: Any) -> None:
    """Authorized requests only (test_server.py covers auth), with timeouts worth keeping."""
    if case.query:
        case.query.pop("token", None)
    if case.headers:
        case.headers.pop("Authorization", None)
    body = case.body
    if isinstance(body, dict):
        t = body.get("timeout_secs")
        if isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < MIN_TIMEOUT:
            body["timeout_secs"] = MIN_TIMEOUT


@pytest.mark.parametrize("operation", OPERATIONS, ids=[op.label for op in OPERATIONS])
@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_no_input_gets_a_server_error(
    service: ServiceProcess, operation: Any, mode: GenerationMode
) -> None:
    auth = {"Authorization": f"token {service.token}"}
    checks = [*CHECKS, negative_data_rejection] if mode is GenerationMode.NEGATIVE else CHECKS

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_OF.get(operation.label, EXAMPLES),
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: Any) -> None:
        _prepare(case)
        case.call_and_validate(base_url=service.url, headers=auth, timeout=60, checks=checks)

    run()


# A backend script that starts, so POST /backends gives real ids for the links to follow.
BACKEND = """\
from bridge_runtime import PythonBridge


class Echo(PythonBridge):
    def echo(self, value=None):
        return value


if __name__ == "__main__":
    Echo().run()
"""


def test_backend_routes_with_real_ids(service: ServiceProcess) -> None:
    """The stateful phase: POST /backends, then its links (GET, call, DELETE) on the id it
    gave, with generated bodies; no step gets a 5xx."""
    auth = {"Authorization": f"token {service.token}"}
    # Not the event stream: it stays open for as long as the backend lives.
    routes = SCHEMA.include(path_regex="^/backends").exclude(path_regex="/events$")
    machine = routes.as_state_machine()
    steps: list[tuple[str, str, int]] = []

    class Backends(machine):  # type: ignore[misc,valid-type]
        def before_call(self, case: Any) -> None:
            _prepare(case)
            if case.method == "POST" and case.path == "/backends" and isinstance(case.body, dict):
                case.body["script"] = BACKEND
                case.body.pop("env", None)  # test_server_hardening.py covers bad env names
            if case.path.endswith("/call") and isinstance(case.body, dict):
                case.body["cmd"] = "echo"  # a method the backend has: the call runs

        def after_call(self, response: Any, case: Any) -> None:
            steps.append((case.method, case.formatted_path, response.status_code))

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": service.url, "headers": auth, "timeout": 60}

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)

        def teardown(self) -> None:
            with service.client() as c:
                for backend in c.get("/backends").json()["backends"]:
                    c.delete(f"/backends/{backend['id']}")

    Backends.run(
        settings=settings(
            max_examples=4,
            stateful_step_count=4,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
    )
    created = {p for m, p, status in steps if m == "POST" and status == 201}
    followed = [s for s in steps if "{" not in s[1] and s[1].count("/") >= 2 and s[2] < 400]
    assert created and followed, f"no link was followed with a real id: {steps}"
