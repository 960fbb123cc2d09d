"""observe: what the watches keep of stage pods and other children, and how it becomes `Observed`.

The bodies below are shaped like what the API server returns for a pod the Workflow owns (its stage pod,
restartPolicy Never).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from ocean_c2d.model import JobState, StageJob
from ocean_c2d.observe import ChildRecord, PodRecord, child_record, observed, pod_record
from ocean_c2d.render import SPEC_HASH_ANNOTATION

WORKFLOW = "0123456789abcdef0123456789abcdef"
NAMESPACE = "ocean-c2d"
WORKFLOW_UID = "wf-uid"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def pod_body(
    component: str,
    suffix: str,
    created: str | None,
    state: dict[str, Any] | None = None,
    phase: str = "Running",
) -> dict[str, Any]:
    """A stage pod: `suffix` "" for the first attempt, "2", "3"... for its replacements."""
    metadata: dict[str, Any] = {
        "name": f"{WORKFLOW}-{component}" + (f"-{suffix}" if suffix else ""),
        "namespace": NAMESPACE,
        "uid": f"uid-{component}-{suffix}",
        "labels": {
            "workflow": WORKFLOW,
            "component": component,
            "app.kubernetes.io/managed-by": "ocean-c2d",
            "app.kubernetes.io/name": "ocean-c2d",
        },
        "ownerReferences": [
            {
                "apiVersion": "oceanprotocol.com/v1alpha1",
                "kind": "Workflow",
                "name": WORKFLOW,
                "uid": WORKFLOW_UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
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
        name=f"{WORKFLOW}-algorithm-x7k2p",
        created=at("2026-01-01T12:00:02Z"),
        exit_code=137,
        termination_reason="OOMKilled",
        termination_message="memory limit of 4Gi exceeded",
        waiting_reason=None,
        phase="Failed",
        finished=at("2026-01-01T12:02:00Z"),
        owner_uid=WORKFLOW_UID,
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


def test_a_pod_past_its_deadline_keeps_the_kubelets_reason() -> None:
    body = pod_body("algorithm", "", "2026-01-01T12:00:02Z", terminated(137, "Error"), phase="Failed")
    body["status"]["reason"] = "DeadlineExceeded"
    body["status"]["message"] = "Pod was active on the node longer than the specified deadline"
    record = pod_record(body)
    assert record.reason == "DeadlineExceeded"
    stage = observed([record], [], WORKFLOW_UID).jobs["algorithm"]
    assert (stage.state, stage.failure_reason) == (JobState.FAILED, "DeadlineExceeded")
    assert stage.finished == at("2026-01-01T12:02:00Z")


def test_observed_takes_each_stage_from_its_newest_pod() -> None:
    # The first pod was disrupted (its node drained); the operator made a second one, which is pulling.
    old = pod_body("configure", "", "2026-01-01T12:00:02Z", terminated(137, "Error", "evicted"), "Failed")
    old["status"]["conditions"] = [
        {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}
    ]
    new = pod_record(
        pod_body("configure", "2", "2026-01-01T12:01:30Z", {"waiting": {"reason": "ErrImagePull"}}, "Pending")
    )
    for pods in ([pod_record(old), new], [new, pod_record(old)]):
        view = observed(pods, [], WORKFLOW_UID)
        stage = view.jobs["configure"]
        assert stage.name == f"{WORKFLOW}-configure-2"
        assert stage.waiting_reason == "ErrImagePull"
        assert stage.exit_code is None
        assert stage.disrupted is False
        assert view.stage_pods == frozenset({f"{WORKFLOW}-configure", f"{WORKFLOW}-configure-2"})


def test_observed_builds_stage_jobs_from_pods() -> None:
    deleting = pod_body("publish", "", "2026-01-01T12:19:00Z", {"running": {}}, "Running")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T12:20:00Z"
    pods = [
        pod_record(
            pod_body("configure", "", "2026-01-01T12:00:02Z", terminated(0, "Completed"), "Succeeded")
        ),
        pod_record(
            pod_body("algorithm", "", "2026-01-01T12:03:05Z", terminated(137, "OOMKilled", "oom"), "Failed")
        ),
        pod_record(deleting),
    ]
    view = observed(pods, [], WORKFLOW_UID)
    assert set(view.jobs) == {"configure", "algorithm", "publish"}
    assert view.jobs["configure"] == StageJob(
        name=f"{WORKFLOW}-configure",
        state=JobState.SUCCEEDED,
        started=at("2026-01-01T12:00:02Z"),
        finished=at("2026-01-01T12:02:00Z"),
        exit_code=0,
        termination_reason="Completed",
        running=False,
    )
    assert view.jobs["algorithm"] == StageJob(
        name=f"{WORKFLOW}-algorithm",
        state=JobState.FAILED,
        started=at("2026-01-01T12:03:05Z"),
        finished=at("2026-01-01T12:02:00Z"),
        exit_code=137,
        termination_reason="OOMKilled",
        termination_message="oom",
        running=False,
    )
    publish = view.jobs["publish"]
    assert (publish.state, publish.deleting, publish.running) == (JobState.PENDING, True, True)
    assert view.stage_pods == frozenset({f"{WORKFLOW}-configure", f"{WORKFLOW}-algorithm"})  # not deleting
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
    view = observed([], iter(children))  # any iterable, consumed once
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
    dated = pod_record(pod_body("algorithm", "2", "2026-01-01T12:00:02Z", terminated(1, "Error"), "Failed"))
    undated = pod_record(pod_body("algorithm", "", None, {"waiting": {"reason": "ContainerCreating"}}))
    for pods in ([dated, undated], [undated, dated]):
        assert observed(pods, []).jobs["algorithm"].exit_code == 1


@pytest.mark.parametrize(
    ("phase", "state", "disrupted", "expected"),
    [
        ("Succeeded", terminated(0, "Completed"), False, JobState.SUCCEEDED),
        ("Failed", terminated(2, "Error"), False, JobState.FAILED),
        ("Failed", terminated(137, "Error"), True, JobState.PENDING),  # evicted: the plan decides
        ("Running", {"running": {"startedAt": "2026-01-01T12:00:05Z"}}, False, JobState.PENDING),
        ("Pending", None, False, JobState.PENDING),
    ],
)
def test_a_stage_ends_when_its_pod_ends(
    phase: str, state: dict[str, Any] | None, disrupted: bool, expected: JobState
) -> None:
    body = pod_body("algorithm", "", "2026-01-01T12:00:02Z", state, phase=phase)
    if disrupted:
        body["status"]["conditions"] = [{"type": "DisruptionTarget", "status": "True"}]
    stage = observed([pod_record(body)], [], WORKFLOW_UID).jobs["algorithm"]
    assert stage.state is expected
    assert stage.disrupted is disrupted
    if expected is not JobState.PENDING:
        assert stage.finished == at("2026-01-01T12:02:00Z")
    else:
        assert stage.finished is None


def test_a_failed_isolation_check_fails_the_stage_though_the_container_never_ran() -> None:
    body = pod_body("algorithm", "", "2026-01-01T12:00:02Z", {"waiting": {"reason": "PodInitializing"}})
    body["status"]["phase"] = "Failed"
    body["status"]["initContainerStatuses"] = [
        {"name": "isolation-check", "state": terminated(23, "Error")},
    ]
    view = observed([pod_record(body)], [], WORKFLOW_UID)
    assert view.jobs["algorithm"].state is JobState.FAILED
    assert view.jobs["algorithm"].init_failure == "isolation-check"
    assert view.jobs["algorithm"].exit_code is None


def test_a_completed_init_container_is_no_failure() -> None:
    body = pod_body(
        "algorithm", "", "2026-01-01T12:00:02Z", {"running": {"startedAt": "2026-01-01T12:00:05Z"}}
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
    body = pod_body("algorithm", "", "2026-01-01T12:00:02Z", {"running": {}}, phase=phase)
    if deleting:
        body["metadata"]["deletionTimestamp"] = "2026-01-01T12:01:00Z"
    view = observed([pod_record(body)], [])
    assert ("algorithm" in view.running_pods) is running
    assert view.jobs["algorithm"].running is running
    assert observed([], []).running_pods == frozenset()


def test_a_pod_killed_by_a_deletion_is_no_verdict() -> None:
    """A pod the operator deleted (a stop, its own deadline) dies of SIGTERM (143): the plan recorded
    why when it deleted it, so that exit is not the stage's outcome."""
    body = pod_body("algorithm", "", "2026-01-01T12:00:02Z", terminated(143, "Error"), phase="Failed")
    body["metadata"]["deletionTimestamp"] = "2026-01-01T12:01:00Z"
    stage = observed([pod_record(body)], [], WORKFLOW_UID).jobs["algorithm"]
    assert stage.state is JobState.PENDING
    assert stage.deleting
    succeeded = pod_body("algorithm", "", "2026-01-01T12:00:02Z", terminated(0, "Completed"), "Succeeded")
    succeeded["metadata"]["deletionTimestamp"] = "2026-01-01T12:01:00Z"
    assert observed([pod_record(succeeded)], [], WORKFLOW_UID).jobs["algorithm"].state is JobState.SUCCEEDED


# ---- only what the Workflow controls ---------------------------------------------------------------------


def controlled(body: dict[str, Any], uid: str) -> dict[str, Any]:
    """`body` with its controller ownerReference's uid set to `uid` (and marked as the controller)."""
    [reference] = body["metadata"]["ownerReferences"]
    body["metadata"]["ownerReferences"] = [{**reference, "uid": uid, "controller": True}]
    return body


def test_with_the_workflow_uid_only_its_own_children_and_pods_count() -> None:
    """A look-alike (the Workflow's labels, someone else's controller) is neither a child to adopt or
    delete, nor a pod whose outcome passes the filter."""
    real_pod = pod_record(pod_body("filter", "", "2026-01-01T12:00:00Z"))
    fake_pass = controlled(pod_body("filter", "2", "2026-01-01T12:00:05Z", phase="Succeeded"), "nobody")
    config = ChildRecord("ConfigMap", WORKFLOW, "h", owner_uid=WORKFLOW_UID)
    squatter = ChildRecord("Secret", f"{WORKFLOW}-secret", "h", owner_uid="someone-else")

    view = observed([real_pod, pod_record(fake_pass)], [config, squatter], WORKFLOW_UID)

    assert set(view.jobs) == {"filter"}
    assert view.jobs["filter"].state is JobState.PENDING  # the newer, Succeeded look-alike is ignored
    assert view.stage_pods == frozenset({f"{WORKFLOW}-filter"})
    assert view.others == frozenset({("ConfigMap", WORKFLOW)})
    assert "filter" in view.running_pods
    unfiltered = observed([real_pod, pod_record(fake_pass)], [config, squatter])
    assert unfiltered.jobs["filter"].state is JobState.SUCCEEDED  # what a look-alike did before
