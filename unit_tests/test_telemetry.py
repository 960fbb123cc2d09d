"""telemetry: the metric samples a Workflow's transitions produce, and the levels read from the cluster's
objects; metrics: how they land in the registry (checked through the exposition text)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ocean_c2d import metrics, telemetry
from ocean_c2d.model import Admission, Environment, FilterPolicy, JobState, Workflow
from ocean_c2d.status import Stage, WorkflowStatus
from ocean_c2d.telemetry import (
    GIB,
    STAGES,
    Observation,
    environment_levels,
    oldest_stage_starts,
    stage_outcome,
    transition_observations,
    workflow_counts,
)
from ocean_c2d.view import ENVIRONMENT_INDEX, FinishedWorkflow, View
from unit_tests.factories import ADMIT, workflow, workflow_object
from unit_tests.test_reconcile import World


def run_collecting(world: World, **outcomes: dict[str, Any]) -> list[Observation]:
    """World.run_to_end, gathering what each status write would record."""
    found: list[Observation] = []
    for _ in range(12):
        result = world.plan()
        if result.status is not None:
            found += transition_observations(world.workflow, result.status)
        world.reconcile()
        if world.status.get("stage") == Stage.FINISHED.value:
            return found
        pending = [s for s, j in world.jobs.items() if j.state is JobState.PENDING]
        if pending:
            world.finish(pending[0], **outcomes.get(pending[0], {}))
    raise AssertionError("the Workflow never finished")


def by_metric(found: list[Observation], metric: str) -> list[Observation]:
    return [o for o in found if o.metric == metric]


def test_a_successful_workflow_yields_each_stage_once_then_its_end() -> None:
    world = World()  # created 11:59:00, admitted at T0 = 12:00:00; each stage takes 30 s
    found = run_collecting(world)
    assert by_metric(found, "queue_wait") == [Observation("queue_wait", ("cpu",), 60.0)]
    stages = by_metric(found, "stage_duration")
    assert [(o.labels, o.value) for o in stages] == [
        (("cpu", "configure", "Succeeded"), 30.0),
        (("cpu", "algorithm", "Succeeded"), 30.0),
        (("cpu", "publish", "Succeeded"), 30.0),
    ]
    assert by_metric(found, "publish") == [Observation("publish", ("cpu", "Succeeded"))]
    assert by_metric(found, "finished") == [Observation("finished", ("cpu", "Succeeded"))]
    # created 11:59:00, finished 12:01:30
    assert by_metric(found, "workflow_duration") == [
        Observation("workflow_duration", ("cpu", "Succeeded"), 150.0)
    ]


def test_a_failed_algorithm_is_counted_under_its_outcome() -> None:
    world = World()
    found = run_collecting(world, algorithm={"state": JobState.FAILED, "exit_code": 1})
    stages = {o.labels[1]: o.labels[2] for o in by_metric(found, "stage_duration")}
    assert stages == {"configure": "Succeeded", "algorithm": "Failed", "publish": "Succeeded"}
    assert by_metric(found, "finished") == [Observation("finished", ("cpu", "AlgorithmFailed"))]


def test_filter_verdicts_are_counted_when_they_change() -> None:
    environment = Environment(name="cpu", max_jobs=2, max_job_duration=600, filter=FilterPolicy(enabled=True))
    world = World(environment=environment)
    found = run_collecting(world, filter={"state": JobState.FAILED, "exit_code": 51})
    assert by_metric(found, "filter_verdict") == [Observation("filter_verdict", ("cpu", "Block"))]
    assert by_metric(found, "finished")[0].labels == ("cpu", "ResultsBlocked")


def test_a_reconcile_that_changes_nothing_observes_nothing() -> None:
    world = World()
    run_collecting(world)
    assert transition_observations(world.workflow, cast(WorkflowStatus, world.status)) == []


def test_a_workflow_that_never_started_has_no_queue_wait_but_an_end() -> None:
    world = World(environment=None)
    result = world.plan(Admission(may_start=False))
    assert result.status is not None
    found = transition_observations(world.workflow, result.status)
    assert [o.metric for o in found] == ["finished", "workflow_duration"]
    assert found[0].labels == ("cpu", "UnknownEnvironment")


def test_a_stopped_stage_and_a_deleted_pod_are_not_successes() -> None:
    assert stage_outcome({"reason": "Stopped", "finishedAt": "x"}) == "Stopped"
    assert stage_outcome({"reason": "PodDeleted"}) == "Failed"
    assert stage_outcome({"reason": "Disrupted"}) == "Failed"
    assert stage_outcome({"exitCode": 0, "reason": "Completed"}) == "Succeeded"
    assert stage_outcome({"exitCode": 0}) == "Succeeded"
    assert stage_outcome({}) == "Succeeded"  # a stage that succeeded without a pod left to read
    assert stage_outcome({"exitCode": 137, "reason": "OOMKilled"}) == "Failed"
    assert stage_outcome({"reason": "DeadlineExceeded"}) == "Failed"


def test_a_pod_deleted_mid_stage_is_recorded_as_such() -> None:
    world = World()
    world.reconcile(ADMIT)
    for attempt in (2, 3):  # configure is the operator's own step: its pod is replaced, twice
        world.jobs.clear()  # someone deleted the configure pod
        world.now += timedelta(seconds=5)
        world.reconcile()
        assert world.status["stages"]["configure"]["podName"] == f"job1-configure-{attempt}"
    world.jobs.clear()
    world.now += timedelta(seconds=5)
    result = world.plan()
    assert result.status is not None
    assert result.status["stages"]["configure"]["reason"] == "PodDeleted"
    [stage] = by_metric(transition_observations(world.workflow, result.status), "stage_duration")
    assert stage.labels == ("cpu", "configure", "Failed")


def wf(
    name: str,
    environment: str,
    stage: str | None,
    namespace: str = "c2d",
    created: str = "2026-01-01T00:00:00Z",
    **status: Any,
) -> Workflow:
    return workflow(
        name, created=created, stage=stage, environment=environment, namespace=namespace, **status
    )


def test_oldest_stage_start_is_the_earliest_entry_per_stage() -> None:
    def algorithm_since(at: str) -> dict[str, Any]:
        return {
            "stages": {"configure": {"startedAt": "2026-01-01T00:00:00Z"}, "algorithm": {"startedAt": at}}
        }

    oldest = oldest_stage_starts(
        [
            wf("a", "cpu", "RunningAlgorithm", **algorithm_since("2026-01-01T01:00:00Z")),
            wf("b", "cpu", "RunningAlgorithm", **algorithm_since("2026-01-01T00:30:00Z")),
            wf("c", "cpu", "Queued", created="2026-01-01T00:10:00Z"),
            wf("d", "cpu", "Queued", created="2026-01-01T00:05:00Z"),
            wf("e", "cpu", "Finished", **algorithm_since("2025-01-01T00:00:00Z")),
            wf("f", "cpu", "Publishing"),  # its Job is being created: no start recorded yet
            wf("g", "cpu", None),
        ]
    )
    epoch = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    assert oldest == {
        ("c2d", "cpu", "RunningAlgorithm"): epoch + 1800,
        ("c2d", "cpu", "Queued"): epoch + 300,
    }


def test_workflow_counts_cover_every_stage_of_every_environment() -> None:
    counts = workflow_counts(
        [
            wf("a", "cpu", None),
            wf("b", "cpu", "Queued"),
            wf("c", "cpu", "Queued"),
            wf("d", "gpu", "RunningAlgorithm"),
            wf("e", "gpu", "Finished", namespace="other"),
        ]
    )
    assert counts[("c2d", "cpu", "New")] == 1
    assert counts[("c2d", "cpu", "Queued")] == 2
    assert counts[("c2d", "cpu", "Finished")] == 0
    assert counts[("c2d", "gpu", "RunningAlgorithm")] == 1
    assert counts[("other", "gpu", "Finished")] == 1
    assert len(counts) == 3 * len(STAGES)
    assert sum(counts.values()) == 5


def test_environment_levels_compare_slots_with_running_workflows() -> None:
    environment = Environment(name="gpu", n_cpu=4, n_gpu=1, ram_gb=8, disk_gb=20, max_jobs=3)
    peers = [wf("a", "gpu", "RunningAlgorithm"), wf("b", "gpu", "Queued"), wf("c", "gpu", "Finished")]
    levels = {level.resource: level for level in environment_levels("c2d", environment, peers)}
    assert (levels["jobs"].allocatable, levels["jobs"].in_use) == (3, 1)
    assert (levels["cpu"].allocatable, levels["cpu"].in_use, levels["cpu"].unit) == (12, 4, "core")
    assert (levels["gpu"].allocatable, levels["gpu"].in_use) == (3, 1)
    assert (levels["memory"].allocatable, levels["memory"].in_use) == (24 * GIB, 8 * GIB)
    assert (levels["disk"].in_use, levels["disk"].unit) == (20 * GIB, "byte")


def exposition() -> dict[str, list[tuple[dict[str, str], float]]]:
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.REGISTRY).decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for found, v in samples.get(name, []) if all(found.get(k) == x for k, x in labels.items()))


def test_recorded_observations_reach_the_exposition_with_the_namespace() -> None:
    before = exposition()
    metrics.record(
        "telemetry-test",
        [
            Observation("stage_duration", ("cpu", "algorithm", "Succeeded"), 42.0),
            Observation("finished", ("cpu", "Succeeded")),
            Observation("queue_wait", ("cpu",), 3.0),
        ],
    )
    after = exposition()
    labels = {"namespace": "telemetry-test", "environment": "cpu"}
    assert value(after, "ocean_c2d_stage_duration_seconds_count", **labels, stage="algorithm") == 1
    assert value(after, "ocean_c2d_stage_duration_seconds_sum", **labels, stage="algorithm") == 42.0
    assert value(after, "ocean_c2d_stage_duration_seconds_bucket", **labels, le="60.0") == 1
    assert value(after, "ocean_c2d_stage_duration_seconds_bucket", **labels, le="30.0") == 0
    finished = value(after, "ocean_c2d_workflows_finished_total", **labels, outcome="Succeeded")
    assert finished == value(before, "ocean_c2d_workflows_finished_total", **labels, outcome="Succeeded") + 1
    assert value(after, "ocean_c2d_queue_wait_seconds_sum", **labels) == 3.0


def test_the_cluster_state_gauges_are_computed_at_scrape_time() -> None:
    levels = telemetry.ClusterLevels(workflows={("ns", "cpu", "Queued"): 2}, resources=[])
    metrics.collect_cluster_state(lambda: levels)
    assert value(exposition(), "ocean_c2d_workflows", namespace="ns", stage="Queued") == 2
    levels.workflows[("ns", "cpu", "Queued")] = 5  # the next scrape sees the cluster as it is then
    environment = Environment(name="cpu", n_cpu=2, max_jobs=4)
    levels.resources.extend(environment_levels("ns", environment, [wf("a", "cpu", "Configuring", "ns")]))
    samples = exposition()
    assert value(samples, "ocean_c2d_workflows", namespace="ns", stage="Queued") == 5
    assert value(samples, "ocean_c2d_environment_allocatable", environment="cpu", resource="cpu") == 8
    assert value(samples, "ocean_c2d_environment_in_use", environment="cpu", resource="cpu") == 2
    metrics.collect_cluster_state(lambda: telemetry.ClusterLevels({}, []))  # replaces, never duplicates
    assert "ocean_c2d_workflows" not in exposition()


def test_build_info_names_the_version() -> None:
    [(labels, one)] = exposition()["ocean_c2d_build_info"]
    assert one == 1
    assert labels["version"] not in ("", "unknown")


def test_every_outcome_of_a_seen_environment_starts_at_zero() -> None:
    # Without it, rate()/increase() never see a counter's first step: the first failure would be lost.
    metrics.initialise_environment("fresh-ns", "fresh-env")
    samples = exposition()
    finished = {
        labels["outcome"]: v
        for labels, v in samples["ocean_c2d_workflows_finished_total"]
        if labels["namespace"] == "fresh-ns"
    }
    assert finished["AlgorithmFailed"] == 0
    assert set(finished) >= {"Succeeded", "AlgorithmFailed", "ResultsUploadFailed", "Stopped"}
    assert value(samples, "ocean_c2d_publish_total", namespace="fresh-ns", outcome="Failed") == 0
    assert ({"namespace": "fresh-ns", "environment": "fresh-env", "outcome": "Failed"}, 0.0) in samples[
        "ocean_c2d_publish_total"
    ]
    assert ({"kind": "stop", "outcome": "Failed"}, 0.0) in samples["ocean_c2d_notifications_total"]


def test_metric_labels_name_only_environments_that_exist() -> None:
    """A Workflow author types any environment name; one series per made-up name would grow without end."""
    made_up = [
        workflow(f"w{n}", stage="Finished", environment=f"no-such-{n}", reason="UnknownEnvironment")
        for n in range(50)
    ]
    real = workflow("ok", stage="Queued", environment="cpu")
    levels = telemetry.cluster_levels([*made_up, real], [("c2d", Environment(name="cpu"))])
    assert {environment for _, environment, _ in levels.workflows} == {"cpu", telemetry.UNKNOWN_ENVIRONMENT}
    assert levels.workflows[("c2d", telemetry.UNKNOWN_ENVIRONMENT, "Finished")] == 50
    after = WorkflowStatus(stage="Finished", reason="UnknownEnvironment", finishedAt="2026-01-01T12:00:00Z")
    observations = telemetry.transition_observations(workflow("new", environment="no-such-0"), after, set())
    assert "finished" in {o.metric for o in observations}
    assert {o.labels[0] for o in observations} == {telemetry.UNKNOWN_ENVIRONMENT}


# ---- the scrape with many finished Workflows (View.levels) --------------------------------------------


def stored(
    name: str, version: str, stage: str | None, environment: str = "cpu", namespace: str = "c2d"
) -> Any:
    status: dict[str, Any] | None = None
    if stage is not None:
        status = {"stage": stage, "admittedAt": "2026-01-01T12:00:00Z"}
    if stage == "Configuring":
        status = {**(status or {}), "stages": {"configure": {"startedAt": "2026-01-01T12:00:05Z"}}}
    metadata = {"name": name, "namespace": namespace, "uid": f"uid-{name}", "resourceVersion": version}
    return workflow_object(metadata=metadata, status=status, environment=environment)


def filled_view() -> View:
    """Finished Workflows of a known environment, of a made-up one and of another namespace; running,
    queued and new ones; a finished one our own write overlays; a ComputeEnvironment."""
    view = View()
    store = view.workflow_store
    cpu = {"metadata": {"name": "cpu", "namespace": "c2d", "resourceVersion": "1"}, "spec": {"maxJobs": 3}}
    view.indexes[ENVIRONMENT_INDEX] = {("c2d", "cpu"): [cpu]}
    bodies = [
        *(stored(f"done-{n}", "5", "Finished") for n in range(30)),
        *(stored(f"typo-{n}", "5", "Finished", environment=f"no-such-{n % 3}") for n in range(7)),
        *(stored(f"other-{n}", "5", "Finished", namespace="c2d-b") for n in range(4)),
        stored("running", "5", "Configuring"),
        stored("queued", "5", "Queued"),
        stored("new", "5", None),
        stored("gone-env", "5", "Queued", environment="gone"),
    ]
    for body in bodies:
        store.put((body["metadata"]["namespace"], body["metadata"]["name"]), store.entry(body))
    # Our write ended "running" (the watch still shows Configuring) and changed "done-0" again.
    view.remember_written(
        "c2d", "running", stored("running", "5", "Configuring"), stored("running", "6", "Finished")
    )
    view.remember_written(
        "c2d", "done-0", stored("done-0", "5", "Finished"), stored("done-0", "6", "Finished")
    )
    return view


def walked(view: View) -> telemetry.ClusterLevels:
    """What every scrape computed before the store counted its finished Workflows: walk them all."""
    environments = [("c2d", Environment.from_object(view.values(ENVIRONMENT_INDEX, ("c2d", "cpu"))[0]))]
    return telemetry.cluster_levels(view.workflows(), environments)


def test_the_scrape_counts_finished_workflows_as_walking_them_all_did() -> None:
    view = filled_view()
    levels = view.levels()
    assert levels == walked(view)
    assert levels.workflows[("c2d", "cpu", "Finished")] == 31  # 30, and "running" ended by our write
    assert levels.workflows[("c2d", "cpu", "Configuring")] == 0
    assert levels.workflows[("c2d", telemetry.UNKNOWN_ENVIRONMENT, "Finished")] == 7
    assert levels.workflows[("c2d-b", telemetry.UNKNOWN_ENVIRONMENT, "Finished")] == 4
    store = view.workflow_store
    # As the view changes: a finished one deleted, one re-listed at a new version, a namespace emptied.
    store.remove(("c2d", "done-1"))
    store.put(("c2d", "done-2"), store.entry(stored("done-2", "9", "Finished")))
    store.replace({k: v[0] for k, v in store.workflows.items() if k[0] != "c2d-b"})
    store.put(("c2d", "queued"), store.entry(stored("queued", "9", "Finished")))
    levels = view.levels()
    assert levels == walked(view)
    assert levels.workflows[("c2d", "cpu", "Finished")] == 31
    assert not [key for key in levels.workflows if key[0] == "c2d-b"]  # no Workflow left: no series
    assert store.finished.counts[("c2d", "cpu")] == 30


def test_the_scrape_does_not_walk_finished_workflows(monkeypatch: Any) -> None:
    """Its cost follows the unfinished Workflows (and our unseen writes), whatever the history holds."""
    view = filled_view()
    store = view.workflow_store
    for n in range(2000):
        body = stored(f"history-{n}", "5", "Finished")
        store.put(("c2d", body["metadata"]["name"]), store.entry(body))
    read: list[tuple[str, str]] = []
    readable = View._readable

    def counted(self: View, namespace: str, name: str) -> Workflow | None:
        read.append((namespace, name))
        return readable(self, namespace, name)

    monkeypatch.setattr(View, "_readable", counted)
    monkeypatch.setattr(FinishedWorkflow, "header", lambda self: pytest.fail("walked a finished one"))
    levels = view.levels()
    assert sorted(read) == sorted(
        [("c2d", "running"), ("c2d", "queued"), ("c2d", "new"), ("c2d", "gone-env"), ("c2d", "done-0")]
    )
    assert levels.workflows[("c2d", "cpu", "Finished")] == 2031
