"""Compute environments: their queue, and the default environment of the original's env vars (pure).

At most `maxJobs` Workflows of an environment run at once; the rest wait first come, first served.
Both numbers are counted from the Workflows' own status (what the cluster says), never from a counter
kept in memory, so a restart or a burst cannot overshoot.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from ocean_c2d import status as st
from ocean_c2d.identity import MANAGED_BY
from ocean_c2d.model import API_VERSION, Admission, Environment, Workflow
from ocean_c2d.settings import DefaultEnvironment
from ocean_c2d.status import Condition, Outcome, Stage, WorkflowStatus


@dataclass(frozen=True)
class Occupancy:
    running: int
    queued: int


def occupancy(workflows: Iterable[Workflow]) -> Occupancy:
    """How many Workflows of one environment run (admitted, not finished) and wait."""
    running = queued = 0
    for workflow in workflows:
        if workflow.finished:
            continue
        if workflow.admitted:
            running += 1
        else:
            queued += 1
    return Occupancy(running, queued)


def admission(
    workflow: Workflow,
    peers: Iterable[Workflow],
    environment: Environment,
    environment_status: Mapping[str, Any] | None = None,
) -> Admission:
    """May `workflow` start now? `peers` are all Workflows of its environment (itself included).

    A Workflow the environment's spec.access does not admit is denied (for good). While the environment
    reports NetworkIsolation=False nothing that needs isolation starts. Otherwise strict FIFO: a Workflow
    starts only when every Workflow queued before it has started too, so a small job never overtakes a
    large one.
    """
    if workflow.admitted:
        return Admission(may_start=True)
    denied = access_denial(workflow, environment)
    if denied is not None:
        return Admission(may_start=False, denied=denied)
    peers = list(peers)
    ahead = waiting_ahead(workflow, peers)
    held = isolation_hold(environment, environment_status or {})
    if held is not None:
        return Admission(may_start=False, position=ahead + 1, held=held)
    free = environment.max_jobs - occupancy(peers).running
    if ahead < free:
        return Admission(may_start=True)
    return Admission(may_start=False, position=ahead - max(free, 0) + 1)


# ---- access: which Workflows an environment admits (spec.access) ------------------------------------------


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A Kubernetes LabelSelector on `labels`: every matchLabels pair and every matchExpressions
    requirement (In, NotIn, Exists, DoesNotExist) holds. An empty selector matches everything; an
    operator it does not know matches nothing (fail closed)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for requirement in selector.get("matchExpressions") or []:
        key, operator = requirement.get("key"), requirement.get("operator")
        values = set(requirement.get("values") or [])
        present = key in labels
        if operator == "In":
            ok = present and labels[key] in values
        elif operator == "NotIn":
            ok = not present or labels[key] not in values
        elif operator == "Exists":
            ok = present
        elif operator == "DoesNotExist":
            ok = not present
        else:
            ok = False
        if not ok:
            return False
    return True


def access_denial(workflow: Workflow, environment: Environment) -> str | None:
    """Why `environment` does not admit `workflow` (None: it does). A network-allowed environment
    without spec.access admits nothing: the Workflow author must not grant themselves the network by
    naming it."""
    name, namespace = environment.name, workflow.namespace
    if (
        environment.allow_network
        and environment.access_namespaces is None
        and environment.access_selector is None
    ):
        return (
            f"ComputeEnvironment {name!r} allows network access and admits only the Workflows its"
            " spec.access names; it names none"
        )
    if environment.access_namespaces is not None and namespace not in environment.access_namespaces:
        return (
            f"ComputeEnvironment {name!r} does not admit Workflows of namespace {namespace!r}"
            " (spec.access.namespaces)"
        )
    if environment.access_selector is not None and not selector_matches(
        environment.access_selector, workflow.labels
    ):
        return (
            f"ComputeEnvironment {name!r} does not admit this Workflow: its labels do not match"
            " spec.access.workflowSelector"
        )
    return None


# ---- network isolation: fail closed when the cluster does not enforce NetworkPolicy ------------------------

ISOLATION_RECHECK_ANNOTATION = "ocean-c2d/isolation-recheck"


def isolation_condition(environment_status: Mapping[str, Any]) -> Condition | None:
    return next(
        (c for c in environment_status.get("conditions") or [] if c.get("type") == st.NETWORK_ISOLATION), None
    )


def isolation_hold(environment: Environment, environment_status: Mapping[str, Any]) -> str | None:
    """Why the environment admits nothing now (None: it may): it needs isolation (no network allowed)
    and its NetworkIsolation condition is False."""
    condition = isolation_condition(environment_status)
    if environment.allow_network or condition is None or condition.get("status") != "False":
        return None
    return (
        f"Queued: ComputeEnvironment {environment.name} admits nothing while NetworkIsolation is False"
        f" ({condition.get('message', '')}); an administrator sets the annotation"
        f" {ISOLATION_RECHECK_ANNOTATION} on it once NetworkPolicy is enforced"
    )


def isolation_signal(workflow: Workflow, before: WorkflowStatus, after: WorkflowStatus) -> bool | None:
    """What a status transition says of the environment's isolation: False when the Workflow just failed
    its isolation check, True when its algorithm just ran (its init container saw egress blocked, or it
    would not have started), None when it says nothing."""
    if after.get("reason") == Outcome.NETWORK_NOT_ISOLATED.value:
        return False if before.get("reason") != after.get("reason") else None
    done_before = ((before.get("stages") or {}).get("algorithm") or {}).get("exitCode")
    done_after = ((after.get("stages") or {}).get("algorithm") or {}).get("exitCode")
    if done_before is None and done_after is not None:
        return True
    return None


def isolation_status(
    environment_status: Mapping[str, Any],
    signal: bool,
    workflow: str,
    generation: int,
    now: datetime,
) -> list[Condition] | None:
    """The environment's conditions after a Workflow's isolation `signal`; None when nothing changes
    (only a change of status is written: one write per flip, not one per Workflow)."""
    current = isolation_condition(environment_status)
    wanted: Literal["True", "False"] = "True" if signal else "False"
    if current is not None and current.get("status") == wanted:
        return None
    if signal:
        reason, message = "IsolationCheckPassed", f"Workflow {workflow} passed its isolation check"
    else:
        reason, message = (
            "IsolationCheckFailed",
            f"Workflow {workflow} failed its isolation check: the cluster did not enforce its NetworkPolicy",
        )
    return st.set_condition(
        list(environment_status.get("conditions") or []),
        st.NETWORK_ISOLATION,
        wanted,
        reason,
        message,
        generation,
        now,
    )


def isolation_recheck(
    environment_status: Mapping[str, Any], annotations: Mapping[str, str], generation: int, now: datetime
) -> dict[str, Any] | None:
    """The status fields to write when an administrator asked to trust the cluster again (a new value of
    ISOLATION_RECHECK_ANNOTATION while NetworkIsolation is False): Unknown, so Workflows are admitted and
    the next isolation check decides. None when there is nothing to do."""
    requested = annotations.get(ISOLATION_RECHECK_ANNOTATION)
    condition = isolation_condition(environment_status)
    if not requested or requested == environment_status.get("isolationRecheck"):
        return None
    fields: dict[str, Any] = {"isolationRecheck": requested}
    if condition is not None and condition.get("status") == "False":
        fields["conditions"] = st.set_condition(
            list(environment_status.get("conditions") or []),
            st.NETWORK_ISOLATION,
            "Unknown",
            "RecheckRequested",
            f"An administrator asked for a new isolation check ({ISOLATION_RECHECK_ANNOTATION}={requested})",
            generation,
            now,
        )
    return fields


def occupancy_changed(before: WorkflowStatus, after: WorkflowStatus) -> bool:
    """Did a Workflow's status write change how many Workflows of its environment run or wait? Then the
    environment's counts change, and the head of its queue may start or move. (Where a Workflow waits is
    not part of it: a position written into each waiting Workflow would wake every other one.)"""

    def bucket(status: WorkflowStatus) -> str:
        stage = status.get("stage")
        return "none" if stage is None else stage if stage in (Stage.QUEUED, Stage.FINISHED) else "running"

    return bucket(before) != bucket(after)


def waiting_in_order(peers: Iterable[Workflow]) -> list[Workflow]:
    """The Workflows of one environment that wait, first come first served (the order admission keeps)."""
    return sorted((w for w in peers if not w.admitted and not w.finished), key=lambda w: w.queue_key)


def to_wake(peers: Iterable[Workflow], environment: Environment) -> list[Workflow]:
    """The waiting Workflows whose reconcile may change something when the queue moved: those that may
    start now, and the next one (it becomes the head, whose status says so). No other waiting Workflow's
    status depends on the queue, so waking them all would be a reconcile each for nothing."""
    peers = list(peers)
    free = max(environment.max_jobs - occupancy(peers).running, 0)
    waiting = waiting_in_order(peers)
    # And any other that still says it is the head (one that arrived late, with an earlier creation time,
    # went ahead of it): its reconcile takes the mark away.
    stale = [w for w in waiting[free + 1 :] if w.status.get("queuePosition") is not None]
    return waiting[: free + 1] + stale


def queue_position(workflow: Workflow, peers: Iterable[Workflow], environment: Environment) -> int | None:
    """Where `workflow` waits (1: it starts next), as admission counts it; None when it does not wait."""
    if workflow.admitted or workflow.finished:
        return None
    peers = list(peers)
    free = max(environment.max_jobs - occupancy(peers).running, 0)
    return max(waiting_ahead(workflow, peers) - free, 0) + 1


def waiting_ahead(workflow: Workflow, peers: Iterable[Workflow]) -> int:
    """How many Workflows wait before `workflow` (O(N), no sort). One not among its peers yet (the index
    lags behind its creation) waits behind every one of them: admitted unseen, it would not be counted
    when the next is decided, and the environment could run one more than maxJobs."""
    key, listed, ahead, waiting = workflow.queue_key, False, 0, 0
    for peer in peers:
        listed = listed or peer.name == workflow.name
        if not peer.admitted and not peer.finished and peer.name != workflow.name:
            waiting += 1
            ahead += peer.queue_key < key
    return ahead if listed else waiting


def environment_status(
    environment: Environment, peers: Iterable[Workflow], consumer_address: str, generation: int
) -> dict[str, Any]:
    """The ComputeEnvironment's status: what `kubectl get computeenvironments` shows."""
    peers = list(peers)
    counts = occupancy(peers)
    waiting = waiting_in_order(peers)
    return {
        "observedGeneration": generation,
        "currentJobs": counts.running,
        "queuedJobs": counts.queued,
        # None deletes the field (a merge patch) once nothing waits.
        "queueHead": waiting[0].name if waiting else None,
        "jobs": f"{counts.running}/{environment.max_jobs}",
        "consumerAddress": consumer_address,
        "capacity": {
            "allocatable": _share(environment, environment.max_jobs),
            "inUse": _share(environment, counts.running),
        },
    }


def _share(environment: Environment, jobs: int) -> dict[str, Any]:
    return {
        "jobs": jobs,
        "cpu": environment.n_cpu * jobs,
        "memoryGB": environment.ram_gb * jobs,
        "gpu": environment.n_gpu * jobs,
        "diskGB": environment.disk_gb * jobs,
    }


def default_environment_object(name: str, namespace: str, seed: DefaultEnvironment) -> dict[str, Any]:
    """The ComputeEnvironment that the original's env vars (nCPU, ramGB, ...) describe."""
    return {
        "apiVersion": API_VERSION,
        "kind": "ComputeEnvironment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": dict(MANAGED_BY),
            "annotations": {"ocean-c2d/source": "operator environment variables (nCPU, ramGB, ...)"},
        },
        "spec": {
            "nCPU": seed.cpu_count,
            "cpuType": seed.cpu_type,
            "nGPU": seed.gpu_count,
            **({"gpuRam": seed.gpu_ram_gb} if seed.gpu_count > 0 else {}),
            "gpuType": seed.gpu_type,
            "ramGB": seed.ram_gb,
            "diskGB": seed.disk_gb,
            "priceMinute": seed.price_per_minute,
            "description": seed.description,
            "maxJobs": seed.max_jobs,
            "maxJobDuration": seed.max_job_duration_seconds,
            "storageExpiry": seed.storage_expiry_hours,
        },
    }


# ---- the queue on demand (`ocean-c2d queue`): Workflows carry no position but the head's -------------------


def queue_report(
    environment: Environment | None, environment_name: str, workflows: Iterable[Workflow]
) -> list[str]:
    """Lines describing one environment's queue, in order, as admission sees it: `workflows` are every
    Workflow of the namespace (those of other environments are skipped)."""
    peers = [w for w in workflows if w.spec.environment == environment_name and not w.finished]
    if environment is None:
        return [f"ComputeEnvironment {environment_name}: does not exist ({len(peers)} Workflows name it)"]
    counts = occupancy(peers)
    lines = [
        f"ComputeEnvironment {environment_name}: {counts.running}/{environment.max_jobs} running, "
        f"{counts.queued} waiting"
    ]
    for position, workflow in enumerate(waiting_in_order(peers), start=1):
        lines.append(f"{position:>6}  {workflow.name}  (created {workflow.created.isoformat()})")
    return lines


def workflow_queue_line(
    workflow: Workflow, environment: Environment | None, workflows: Iterable[Workflow]
) -> str:
    """Where one Workflow stands: its position and what is ahead of it, or why it does not wait."""
    name, env_name = workflow.name, workflow.spec.environment
    if workflow.finished:
        return f"{name}: finished ({workflow.status.get('reason', 'no reason')})"
    if workflow.admitted:
        return f"{name}: running in environment {env_name} (stage {workflow.status.get('stage')})"
    if environment is None:
        return f"{name}: waits for ComputeEnvironment {env_name}, which does not exist"
    peers = [w for w in workflows if w.spec.environment == env_name and not w.finished]
    counts = occupancy(peers)
    position = queue_position(workflow, peers, environment)
    waiting = waiting_in_order(peers)
    head = waiting[0].name if waiting else name
    return (
        f"{name}: position {position} of {counts.queued} waiting for environment {env_name} "
        f"({counts.running}/{environment.max_jobs} running); next to start: {head}"
    )
