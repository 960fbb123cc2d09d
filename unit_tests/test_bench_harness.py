"""The benchmark harness's arithmetic (benchmarks/harness.py, benchmarks/report.py) on made-up audit
lines: who wrote what, transition latency on the API server's clock, stages run twice, and that a results
file renders to markdown. The harness itself runs against the cluster in e2e/test_bench_smoke.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import report
from benchmarks.harness import (
    BASELINE_AGENT,
    OPERATOR,
    duplicate_stage_runs,
    kwok_stage_delays,
    stage_of,
    transitions,
    writes_by,
)
from e2e.audit import AuditLog, Request


def request(verb: str, resource: str, name: str, agent: str, at: str, code: int = 201) -> Request:
    return Request(
        verb, resource, "ns", name, "admin", agent, code, f"2026-12-01T10:00:{at}Z", ("127.0.0.1",)
    )


KWOK = "kwok-controller/v0.8.0 (linux/amd64)"
OPERATOR_AGENT = "kr8s/0.20.0"
KCM = "kube-controller-manager/v1.35.4"


def test_a_stage_pod_or_job_name_gives_its_workflow_and_stage() -> None:
    assert stage_of("wf-00001-algorithm") == ("wf-00001", "algorithm")
    assert stage_of("wf-00001-configure-2") == ("wf-00001", "configure")  # a replacement pod
    assert stage_of("wf-00001-algorithm-job") == ("wf-00001", "algorithm")  # the baseline's Job
    assert stage_of("wf-00001-publish-job-x1y2z") == ("wf-00001", "publish")  # that Job's pod
    assert stage_of("wf-00001-other") is None
    assert stage_of("wf-00001") is None


def test_transitions_run_from_kwoks_last_pod_status_write_to_the_next_stage_pods_create() -> None:
    log = [
        request("create", "pods", "a-configure", OPERATOR_AGENT, "00.000000"),
        request("patch", "pods/status", "a-configure", KWOK, "00.100000", 200),  # Running
        request("patch", "pods/status", "a-configure", KWOK, "01.100000", 200),  # Succeeded
        request("create", "pods", "a-algorithm", OPERATOR_AGENT, "01.150000"),
        request("patch", "pods/status", "a-algorithm", KWOK, "03.000000", 200),
        request("create", "pods", "a-publish", OPERATOR_AGENT, "03.500000"),
        request("create", "pods", "b-algorithm", BASELINE_AGENT + "/1", "09.000000"),  # not the operator's
    ]
    assert [round(t, 3) for t in transitions(log, OPERATOR)] == [0.05, 0.5]
    assert transitions(log, BASELINE_AGENT) == []  # b's configure pod never ran


def test_transitions_of_stage_jobs_read_their_pods() -> None:
    log = [
        request("create", "jobs", "a-configure-job", BASELINE_AGENT, "00.000000"),
        request("create", "pods", "a-configure-job-x1y2z", KCM, "00.050000"),  # the Job's pod: no stage
        request("patch", "pods/status", "a-configure-job-x1y2z", KWOK, "01.100000", 200),
        request("create", "jobs", "a-algorithm-job", BASELINE_AGENT, "01.300000"),
    ]
    assert [round(t, 3) for t in transitions(log, BASELINE_AGENT)] == [0.2]
    assert duplicate_stage_runs(log) == {}


def test_writes_are_counted_per_workflow_by_client_and_stages_run_twice_by_stage() -> None:
    log = [
        request("create", "pods", "a-configure", OPERATOR_AGENT, "00.000000"),
        request("create", "pods", "a-configure", OPERATOR_AGENT, "00.500000", 409),  # refused: no rerun
        request("patch", "workflows/status", "a", "kopf/1.37", "01.000000", 200),
        request("patch", "workflows/status", "a", "kopf/1.37", "02.000000", 200),
        request("get", "workflows", "a", "kopf/1.37", "02.000000", 200),
        request("create", "events", "", KCM, "02.000000"),
        request("create", "workflows", "a", "ocean-c2d-bench", "00.000000"),
    ]
    counted = writes_by(log, workflows=2)
    assert counted["by_client"] == {OPERATOR: 2.0, "kube-controller-manager": 0.5, "ocean-c2d-bench": 0.5}
    assert counted["by_client_and_kind"][OPERATOR] == {"create pods": 1.0, "patch workflows/status": 1.0}
    assert counted["operator_status_writes"] == {"a": 2}
    assert duplicate_stage_runs(log) == {}
    assert duplicate_stage_runs([*log, log[0]]) == {"a-configure": 2}
    replaced = request("create", "pods", "a-configure-2", OPERATOR_AGENT, "03.000000")
    assert duplicate_stage_runs([*log, replaced]) == {"a-configure": 2}


def test_the_kwok_pod_stages_have_no_jitter() -> None:
    stages = kwok_stage_delays()
    assert stages["sim-pod-terminate"]["delay_from"] == '.metadata.annotations["sim.ocean-c2d/run-for"]'
    assert all(s["jitter_ms"] is None and s["jitter_from"] is None for s in stages.values())


@pytest.fixture
def results() -> dict[str, Any]:
    spread: dict[str, Any] = {"n": 2, "p50": 10.0, "p95": 20.0, "p99": 20.0, "max": 20.0}
    writes: dict[str, Any] = {
        "total_per_workflow": 60.0,
        "by_client": {OPERATOR: 20.0},
        "by_client_and_kind": {OPERATOR: {}},
    }
    common: dict[str, Any] = {
        "workflows": 2,
        "finished": 2,
        "throughput_per_minute": 60.0,
        "drain_seconds": 2.0,
    }
    common |= {"transition_ms": spread, "writes": writes, "cpu_seconds": 1.0, "cpu_seconds_per_1000": 500.0}
    common |= {
        "peak_rss_mb": 80.0,
        "duplicate_stage_runs": 0,
        "load_average": {"mean": 1.0, "max": 2.0, "cores": 2},
    }
    s2 = common | {
        "status_writes_per_workflow": spread,
        "operator_writes_per_workflow": 20.0,
        "operator_writes_without_events": 15.0,
        "operator_events_per_workflow": 5.0,
        "minimum_writes_per_workflow": 19.0,
        "operator_writes_over_minimum": 1.05,
        "operator_writes_over_minimum_without_events": 0.79,
        "algorithm_reruns": 0,
        "vs_S0": {"throughput": 0.97, "transition_p99": 1.5},
        "idle": None,
    }
    return {
        "run_id": "x",
        "started": "now",
        "machine": {"cores": 2, "load_average_before": [1.0, 1.0, 1.0]},
        "options": {},
        "kwok_stages": kwok_stage_delays(),
        "S0": {"10": common | {"child_writes_per_workflow": 16.0}},
        "S2": {"10": s2},
    }


def test_a_results_file_renders_as_a_markdown_table_with_ratios_to_s0(results: dict[str, Any]) -> None:
    table = report.markdown(results)
    assert "| figure | S0 maxJobs 10 | S2 maxJobs 10 |" in table
    assert "| throughput, Workflows/min | 60.0 | 60.0 (0.97x S0) |" in table
    assert "no jitter" in table


def test_reading_from_a_mark_follows_the_audit_log_through_a_rotation(tmp_path: Path) -> None:
    def line(name: str) -> str:
        event = {
            "stage": "ResponseComplete",
            "verb": "create",
            "objectRef": {"resource": "jobs", "name": name},
        }
        return json.dumps(event) + "\n"

    log = tmp_path / "audit.log"
    log.write_text(line("before"))
    audit = AuditLog(log)
    mark = audit.mark()
    with log.open("a") as sink:
        sink.write(line("after-1"))
    log.rename(tmp_path / "audit-2026-12-01T23-41-58.963.log")  # what --audit-log-maxsize does
    log.write_text(line("after-2"))
    assert [r.name for r in audit.since(mark)] == ["after-1", "after-2"]
