"""observe: what the watches keep of Jobs, pods and other children, and how it becomes `Observed`.

The bodies below are shaped like what the API server returns (Kubernetes 1.31+: a Job gets
SuccessCriteriaMet / FailureTarget before its terminal Complete / Failed condition).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import pytest

from ocean_c2d.model import JobState, StageJob
from ocean_c2d.observe import (
    ChildRecord,
    JobRecord,
    PodRecord,
    child_record,
    job_record,
    observed,
    pod_record,
)
from ocean_c2d.render import SPEC_HASH_ANNOTATION

WORKFLOW = "0123456789abcdef0123456789abcdef"
NAMESPACE = "ocean-c2d"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def job_body(
    component: str,
    status: dict[str, Any] | None = None,
    deletion: str | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": f"{WORKFLOW}-{component}-job",
        "namespace": NAMESPACE,
        "uid": f"uid-{component}",
        "resourceVersion": "1234",
        "creationTimestamp": "2026-01-01T12:00:00Z",
        "labels": {
            "app.kubernetes.io/managed-by": "ocean-c2d",
            "app.kubernetes.io/name": "ocean-c2d",
            "workflow": WORKFLOW,
            "component": component,
        },
        "annotations": {SPEC_HASH_ANNOTATION: "0123456789abcdef"},
        "ownerReferences": [
            {
                "apiVersion": "oceanprotocol.com/v1alpha1",
                "kind": "Workflow",
                "name": WORKFLOW,
                "uid": "wf-uid",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    if deletion:
        metadata["deletionTimestamp"] = deletion
        metadata["deletionGracePeriodSeconds"] = 0
        metadata["finalizers"] = ["foregroundDeletion"]
    body: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {"backoffLimit": 0, "activeDeadlineSeconds": 600, "template": {}},
    }
    if status is not None:
        body["status"] = status
    return body


def condition(kind: str, reason: str, message: str, when: str, status: str = "True") -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastProbeTime": when,
        "lastTransitionTime": when,
    }


SUCCEEDED_STATUS = {
    "startTime": "2026-01-01T12:00:01Z",
    "completionTime": "2026-01-01T12:03:00Z",
    "succeeded": 1,
    "ready": 0,
    "terminating": 0,
    "uncountedTerminatedPods": {},
    "conditions": [
        condition(
            "SuccessCriteriaMet",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
            "2026-01-01T12:02:59Z",
        ),
        condition(
            "Complete",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
            "2026-01-01T12:03:00Z",
        ),
    ],
}

DEADLINE_STATUS = {
    "startTime": "2026-01-01T12:00:01Z",
    "failed": 1,
    "ready": 0,
    "terminating": 0,
    "uncountedTerminatedPods": {},
    "conditions": [
        condition(
            "FailureTarget",
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
            "2026-01-01T12:10:01Z",
        ),
        condition(
            "Failed",
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
            "2026-01-01T12:10:02Z",
        ),
    ],
}

RUNNING_STATUS = {"startTime": "2026-01-01T12:00:01Z", "active": 1, "ready": 1, "terminating": 0}


def pod_body(
    component: str,
    suffix: str,
    created: str | None,
    state: dict[str, Any] | None = None,
    phase: str = "Running",
) -> dict[str, Any]:
    job = f"{WORKFLOW}-{component}-job"
    metadata: dict[str, Any] = {
        "name": f"{job}-{suffix}",
        "namespace": NAMESPACE,
        "labels": {
            "workflow": WORKFLOW,
            "component": component,
            "app.kubernetes.io/managed-by": "ocean-c2d",
            "batch.kubernetes.io/controller-uid": f"uid-{component}",
            "batch.kubernetes.io/job-name": job,
            "controller-uid": f"uid-{component}",
            "job-name": job,
        },
        "ownerReferences": [
            {"apiVersion": "batch/v1", "kind": "Job", "name": job, "uid": f"uid-{component}"}
        ],
    }
    if created is not None:
        metadata["creationTimestamp"] = created
    status: dict[str, Any] = {"phase": phase, "startTime": created}
    if state is not None:
        status["containerStatuses"] = [
            {
                "name": component,
                "image": "ghcr.io/example/ocean-c2d:0.1.0",
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "started": False,
                "state": state,
                "lastState": {},
            }
        ]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": {}, "status": status}


def terminated(code: int, reason: str, message: str | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "exitCode": code,
        "reason": reason,
        "startedAt": "2026-01-01T12:00:05Z",
        "finishedAt": "2026-01-01T12:02:00Z",
        "containerID": "containerd://abc",
    }
    if message is not None:
        record["message"] = message
    return {"terminated": record}


# ---- job_record ----------------------------------------------------------------------------------------


def test_a_complete_job_succeeded() -> None:
    record = job_record(job_body("algorithm", SUCCEEDED_STATUS))
    assert record == JobRecord(
        component="algorithm",
        name=f"{WORKFLOW}-algorithm-job",
        state=JobState.SUCCEEDED,
        started=at("2026-01-01T12:00:01Z"),
        finished=at("2026-01-01T12:03:00Z"),
        failure_reason=None,
        deleting=False,
        uid="uid-algorithm",
        owner_uid="wf-uid",
    )


def test_a_job_past_its_deadline_failed_with_the_reason() -> None:
    record = job_record(job_body("algorithm", DEADLINE_STATUS))
    assert record.state is JobState.FAILED
    assert record.failure_reason == "DeadlineExceeded"
    assert record.started == at("2026-01-01T12:00:01Z")
    assert record.finished == at("2026-01-01T12:10:02Z")  # the Failed condition's transition
    assert record.deleting is False


@pytest.mark.parametrize(
    "status",
    [
        pytest.param(None, id="no-status"),
        pytest.param({}, id="empty-status"),
        pytest.param(RUNNING_STATUS, id="running"),
        pytest.param({**RUNNING_STATUS, "conditions": []}, id="empty-conditions"),
        pytest.param(
            {
                **RUNNING_STATUS,
                "conditions": [
                    condition("FailureTarget", "DeadlineExceeded", "deadline", "2026-01-01T12:10:01Z")
                ],
            },
            id="failure-target-only",
        ),
        pytest.param(
            {
                **RUNNING_STATUS,
                "conditions": [
                    condition("SuccessCriteriaMet", "CompletionsReached", "done", "2026-01-01T12:02:59Z")
                ],
            },
            id="success-criteria-met-only",
        ),
        pytest.param(
            {
                **RUNNING_STATUS,
                "conditions": [
                    condition("Failed", "BackoffLimitExceeded", "x", "2026-01-01T12:01:00Z", "False")
                ],
            },
            id="failed-false",
        ),
    ],
)
def test_a_job_without_a_true_terminal_condition_is_pending(status: dict[str, Any] | None) -> None:
    record = job_record(job_body("configure", status))
    assert record.state is JobState.PENDING
    assert record.failure_reason is None
    assert record.finished is None
    assert record.component == "configure"


def test_a_job_being_deleted_is_deleting() -> None:
    record = job_record(job_body("publish", RUNNING_STATUS, deletion="2026-01-01T12:05:00Z"))
    assert record.deleting is True
    assert record.state is JobState.PENDING
    assert job_record(job_body("publish", SUCCEEDED_STATUS, deletion="2026-01-01T12:05:00Z")).deleting


def test_a_job_record_of_a_freshly_rendered_manifest() -> None:
    """The controller records its own created Jobs (no status, no creation time yet) the same way."""
    body = job_body("filter")
    del body["metadata"]["creationTimestamp"]
    record = job_record(body)
    expected = JobRecord("filter", f"{WORKFLOW}-filter-job", JobState.PENDING, None, None, None, False)
    assert record == dataclasses.replace(expected, uid="uid-filter", owner_uid="wf-uid")


# ---- pod_record ----------------------------------------------------------------------------------------


def test_a_pod_killed_for_memory() -> None:
    body = pod_body(
        "algorithm",
        "x7k2p",
        "2026-01-01T12:00:02Z",
        terminated(137, "OOMKilled", "memory limit of 4Gi exceeded"),
        phase="Failed",
    )
    assert pod_record(body) == PodRecord(
        component="algorithm",
        name=f"{WORKFLOW}-algorithm-job-x7k2p",
        created=at("2026-01-01T12:00:02Z"),
        exit_code=137,
        termination_reason="OOMKilled",
        termination_message="memory limit of 4Gi exceeded",
        waiting_reason=None,
        phase="Failed",
        finished=at("2026-01-01T12:02:00Z"),
    )


def test_a_pod_whose_image_cannot_be_pulled() -> None:
    waiting = {
        "waiting": {
            "reason": "ImagePullBackOff",
            "message": 'Back-off pulling image "registry.example.com/nope:1"',
        }
    }
    record = pod_record(pod_body("algorithm", "q9w8e", "2026-01-01T12:00:02Z", waiting, phase="Pending"))
    assert record.waiting_reason == "ImagePullBackOff"
    assert record.exit_code is None
    assert record.termination_reason is None
    assert record.termination_message is None


def test_a_pod_that_succeeded_keeps_its_termination_message() -> None:
    message = '{"results": [{"filename": "out.csv", "filesize": 12}]}'
    record = pod_record(
        pod_body("publish", "a1b2c", "2026-01-01T12:05:00Z", terminated(0, "Completed", message), "Succeeded")
    )
    assert (record.exit_code, record.termination_reason, record.termination_message) == (
        0,
        "Completed",
        message,
    )


@pytest.mark.parametrize(
    "state",
    [
        pytest.param(None, id="no-container-statuses"),
        pytest.param({"running": {"startedAt": "2026-01-01T12:00:05Z"}}, id="running"),
        pytest.param({}, id="empty-state"),
    ],
)
def test_a_pod_not_terminated_has_no_exit_code(state: dict[str, Any] | None) -> None:
    record = pod_record(pod_body("configure", "zzzzz", "2026-01-01T12:00:02Z", state, phase="Pending"))
    assert record.exit_code is None
    assert record.termination_reason is None
    assert record.waiting_reason is None
    assert record.component == "configure"


def test_an_exit_code_of_zero_is_kept() -> None:
    record = pod_record(pod_body("configure", "zzzzz", "2026-01-01T12:00:02Z", terminated(0, "Completed")))
    assert record.exit_code == 0
    assert record.termination_message is None


# ---- child_record -----------------------------------------------------------------------------------------


def test_a_child_record_keeps_the_spec_hash_annotation() -> None:
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": WORKFLOW,
            "namespace": NAMESPACE,
            "annotations": {SPEC_HASH_ANNOTATION: "17e3a0c3062d0cfb", "other": "x"},
        },
        "data": {"workflow.json": "{}"},
    }
    assert child_record(body) == ChildRecord("ConfigMap", WORKFLOW, "17e3a0c3062d0cfb")


def test_a_child_record_never_keeps_a_secret_value() -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": f"{WORKFLOW}-secret", "annotations": None},
        "data": {"secret": "am9iLXNlY3JldC12YWx1ZQ=="},
    }
    record = child_record(body)
    assert record == ChildRecord("Secret", f"{WORKFLOW}-secret", None)
    assert "am9iLXNlY3JldC12YWx1ZQ==" not in repr(record)


# ---- observed ----------------------------------------------------------------------------------------------


def test_observed_joins_each_job_with_the_newest_pod_of_its_component() -> None:
    job = job_record(job_body("configure", RUNNING_STATUS))
    # The first pod was disrupted (its node drained); the Job made a second one, which is pulling.
    old = pod_record(
        pod_body("configure", "old00", "2026-01-01T12:00:02Z", terminated(137, "Error", "evicted"), "Failed")
    )
    new = pod_record(
        pod_body(
            "configure", "new00", "2026-01-01T12:01:30Z", {"waiting": {"reason": "ErrImagePull"}}, "Pending"
        )
    )
    for pods in ([old, new], [new, old]):
        view = observed([job], pods, [])
        stage = view.jobs["configure"]
        assert stage.waiting_reason == "ErrImagePull"
        assert stage.exit_code is None
        assert stage.termination_reason is None
        assert stage.termination_message is None


def test_observed_builds_stage_jobs_from_job_and_pod() -> None:
    jobs = [
        job_record(job_body("configure", SUCCEEDED_STATUS)),
        job_record(job_body("algorithm", DEADLINE_STATUS)),
        job_record(job_body("publish", RUNNING_STATUS, deletion="2026-01-01T12:20:00Z")),
    ]
    pods = [
        pod_record(
            pod_body("configure", "c0000", "2026-01-01T12:00:02Z", terminated(0, "Completed"), "Succeeded")
        ),
        pod_record(
            pod_body(
                "algorithm", "a0000", "2026-01-01T12:03:05Z", terminated(137, "OOMKilled", "oom"), "Failed"
            )
        ),
        # A pod of a component without a Job (left over, or the Job not yet seen) is ignored.
        pod_record(pod_body("filter", "f0000", "2026-01-01T12:04:00Z", terminated(51, "Error"), "Failed")),
    ]
    view = observed(jobs, pods, [])
    assert set(view.jobs) == {"configure", "algorithm", "publish"}
    assert view.jobs["configure"] == StageJob(
        name=f"{WORKFLOW}-configure-job",
        state=JobState.SUCCEEDED,
        started=at("2026-01-01T12:00:01Z"),
        finished=at("2026-01-01T12:03:00Z"),
        exit_code=0,
        termination_reason="Completed",
    )
    assert view.jobs["algorithm"] == StageJob(
        name=f"{WORKFLOW}-algorithm-job",
        state=JobState.FAILED,
        started=at("2026-01-01T12:00:01Z"),
        finished=at("2026-01-01T12:10:02Z"),
        failure_reason="DeadlineExceeded",
        exit_code=137,
        termination_reason="OOMKilled",
        termination_message="oom",
    )
    publish = view.jobs["publish"]
    assert publish.deleting is True
    assert publish.exit_code is None  # no pod yet
    assert publish.waiting_reason is None
    assert view.others == frozenset()
    assert view.hashes == {}


def test_observed_children_and_their_hashes() -> None:
    children = [
        child_record(
            {"kind": "ConfigMap", "metadata": {"name": WORKFLOW, "annotations": {SPEC_HASH_ANNOTATION: "h1"}}}
        ),
        child_record(
            {"kind": "PersistentVolumeClaim", "metadata": {"name": f"{WORKFLOW}-data", "annotations": {}}}
        ),
        child_record({"kind": "Secret", "metadata": {"name": f"{WORKFLOW}-secret"}}),
        child_record(
            {
                "kind": "NetworkPolicy",
                "metadata": {
                    "name": f"{WORKFLOW}-algorithm-isolation",
                    "annotations": {SPEC_HASH_ANNOTATION: "h4"},
                },
            }
        ),
    ]
    view = observed([], [], iter(children))  # any iterable, consumed once
    assert view.jobs == {}
    assert view.others == frozenset(
        {
            ("ConfigMap", WORKFLOW),
            ("PersistentVolumeClaim", f"{WORKFLOW}-data"),
            ("Secret", f"{WORKFLOW}-secret"),
            ("NetworkPolicy", f"{WORKFLOW}-algorithm-isolation"),
        }
    )
    assert view.hashes == {
        ("ConfigMap", WORKFLOW): "h1",
        ("NetworkPolicy", f"{WORKFLOW}-algorithm-isolation"): "h4",
    }


def test_a_pod_without_a_creation_time_counts_as_oldest() -> None:
    job = job_record(job_body("algorithm", RUNNING_STATUS))
    dated = pod_record(pod_body("algorithm", "dated", "2026-01-01T12:00:02Z", terminated(1, "Error")))
    undated = pod_record(pod_body("algorithm", "undat", None, {"waiting": {"reason": "ContainerCreating"}}))
    for pods in ([dated, undated], [undated, dated]):
        assert observed([job], pods, []).jobs["algorithm"].exit_code == 1


def _pending_job(component: str) -> JobRecord:
    return JobRecord(component, f"{WORKFLOW}-{component}-job", JobState.PENDING, None, None, None, False)


@pytest.mark.parametrize(
    ("phase", "state", "disrupted", "expected"),
    [
        ("Succeeded", terminated(0, "Completed"), False, JobState.SUCCEEDED),
        ("Failed", terminated(2, "Error"), False, JobState.FAILED),
        ("Failed", terminated(137, "Error"), True, JobState.PENDING),  # evicted: the Job retries it
        ("Running", {"running": {"startedAt": "2026-01-01T12:00:05Z"}}, False, JobState.PENDING),
    ],
)
def test_a_stage_ends_when_its_pod_ends_before_the_job_controller_says_so(
    phase: str, state: dict[str, Any], disrupted: bool, expected: JobState
) -> None:
    body = pod_body("algorithm", "p0d00", "2026-01-01T12:00:02Z", state, phase=phase)
    if disrupted:
        body["status"]["conditions"] = [{"type": "DisruptionTarget", "status": "True"}]
    view = observed([_pending_job("algorithm")], [pod_record(body)], [])
    assert view.jobs["algorithm"].state is expected
    if expected is not JobState.PENDING:
        assert view.jobs["algorithm"].finished == at("2026-01-01T12:02:00Z")


def test_a_failed_isolation_check_fails_the_stage_though_the_container_never_ran() -> None:
    body = pod_body("algorithm", "n0net", "2026-01-01T12:00:02Z", {"waiting": {"reason": "PodInitializing"}})
    body["status"]["phase"] = "Failed"
    body["status"]["initContainerStatuses"] = [
        {"name": "isolation-check", "state": terminated(23, "Error")},
    ]
    view = observed([_pending_job("algorithm")], [pod_record(body)], [])
    assert view.jobs["algorithm"].state is JobState.FAILED
    assert view.jobs["algorithm"].init_failure == "isolation-check"
    assert view.jobs["algorithm"].exit_code is None


def test_a_completed_init_container_is_no_failure() -> None:
    body = pod_body(
        "algorithm", "ok000", "2026-01-01T12:00:02Z", {"running": {"startedAt": "2026-01-01T12:00:05Z"}}
    )
    body["status"]["initContainerStatuses"] = [
        {"name": "isolation-check", "state": terminated(0, "Completed")}
    ]
    assert pod_record(body).init_failure is None


@pytest.mark.parametrize(
    ("phase", "deleting", "running"),
    [
        ("Pending", False, True),
        ("Running", False, True),
        ("Running", True, True),  # deleted, but its processes run until the kubelet has killed them
        ("Succeeded", False, False),
        ("Failed", True, False),
    ],
)
def test_a_stage_has_a_running_pod_until_its_containers_ended(
    phase: str, deleting: bool, running: bool
) -> None:
    body = pod_body("algorithm", "p0d00", "2026-01-01T12:00:02Z", {"running": {}}, phase=phase)
    if deleting:
        body["metadata"]["deletionTimestamp"] = "2026-01-01T12:01:00Z"
    view = observed([], [pod_record(body)], [])
    assert ("algorithm" in view.running_pods) is running
    assert observed([], [], []).running_pods == frozenset()


def test_a_pod_killed_by_its_jobs_deadline_waits_for_the_job_to_say_why() -> None:
    """Past activeDeadlineSeconds the Job controller deletes the pod, whose algorithm dies of SIGTERM
    (143) before the Job's Failed condition (DeadlineExceeded) is written: that exit is no verdict."""
    body = pod_body("algorithm", "dead1", "2026-01-01T12:00:02Z", terminated(143, "Error"), phase="Failed")
    body["metadata"]["deletionTimestamp"] = "2026-01-01T12:01:00Z"
    view = observed([_pending_job("algorithm")], [pod_record(body)], [])
    assert view.jobs["algorithm"].state is JobState.PENDING


# ---- only what the Workflow controls ---------------------------------------------------------------------


def controlled(body: dict[str, Any], uid: str) -> dict[str, Any]:
    """`body` with its controller ownerReference's uid set to `uid` (and marked as the controller)."""
    [reference] = body["metadata"]["ownerReferences"]
    body["metadata"]["ownerReferences"] = [{**reference, "uid": uid, "controller": True}]
    return body


def test_with_the_workflow_uid_only_its_own_children_and_its_jobs_pods_count() -> None:
    """A look-alike (the Workflow's labels, someone else's controller) is neither a child to adopt or
    delete, nor a pod whose outcome passes the filter."""
    ours = job_record(job_body("filter"))
    theirs = job_record(controlled(job_body("algorithm"), "someone-else"))
    real_pod = pod_record(controlled(pod_body("filter", "a", "2026-01-01T12:00:00Z"), "uid-filter"))
    fake_pass = controlled(pod_body("filter", "b", "2026-01-01T12:00:05Z", phase="Succeeded"), "nobody")
    config = ChildRecord("ConfigMap", WORKFLOW, "h", owner_uid="wf-uid")
    squatter = ChildRecord("Secret", f"{WORKFLOW}-secret", "h", owner_uid="someone-else")

    view = observed([ours, theirs], [real_pod, pod_record(fake_pass)], [config, squatter], "wf-uid")

    assert set(view.jobs) == {"filter"}
    assert view.jobs["filter"].state is JobState.PENDING  # the newer, Succeeded look-alike is ignored
    assert view.others == frozenset({("ConfigMap", WORKFLOW)})
    assert "filter" in view.running_pods
    unfiltered = observed([ours, theirs], [real_pod, pod_record(fake_pass)], [config, squatter])
    assert unfiltered.jobs["filter"].state is JobState.SUCCEEDED  # what a look-alike did before
