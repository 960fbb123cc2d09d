"""What the watches keep of each object, and how it becomes the reconcile's `Observed` (pure).

The index functions in handlers.py call these on every watch event; they keep only the few fields the
reconcile needs (never a Secret's data), so memory stays small with thousands of Workflows.

Each stage runs as one pod the Workflow owns (no Job controller between the operator and its pods: on a
small control plane the Job controller's own writes were most of the cluster's work per Workflow). A stage
that is retried after a disruption has one pod per attempt; the newest one says how the stage stands.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ocean_c2d.model import JobState, Observed, StageJob, controller_uid
from ocean_c2d.render import SPEC_HASH_ANNOTATION
from ocean_c2d.times import parse_time


@dataclass(frozen=True)
class PodRecord:
    component: str
    name: str
    created: datetime | None
    exit_code: int | None
    termination_reason: str | None
    termination_message: str | None
    waiting_reason: str | None
    phase: str = "Pending"
    finished: datetime | None = None
    disrupted: bool = False  # evicted, preempted, drained: not the stage's own outcome
    init_failure: str | None = None  # the first init container that terminated with a non-zero exit
    deleting: bool = False  # deleted (a stop, a deadline): how it ends is not the stage's outcome
    owner_uid: str | None = None  # the uid of its controller: the Workflow that made it
    reason: str | None = None  # the pod's own status.reason: DeadlineExceeded (the kubelet's), Evicted

    @property
    def running(self) -> bool:
        """Its containers may still run: the kubelet sets Succeeded/Failed only once all have ended."""
        return self.phase not in ("Succeeded", "Failed")


@dataclass(frozen=True)
class ChildRecord:
    kind: str
    name: str
    spec_hash: str | None
    owner_uid: str | None = None


def pod_record(body: Mapping[str, Any]) -> PodRecord:
    metadata, status = body["metadata"], body.get("status") or {}
    statuses = status.get("containerStatuses") or []
    state = (statuses[0].get("state") or {}) if statuses else {}
    terminated = state.get("terminated") or {}
    waiting = state.get("waiting") or {}
    conditions = status.get("conditions") or []
    init_failure = next(
        (
            str(s.get("name"))
            for s in status.get("initContainerStatuses") or []
            if ((s.get("state") or {}).get("terminated") or {}).get("exitCode") not in (None, 0)
        ),
        None,
    )
    return PodRecord(
        component=(metadata.get("labels") or {}).get("component", ""),
        name=metadata["name"],
        created=parse_time(metadata.get("creationTimestamp")),
        exit_code=terminated.get("exitCode"),
        termination_reason=terminated.get("reason"),
        termination_message=terminated.get("message"),
        waiting_reason=waiting.get("reason"),
        phase=str(status.get("phase") or "Pending"),
        finished=parse_time(terminated.get("finishedAt")),
        disrupted=any(c.get("type") == "DisruptionTarget" and c.get("status") == "True" for c in conditions),
        init_failure=init_failure,
        deleting=bool(metadata.get("deletionTimestamp")),
        owner_uid=controller_uid(metadata),
        reason=status.get("reason"),
    )


def _state(pod: PodRecord) -> JobState:
    """A stage's outcome, from its pod (restartPolicy Never: a terminal phase is final). A disrupted
    pod's end is no outcome: the reconcile decides whether the stage runs again (StageJob.disrupted)."""
    if pod.disrupted or pod.phase not in ("Succeeded", "Failed"):
        return JobState.PENDING
    if pod.deleting and pod.phase == "Failed" and pod.reason != "DeadlineExceeded":
        # Deleted by the operator (a stop, its own deadline) or by someone: killed, so no verdict of its
        # own; the reconcile recorded why when it deleted it, or reads the pod's absence once it is gone.
        return JobState.PENDING
    return JobState.SUCCEEDED if pod.phase == "Succeeded" else JobState.FAILED


def child_record(body: Mapping[str, Any]) -> ChildRecord:
    metadata = body["metadata"]
    return ChildRecord(
        kind=str(body.get("kind", "")),
        name=metadata["name"],
        spec_hash=(metadata.get("annotations") or {}).get(SPEC_HASH_ANNOTATION),
        owner_uid=controller_uid(metadata),
    )


def _moment(value: datetime | None) -> float:
    return value.timestamp() if value else 0.0


def stage_job(pod: PodRecord) -> StageJob:
    """One stage as the reconcile sees it: its newest pod (which attempt it is, its name says)."""
    state = _state(pod)
    return StageJob(
        name=pod.name,
        state=state,
        started=pod.created,
        finished=pod.finished if state is not JobState.PENDING else None,
        failure_reason=pod.reason if state is JobState.FAILED else None,
        exit_code=pod.exit_code,
        termination_reason=pod.termination_reason,
        termination_message=pod.termination_message,
        waiting_reason=pod.waiting_reason,
        deleting=pod.deleting,
        init_failure=pod.init_failure,
        disrupted=pod.disrupted,
        running=pod.running,
    )


def observed(
    pods: Iterable[PodRecord],
    children: Iterable[ChildRecord],
    workflow_uid: str | None = None,
) -> Observed:
    """One Workflow's children as the reconcile sees them: each stage by its newest pod.

    With `workflow_uid`, only what that Workflow controls counts: an object that merely carries its
    labels (made by someone else, or a name that was taken) is never adopted, read, patched or deleted,
    and a stage's outcome is read only from a pod the Workflow made."""
    if workflow_uid is not None:
        children = [c for c in children if c.owner_uid == workflow_uid]
    newest_pod: dict[str, PodRecord] = {}
    running: set[str] = set()
    owned: set[str] = set()
    for candidate in pods:
        if candidate.running:
            running.add(candidate.component)  # any look-alike only makes the next stage wait longer
        if workflow_uid is not None and candidate.owner_uid != workflow_uid:
            continue
        if not candidate.deleting:
            owned.add(candidate.name)
        current = newest_pod.get(candidate.component)
        if current is None or _moment(candidate.created) >= _moment(current.created):
            newest_pod[candidate.component] = candidate
    children = list(children)
    return Observed(
        jobs={component: stage_job(pod) for component, pod in newest_pod.items()},
        others=frozenset((c.kind, c.name) for c in children),
        hashes={(c.kind, c.name): c.spec_hash for c in children if c.spec_hash},
        running_pods=frozenset(running),
        stage_pods=frozenset(owned),
    )
