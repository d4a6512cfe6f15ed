"""The service's Prometheus metrics, beside the core's (``bridge/core/metrics.py``): requests
by route and outcome and their latency, contexts and backends, backend events. All are in
prometheus_client's default registry, which Jupyter Server serves at ``/metrics`` (with the
token, as every route: docs/http.md#metrics).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .dispatch import Answer
    from .service import Service

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter(
    "kernel_bridge_requests_total",
    "Requests by route and outcome: ok, python_error (the code raised), or the error_type",
    ["route", "outcome"],
)
LATENCY = Histogram(
    "kernel_bridge_request_seconds",
    "Time from a request's decoding to its answer, by route",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
EVENTS = Counter("kernel_bridge_events_total", "Events the backends sent (send_event, output)")
EVENTS_SENT = Counter("kernel_bridge_events_sent_total", "Backend events written to event streams")
EVENTS_DROPPED = Counter(
    "kernel_bridge_events_dropped_total",
    "Backend events a stream never got: dropped from the log before a slow reader took them",
)


def observe(route: str, answer: Answer, started: float) -> None:
    """Count one answered request of *route* (``POST /execute``)."""
    status = answer.status
    error_type = getattr(answer.body, "error_type", None)
    outcome = "ok" if status < 400 and error_type is None else str(error_type or status)
    REQUESTS.labels(route, outcome).inc()
    LATENCY.labels(route).observe(time.perf_counter() - started)


_services: weakref.WeakSet[Service] = weakref.WeakSet()


def watch_service(service: Service) -> None:
    """Count *service*'s contexts and backends in the gauges while it lives."""
    _services.add(service)


class _ServiceCollector(Collector):
    """Contexts and backends, read at scrape time."""

    def collect(self) -> Iterator[Any]:
        contexts = GaugeMetricFamily("kernel_bridge_contexts", "Contexts that exist")
        backends_by_state: dict[str, int] = {}
        count = 0
        for service in list(_services):
            count += len(service.contexts)
            for hosted in list(service.backends.values()):
                backends_by_state[hosted.state] = backends_by_state.get(hosted.state, 0) + 1
        contexts.add_metric([], count)
        backends = GaugeMetricFamily(
            "kernel_bridge_backends", "Backends listed, by state", labels=["state"]
        )
        for state in ("alive", "restarting", "lost", "dead"):
            backends.add_metric([state], backends_by_state.get(state, 0))
        yield contexts
        yield backends


REGISTRY.register(_ServiceCollector())
