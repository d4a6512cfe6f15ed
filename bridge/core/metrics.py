"""The core's Prometheus metrics (prometheus_client's default registry, which Jupyter Server's
``/metrics`` serves): pools, waits, kernel starts and deaths, output. Names start with
``kernel_bridge_``; docs/http.md#metrics lists them with the service's own.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from bridge.core.pool import KernelPool

WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
START_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)

QUEUE_WAIT = Histogram(
    "kernel_bridge_queue_wait_seconds",
    "How long one-off calls waited for a free pool kernel",
    buckets=WAIT_BUCKETS,
)
OVERLOADED = Counter(
    "kernel_bridge_overloaded_total", "Calls refused at once because the wait queue was full"
)
KERNEL_STARTS = Histogram(
    "kernel_bridge_kernel_start_seconds",
    "Kernel starts and their duration, by launch path (fork, launch, gateway)",
    ["path"],
    buckets=START_BUCKETS,
)
KERNEL_DEATHS = Counter(
    "kernel_bridge_kernel_deaths_total",
    "Kernels that died, by cause (limit, crash, timeout_kill)",
    ["cause"],
)
OUTPUT_BYTES = Counter(
    "kernel_bridge_output_bytes_total", "Bytes of stdout and stderr calls produced"
)

_pools: weakref.WeakSet[KernelPool] = weakref.WeakSet()


def watch_pool(pool: KernelPool) -> None:
    """Count *pool*'s kernels and waiting calls in the gauges while it lives."""
    _pools.add(pool)


class _PoolCollector(Collector):
    """The pools' kernels by state and the calls waiting, read at scrape time."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        kernels = GaugeMetricFamily(
            "kernel_bridge_pool_kernels",
            "Pool kernels by state (idle, busy, starting, sessions)",
            labels=["state"],
        )
        waiting = GaugeMetricFamily(
            "kernel_bridge_queue_waiting", "Calls waiting for a free pool kernel now"
        )
        totals = {"idle": 0, "busy": 0, "starting": 0, "sessions": 0}
        queued = 0
        for pool in list(_pools):
            status = pool.status()
            for state in totals:
                totals[state] += getattr(status, state)
            queued += status.waiting
        for state, count in totals.items():
            kernels.add_metric([state], count)
        waiting.add_metric([], queued)
        yield kernels
        yield waiting


REGISTRY.register(_PoolCollector())
