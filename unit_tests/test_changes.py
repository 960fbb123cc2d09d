"""changes.changes: the one diff between a Plan and what was observed."""

from __future__ import annotations

from typing import Any

from ocean_c2d.changes import changes
from ocean_c2d.model import Event, JobState, Observed, Plan, StageJob
from ocean_c2d.render import SPEC_HASH_ANNOTATION
from ocean_c2d.status import WorkflowStatus


def child(kind: str, name: str, spec_hash: str) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name, "annotations": {SPEC_HASH_ANNOTATION: spec_hash}}}


CONFIG = child("ConfigMap", "w", "h1")
POD = child("Pod", "w-configure", "j1")


def test_absent_children_are_created_and_present_ones_left_alone() -> None:
    assert changes(Plan(desired=(CONFIG, POD)), Observed()).create == (CONFIG, POD)
    observed = Observed(
        jobs={"configure": StageJob("w-configure", JobState.PENDING)},
        others=frozenset({("ConfigMap", "w")}),
        hashes={("ConfigMap", "w"): "h1"},
        stage_pods=frozenset({"w-configure"}),
    )
    assert len(changes(Plan(desired=(CONFIG, POD)), observed)) == 0


def test_a_drifted_child_is_patched_but_a_pod_never_is() -> None:
    observed = Observed(
        jobs={"configure": StageJob("w-configure", JobState.PENDING)},
        others=frozenset({("ConfigMap", "w")}),
        hashes={("ConfigMap", "w"): "old", ("Pod", "w-configure"): "old"},
        stage_pods=frozenset({"w-configure"}),
    )
    delta = changes(Plan(desired=(CONFIG, POD)), observed)
    assert (delta.create, delta.patch) == ((), (CONFIG,))


def test_a_job_being_deleted_counts_as_absent() -> None:
    observed = Observed(jobs={"configure": StageJob("w-configure", JobState.PENDING, deleting=True)})
    assert changes(Plan(desired=(POD,)), observed).create == (POD,)
    assert changes(Plan(unwanted=(("Pod", "w-configure"),)), observed).delete == ()


def test_only_present_unwanted_children_are_deleted() -> None:
    observed = Observed(others=frozenset({("Secret", "w-secret")}))
    delta = changes(Plan(unwanted=(("Secret", "w-secret"), ("ConfigMap", "gone"))), observed)
    assert delta.delete == (("Secret", "w-secret"),)
    assert len(delta) == 1


def test_status_events_and_the_workflow_deletion_each_count_as_one_write() -> None:
    status = WorkflowStatus(stage="Finished")
    delta = changes(
        Plan(
            status=status, events=(Event("Normal", "X", "y"), Event("Normal", "Z", "w")), delete_workflow=True
        ),
        Observed(),
    )
    assert (delta.status, len(delta.events), delta.delete_workflow) == (status, 2, True)
    assert len(delta) == 4
    assert len(changes(Plan(notify=("start",), requeue_after=5.0), Observed())) == 0  # not API writes
