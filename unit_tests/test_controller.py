"""The controller's admission and failure paths, against a fake cluster whose watch lags behind.

The fake applies Changes to its own store but shows them to the controller's view only when the test
says (`deliver`), the way a watch event arrives after the write returned: the overlays and the admission
lock must keep the controller right in between.
"""

from __future__ import annotations

import asyncio
import copy
from collections import defaultdict
from datetime import datetime
from typing import Any

import httpx
import kr8s

from ocean_c2d.controller import Controller
from ocean_c2d.k8s import Applied, ConflictError
from ocean_c2d.model import Changes
from ocean_c2d.render import Templates
from ocean_c2d.settings import load_settings
from ocean_c2d.view import ENVIRONMENT_INDEX, INDEXES, WORKFLOW_INDEX, WORKFLOWS_BY_ENVIRONMENT_INDEX
from unit_tests.factories import settings_environ, workflow_object

NAMESPACE = "c2d"


def environment_object(max_jobs: int) -> dict[str, Any]:
    return {
        "apiVersion": "oceanprotocol.com/v1alpha1",
        "kind": "ComputeEnvironment",
        "metadata": {"name": "cpu", "namespace": NAMESPACE, "generation": 1, "resourceVersion": "1"},
        "spec": {"maxJobs": max_jobs, "maxJobDuration": 600},
    }


def queued(name: str, created: str, **spec: Any) -> dict[str, Any]:
    body = workflow_object(
        metadata={"name": name, "uid": f"uid-{name}", "creationTimestamp": created}, **spec
    )
    body["metadata"]["resourceVersion"] = "1"
    return body


class FakeCluster:
    """Stores what the controller writes; its "watch" shows the store to the view on `deliver()`."""

    def __init__(self, indexes: dict[str, dict[Any, list[Any]]]) -> None:
        self.indexes = indexes
        self.store: dict[str, dict[str, Any]] = {}
        self.version = 100
        self.creates: list[tuple[str, str]] = []
        self.events: list[tuple[str, str, str]] = []
        self.refuse: set[str] = set()  # kinds the API server refuses as invalid (422)
        self.status_fields: list[tuple[Any, ...]] = []  # write_status_fields calls

    def add_workflow(self, body: dict[str, Any]) -> None:
        self.store[body["metadata"]["name"]] = body
        self.deliver()

    def deliver(self) -> None:
        workflows = self.indexes[WORKFLOW_INDEX]
        by_environment: dict[Any, list[Any]] = defaultdict(list)
        for name, body in self.store.items():
            workflows[(NAMESPACE, name)] = [copy.deepcopy(body)]
            by_environment[(NAMESPACE, body["spec"]["environment"])].append(name)
        self.indexes[WORKFLOWS_BY_ENVIRONMENT_INDEX].clear()
        self.indexes[WORKFLOWS_BY_ENVIRONMENT_INDEX].update(by_environment)

    async def apply(self, workflow: dict[str, Any], changes: Changes, now: datetime) -> Applied:
        await asyncio.sleep(0)  # a request: other reconciles run meanwhile
        for manifest in changes.create:
            if manifest["kind"] in self.refuse:
                request = httpx.Request("POST", "https://api/" + manifest["kind"])
                response = httpx.Response(422, request=request, json={"message": "data: Too long"})
                raise _invalid(kr8s.ServerError("Unprocessable", response=response), manifest)
            self.creates.append((manifest["kind"], manifest["metadata"]["name"]))
        updated = None
        name = workflow["metadata"]["name"]
        if changes.status is not None:
            current = self.store[name]
            if current["metadata"]["resourceVersion"] != workflow["metadata"]["resourceVersion"]:
                raise ConflictError(name)
            self.version += 1
            updated = {**copy.deepcopy(current), "status": dict(changes.status)}
            updated["metadata"]["resourceVersion"] = str(self.version)
            self.store[name] = updated
        self.events += [(name, e.type, e.reason) for e in changes.events]
        return Applied(changes.create, changes.delete, updated)

    async def write_status_fields(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        self.status_fields.append(args)
        return None


def _invalid(error: kr8s.ServerError, manifest: dict[str, Any]) -> Exception:
    """What k8s.Cluster turns a 422 into (its own helper, so the message is the real one)."""
    from ocean_c2d.k8s import _raise_if_invalid

    try:
        _raise_if_invalid(error, f"the API server refused {manifest['kind']} {manifest['metadata']['name']}")
    except Exception as converted:
        return converted
    return error


def controller_with(max_jobs: int) -> tuple[Controller, FakeCluster]:
    indexes: dict[str, dict[Any, list[Any]]] = {name: {} for name in INDEXES}
    indexes[ENVIRONMENT_INDEX][(NAMESPACE, "cpu")] = [environment_object(max_jobs)]
    cluster = FakeCluster(indexes)
    settings = load_settings(settings_environ())
    controller = Controller(settings, Templates(), cluster, httpx.AsyncClient())  # type: ignore[arg-type]
    controller.bind(indexes)
    return controller, cluster


def stages(cluster: FakeCluster) -> dict[str, str | None]:
    return {name: (body.get("status") or {}).get("stage") for name, body in sorted(cluster.store.items())}


async def test_a_burst_never_admits_more_than_max_jobs() -> None:
    controller, cluster = controller_with(max_jobs=3)
    names = [f"w{n:02d}" for n in range(12)]
    for n, name in enumerate(names):
        cluster.add_workflow(queued(name, f"2026-01-01T11:00:{n:02d}Z"))
    # Every Workflow reconciled at once, twice over, and the watch never catches up in between.
    for _ in range(2):
        await asyncio.gather(*(controller.reconcile_workflow(NAMESPACE, name) for name in names))
    admitted = [name for name, stage in stages(cluster).items() if stage not in (None, "Queued")]
    assert admitted == ["w00", "w01", "w02"]  # the first three, first come first served
    # Only the head says where it is (moving up is no status write for the others).
    positions = {name: cluster.store[name]["status"].get("queuePosition") for name in names[3:]}
    assert positions == {"w03": 1, **{name: None for name in names[4:]}}
    messages = {cluster.store[name]["status"]["message"] for name in names[3:]}
    assert len(messages) == 9  # one each: the message names the Workflow, never its position
    assert all("ocean-c2d queue" in message for message in messages)


async def test_a_moving_queue_wakes_only_those_that_may_start_and_the_next_head() -> None:
    controller, cluster = controller_with(max_jobs=2)
    names = [f"w{n:02d}" for n in range(40)]
    for n, name in enumerate(names):
        cluster.add_workflow(queued(name, f"2026-01-01T11:{n // 60:02d}:{n % 60:02d}Z"))
    # Full: two run, 38 wait.
    for name in names[:2]:
        await controller.reconcile_workflow(NAMESPACE, name)
    cluster.deliver()
    controller.queue._waiting.clear()
    controller.queue_moved(NAMESPACE, "cpu")
    assert set(controller.queue._waiting) == {
        ("environment", NAMESPACE, "cpu"),
        ("workflow", NAMESPACE, "w02"),
    }
    # One finishes: one may start, and the one after it becomes the head.
    finished = copy.deepcopy(cluster.store["w00"])
    finished["status"] = {**finished["status"], "stage": "Finished", "statusCode": 70}
    finished["metadata"]["resourceVersion"] = "999"
    cluster.store["w00"] = finished
    cluster.deliver()
    controller.queue._waiting.clear()
    controller.queue_moved(NAMESPACE, "cpu")
    assert {key[2] for key in controller.queue._waiting if key[0] == "workflow"} == {"w02", "w03"}


async def test_a_workflow_refused_by_the_api_server_ends_invalid_spec_and_frees_its_slot() -> None:
    controller, cluster = controller_with(max_jobs=1)
    cluster.refuse.add("ConfigMap")  # say, rawCode too large for a ConfigMap
    cluster.add_workflow(queued("first", "2026-01-01T11:00:00Z"))
    cluster.add_workflow(queued("second", "2026-01-01T11:00:01Z"))

    await controller.reconcile_workflow(NAMESPACE, "second")
    assert stages(cluster)["second"] == "Queued"
    await controller.reconcile_workflow(NAMESPACE, "first")

    status = cluster.store["first"]["status"]
    assert (status["stage"], status["statusCode"], status["reason"]) == ("Finished", 90, "InvalidSpec")
    assert "ConfigMap first" in status["message"]
    assert "422" in status["message"]
    assert "Too long" in status["message"]
    assert ("first", "Warning", "InvalidSpec") in cluster.events
    assert ("workflow", NAMESPACE, "second") in controller.queue._waiting  # the queue moved
    cluster.refuse.clear()
    await controller.reconcile_workflow(NAMESPACE, "second")
    assert stages(cluster)["second"] == "Configuring"


async def test_a_workflow_whose_spec_cannot_be_read_ends_invalid_spec() -> None:
    controller, cluster = controller_with(max_jobs=1)
    cluster.add_workflow(queued("broken", "2026-01-01T11:00:00Z", inputs="not a list"))
    await controller.reconcile_workflow(NAMESPACE, "broken")
    status = cluster.store["broken"]["status"]
    assert (status["stage"], status["reason"]) == ("Finished", "InvalidSpec")
    assert "spec.inputs" in status["message"]
    assert cluster.creates == []


async def test_a_poison_workflow_never_blocks_the_head_of_the_queue() -> None:
    controller, cluster = controller_with(max_jobs=1)
    broken = queued("poison", "2026-01-01T11:00:00Z")
    broken["spec"]["inputs"] = [42]
    cluster.add_workflow(broken)
    cluster.add_workflow(queued("next", "2026-01-01T11:00:01Z"))
    await controller.reconcile_workflow(NAMESPACE, "poison")
    cluster.deliver()
    await controller.reconcile_workflow(NAMESPACE, "next")
    assert stages(cluster) == {"next": "Configuring", "poison": "Finished"}


async def test_an_environments_counts_are_written_at_most_every_few_seconds() -> None:
    controller, cluster = controller_with(max_jobs=2)
    cluster.add_workflow(queued("w1", "2026-01-01T11:00:00Z"))
    assert await controller.reconcile_environment(NAMESPACE, "cpu") is None
    [(kind, _, name, written)] = cluster.status_fields
    assert (kind, name, written["queuedJobs"], written["queueHead"]) == ("ComputeEnvironment", "cpu", 1, "w1")
    # The watch shows that write; a second Workflow arrives: the counts change again, too soon.
    shown = cluster.indexes[ENVIRONMENT_INDEX][(NAMESPACE, "cpu")][0]
    shown["status"] = written
    shown["metadata"]["resourceVersion"] = "2"
    cluster.add_workflow(queued("w2", "2026-01-01T11:00:01Z"))
    wait = await controller.reconcile_environment(NAMESPACE, "cpu")
    assert wait is not None
    assert 0 < wait <= 2.0
    assert len(cluster.status_fields) == 1
    # A new spec (generation) is shown at once, whatever the timer.
    shown["metadata"]["generation"] = 2
    shown["metadata"]["resourceVersion"] = "3"
    assert await controller.reconcile_environment(NAMESPACE, "cpu") is None
    assert len(cluster.status_fields) == 2
    assert cluster.status_fields[-1][3]["queuedJobs"] == 2
