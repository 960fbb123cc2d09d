"""What the watches keep of each object, and how it becomes the reconcile's `Observed` (pure).

The index functions in handlers.py call these on every watch event; they keep only the few fields the
reconcile needs (never a Secret's data), so memory stays small with thousands of Workflows.
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
class JobRecord:
    component: str
    name: str
    state: JobState
    started: datetime | None
    finished: datetime | None
    failure_reason: str | None
    deleting: bool
    uid: str = ""
    owner_uid: str | None = None  # the uid of its controller (the Workflow that made it), if any


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
    disrupted: bool = False  # evicted, preempted, drained: the Job controller retries such a pod
    init_failure: str | None = None  # the first init container that terminated with a non-zero exit
    deleting: bool = False  # deleted (a Job's deadline, a stop): how it ends is not the stage's outcome
    owner_uid: str | None = None  # the uid of its controller: the stage Job that made it

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


def job_record(body: Mapping[str, Any]) -> JobRecord:
    metadata, status = body["metadata"], body.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    if "Complete" in conditions:
        state = JobState.SUCCEEDED
    elif "Failed" in conditions:
        state = JobState.FAILED
    else:
        state = JobState.PENDING
    failed = conditions.get("Failed") or {}
    return JobRecord(
        component=(metadata.get("labels") or {}).get("component", ""),
        name=metadata["name"],
        state=state,
        started=parse_time(status.get("startTime")),
        finished=parse_time(status.get("completionTime")) or parse_time(failed.get("lastTransitionTime")),
        failure_reason=failed.get("reason"),
        deleting=bool(metadata.get("deletionTimestamp")),
        uid=str(metadata.get("uid") or ""),
        owner_uid=controller_uid(metadata),
    )


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
    )


def _outcome_from_pod(job: JobRecord, pod: PodRecord | None) -> tuple[JobState, datetime | None]:
    """A stage's outcome as soon as its pod ended, not a second later when the Job controller (which
    batches pod events) marks the Job: every stage Job runs one pod at a time, retries only disrupted
    pods, and fails on any non-zero exit (backoffLimit 0, or a podFailurePolicy that says FailJob)."""
    # A pod being deleted dies of its SIGTERM (exit 143): the Job says why (DeadlineExceeded, say).
    if job.state is not JobState.PENDING or pod is None or pod.disrupted or pod.deleting:
        return job.state, job.finished
    if pod.phase == "Succeeded":
        return JobState.SUCCEEDED, pod.finished
    if pod.phase == "Failed" and (pod.exit_code not in (None, 0) or pod.init_failure):
        return JobState.FAILED, pod.finished
    return job.state, job.finished


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


def observed(
    jobs: Iterable[JobRecord],
    pods: Iterable[PodRecord],
    children: Iterable[ChildRecord],
    workflow_uid: str | None = None,
) -> Observed:
    """One Workflow's children as the reconcile sees them: a stage Job joined with its newest pod.

    With `workflow_uid`, only what that Workflow controls counts: an object that merely carries its
    labels (made by someone else, or a name that was taken) is never adopted, read, patched or deleted,
    and a stage's outcome is read only from a pod its own Job made."""
    job_uids: set[str] = set()
    if workflow_uid is not None:
        jobs = [j for j in jobs if j.owner_uid == workflow_uid]
        children = [c for c in children if c.owner_uid == workflow_uid]
        job_uids = {j.uid for j in jobs}
    newest_pod: dict[str, PodRecord] = {}
    running: set[str] = set()
    for candidate in pods:
        if candidate.running:
            running.add(candidate.component)  # any look-alike only makes the next stage wait longer
        if workflow_uid is not None and candidate.owner_uid not in job_uids:
            continue
        current = newest_pod.get(candidate.component)
        if current is None or _moment(candidate.created) >= _moment(current.created):
            newest_pod[candidate.component] = candidate
    stage_jobs = {}
    for job in jobs:
        pod = newest_pod.get(job.component)
        state, finished = _outcome_from_pod(job, pod)
        stage_jobs[job.component] = StageJob(
            name=job.name,
            state=state,
            started=job.started,
            finished=finished,
            failure_reason=job.failure_reason,
            exit_code=pod.exit_code if pod else None,
            termination_reason=pod.termination_reason if pod else None,
            termination_message=pod.termination_message if pod else None,
            waiting_reason=pod.waiting_reason if pod else None,
            deleting=job.deleting,
            init_failure=pod.init_failure if pod else None,
        )
    children = list(children)
    return Observed(
        jobs=stage_jobs,
        others=frozenset((c.kind, c.name) for c in children),
        hashes={(c.kind, c.name): c.spec_hash for c in children if c.spec_hash},
        running_pods=frozenset(running),
    )
