"""environments: the first come, first served queue of each ComputeEnvironment, its status, and the
default environment made from the original's environment variables."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from ocean_c2d.environments import (
    Occupancy,
    admission,
    default_environment_object,
    environment_status,
    occupancy,
    queue_position,
    queue_report,
    to_wake,
    workflow_queue_line,
)
from ocean_c2d.model import Admission, Environment, Workflow
from ocean_c2d.times import format_time
from unit_tests.factories import OPERATOR_ADDRESS, workflow
from unit_tests.factories import default_environment as seed

CRD = Path(__file__).resolve().parent.parent / "crds" / "computeenvironments.yaml"


def wf(name: str, created: str, stage: str | None = None, **status: Any) -> Workflow:
    return workflow(name, created=created, stage=stage, **status)


def env(max_jobs: int) -> Environment:
    return Environment(name="cpu", max_jobs=max_jobs)


def at(minute: int, second: int = 0) -> str:
    return f"2026-01-01T12:{minute:02d}:{second:02d}Z"


def verdicts(peers: list[Workflow], environment: Environment) -> dict[str, Admission]:
    return {w.name: admission(w, peers, environment) for w in peers}


def admit_one_at_a_time(peers: list[Workflow], environment: Environment, order: list[str]) -> list[str]:
    """Reconcile the Workflows in `order` as the controller does (one admission decision at a time, on a
    view that includes the decisions already taken) until nothing changes; returns who was admitted."""
    admitted: list[str] = []
    changed = True
    while changed:
        changed = False
        for name in order:
            current = next(w for w in peers if w.name == name)
            if current.admitted:
                continue
            if admission(current, peers, environment).may_start:
                peers = [
                    wf(w.name, format_time(w.created), "Configuring") if w.name == name else w for w in peers
                ]
                admitted.append(name)
                changed = True
    return admitted


# ---- admission -----------------------------------------------------------------------------------------


def test_the_earliest_created_starts_first() -> None:
    peers = [wf("c", at(3)), wf("a", at(2)), wf("b", at(1))]
    result = verdicts(peers, env(1))
    assert result == {
        "b": Admission(may_start=True),
        "a": Admission(may_start=False, position=1),
        "c": Admission(may_start=False, position=2),
    }


def test_the_name_breaks_a_tie_in_creation_time() -> None:
    peers = [wf("zeta", at(1)), wf("alpha", at(1)), wf("mid", at(1))]
    result = verdicts(peers, env(1))
    assert result["alpha"].may_start
    assert result["mid"] == Admission(may_start=False, position=1)
    assert result["zeta"] == Admission(may_start=False, position=2)


def test_creation_time_beats_the_name() -> None:
    peers = [wf("aaa", at(5)), wf("zzz", at(4))]
    result = verdicts(peers, env(1))
    assert result["zzz"].may_start
    assert result["aaa"] == Admission(may_start=False, position=1)


def test_at_most_max_jobs_start_and_the_others_get_their_positions() -> None:
    peers = [
        wf("running", at(0), "RunningAlgorithm"),
        *[wf(f"w{n}", at(1, n)) for n in range(5)],
    ]
    result = verdicts(peers, env(3))
    assert [name for name, v in result.items() if v.may_start] == ["running", "w0", "w1"]
    assert [result[f"w{n}"].position for n in range(2, 5)] == [1, 2, 3]
    assert result["running"].position is None


def test_the_queue_positions_count_from_one_when_full() -> None:
    peers = [wf("r1", at(0), "Configuring"), wf("r2", at(0), "Publishing")]
    peers += [wf(f"q{n}", at(1, n), "Queued", queuePosition=9) for n in range(3)]
    result = verdicts(peers, env(2))
    assert [result[f"q{n}"] for n in range(3)] == [
        Admission(may_start=False, position=1),
        Admission(may_start=False, position=2),
        Admission(may_start=False, position=3),
    ]


@pytest.mark.parametrize("seed", range(5))
def test_deciding_one_at_a_time_admits_at_most_max_jobs_in_fifo_order(seed: int) -> None:
    peers = [wf("running", at(0), "RunningAlgorithm"), wf("done", at(0), "Finished")]
    peers += [wf(f"w{n}", at(1, n)) for n in range(6)]
    order = [w.name for w in peers]
    random.Random(seed).shuffle(order)  # the reconciles come in any order
    admitted = admit_one_at_a_time(peers, env(3), order)
    assert sorted(admitted) == ["w0", "w1"]


def test_an_admitted_workflow_stays_admitted_even_over_capacity() -> None:
    # maxJobs lowered from 3 to 1 while three run: none of them is sent back to the queue.
    peers = [
        wf(f"r{n}", at(0, n), stage)
        for n, stage in enumerate(["Configuring", "RunningAlgorithm", "Filtering"])
    ]
    peers.append(wf("new", at(1)))
    result = verdicts(peers, env(1))
    assert all(result[f"r{n}"] == Admission(may_start=True) for n in range(3))
    assert result["new"] == Admission(may_start=False, position=1)


def test_finished_workflows_do_not_count() -> None:
    peers = [wf("done1", at(0), "Finished"), wf("done2", at(0, 1), "Finished"), wf("new", at(1))]
    assert admission(peers[-1], peers, env(1)) == Admission(may_start=True)
    assert occupancy(peers) == Occupancy(running=0, queued=1)


def test_a_finished_workflow_is_not_queued_ahead() -> None:
    # A Workflow that finished before it ever ran (stopped while queued) must not hold a position.
    peers = [wf("r", at(0), "RunningAlgorithm"), wf("stopped", at(0, 30), "Finished"), wf("late", at(1))]
    assert admission(peers[-1], peers, env(1)) == Admission(may_start=False, position=1)


def test_a_workflow_missing_from_its_peers_queues_behind_them() -> None:
    """The view may not list a Workflow yet: it then waits behind everyone it does list."""
    peers = [wf("a", at(1)), wf("b", at(2))]
    latecomer = wf("c", at(0))
    assert admission(latecomer, peers, env(1)) == Admission(may_start=False, position=2)
    assert admission(latecomer, peers, env(3)) == Admission(may_start=True)


def test_a_new_workflow_starts_when_there_is_room() -> None:
    peers = [wf("r", at(0), "Configuring"), wf("new", at(1))]
    assert admission(peers[-1], peers, env(2)) == Admission(may_start=True)


def test_a_peer_without_a_creation_time_does_not_break_the_queue() -> None:
    undated = Workflow.from_object(
        {
            "metadata": {"name": "undated", "namespace": "c2d"},
            "spec": {"environment": "cpu", "owner": "0x" + "a" * 40, "inputs": [], "algorithm": {}},
        }
    )
    peers = [wf("a", at(1)), undated]
    assert admission(peers[0], peers, env(1)) == Admission(may_start=False, position=1)


# ---- occupancy and status ---------------------------------------------------------------------------------


def test_occupancy_counts_running_and_waiting() -> None:
    peers = [
        wf("none", at(0)),
        wf("queued", at(0), "Queued"),
        wf("configuring", at(0), "Configuring"),
        wf("algorithm", at(0), "RunningAlgorithm"),
        wf("filtering", at(0), "Filtering"),
        wf("publishing", at(0), "Publishing"),
        wf("finished", at(0), "Finished"),
    ]
    assert occupancy(peers) == Occupancy(running=4, queued=2)
    assert occupancy([]) == Occupancy(0, 0)


def test_environment_status() -> None:
    peers = [
        wf("r1", at(0), "Configuring"),
        wf("q1", at(1)),
        wf("q2", at(2), "Queued"),
        wf("f", at(0), "Finished"),
    ]
    assert environment_status(env(5), peers, OPERATOR_ADDRESS, 3) == {
        "observedGeneration": 3,
        "currentJobs": 1,
        "queuedJobs": 2,
        "queueHead": "q1",  # the first to come of those waiting
        "jobs": "1/5",
        "consumerAddress": OPERATOR_ADDRESS,
        "capacity": {
            "allocatable": {"jobs": 5, "cpu": 5, "memoryGB": 5.0, "gpu": 0, "diskGB": 5.0},
            "inUse": {"jobs": 1, "cpu": 1, "memoryGB": 1.0, "gpu": 0, "diskGB": 1.0},
        },
    }
    assert environment_status(env(10), [], OPERATOR_ADDRESS, 1)["jobs"] == "0/10"
    assert environment_status(env(10), [], OPERATOR_ADDRESS, 1)["queueHead"] is None  # deleted by the patch


def test_environment_capacity_scales_one_algorithm_share() -> None:
    gpu = Environment(name="gpu", n_cpu=8, ram_gb=32, n_gpu=2, disk_gb=100, max_jobs=3)
    status = environment_status(
        gpu, [wf("a", at(0), "RunningAlgorithm"), wf("b", at(1), "Publishing")], OPERATOR_ADDRESS, 1
    )
    assert status["capacity"]["allocatable"] == {
        "jobs": 3,
        "cpu": 24,
        "memoryGB": 96.0,
        "gpu": 6,
        "diskGB": 300.0,
    }
    assert status["capacity"]["inUse"] == {"jobs": 2, "cpu": 16, "memoryGB": 64.0, "gpu": 4, "diskGB": 200.0}


# ---- the default environment ----------------------------------------------------------------------------


def crd_spec_properties() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    [version] = crd["spec"]["versions"]
    properties: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    return properties


def test_the_default_environment_object_without_gpus() -> None:
    manifest = default_environment_object("default", "c2d", seed())
    assert manifest["apiVersion"] == "oceanprotocol.com/v1alpha1"
    assert manifest["kind"] == "ComputeEnvironment"
    assert manifest["metadata"]["name"] == "default"
    assert manifest["metadata"]["namespace"] == "c2d"
    assert manifest["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "ocean-c2d"}
    assert manifest["spec"] == {
        "nCPU": 4,
        "cpuType": "AMD EPYC",
        "nGPU": 0,
        "gpuType": "",
        "ramGB": 16.0,
        "diskGB": 100.0,
        "priceMinute": 0.5,
        "description": "The default environment",
        "maxJobs": 7,
        "maxJobDuration": 7200,
        "storageExpiry": 48,
    }


def test_the_default_environment_object_with_gpus_has_gpu_ram() -> None:
    spec = default_environment_object("gpu", "c2d", seed(gpu_count=2, gpu_ram_gb=80.0, gpu_type="A100"))[
        "spec"
    ]
    assert (spec["nGPU"], spec["gpuRam"], spec["gpuType"]) == (2, 80.0, "A100")


def test_gpu_ram_is_left_out_without_gpus_even_when_set() -> None:
    # The CRD rejects gpuRam with nGPU 0 (`!has(self.gpuRam) || self.nGPU > 0`).
    spec = default_environment_object("default", "c2d", seed(gpu_count=0, gpu_ram_gb=16.0))["spec"]
    assert "gpuRam" not in spec


@pytest.mark.parametrize("gpus", [0, 1])
def test_the_default_environment_fields_are_those_of_the_crd(gpus: int) -> None:
    spec = default_environment_object("default", "c2d", seed(gpu_count=gpus, gpu_ram_gb=24.0))["spec"]
    properties = crd_spec_properties()
    assert set(spec) <= set(properties)
    types: dict[str, type | tuple[type, ...]] = {"integer": int, "number": (int, float), "string": str}
    for name, value in spec.items():
        assert isinstance(value, types[properties[name]["type"]]), name


def test_the_default_environment_reads_back_as_the_same_environment() -> None:
    manifest = default_environment_object("default", "c2d", seed(gpu_count=1, gpu_ram_gb=24.0, gpu_type="L4"))
    environment = Environment.from_object(manifest)
    assert environment == Environment(
        name="default",
        n_cpu=4,
        cpu_type="AMD EPYC",
        n_gpu=1,
        gpu_ram=24.0,
        gpu_type="L4",
        ram_gb=16.0,
        disk_gb=100.0,
        price_minute=0.5,
        description="The default environment",
        max_jobs=7,
        max_job_duration=7200,
        storage_expiry=48,
    )


def test_the_position_on_demand_is_the_one_admission_decides_on() -> None:
    peers = [wf("r", at(0), "RunningAlgorithm"), *(wf(f"q{n}", at(n + 1)) for n in range(5))]
    for free_slots in (1, 2, 4):
        environment = env(free_slots)
        for waiting in peers[1:]:
            verdict = admission(waiting, peers, environment)
            expected = 1 if verdict.may_start else verdict.position  # it starts next, or waits there
            assert queue_position(waiting, peers, environment) == expected, (free_slots, waiting.name)
    assert queue_position(peers[0], peers, env(1)) is None  # running: it does not wait


def test_a_moved_queue_wakes_those_that_may_start_the_next_head_and_a_stale_head() -> None:
    peers = [wf("r", at(0), "RunningAlgorithm"), *(wf(f"q{n}", at(n + 1)) for n in range(6))]
    assert [w.name for w in to_wake(peers, env(1))] == ["q0"]  # full: only the head
    assert [w.name for w in to_wake(peers, env(3))] == ["q0", "q1", "q2"]  # two may start, then the head
    # q4 still says it is the head (a Workflow that came late, with an earlier creation time, went ahead).
    peers[5] = wf("q4", at(5), "Queued", queuePosition=1)
    assert [w.name for w in to_wake(peers, env(1))] == ["q0", "q4"]


def test_the_queue_report_lists_the_waiting_in_order_and_one_workflows_place() -> None:
    peers = [
        wf("r", at(0), "RunningAlgorithm"),
        wf("late", at(9)),
        wf("early", at(2)),
        wf("done", at(1), "Finished", reason="Succeeded"),
        workflow("elsewhere", created=at(1), environment="gpu"),
    ]
    lines = queue_report(env(1), "cpu", peers)
    assert lines[0] == "ComputeEnvironment cpu: 1/1 running, 2 waiting"
    assert [line.split()[:2] for line in lines[1:]] == [["1", "early"], ["2", "late"]]
    assert workflow_queue_line(peers[1], env(1), peers) == (
        "late: position 2 of 2 waiting for environment cpu (1/1 running); next to start: early"
    )
    assert workflow_queue_line(peers[0], env(1), peers).startswith("r: running")
    assert workflow_queue_line(peers[3], env(1), peers) == "done: finished (Succeeded)"
    assert "does not exist" in queue_report(None, "cpu", peers)[0]
