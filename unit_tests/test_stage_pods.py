"""What stage pods need from the plan that a Job controller used to do: replace a disrupted pod of the
operator's own steps (never the algorithm's), enforce the deadline for a pod no kubelet runs, adopt a pod
whose status write was lost, and take over a Workflow whose stage ran as a Job before an upgrade."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import pytest

from ocean_c2d.model import JobState, TemplateInputs
from ocean_c2d.reconcile import DEADLINE_GRACE_SECONDS, attempt_of
from ocean_c2d.render import TemplateError, Templates, stage_pod_name
from ocean_c2d.times import format_time
from unit_tests.factories import ENVIRONMENT
from unit_tests.test_reconcile import World

CONFIGURE_DEADLINE = 3600  # PlanSettings.configure_timeout
ALGORITHM_DEADLINE = ENVIRONMENT.max_job_duration


def disrupt(world: World, stage: str, running: bool = False) -> None:
    """The stage's pod was evicted (or preempted, drained): `running` until the kubelet killed it."""
    world.now += timedelta(seconds=10)
    world.jobs[stage] = dataclasses.replace(world.jobs[stage], disrupted=True, running=running)


def test_a_disrupted_configure_pod_is_replaced_with_the_time_left_then_fails() -> None:
    world = World()
    world.reconcile()
    started = world.now
    disrupt(world, "configure", running=True)
    world.reconcile()
    assert world.created_jobs == ["job1-configure"]  # its processes may still write: wait

    for attempt in (2, 3):
        disrupt(world, "configure")
        world.reconcile()
        assert world.created_jobs[-1] == f"job1-configure-{attempt}"
        pod = world.last_job_manifest
        left = CONFIGURE_DEADLINE - (world.now - started).total_seconds()
        assert pod["spec"]["activeDeadlineSeconds"] == int(left)  # the stage's time, not a new one
        record = world.status["stages"]["configure"]
        assert (record["podName"], record["attempts"]) == (f"job1-configure-{attempt}", attempt)
        assert record["startedAt"] == format_time(started)
        assert world.status["stage"] == "Configuring"

    disrupt(world, "configure")
    world.reconcile()
    configure = [name for name in world.created_jobs if "configure" in name]
    assert configure == ["job1-configure", "job1-configure-2", "job1-configure-3"]
    assert world.status["stages"]["configure"]["reason"] == "Disrupted"
    assert world.status["reason"] == "DataProvisioningFailed"
    assert "disrupted" in world.status["message"]


def test_a_disrupted_algorithm_is_never_run_again() -> None:
    world = World()
    world.reconcile()
    world.finish("configure")
    world.reconcile()
    disrupt(world, "algorithm")
    world.reconcile()
    assert [name for name in world.created_jobs if "algorithm" in name] == ["job1-algorithm"]
    assert world.status["stages"]["algorithm"]["reason"] == "Disrupted"
    assert world.status["reason"] == "AlgorithmFailed"
    assert world.status["stage"] == "Publishing"  # the logs still go up


def test_the_plan_ends_a_stage_past_its_deadline_when_no_kubelet_did() -> None:
    """An unschedulable pod (or one on a node that is gone) never reaches the kubelet's deadline."""
    world = World()
    world.reconcile()
    world.finish("configure")
    result = world.reconcile()
    started = world.now
    assert result.requeue_after == pytest.approx(ALGORITHM_DEADLINE + DEADLINE_GRACE_SECONDS)

    world.now = started + timedelta(seconds=ALGORITHM_DEADLINE)  # the kubelet's deadline: its word first
    early = world.reconcile()
    assert early.requeue_after == pytest.approx(DEADLINE_GRACE_SECONDS)
    assert world.status["stage"] == "RunningAlgorithm"

    world.now = started + timedelta(seconds=ALGORITHM_DEADLINE + DEADLINE_GRACE_SECONDS)
    result = world.reconcile()
    assert ("Pod", "job1-algorithm") in result.unwanted
    record = world.status["stages"]["algorithm"]
    assert (record["reason"], record["finishedAt"]) == ("DeadlineExceeded", format_time(world.now))
    assert (world.status["reason"], world.status["stage"]) == ("AlgorithmTimedOut", "Publishing")


def test_the_kubelets_deadline_is_read_from_the_pod() -> None:
    world = World()
    world.reconcile()
    world.finish("configure")
    world.reconcile()
    world.finish("algorithm", JobState.FAILED, failure_reason="DeadlineExceeded", exit_code=137)
    world.reconcile()
    assert world.status["stages"]["algorithm"]["reason"] == "DeadlineExceeded"
    assert world.status["reason"] == "AlgorithmTimedOut"


def test_a_replacement_whose_status_write_was_lost_is_adopted_not_made_again() -> None:
    world = World()
    world.reconcile()
    status_before = world.obj["status"]
    disrupt(world, "configure")
    world.reconcile()  # creates job1-configure-2...
    world.obj["status"] = status_before  # ...but its status write was lost (a crash)
    world.reconcile()
    assert world.created_jobs == ["job1-configure", "job1-configure-2"]
    record = world.status["stages"]["configure"]
    assert (record["podName"], record["attempts"]) == ("job1-configure-2", 2)


@pytest.mark.parametrize(("stage", "replaced"), [("configure", True), ("algorithm", False)])
def test_a_stage_that_ran_as_a_job_before_an_upgrade(stage: str, replaced: bool) -> None:
    """Its pod is the Job's, not the Workflow's: the operator's own steps run again as a pod; the
    algorithm is never run twice."""
    world = World()
    world.reconcile()
    if stage == "algorithm":
        world.finish("configure")
        world.reconcile()
    record = world.obj["status"]["stages"][stage]
    record["jobName"] = record.pop("podName") + "-job"
    world.jobs.pop(stage)
    world.reconcile()
    if replaced:
        assert world.created_jobs[-1] == f"job1-{stage}-2"
    else:
        assert world.status["stages"][stage]["reason"] == "PodDeleted"
        assert world.created_jobs.count(f"job1-{stage}") == 1


def test_attempts_are_read_from_pod_names() -> None:
    assert attempt_of(stage_pod_name("w", "publish"), "w", "publish") == 1
    assert attempt_of(stage_pod_name("w", "publish", 3), "w", "publish") == 3
    assert attempt_of("w-publish-x", "w", "publish") == 0
    assert attempt_of("w-publish-1", "w", "publish") == 0  # the first attempt has no number
    assert attempt_of(None, "w", "publish") == 0
    assert attempt_of("w-configure", "w", "publish") == 0


def test_a_templates_dir_with_job_templates_is_refused(tmp_path: Path) -> None:
    (tmp_path / "algorithm-job.yaml.j2").write_text('{% extends "builtin/algorithm-job.yaml.j2" %}\n')
    with pytest.raises(TemplateError, match=r"algorithm-job\.yaml\.j2: stages run as pods"):
        Templates(tmp_path)


def test_a_stage_template_that_renders_no_pod_is_refused(tmp_path: Path) -> None:
    (tmp_path / "publish-pod.yaml.j2").write_text(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {name: {{ pod_name | json }}}\n"
    )
    world = World()
    inputs = TemplateInputs(world.workflow, ENVIRONMENT, world.settings.template_values, None, "s", "")
    with pytest.raises(TemplateError, match="must render a v1 Pod"):
        Templates(tmp_path).render_pod("publish", inputs, 60)
