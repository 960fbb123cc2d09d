"""What the metrics say, computed from Workflows and ComputeEnvironments (pure: no I/O, no registry).

Two kinds of numbers:
- levels (workflows per stage, environment capacity and use) are recomputed from the cluster's objects at
  every scrape, so they are right the moment a restarted operator has listed the cluster; finished
  Workflows, which only ever add to the Finished count, are tallied as the view changes (FinishedCounts)
  instead, so a scrape costs the same with 10 or 10,000 of them;
- events (a stage took 40 s, a Workflow waited 3 s in the queue, it finished as AlgorithmFailed) are read
  off the difference between a Workflow's status before and after one of our own status writes. Each
  transition is written exactly once, so each is counted once; a restart starts the counters at zero,
  which Prometheus' rate() and histogram_quantile() expect of any counter.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from ocean_c2d.environments import occupancy
from ocean_c2d.model import JOB_OF_STAGE, Environment, Workflow
from ocean_c2d.status import Stage, StageRecord, WorkflowStatus
from ocean_c2d.times import parse_time

NEW = "New"  # a Workflow the operator has not written a status to yet
# The `environment` label of a Workflow whose ComputeEnvironment does not exist: the label values are the
# environments an operator created, never whatever names Workflow authors type (one series each).
UNKNOWN_ENVIRONMENT = "(unknown)"
Known = Collection[tuple[str, str]] | None  # (namespace, environment) pairs that exist; None: all


def environment_label(workflow: Workflow, known: Known) -> str:
    key = (workflow.namespace, workflow.spec.environment)
    return workflow.spec.environment if known is None or key in known else UNKNOWN_ENVIRONMENT


STAGES = (NEW, *(stage.value for stage in Stage))
GIB = 1024**3


@dataclass(frozen=True)
class Observation:
    """One sample for a histogram or one increment of a counter, named by `metric`."""

    metric: str  # stage_duration | queue_wait | workflow_duration | finished | publish | filter_verdict
    labels: tuple[str, ...]
    value: float = 1.0


@dataclass(frozen=True)
class ResourceLevel:
    namespace: str
    environment: str
    resource: str  # jobs, cpu, gpu, memory, disk (kube-state-metrics' naming)
    unit: str  # job, core, gpu, byte
    allocatable: float
    in_use: float


class FinishedCounts:
    """How many finished Workflows each (namespace, spec.environment) has, kept up to date by the view's
    store on every put and remove (`add` and `discard` the entry it replaces or drops). A finished
    Workflow counts towards nothing else at scrape time (not running, not in a stage), so the scrape adds
    these counts instead of walking every finished entry. A group at 0 is dropped: it is as if it never
    had one (no series of its own, as before)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def add(self, namespace: str, environment: str) -> None:
        key = (namespace, environment)
        self.counts[key] = self.counts.get(key, 0) + 1

    def discard(self, namespace: str, environment: str) -> None:
        key = (namespace, environment)
        left = self.counts.get(key, 0) - 1
        if left > 0:
            self.counts[key] = left
        else:
            self.counts.pop(key, None)


Finished = Mapping[tuple[str, str], int]  # (namespace, spec.environment) -> finished Workflows not walked


def workflow_counts(
    workflows: Iterable[Workflow], known: Known = None, finished: Finished | None = None
) -> dict[tuple[str, str, str], int]:
    """(namespace, environment, stage) -> how many Workflows are there: those of `workflows`, plus
    `finished` ones counted by their group alone. Every stage of every environment that has a Workflow
    appears, at 0 when empty, so a stage that drains shows 0 rather than vanishing."""
    counts: dict[tuple[str, str, str], int] = {}

    def count(group: tuple[str, str], stage: str, number: int) -> None:
        for each in STAGES:
            counts.setdefault((*group, each), 0)
        counts[(*group, stage)] += number

    for workflow in workflows:
        stage = workflow.stage.value if workflow.stage is not None else NEW
        count((workflow.namespace, environment_label(workflow, known)), stage, 1)
    for (namespace, environment), number in (finished or {}).items():
        if number > 0:
            label = environment if known is None or (namespace, environment) in known else UNKNOWN_ENVIRONMENT
            count((namespace, label), Stage.FINISHED.value, number)
    return counts


def oldest_stage_starts(
    workflows: Iterable[Workflow], known: Known = None
) -> dict[tuple[str, str, str], float]:
    """(namespace, environment, stage) -> when the Workflow longest in that stage entered it (Unix
    seconds), for the stages a Workflow passes through (Queued counts from its creation). An alert on
    `time() - this` finds a Workflow stuck in a stage without the operator keeping any timer."""
    oldest: dict[tuple[str, str, str], float] = {}
    for workflow in workflows:
        stage = workflow.stage
        if stage is None or stage is Stage.FINISHED:
            continue
        if stage is Stage.QUEUED:
            since: datetime | None = workflow.created
        else:
            record = (workflow.status.get("stages") or {}).get(JOB_OF_STAGE[stage]) or {}
            since = parse_time(record.get("startedAt"))
        if since is None:
            continue  # entered the stage; its pod (and its start) are being created right now
        key = (workflow.namespace, environment_label(workflow, known), stage.value)
        oldest[key] = min(oldest.get(key, since.timestamp()), since.timestamp())
    return oldest


def environment_levels(
    namespace: str, environment: Environment, peers: Iterable[Workflow]
) -> list[ResourceLevel]:
    """Allocatable (maxJobs slots of the environment's size) against in use (the running Workflows)."""
    running = occupancy(peers).running
    per_job = (
        ("jobs", "job", 1.0),
        ("cpu", "core", float(environment.n_cpu)),
        ("gpu", "gpu", float(environment.n_gpu)),
        ("memory", "byte", environment.ram_gb * GIB),
        ("disk", "byte", environment.disk_gb * GIB),
    )
    slots = environment.max_jobs
    return [
        ResourceLevel(namespace, environment.name, resource, unit, size * slots, size * running)
        for resource, unit, size in per_job
    ]


def transition_observations(
    workflow: Workflow, after: WorkflowStatus, known: Known = None
) -> list[Observation]:
    """What the status write `workflow.status` -> `after` makes happen, as metric samples."""
    before = workflow.status
    environment = environment_label(workflow, known)
    found: list[Observation] = []

    if after.get("admittedAt") and not before.get("admittedAt"):
        waited = _seconds_between(workflow.created, parse_time(after["admittedAt"]))
        if waited is not None:
            found.append(Observation("queue_wait", (environment,), waited))

    stages_before = before.get("stages") or {}
    for stage, record in sorted((after.get("stages") or {}).items()):
        if not record.get("finishedAt") or (stages_before.get(stage) or {}).get("finishedAt"):
            continue
        outcome = stage_outcome(record)
        took = _seconds_between(parse_time(record.get("startedAt")), parse_time(record["finishedAt"]))
        if took is not None:
            found.append(Observation("stage_duration", (environment, stage, outcome), took))
        if stage == "publish":
            found.append(Observation("publish", (environment, outcome)))

    verdict = after["filter"]["verdict"] if "filter" in after else None
    if verdict and verdict != (before["filter"]["verdict"] if "filter" in before else None):
        found.append(Observation("filter_verdict", (environment, verdict)))

    if after.get("stage") == Stage.FINISHED.value and before.get("stage") != Stage.FINISHED.value:
        outcome = str(after.get("reason") or "Succeeded")
        found.append(Observation("finished", (environment, outcome)))
        total = _seconds_between(workflow.created, parse_time(after.get("finishedAt")))
        if total is not None:
            found.append(Observation("workflow_duration", (environment, outcome), total))
    return found


STAGE_SUCCEEDED, STAGE_FAILED, STAGE_STOPPED = STAGE_OUTCOMES = ("Succeeded", "Failed", "Stopped")


def stage_outcome(record: StageRecord) -> str:
    """One of STAGE_OUTCOMES: few values, so the label stays cheap; the reason is in the status."""
    if record.get("reason") == "Stopped":
        return STAGE_STOPPED
    if record.get("exitCode") in (None, 0) and record.get("reason") in (None, "Completed"):
        return STAGE_SUCCEEDED
    return STAGE_FAILED


def _seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


@dataclass(frozen=True)
class ClusterLevels:
    workflows: dict[tuple[str, str, str], int]  # (namespace, environment, stage) -> count
    resources: list[ResourceLevel]
    oldest_stage_starts: dict[tuple[str, str, str], float] = field(default_factory=dict)


def cluster_levels(
    workflows: Iterable[Workflow],
    environments: Iterable[tuple[str, Environment]],
    finished: Finished | None = None,
) -> ClusterLevels:
    """The cluster-state gauges of /metrics from every Workflow (those of `finished`, by their count only)
    and (namespace, ComputeEnvironment)."""
    workflows, environments = list(workflows), list(environments)
    known = {(namespace, environment.name) for namespace, environment in environments}
    by_environment: dict[tuple[str, str], list[Workflow]] = {}
    for workflow in workflows:
        by_environment.setdefault((workflow.namespace, workflow.spec.environment), []).append(workflow)
    resources = [
        level
        for namespace, environment in environments
        for level in environment_levels(
            namespace, environment, by_environment.get((namespace, environment.name), [])
        )
    ]
    return ClusterLevels(
        workflow_counts(workflows, known, finished), resources, oldest_stage_starts(workflows, known)
    )
