"""Prometheus metrics of the operator, served on /metrics (METRICS_PORT).

Names follow Prometheus conventions with the ocean_c2d_ prefix; counters end in _total once exported.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

REGISTRY = CollectorRegistry()

KUBERNETES_REQUESTS = Counter(
    "ocean_c2d_kubernetes_requests",
    "Kubernetes API requests sent by the operator's reconciles, by verb and response code (0: no response)",
    ["verb", "code"],
    registry=REGISTRY,
)
RECONCILES = Counter(
    "ocean_c2d_reconciles",
    "Workflow reconciles, by result: changed (sent writes), idle (nothing to change), conflict, error",
    ["result"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "ocean_c2d_reconcile_duration_seconds",
    "Time one Workflow reconcile took, API requests included",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=REGISTRY,
)

FILTER_VERDICTS = Counter(
    "ocean_c2d_filter_verdicts",
    "Verdicts of the filter stage on Workflows' results, by verdict (Pass, Block)",
    ["verdict"],
    registry=REGISTRY,
)
WORKFLOWS_FINISHED = Counter(
    "ocean_c2d_workflows_finished",
    "Workflows that finished, by environment and outcome (Succeeded, AlgorithmFailed, Stopped, ...)",
    ["environment", "outcome"],
    registry=REGISTRY,
)


def serve(port: int) -> None:
    """Serve /metrics on all interfaces, in a background thread."""
    start_http_server(port, registry=REGISTRY)
