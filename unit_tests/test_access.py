"""Which Workflows an environment admits (spec.access, fail closed for network-allowed environments), and
the NetworkIsolation condition that holds an isolating environment's queue once the cluster was seen not
to enforce NetworkPolicy."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest

from ocean_c2d.controller import Controller
from ocean_c2d.environments import (
    ISOLATION_RECHECK_ANNOTATION,
    access_denial,
    admission,
    isolation_recheck,
    isolation_signal,
    isolation_status,
    selector_matches,
)
from ocean_c2d.model import Admission, Environment, Observed, Plan, Workflow
from ocean_c2d.reconcile import plan
from ocean_c2d.render import Templates
from ocean_c2d.settings import load_settings
from ocean_c2d.status import WorkflowStatus
from ocean_c2d.view import ENVIRONMENT_INDEX, INDEXES
from unit_tests.factories import PLAN_SETTINGS, T0, TEMPLATES, settings_environ, workflow_object
from unit_tests.test_controller import NAMESPACE, FakeCluster, environment_object, queued

LABELS = {"team": "alpha", "tier": "gold"}


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ({}, True),
        ({"matchLabels": {"team": "alpha"}}, True),
        ({"matchLabels": {"team": "alpha", "tier": "silver"}}, False),
        ({"matchLabels": {"missing": ""}}, False),
        ({"matchExpressions": [{"key": "team", "operator": "In", "values": ["alpha", "beta"]}]}, True),
        ({"matchExpressions": [{"key": "team", "operator": "In", "values": ["beta"]}]}, False),
        ({"matchExpressions": [{"key": "missing", "operator": "In", "values": ["x"]}]}, False),
        ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["beta"]}]}, True),
        ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["alpha"]}]}, False),
        ({"matchExpressions": [{"key": "missing", "operator": "NotIn", "values": ["x"]}]}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, True),
        ({"matchExpressions": [{"key": "missing", "operator": "Exists"}]}, False),
        ({"matchExpressions": [{"key": "missing", "operator": "DoesNotExist"}]}, True),
        ({"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]}, False),
        (
            {"matchExpressions": [{"key": "team", "operator": "Gt", "values": ["1"]}]},
            False,
        ),  # unknown: closed
        (  # all requirements must hold
            {
                "matchLabels": {"team": "alpha"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["silver"]}],
            },
            False,
        ),
    ],
)
def test_label_selector_semantics(selector: dict[str, Any], matches: bool) -> None:
    assert selector_matches(selector, LABELS) is matches


def labelled(namespace: str = "c2d", **labels: str) -> Workflow:
    return Workflow.from_object(workflow_object(metadata={"namespace": namespace, "labels": labels}))


@pytest.mark.parametrize(
    ("environment", "workflow", "denied_because"),
    [
        (Environment(name="cpu"), labelled(), None),  # no access, no network: everyone
        (Environment(name="cpu", access_namespaces=("c2d",)), labelled(), None),
        (Environment(name="cpu", access_namespaces=("other",)), labelled(), "namespace 'c2d'"),
        (Environment(name="cpu", access_namespaces=()), labelled(), "namespace 'c2d'"),
        (Environment(name="cpu", access_selector={"matchLabels": {"team": "a"}}), labelled(team="a"), None),
        (Environment(name="cpu", access_selector={"matchLabels": {"team": "a"}}), labelled(), "labels"),
        (Environment(name="net", allow_network=True), labelled(), "names none"),  # fail closed
        (Environment(name="net", allow_network=True, access_namespaces=("c2d",)), labelled(), None),
        (
            Environment(name="net", allow_network=True, access_selector={"matchLabels": {"team": "a"}}),
            labelled(team="b"),
            "labels",
        ),
    ],
)
def test_access(environment: Environment, workflow: Workflow, denied_because: str | None) -> None:
    denial = access_denial(workflow, environment)
    if denied_because is None:
        assert denial is None
        assert admission(workflow, [workflow], environment).may_start
    else:
        assert denial is not None
        assert denied_because in denial
        verdict = admission(workflow, [workflow], environment)
        assert (verdict.may_start, verdict.denied) == (False, denial)


def test_a_denied_workflow_ends_environment_denied_and_never_moves_again() -> None:
    environment = Environment(name="cpu", access_namespaces=("elsewhere",))
    workflow = labelled()
    verdict = admission(workflow, [workflow], environment)
    first = plan(workflow, environment, Observed(), verdict, PLAN_SETTINGS, TEMPLATES, "s", T0)

    assert first.status is not None
    assert first.desired == ()
    status = first.status
    assert (status["stage"], status["statusCode"], status["reason"]) == ("Finished", 90, "EnvironmentDenied")
    assert "namespace 'c2d'" in status["message"]
    assert "admittedAt" not in status
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {"Admitted": "False", "Finished": "True", "Succeeded": "False"}
    assert next((e.type, e.reason) for e in first.events) == ("Warning", "EnvironmentDenied")
    ended = Workflow.from_object(workflow_object(metadata={"namespace": "c2d"}, status=dict(status)))
    later = plan(
        ended, environment, Observed(), Admission(True), PLAN_SETTINGS, TEMPLATES, "s", T0 + timedelta(1)
    )
    assert later.status is None
    assert later.desired == ()


# ---- NetworkIsolation -------------------------------------------------------------------------------------


def algorithm_ran(exit_code: int) -> WorkflowStatus:
    return {"stage": "Publishing", "stages": {"algorithm": {"jobName": "a", "exitCode": exit_code}}}


def test_isolation_signals() -> None:
    workflow = labelled()
    running: WorkflowStatus = {"stage": "RunningAlgorithm", "stages": {"algorithm": {"jobName": "a"}}}
    failed: WorkflowStatus = {**running, "reason": "NetworkNotIsolated", "stage": "Publishing"}
    assert isolation_signal(workflow, running, failed) is False
    assert isolation_signal(workflow, failed, {**failed, "stage": "Finished"}) is None  # said once
    assert isolation_signal(workflow, running, algorithm_ran(1)) is True  # it ran: the check passed
    assert isolation_signal(workflow, algorithm_ran(0), algorithm_ran(0)) is None
    assert isolation_signal(workflow, {}, running) is None


def test_the_condition_flips_once_and_names_the_workflow() -> None:
    down = isolation_status({}, False, "leaky", 3, T0)
    assert down is not None
    [condition] = down
    assert (condition["type"], condition["status"], condition["reason"]) == (
        "NetworkIsolation",
        "False",
        "IsolationCheckFailed",
    )
    assert "leaky" in condition["message"]
    assert condition["observedGeneration"] == 3
    assert isolation_status({"conditions": down}, False, "another", 3, T0) is None  # no write per Workflow
    up = isolation_status({"conditions": down}, True, "fine", 3, T0 + timedelta(minutes=1))
    assert up is not None
    assert up[0]["status"] == "True"
    assert "fine" in up[0]["message"]


def test_an_isolating_environment_holds_its_queue_while_isolation_is_false() -> None:
    down = isolation_status({}, False, "leaky", 1, T0)
    workflow = labelled()
    held = admission(workflow, [workflow], Environment(name="cpu"), {"conditions": down})
    assert (held.may_start, held.denied, held.position) == (False, None, 1)
    assert held.held is not None
    assert "NetworkIsolation is False" in held.held
    assert "leaky" in held.held
    assert ISOLATION_RECHECK_ANNOTATION in held.held
    result = plan(workflow, Environment(name="cpu"), Observed(), held, PLAN_SETTINGS, TEMPLATES, "s", T0)
    assert result.status is not None
    assert (result.status["stage"], result.status["message"]) == ("Queued", held.held)
    # A network-allowed environment does not need the isolation it lacks.
    net = Environment(name="net", allow_network=True, access_namespaces=("c2d",))
    assert admission(workflow, [workflow], net, {"conditions": down}).may_start


def test_an_administrators_recheck_makes_the_condition_unknown_once() -> None:
    down = isolation_status({}, False, "leaky", 1, T0)
    status = {"conditions": down}
    asked = {ISOLATION_RECHECK_ANNOTATION: "2026-01-02"}
    fields = isolation_recheck(status, asked, 1, T0)
    assert fields is not None
    assert fields["isolationRecheck"] == "2026-01-02"
    assert [c["status"] for c in fields["conditions"]] == ["Unknown"]
    assert isolation_recheck({**status, **fields}, asked, 1, T0) is None  # honoured already
    assert isolation_recheck(status, {}, 1, T0) is None
    workflow = labelled()
    assert admission(workflow, [workflow], Environment(name="cpu"), {**status, **fields}).may_start


class EnvironmentCluster(FakeCluster):
    def __init__(self, indexes: dict[str, dict[Any, list[Any]]]) -> None:
        super().__init__(indexes)
        self.environment_writes: list[dict[str, Any]] = []

    async def write_status_fields(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        kind, _, _, fields = args[:4]
        if kind == "ComputeEnvironment":
            self.environment_writes.append(fields)
        return None


def controller_for(environment: dict[str, Any]) -> tuple[Controller, EnvironmentCluster]:
    indexes: dict[str, dict[Any, list[Any]]] = {name: {} for name in INDEXES}
    indexes[ENVIRONMENT_INDEX][(NAMESPACE, "cpu")] = [environment]
    cluster = EnvironmentCluster(indexes)
    controller = Controller(load_settings(settings_environ()), Templates(), cluster, httpx.AsyncClient())  # type: ignore[arg-type]
    controller.bind(indexes)
    return controller, cluster


async def test_the_controller_denies_a_workflow_of_a_namespace_not_listed() -> None:
    environment = environment_object(max_jobs=1)
    environment["spec"]["access"] = {"namespaces": ["trusted"]}
    controller, cluster = controller_for(environment)
    cluster.add_workflow(queued("outsider", "2026-01-01T11:00:00Z"))
    await controller.reconcile_workflow(NAMESPACE, "outsider")
    status = cluster.store["outsider"]["status"]
    assert (status["stage"], status["reason"]) == ("Finished", "EnvironmentDenied")
    assert cluster.creates == []  # nothing of it ever ran


async def test_a_failed_isolation_check_sets_network_isolation_false_on_the_environment() -> None:
    controller, cluster = controller_for(environment_object(max_jobs=2))
    body = queued("leaky", "2026-01-01T11:00:00Z")
    body["status"] = {
        "stage": "RunningAlgorithm",
        "admittedAt": "2026-01-01T11:00:01Z",
        "stages": {"algorithm": {"podName": "leaky-algorithm"}},
    }
    cluster.add_workflow(body)
    workflow = Workflow.from_object(body)
    failed = {**body["status"], "reason": "NetworkNotIsolated", "stage": "Publishing"}
    await controller._apply(body, workflow, Plan(status=failed), Observed())  # type: ignore[arg-type]

    [fields] = cluster.environment_writes
    [condition] = fields["conditions"]
    assert (condition["type"], condition["status"]) == ("NetworkIsolation", "False")
    assert "leaky" in condition["message"]
