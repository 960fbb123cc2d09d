"""view.View: kopf's indexes read as one Workflow's world, and the overlays of our own writes."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from ocean_c2d import handlers, observe
from ocean_c2d.model import InvalidWorkflow, JobState, Workflow
from ocean_c2d.status import Stage
from ocean_c2d.view import (
    CHILD_INDEXES,
    CREATED_OVERLAY_SECONDS,
    INDEXES,
    KOPF_INDEXES,
    POD_INDEX,
    WORKFLOW_INDEX,
    WORKFLOWS_BY_ENVIRONMENT_INDEX,
    FinishedWorkflow,
    View,
    WorkflowStore,
)
from unit_tests.factories import workflow_object

KEY = ("c2d", "job1")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Indexes = dict[str, dict[Any, list[Any]]]


def indexes(extra: Indexes | None = None) -> Indexes:
    bound: Indexes = {name: {} for name in INDEXES}
    bound.update(extra or {})
    return bound


def bound_view(extra: Indexes | None = None, clock: Clock | None = None) -> tuple[View, Indexes]:
    view = View(clock or Clock())
    live = indexes(extra)
    view.bind(live)
    return view, live


def body(version: str, **status: Any) -> dict[str, Any]:
    obj = workflow_object()
    obj["metadata"]["resourceVersion"] = version
    obj["status"] = status
    return obj


def pod_manifest(name: str, component: str) -> dict[str, Any]:
    return {"kind": "Pod", "metadata": {"name": name, "labels": {"component": component}}}


def test_every_index_the_view_reads_is_registered_by_handlers_under_that_id() -> None:
    registry = kopf.get_default_registry()
    ids = {handler.id for handler in registry._indexing.get_all_handlers()}
    assert set(KOPF_INDEXES) <= ids
    # handlers registers the child indexes in a loop over view.CHILD_INDEXES, each with the routes it names
    children = {h.id: h for h in registry._indexing.get_all_handlers() if h.id in CHILD_INDEXES}
    assert sorted(children) == sorted(CHILD_INDEXES)
    assert all(h.fn is handlers.child_index for h in children.values())


def test_binding_without_an_index_fails_loudly() -> None:
    partial = indexes()
    del partial[POD_INDEX]
    with pytest.raises(RuntimeError, match="pod_index"):
        View().bind(partial)


def test_our_status_write_is_seen_until_the_watch_shows_a_newer_version() -> None:
    view, live = bound_view({WORKFLOW_INDEX: {KEY: [body("1")]}})
    read = view.workflow(*KEY)
    assert read is not None
    view.remember_written(*KEY, read, body("2", stage="Configuring"))
    assert view.workflow(*KEY)["status"] == {"stage": "Configuring"}  # type: ignore[index]
    view.remember_written(*KEY, body("2"), body("3", stage="RunningAlgorithm"))  # a second write, before
    assert view.workflow(*KEY)["status"]["stage"] == "RunningAlgorithm"  # type: ignore[index]
    live[WORKFLOW_INDEX][KEY] = [body("2", stage="Configuring")]  # the watch shows only the first write
    assert view.workflow(*KEY)["status"]["stage"] == "RunningAlgorithm"  # type: ignore[index]
    live[WORKFLOW_INDEX][KEY] = [body("4", stage="Publishing")]  # newer than all we wrote: the watch wins
    assert view.workflow(*KEY)["status"]["stage"] == "Publishing"  # type: ignore[index]
    live[WORKFLOW_INDEX][KEY] = [body("1")]
    assert view.workflow(*KEY)["status"] == {}  # type: ignore[index]  # the overlay is gone for good


def test_a_deleted_workflow_is_gone_even_with_a_write_pending() -> None:
    view, live = bound_view({WORKFLOW_INDEX: {KEY: [body("1")]}})
    view.remember_written(*KEY, body("1"), body("2", stage="Configuring"))
    live[WORKFLOW_INDEX].clear()
    assert view.workflow(*KEY) is None


def test_created_children_are_observed_until_the_watch_shows_them_or_they_expire() -> None:
    clock = Clock()
    view, live = bound_view(clock=clock)
    config = {"kind": "ConfigMap", "metadata": {"name": "job1"}}
    # The stage's first pod, disrupted and seen by the watch; its replacement just created.
    first = observe.pod_record(
        {
            "metadata": {
                "name": "job1-configure",
                "labels": {"component": "configure"},
                "creationTimestamp": "2026-01-01T12:00:00Z",
            },
            "status": {"phase": "Failed", "conditions": [{"type": "DisruptionTarget", "status": "True"}]},
        }
    )
    live[POD_INDEX][KEY] = [first]
    view.remember_children(*KEY, [pod_manifest("job1-configure-2", "configure"), config], [])
    observed = view.observed(*KEY)
    assert observed.jobs["configure"].name == "job1-configure-2"  # the newest, though not shown yet
    assert observed.jobs["configure"].state is JobState.PENDING
    assert ("ConfigMap", "job1") in observed.others
    live[POD_INDEX][KEY] = [first, observe.pod_record(pod_manifest("job1-configure-2", "configure"))]
    assert view.observed(*KEY).stage_pods == frozenset({"job1-configure", "job1-configure-2"})
    clock.now += CREATED_OVERLAY_SECONDS + 1  # never shown by the watch (created, then deleted)
    assert ("ConfigMap", "job1") not in view.observed(*KEY).others


def test_deleted_children_read_as_deleting_until_the_watch_drops_them() -> None:
    record = observe.pod_record(pod_manifest("job1-algorithm", "algorithm"))
    config = observe.ChildRecord("ConfigMap", "job1", "h")
    view, live = bound_view({POD_INDEX: {KEY: [record]}, next(iter(CHILD_INDEXES)): {KEY: [config]}})
    view.remember_children(*KEY, [], [("Pod", "job1-algorithm"), ("ConfigMap", "job1")])
    observed = view.observed(*KEY)
    assert observed.jobs["algorithm"].deleting
    assert observed.stage_pods == frozenset()
    assert observed.others == frozenset()
    live[POD_INDEX][KEY] = []
    assert view.observed(*KEY).jobs == {}


def test_pods_come_from_the_pod_index() -> None:
    pod = observe.pod_record(
        {"metadata": {"name": "p", "labels": {"component": "algorithm"}}, "status": {"phase": "Running"}}
    )
    view, _ = bound_view({POD_INDEX: {KEY: [pod]}})
    assert view.observed(*KEY).running_pods == frozenset({"algorithm"})


def test_a_peer_whose_spec_cannot_be_read_still_counts_by_its_status() -> None:
    broken = body("1", stage="RunningAlgorithm", admittedAt="2026-01-01T12:00:00Z")
    broken["spec"]["inputs"] = "not a list"
    view, _ = bound_view(
        {WORKFLOW_INDEX: {KEY: [broken]}, WORKFLOWS_BY_ENVIRONMENT_INDEX: {("c2d", "cpu"): ["job1"]}}
    )
    [peer] = view.peers("c2d", "cpu")
    assert (peer.name, peer.admitted) == ("job1", True)
    assert [w.name for w in view.workflows()] == ["job1"]


def test_a_change_the_watch_shows_before_our_write_returns_is_never_hidden() -> None:
    """Our status write returns after the watch already delivered it and a user's stop: the stop wins."""
    view, live = bound_view({WORKFLOW_INDEX: {KEY: [body("1")]}})
    read = view.workflow(*KEY)
    assert read is not None
    stopped = body("3", stage="Configuring")
    stopped["spec"]["stop"] = True
    live[WORKFLOW_INDEX][KEY] = [stopped]  # our write (2) and then the user's patch (3), both seen already
    view.remember_written(*KEY, read, body("2", stage="Configuring"))
    assert view.workflow(*KEY)["spec"]["stop"] is True  # type: ignore[index]


def test_a_workflow_is_parsed_once_per_version_and_never_from_a_stale_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parses: list[str] = []
    real = Workflow.from_object

    def counting(obj: dict[str, Any]) -> Workflow:
        parses.append(obj["metadata"]["resourceVersion"])
        return real(obj)

    monkeypatch.setattr(Workflow, "from_object", staticmethod(counting))
    live_index: dict[Any, list[Any]] = {KEY: [body("1", stage="Queued")]}
    view, _ = bound_view(
        {WORKFLOW_INDEX: live_index, WORKFLOWS_BY_ENVIRONMENT_INDEX: {("c2d", "cpu"): ["job1"]}}
    )
    for _ in range(5):
        assert [w.stage for w in view.peers("c2d", "cpu")] == [Stage.QUEUED]
        model = view.model(*KEY)
        assert model is not None
    assert parses == ["1"]
    live_index[KEY] = [body("2", stage="Configuring", admittedAt="2026-01-01T12:00:00Z")]
    assert view.peers("c2d", "cpu")[0].stage is Stage.CONFIGURING
    assert parses == ["1", "2"]
    # A finished Workflow is no peer (the index drops it too), but still a model of its own.
    live_index[KEY] = [body("3", stage="Finished", reason="Succeeded")]
    assert view.peers("c2d", "cpu") == []
    assert view.model(*KEY) is not None
    # Gone from the index: gone from the cache (and from the next sweep).
    del live_index[KEY]
    assert view.model(*KEY) is None
    view.forget_models()
    assert view._workflow_models == {}


def test_an_unreadable_workflow_is_parsed_once_and_raises_each_time() -> None:
    broken = body("1")
    broken["spec"]["inputs"] = "not a list"
    view, _ = bound_view({WORKFLOW_INDEX: {KEY: [broken]}})
    for _ in range(2):
        with pytest.raises(InvalidWorkflow, match=r"spec\.inputs"):
            view.model(*KEY)


def test_the_by_environment_index_holds_no_finished_workflow() -> None:
    store = WorkflowStore()
    running = body("1", stage="RunningAlgorithm")
    store.put(KEY, store.entry(running))
    assert store.by_environment == {(KEY[0], running["spec"]["environment"]): {KEY[1]: None}}
    store.put(KEY, store.entry(body("2", stage="Finished")))
    assert store.by_environment == {}
    assert isinstance(store.workflows[KEY][0], FinishedWorkflow)
    store.remove(KEY)
    assert store.workflows == {}
