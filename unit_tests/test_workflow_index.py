"""What the operator keeps of each Workflow (issue 11, D18): the Workflow index holds a compact copy (no
managedFields, the free-form user data as JSON text), and the children rendered from it, the ConfigMap's
workflow.json above all, are the very bytes the full body gives."""

from __future__ import annotations

import copy
import json
import tracemalloc
from typing import Any, cast

import kopf
import pytest

from ocean_c2d.model import RawJSON, TemplateInputs, Workflow, dumps
from ocean_c2d.view import FinishedWorkflow, WorkflowStore, compact_workflow
from unit_tests.factories import ENVIRONMENT, TEMPLATES, template_values, workflow_object

USER_DATA = {"rows": 10, "note": "a b&c", "nested": {"deep": [1, 2.5, None, True, {"é": "😀"}]}}
CUSTOM_DATA = {"epochs": 3, "name": 'é\u2028"quoted"', "emoji": "😀", "empty": {}, "list": [], "big": 1e300}


def body_with_user_data(**extra: Any) -> dict[str, Any]:
    return workflow_object(
        metadata={
            "resourceVersion": "7",
            "annotations": {"a": "b"},
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {"f:algorithm": {}}}}],
        },
        inputs=[
            {"did": "did:op:" + "b" * 64, "serviceId": "svc", "transferTxId": "0x01", "userData": USER_DATA}
        ],
        algorithm={
            "rawCode": "print(42)",
            "userData": {"learningRate": 0.1},
            "customData": CUSTOM_DATA,
            "container": {"image": "python", "tag": "3.11", "entrypoint": "python $ALGO"},
        },
        **extra,
    )


def base_children(body: dict[str, Any]) -> list[dict[str, Any]]:
    inputs = TemplateInputs(Workflow.from_object(body), ENVIRONMENT, template_values(), None, "secret")
    return TEMPLATES.render_base(inputs)


def test_the_index_keeps_free_form_data_as_text_and_drops_managed_fields() -> None:
    body = body_with_user_data()
    compact = compact_workflow(body)
    assert "managedFields" not in compact["metadata"]
    assert compact["metadata"] == {k: v for k, v in body["metadata"].items() if k != "managedFields"}
    algorithm = compact["spec"]["algorithm"]
    assert algorithm["customData"] == RawJSON(json.dumps(CUSTOM_DATA))
    assert algorithm["userData"] == RawJSON(json.dumps({"learningRate": 0.1}))
    assert compact["spec"]["inputs"][0]["userData"] == RawJSON(json.dumps(USER_DATA))
    assert algorithm["customData"].value() == CUSTOM_DATA
    # What the planner reads is there as it was.
    assert algorithm["container"] == body["spec"]["algorithm"]["container"]
    assert algorithm["rawCode"] == "print(42)"
    assert {k: v for k, v in compact["spec"].items() if k not in ("inputs", "algorithm")} == {
        k: v for k, v in body["spec"].items() if k not in ("inputs", "algorithm")
    }


def test_the_index_copies_what_kopf_hands_it() -> None:
    body = body_with_user_data()
    compact = compact_workflow(kopf.Body(cast(kopf.RawBody, body)))
    body["metadata"]["annotations"]["a"] = "changed"
    body["spec"]["algorithm"]["container"]["image"] = "changed"
    assert compact["metadata"]["annotations"] == {"a": "b"}
    assert compact["spec"]["algorithm"]["container"]["image"] == "python"


@pytest.mark.parametrize(
    "spec",
    [
        {},  # a Workflow without free-form data: the common case
        {"stop": True},
    ],
)
def test_children_rendered_from_the_compact_copy_are_the_same_bytes(spec: dict[str, Any]) -> None:
    for body in (workflow_object(**spec), body_with_user_data(**spec)):
        full = base_children(body)
        compact = base_children(compact_workflow(body))
        assert json.dumps(compact, sort_keys=True) == json.dumps(full, sort_keys=True)
    [configmap] = [
        m for m in base_children(compact_workflow(body_with_user_data())) if m["kind"] == "ConfigMap"
    ]
    document = json.loads(configmap["data"]["workflow.json"])
    assert document["stages"][0]["algorithm"]["customData"] == CUSTOM_DATA
    assert document["stages"][0]["input"][0]["userData"] == USER_DATA


def test_dumps_is_json_dumps_with_raw_json_in_place() -> None:
    value = {"a": [1, {"b": RawJSON.of(CUSTOM_DATA)}, (RawJSON.of([]), "x")], "c": RawJSON.of("s")}
    expected = json.dumps({"a": [1, {"b": CUSTOM_DATA}, ([], "x")], "c": "s"})
    assert dumps(value) == expected
    assert dumps(USER_DATA) == json.dumps(USER_DATA)


def test_a_user_string_is_never_taken_for_raw_json() -> None:
    """Only the per-process marker stands for a RawJSON: a user's look-alike stays the string it is."""
    lookalike = {"x": "\x00ocean-c2d-raw-0000000000000000:0", "y": RawJSON.of({"secret": 1})}
    assert json.loads(dumps(lookalike)) == {"x": lookalike["x"], "y": {"secret": 1}}


def allocated_by(make: Any) -> tuple[int, Any]:
    """The bytes still allocated by what `make()` returns (tracemalloc)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = make()
        return tracemalloc.get_traced_memory()[0] - before, kept
    finally:
        tracemalloc.stop()


def test_an_indexed_workflow_costs_about_its_json_size_not_the_parsed_tree() -> None:
    """A Workflow with 1.2 MB of customData made of small objects (the worst case for Python's memory:
    a dict per `{}`): a deep copy of it costs ~25 times its text, the store's entry about its text."""
    custom: dict[str, Any] = {"k": [{} for _ in range(400_000)]}
    body = body_with_user_data()
    body["spec"]["algorithm"]["customData"] = custom
    text_size = len(json.dumps(custom, separators=(",", ":")))
    assert text_size > 1_000_000
    deep, _ = allocated_by(lambda: copy.deepcopy(body))
    assert deep > 15 * text_size  # what the index used to cost: the reason for this test
    indexed, entry = allocated_by(lambda: WorkflowStore().entry(body))
    assert indexed < 2 * text_size
    assert entry["spec"]["algorithm"]["customData"].value() == custom


def test_a_finished_workflow_keeps_what_its_reconcile_needs_as_text() -> None:
    """Once finished, no spec beyond environment, owner, stop and the DIDs, no labels or annotations, no
    managedFields: a few hundred bytes of text, which still reads as the same Workflow for a reconcile."""
    body = body_with_user_data()
    body["metadata"]["labels"] = {"team": "x" * 1000}
    body["status"] = {"stage": "Finished", "reason": "Succeeded", "finishedAt": "2026-01-01T00:00:00Z"}
    entry = WorkflowStore().entry(body)
    assert isinstance(entry, FinishedWorkflow)
    assert len(entry.text) < 700
    full, trimmed = Workflow.from_object(body), Workflow.from_object(entry.body())
    assert (trimmed.name, trimmed.uid, trimmed.generation, trimmed.created, trimmed.status) == (
        full.name,
        full.uid,
        full.generation,
        full.created,
        full.status,
    )
    assert (trimmed.spec.environment, trimmed.spec.owner, trimmed.spec.stop) == (
        full.spec.environment,
        full.spec.owner,
        full.spec.stop,
    )
    assert (trimmed.spec.input_dids, trimmed.spec.algorithm_did) == (
        full.spec.input_dids,
        full.spec.algorithm_did,
    )
    assert entry.body()["metadata"]["resourceVersion"] == "7"
    assert entry.header().finished
    assert entry.header().spec.environment == full.spec.environment
