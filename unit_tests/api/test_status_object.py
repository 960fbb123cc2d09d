"""The status object: the recorded shape, built from a Workflow object and our status."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from ocean_c2d import status as st
from ocean_c2d.api.params import parse_json
from ocean_c2d.api.status_object import (
    ANSWERED_AS,
    OURS_AS_THEY_ARE,
    build_running,
    build_status,
    client_code,
)
from ocean_c2d.api.translate import build_workflow
from unit_tests.api.fixtures import COMPAT

FIXTURES = COMPAT
NOW = datetime(2026, 12, 1, 7, 54, 21, 956364, tzinfo=UTC)
JOB = "38c8ca27d61e4f42ab352c5598162241"
RESULTS = [
    {"filename": "out.txt", "filesize": 12, "url": "s3://b/out.txt", "type": "output", "expiresAt": 1},
    {"filename": "algorithm.log", "filesize": 9, "url": "s3://b/algorithm.log", "type": "algorithmLog"},
]


def recorded(file: str, seq: int) -> Any:
    exchange = next(e for e in json.loads((FIXTURES / file).read_text()) if e["seq"] == seq)
    return exchange


def workflow_of(file: str, seq: int, status: dict[str, Any] | None = None) -> dict[str, Any]:
    body = parse_json(recorded(file, seq)["request"]["body_raw"].encode())
    obj = build_workflow(body, JOB, NOW)
    obj["metadata"]["creationTimestamp"] = "2026-12-01T07:54:21Z"
    if status is not None:
        obj["status"] = status
    return obj


def finished(
    code: st.Code, reason: st.Outcome, results: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "stage": "Finished",
        "statusCode": code.number,
        "statusText": code.text,
        "reason": reason.value,
        "finishedAt": "2026-12-01T07:54:23Z",
    }
    if results is not None:
        status["results"] = results
    return status


def test_a_new_workflow_is_exactly_the_recorded_warming_up_answer() -> None:
    answer = build_status(workflow_of("provider-v4.json", 7))
    want = recorded("provider-v4.json", 7)["response"]["body"][0]
    assert answer == {**want, "jobId": JOB, "dateCreated": "1796111661.956364"}
    assert list(answer) == list(want)  # the keys in the recorded order too


def test_a_finished_workflow_is_exactly_the_recorded_job_finished_answer() -> None:
    answer = build_status(
        workflow_of("provider-v4.json", 7, finished(st.JOB_FINISHED, st.Outcome.SUCCEEDED, RESULTS))
    )
    want = recorded("provider-v4.json", 15)["response"]["body"][0]
    assert answer == {
        **want,
        "jobId": JOB,
        "dateCreated": "1796111661.956364",
        "dateFinished": "1796111663.000000",
    }


def test_algo_did_raw_and_empty() -> None:
    assert build_status(workflow_of("provider-v4.json", 10))["algoDID"] == ""  # "id": ""
    assert build_status(workflow_of("ocean-node-OPF_K8_9f2870dd.json", 3))["algoDID"] == "raw"  # no id key


def test_a_workflow_made_with_kubectl_reads_from_its_spec() -> None:
    obj = workflow_of("provider-v4.json", 7)
    del obj["metadata"]["annotations"]
    answer = build_status(obj)
    assert answer["algoDID"] == "did:op:4ca762e608035d2410dcd9bb885bf3d58247601bf99cbe096314d14da5bb0d3a"
    assert answer["inputDID"] == ["did:op:4809985403da8f7d90de14f8027887df5101f088b3618d03f67a086fda446d8c"]
    assert answer["dateCreated"] == "1796111661.000000"  # creationTimestamp has whole seconds
    del obj["spec"]["algorithm"]["did"]
    obj["spec"]["algorithm"]["rawCode"] = "x"
    assert build_status(obj)["algoDID"] == "raw"


@pytest.mark.parametrize(
    ("stage", "code", "expected"),
    [
        ("Queued", st.WARMING_UP, (1, "Warming up")),
        ("Configuring", st.CONFIGURING_VOLUMES, (20, "Configuring volumes")),
        ("RunningAlgorithm", st.RUNNING_ALGORITHM, (40, "Running algorithm ")),  # the original's space
        ("Filtering", st.FILTERING_RESULTS, (50, "Filtering results")),
        ("Publishing", st.PUBLISHING_RESULTS, (60, "Publishing results")),
        ("Finished", st.JOB_FINISHED, (70, "Job finished")),
        ("Finished", st.DATA_PROVISIONING_FAILED, (31, "Data provisioning failed")),
        ("Finished", st.ALGORITHM_PROVISIONING_FAILED, (32, "Algorithm provisioning failed")),
        ("Finished", st.JOB_STOPPED, (70, "Job finished")),
        ("Finished", st.ALGORITHM_TIMED_OUT, (70, "Job finished")),
        ("Finished", st.ALGORITHM_FAILED, (41, "Algorithm failed")),
        ("Finished", st.CONTAINER_CREATION_FAILED, (22, "Container creation failed")),
        ("Finished", st.RESULTS_UPLOAD_FAILED, (62, "Results upload failed")),
        ("Finished", st.NETWORK_NOT_ISOLATED, (23, "Network isolation not enforced")),
        ("Finished", st.RESULTS_BLOCKED, (51, "Results blocked by filter")),
        ("Finished", st.INVALID_WORKFLOW, (90, "Invalid workflow")),
    ],
)
def test_codes_as_the_original_said_them(stage: str, code: st.Code, expected: tuple[int, str]) -> None:
    assert client_code({"stage": stage, "statusCode": code.number, "statusText": code.text}) == expected


def test_no_status_yet_is_warming_up() -> None:
    assert client_code({}) == (1, "Warming up")


def test_every_code_of_ours_is_mapped_or_listed() -> None:
    ours = {value.number for value in vars(st).values() if isinstance(value, st.Code)}
    original = {1, 20, 30, 31, 32, 40, 50, 60, 70}
    assert ours - original == set(ANSWERED_AS) | set(OURS_AS_THEY_ARE)


@pytest.mark.parametrize(
    ("code", "reason", "stop", "stopreq"),
    [
        (st.JOB_FINISHED, st.Outcome.SUCCEEDED, False, 0),
        (st.JOB_FINISHED, st.Outcome.SUCCEEDED, True, 1),  # stopped after it finished (the recordings)
        (st.JOB_STOPPED, st.Outcome.STOPPED, True, 1),
        (st.ALGORITHM_TIMED_OUT, st.Outcome.ALGORITHM_TIMED_OUT, False, 2),
        (st.ALGORITHM_FAILED, st.Outcome.ALGORITHM_FAILED, False, 0),
    ],
)
def test_stopreq(code: st.Code, reason: st.Outcome, stop: bool, stopreq: int) -> None:
    obj = workflow_of("provider-v4.json", 7, finished(code, reason))
    obj["spec"]["stop"] = stop
    assert build_status(obj)["stopreq"] == stopreq


@pytest.mark.parametrize(
    "code", [st.DATA_PROVISIONING_FAILED, st.ALGORITHM_FAILED, st.JOB_STOPPED, st.INVALID_WORKFLOW]
)
def test_date_finished_on_every_terminal_state(code: st.Code) -> None:
    answer = build_status(workflow_of("provider-v4.json", 7, finished(code, st.Outcome.ALGORITHM_FAILED)))
    assert answer["dateFinished"] == "1796111663.000000"
    assert answer["results"] == ""  # nothing published


def test_no_date_finished_while_running() -> None:
    status = {"stage": "Publishing", "statusCode": 60, "statusText": "Publishing results"}
    assert build_status(workflow_of("provider-v4.json", 7, status))["dateFinished"] is None


def test_results_in_publish_order_without_urls() -> None:
    status = finished(st.JOB_FINISHED, st.Outcome.SUCCEEDED, list(reversed(RESULTS)))
    assert build_status(workflow_of("provider-v4.json", 7, status))["results"] == [
        {"filename": "algorithm.log", "filesize": 9, "type": "algorithmLog"},
        {"filename": "out.txt", "filesize": 12, "type": "output"},
    ]


def test_results_read_from_a_manifest_replace_the_status_ones() -> None:
    status = finished(st.JOB_FINISHED, st.Outcome.SUCCEEDED)
    status["resultsManifest"] = "s3://b/results.json"
    answer = build_status(workflow_of("provider-v4.json", 7, status), results=RESULTS[:1])
    assert answer["results"] == [{"filename": "out.txt", "filesize": 12, "type": "output"}]


def test_dates_are_epoch_text_with_six_decimals() -> None:
    status = finished(st.JOB_FINISHED, st.Outcome.SUCCEEDED)
    status["finishedAt"] = "2026-12-01T07:54:23.5Z"
    answer = build_status(workflow_of("provider-v4.json", 7, status))
    assert answer["dateFinished"] == "1796111663.500000"
    assert answer["dateCreated"] == "1796111661.956364"


def test_running_jobs_entry() -> None:
    assert build_running(workflow_of("provider-v4.json", 10)) == {
        "agreementId": "0x" + "4" * 64,
        "jobId": JOB,
        "owner": "0xBE5449a6A97aD46c8558A3356267Ee5D2731ab5e",
        "status": 1,
        "statusText": "Warming up",
        "dateCreated": "1796111661.956364",
        "namespace": "ocean-compute",
        "algoDID": "",
        "inputDID": ["did:op:4809985403da8f7d90de14f8027887df5101f088b3618d03f67a086fda446d8c"] * 2,
    }
