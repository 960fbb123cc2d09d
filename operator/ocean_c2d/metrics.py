"""Prometheus metrics of the operator, served on /metrics (METRICS_PORT).

Names follow Prometheus conventions: the ocean_c2d_ prefix, base units (seconds, bytes), counters ending in
_total once exported. Levels (workflows per stage, environment capacity) are collected at scrape time from
the operator's view of the cluster (see telemetry.py), so they are right after a restart; counters and
histograms count the transitions this process wrote.

/metrics is served by an aiohttp server on the operator's event loop (kopf already depends on aiohttp): the
scrape reads the watch indexes on the same thread that updates them, so it never sees one half-applied.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ocean_c2d.identity import package_version
from ocean_c2d.status import Outcome
from ocean_c2d.telemetry import STAGE_OUTCOMES, ClusterLevels, Observation

REGISTRY = CollectorRegistry()

# Stages and whole Workflows run for seconds to hours; the reconcile itself for milliseconds.
LONG_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200, 86400)
QUEUE_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200)

BUILD_INFO = Gauge(
    "ocean_c2d_build_info", "The running operator's version (always 1)", ["version"], registry=REGISTRY
)


BUILD_INFO.labels(package_version()).set(1)

KUBERNETES_REQUESTS = Counter(
    "ocean_c2d_kubernetes_requests",
    "Kubernetes API requests sent by the operator's reconciles, by verb, resource (workflows/status, pods, "
    "events, ...) and response code (0: no response)",
    ["verb", "resource", "code"],
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
WORK_QUEUE_DEPTH = Gauge(
    "ocean_c2d_work_queue_depth",
    "Keys (Workflows, ComputeEnvironments) waiting for a reconcile worker",
    registry=REGISTRY,
)

# Whether the Kubernetes API answers (k8s.ApiHealth: the operator's requests and kopf's retries).
API_ERRORS = Counter(
    "ocean_c2d_kubernetes_api_errors",
    "Kubernetes API requests that got no answer or a 5xx, by who sent them: operator (its reconciles) or"
    " kopf (its watches and listings, from kopf's retry log)",
    ["source"],
    registry=REGISTRY,
)
API_RECONNECTS = Counter(
    "ocean_c2d_kubernetes_api_reconnects",
    "Times the Kubernetes API answered again after failing (an API server or etcd restart, a network cut)",
    registry=REGISTRY,
)
API_UP = Gauge(
    "ocean_c2d_kubernetes_api_up",
    "1 while the Kubernetes API answers the operator, 0 from its first failure until it answers again",
    registry=REGISTRY,
)
API_UP.set(1)

# Leader election (lease.py): 1 on the replica that holds the Lease and acts, 0 on a standby; both serve
# /metrics. Without leader election the one replica acts and reports 1 (runner.py), so "no replica at 1"
# means nothing acts either way (the OceanC2DNoLeader alert). The transitions are the Lease's
# leaseTransitions as this replica last read or wrote them.
LEADER = Gauge(
    "ocean_c2d_leader",
    "1 when this replica acts (it holds the leader-election Lease, or runs without leader election), 0 on"
    " a standby",
    registry=REGISTRY,
)
LEADER_TRANSITIONS = Gauge(
    "ocean_c2d_leader_transitions",
    "The leader-election Lease's leaseTransitions (how often leadership changed hands), as last seen",
    registry=REGISTRY,
)

WORKFLOWS_FINISHED = Counter(
    "ocean_c2d_workflows_finished",
    "Workflows that finished, by environment and outcome (Succeeded, AlgorithmFailed, Stopped, ...)",
    ["namespace", "environment", "outcome"],
    registry=REGISTRY,
)
WORKFLOW_SECONDS = Histogram(
    "ocean_c2d_workflow_duration_seconds",
    "Time from a Workflow's creation to its end, queue included, by environment and outcome",
    ["namespace", "environment", "outcome"],
    buckets=LONG_BUCKETS,
    registry=REGISTRY,
)
STAGE_SECONDS = Histogram(
    "ocean_c2d_stage_duration_seconds",
    "Time one stage (configure, algorithm, filter, publish) took, by environment, stage and outcome",
    ["namespace", "environment", "stage", "outcome"],
    buckets=LONG_BUCKETS,
    registry=REGISTRY,
)
QUEUE_WAIT_SECONDS = Histogram(
    "ocean_c2d_queue_wait_seconds",
    "Time a Workflow waited from its creation until its environment admitted it",
    ["namespace", "environment"],
    buckets=QUEUE_BUCKETS,
    registry=REGISTRY,
)
PUBLISHES = Counter(
    "ocean_c2d_publish",
    "Publish stages that ended, by environment and outcome (Succeeded, Failed, Stopped)",
    ["namespace", "environment", "outcome"],
    registry=REGISTRY,
)
FILTER_VERDICTS = Counter(
    "ocean_c2d_filter_verdicts",
    "Verdicts of the filter stage on Workflows' results, by environment and verdict (Pass, Block)",
    ["namespace", "environment", "verdict"],
    registry=REGISTRY,
)
NOTIFICATIONS = Counter(
    "ocean_c2d_notifications",
    "Start/stop notifications whose delivery ended, by kind (start, stop) and outcome (Sent, Failed)",
    ["kind", "outcome"],
    registry=REGISTRY,
)

_BY_NAME: dict[str, Histogram | Counter] = {
    "workflow_duration": WORKFLOW_SECONDS,
    "stage_duration": STAGE_SECONDS,
    "queue_wait": QUEUE_WAIT_SECONDS,
    "finished": WORKFLOWS_FINISHED,
    "publish": PUBLISHES,
    "filter_verdict": FILTER_VERDICTS,
}

# A labelled counter exists only from its first increment, and rate()/increase() cannot see that first
# step (there is no earlier sample). The rare outcomes are the ones that matter (the first failure must
# reach the alerts), so every known label combination starts at 0.
for _result in ("changed", "idle", "conflict", "error"):
    RECONCILES.labels(_result)
for _kind in ("start", "stop"):
    for _state in ("Sent", "Failed"):
        NOTIFICATIONS.labels(_kind, _state)


def initialise_environment(namespace: str, environment: str) -> None:
    """Start the per-environment counters at 0 (see above); cheap and idempotent."""
    for workflow_outcome in Outcome:
        WORKFLOWS_FINISHED.labels(namespace, environment, workflow_outcome.value)
    for stage_outcome in STAGE_OUTCOMES:
        PUBLISHES.labels(namespace, environment, stage_outcome)
    for verdict in ("Pass", "Block"):
        FILTER_VERDICTS.labels(namespace, environment, verdict)


def record(namespace: str, observations: Iterable[Observation]) -> None:
    """Apply what telemetry.transition_observations found for one status write."""
    for observation in observations:
        metric = _BY_NAME[observation.metric]
        child = metric.labels(namespace, *observation.labels)
        if isinstance(child, Histogram):
            child.observe(observation.value)
        else:
            child.inc(observation.value)


class ClusterStateCollector(Collector):
    """The gauges computed from the cluster's objects at every scrape."""

    def __init__(self, levels: Callable[[], ClusterLevels]) -> None:
        self._levels = levels

    def collect(self) -> Iterator[Metric]:
        levels = self._levels()
        workflows = GaugeMetricFamily(
            "ocean_c2d_workflows",
            "Workflows that exist, by namespace, environment and stage (New: no status yet)",
            labels=["namespace", "environment", "stage"],
        )
        for (namespace, environment, stage), count in sorted(levels.workflows.items()):
            workflows.add_metric([namespace, environment, stage], count)
        yield workflows
        oldest = GaugeMetricFamily(
            "ocean_c2d_stage_oldest_start_timestamp_seconds",
            "When the Workflow longest in a stage entered it (Unix time; Queued: its creation)",
            labels=["namespace", "environment", "stage"],
        )
        for (namespace, environment, stage), since in sorted(levels.oldest_stage_starts.items()):
            oldest.add_metric([namespace, environment, stage], since)
        yield oldest
        labels = ["namespace", "environment", "resource", "unit"]
        allocatable = GaugeMetricFamily(
            "ocean_c2d_environment_allocatable",
            "What a ComputeEnvironment can run at once (maxJobs slots of its size), by resource",
            labels=labels,
        )
        in_use = GaugeMetricFamily(
            "ocean_c2d_environment_in_use",
            "What a ComputeEnvironment's running Workflows hold, by resource",
            labels=labels,
        )
        for level in levels.resources:
            key = [level.namespace, level.environment, level.resource, level.unit]
            allocatable.add_metric(key, level.allocatable)
            in_use.add_metric(key, level.in_use)
        yield allocatable
        yield in_use


_state_collector: ClusterStateCollector | None = None


def collect_cluster_state(levels: Callable[[], ClusterLevels]) -> None:
    """Register (or replace) the source of the cluster-state gauges."""
    global _state_collector
    if _state_collector is not None:
        REGISTRY.unregister(_state_collector)
    _state_collector = ClusterStateCollector(levels)
    REGISTRY.register(_state_collector)


async def _metrics(_: web.Request) -> web.Response:
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def serve(port: int, host: str = "0.0.0.0") -> web.AppRunner:
    """Serve /metrics on the running event loop; the caller cleans the returned runner up."""
    app = web.Application()
    app.router.add_get("/metrics", _metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
